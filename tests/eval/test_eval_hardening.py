"""Hardening of `harmonia evaluate`: exit status and --allow-partial, bugs are not "failed tasks",
task-file validation, the README's custom task, encoders that only follow the X-ARES contract."""

import json

import pytest
import torch
from conftest import TONE_TASK, tone_samples, write_shard

from harmonia.cli import main
from harmonia.eval import runner
from harmonia.eval.runner import evaluate, load_encoder_source
from harmonia.eval.tasks import TaskError, load_task_file

ENCODER_FILE = "tests/eval/eval_test_encoder.py"

# A valid X-ARES encoder module with no parameters, no buffers and no `device` attribute.
PARAMETER_FREE_ENCODER = '''
import torch


class ToneBandsEncoder(torch.nn.Module):
    sampling_rate = 16000
    output_dim = 16
    hop_size_in_ms = 20.0

    def forward(self, audio):
        B, N = audio.shape
        T = max(1, N // 320)
        x = torch.nn.functional.pad(audio, (0, max(0, 320 - N)))[:, : T * 320].reshape(B, T, 320)
        power = torch.fft.rfft(x, dim=-1).abs().pow(2)[..., :160]
        return torch.log(power.reshape(B, T, 16, 10).mean(-1) + 1e-6)
'''


def _tone_task_file(tmp_path, **override):
    d = TONE_TASK.to_dict()
    d.pop("extra")
    d.update(override)
    p = tmp_path / "tones.json"
    p.write_text(json.dumps(d))
    return str(p)


def test_evaluate_exits_1_with_failures_listed_unless_allow_partial(data_root, tmp_path, capsys):
    args = ["evaluate", "--model", ENCODER_FILE, "--tasks", _tone_task_file(tmp_path), "esc50", "--data-root",
            str(data_root), "--seeds", "1", "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "1 of 2 tasks not scored" in out and "esc50: failed" in out and "--allow-partial" in out
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["tasks"]["tones"]["status"] == "ok"  # the other task is still scored and written
    assert main(args + ["--allow-partial"]) == 0


def test_a_bug_in_scoring_raises_instead_of_failing_the_task(data_root, tmp_path, encoder, monkeypatch):
    def broken(*a, **k):
        raise ValueError("a programming error")

    monkeypatch.setattr(runner, "train_probe", broken)
    with pytest.raises(ValueError, match="a programming error"):
        evaluate(encoder, [TONE_TASK], data_root, tmp_path / "o", seeds=1, progress=False, write_reports=False)


def test_unusable_cache_location_is_one_clear_error(data_root, tmp_path, encoder):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(OSError, match="--cache-dir"):
        evaluate(encoder, [TONE_TASK], data_root, tmp_path / "o", cache_dir=blocker / "cache", progress=False)


@pytest.mark.parametrize("mode", ["clean", "xares"])
def test_parameter_free_xares_encoder_module_evaluates(data_root, tmp_path, mode):
    path = tmp_path / "my_xares_encoder.py"
    path.write_text(PARAMETER_FREE_ENCODER)
    enc = load_encoder_source(str(path))
    assert list(enc.parameters()) == [] and not hasattr(enc, "device")
    out = tmp_path / "o"
    assert main(["evaluate", "--model", str(path), "--tasks", _tone_task_file(tmp_path), "--data-root",
                 str(data_root), "--mode", mode, "--seeds", "1", "--out", str(out), "--no-progress"]) == 0
    entry = json.loads((out / "results.json").read_text())["tasks"]["tones"]
    assert entry["status"] == "ok"
    if mode == "clean":
        assert entry["knn"]["mean"] == 1.0  # band energies separate the tones (cosine, no padding)


def test_parameter_free_encoder_passes_the_xares_checker(tmp_path):
    checker = pytest.importorskip("xares.audio_encoder_checker", reason="xares 0.1.3 (dev extra) not installed")
    path = tmp_path / "my_xares_encoder.py"
    path.write_text(PARAMETER_FREE_ENCODER)
    assert checker.check_audio_encoder(load_encoder_source(str(path)))


def test_clean_mode_encodes_forward_only_encoders_item_by_item(tmp_path):
    # clips of 0.1 s and 0.2 s in one batch: clean mode must not average in the batch's padding
    from conftest import tone

    from harmonia.eval.embed import EmbeddingCache
    from harmonia.eval.tasks import Task

    path = tmp_path / "my_xares_encoder.py"
    path.write_text(PARAMETER_FREE_ENCODER)
    enc = load_encoder_source(str(path))
    task = Task("pad", "Pad", "sound", label_key="label", train_split="p", valid_split="p", test_split="p")
    short = tone(300, 0.1)
    write_shard(tmp_path / "env" / "pad" / "p_0.tar", [("a", short, 16000, {"label": "x"}),
                                                       ("b", tone(300, 0.2), 16000, {"label": "x"})], "wav", "FLOAT")
    got = EmbeddingCache(tmp_path / "c", enc, progress=False).embed_task(task, tmp_path / "env")["p"]
    alone = enc(torch.from_numpy(short)[None])[0].mean(0)
    assert torch.allclose(got.pooled[0], alone, atol=1e-6)


BAD_FIELDS = [("crop_length", -1, "crop_length"), ("encode_batch_size", 1.5, "encode_batch_size"),
              ("knn", "false", "knn"), ("weight", -3, "weight"), ("epochs", 0, "epochs"), ("label_key", 3, "label_key"),
              ("folds", "123", "folds"), ("learning_rate", "fast", "learning_rate"), ("num_classes", True, "num_classes"),
              ("batch_size", None, "batch_size"), ("classes", ["a", 1], "classes"), ("shard_globs", ["x"], "shard_globs")]


@pytest.mark.parametrize("field,value,named", BAD_FIELDS)
def test_every_task_field_is_validated_and_the_file_named(tmp_path, field, value, named):
    spec = {"name": "birds", "label_key": "species", "train_split": "a", "valid_split": "b", "test_split": "c"}
    spec[field] = value
    path = tmp_path / "birds.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(TaskError) as e:
        load_task_file(path)
    msg = str(e.value)
    assert str(path) in msg and f"`{named}`" in msg and repr(value)[:3] in msg


def test_the_readme_custom_task_example_runs_end_to_end(tmp_path, capsys):
    # README: {"name": "mybirds", "label_key": "species", "metric": "accuracy", "folds": [1, 2, 3], ...}
    root = tmp_path / "env"
    for k in (1, 2, 3):
        write_shard(root / "mybirds" / f"wds-audio-fold-{k}-000000.tar",
                    tone_samples(f"f{k}", 2, seed=k, key_field="species"))
    path = tmp_path / "mybirds.json"
    path.write_text(json.dumps({"name": "mybirds", "label_key": "species", "metric": "accuracy", "folds": [1, 2, 3],
                                "epochs": 2}))
    out = tmp_path / "o"
    assert main(["evaluate", "--model", ENCODER_FILE, "--tasks", str(path), "--data-root", str(root),
                 "--seeds", "1", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "None" not in printed and "(1 task)" in printed
    res = json.loads((out / "results.json").read_text())
    entry = res["tasks"]["mybirds"]
    assert entry["weight"] == 6 and entry["weight_source"].startswith("default")  # 6 clips per fold
    assert res["summary"]["mlp_all"] == pytest.approx(entry["mlp"]["mean"])
