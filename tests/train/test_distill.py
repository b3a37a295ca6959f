"""Distillation: a few steps lower the loss, the exported student is a normal encoder (load_encoder,
X-ARES checker), targets are aligned per member, bad configurations get one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import harmonia
from harmonia.recipes.distill import distill_tiny_debug
from harmonia.train.config import ConfigError, apply_overrides
from harmonia.train.distill import DistillModel, build_student, distill, distill_loss
from harmonia.train.teacher_cache import MemberSpec, Targets

FIX = Path(__file__).resolve().parents[1] / "fixtures"
TEACHER = f"{FIX / 'beats' / 'beats_ms_iter3_small.pt'}+{FIX / 'dasheng' / 'model_a.pt'}"


def tiny_distill_config(shards: Path, out: Path, **extra):
    sets = {"data.shards": shards, "run.out_dir": out, "run.progress": "false", "teacher.source": TEACHER,
            "data.batch_size": 2, "run.log_every": 1, "run.ckpt_every": 2, "run.max_steps": 4,
            "optim.warmup_steps": 2, "optim.decay_steps": 10, **extra}
    return apply_overrides(distill_tiny_debug(), [f"{k}={v}" for k, v in sets.items()])


def log_losses(out: Path) -> dict[int, float]:
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def test_loss_is_l1_minus_log_sigmoid_cosine():
    pred = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [9.0, 9.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 2.0], [-9.0, 0.0]]])
    valid = torch.tensor([[True, True, False]])  # the third frame is padding: ignored
    loss, cos = distill_loss(pred, target, valid, 1.0, 1.0)
    l1 = (1.0 + 0.0) / 4  # |0-1| over 2 frames x 2 dims
    c = torch.tensor([1 / 2**0.5, 1.0])
    expected = l1 - torch.nn.functional.logsigmoid(c).mean()
    assert torch.allclose(loss, expected) and torch.allclose(cos, c.mean())


def test_heads_read_targets_aligned_to_the_student_grid():
    """A member at half the student's frame rate is upsampled to the student's frames before the loss:
    a head that outputs exactly the aligned target gets the minimal loss."""
    cfg = distill_tiny_debug()
    student = build_student(cfg.student)
    model = DistillModel(student, [MemberSpec("m", 3, {})], -1, [], "nearest", 1.0, 0.0)
    wav = torch.randn(1, 16000)
    T = student.num_frames(16000)  # 48 flat frames
    teacher = torch.randn(1, T // 2, 3)
    aligned = harmonia.align_frames(teacher, T, "nearest")
    assert torch.equal(aligned[0, ::2], teacher[0]) and torch.equal(aligned[0, 1::2], teacher[0])
    with torch.no_grad():  # make the head reproduce a fixed target from the student's features: zero loss
        model.heads[0].weight.zero_()
        model.heads[0].bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    const = torch.tensor([1.0, 2.0, 3.0]).expand(1, T // 2, 3)
    loss, _ = model(wav, torch.tensor([16000]), Targets([const], [torch.tensor([T // 2])], [{}]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss2, _ = model(wav, torch.tensor([16000]), Targets([teacher], [torch.tensor([T // 2])], [{}]))
    assert loss2.item() > 0.1


def test_a_few_steps_lower_the_loss_and_export_is_a_normal_encoder(tiny_shards, tmp_path):
    from xares.audio_encoder_checker import check_audio_encoder

    cfg = tiny_distill_config(tiny_shards, tmp_path / "run", **{"run.max_steps": 12, "optim.lr": 3e-3,
                                                                 "data.crop_seconds": 0})
    record = distill(cfg, export=tmp_path / "student")
    losses = log_losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 13))
    assert sum(losses[s] for s in (10, 11, 12)) < sum(losses[s] for s in (1, 2, 3))
    assert sorted(k for k in record if k.startswith("cos_")) == ["cos_0", "cos_1"]  # one head per member
    enc = harmonia.load_encoder(tmp_path / "student")
    assert type(enc).__name__ == "BeatsEncoder" and enc.output_dim == 64 and enc.hop_size_in_ms == 20.0
    assert check_audio_encoder(enc) is True
    from harmonia.xares_export import export_xares
    from tests.test_xares_export import encoder_attributes, import_module

    plugin = import_module(export_xares(str(tmp_path / "student"), tmp_path / "student_encoder.py"))
    xares_enc = getattr(plugin, encoder_attributes(plugin)[0])()
    assert check_audio_encoder(xares_enc) is True
    wav = 0.1 * torch.randn(1, 16000)
    assert torch.allclose(xares_enc(wav), enc(wav), atol=1e-5)
    from harmonia.io import read_safetensors

    keys = list(read_safetensors(tmp_path / "student" / "model.safetensors"))
    assert keys and not [k for k in keys if k.startswith(("heads", "layer_heads", "student"))]


def test_sampling_rate_mismatch_is_one_clear_error(tiny_shards, tmp_path):
    cfg = tiny_distill_config(tiny_shards, tmp_path / "run", **{"student.family": "dasheng",
                                                                 "student.arch": '{"embed_dim": 32, "depth": 1, '
                                                                                 '"num_heads": 2, "sample_rate": 32000}'})
    with pytest.raises(ConfigError, match=r"sampling-rate mismatch.*16000 Hz.*32000 Hz"):
        distill(cfg)


@pytest.mark.parametrize("key,value,match", [
    ("student.family", "wav2vec", "student.family"),
    ("student.preset", "beats-huge", "student.preset"),
    ("distill.align", "cubic", "distill.align"),
    ("distill.layer_targets", '["1:0"]', "S:M:T"),
    ("teacher.source", "", "teacher.source"),
])
def test_bad_config_names_the_key(tiny_shards, tmp_path, key, value, match):
    cfg = tiny_distill_config(tiny_shards, tmp_path / "run", **{key: value})
    with pytest.raises(ConfigError, match=match):
        cfg.validate()


def test_untrained_top_layers_are_refused():
    student = build_student(distill_tiny_debug().student)
    with pytest.raises(ConfigError, match="untrained"):
        DistillModel(student, [MemberSpec("m", 8, {})], 1, [], "linear", 1.0, 1.0)
    # a layer target on the top state makes a head on a lower state legitimate
    DistillModel(student, [MemberSpec("m", 8, {3: 8})], 1, [(2, 0, 3)], "linear", 1.0, 1.0)


def test_dasheng_student_with_layer_targets(tiny_shards, tmp_path):
    """A Dasheng student, heads on the last state plus a layer-to-layer target (student state 1 ->
    teacher member 1's state 1), from the cache: every target trains and the export is a Dasheng."""
    cfg = tiny_distill_config(tiny_shards, tmp_path / "run", **{
        "student.family": "dasheng", "student.arch": '{"embed_dim": 32, "depth": 2, "num_heads": 2}',
        "distill.layer_targets": '["1:1:1"]', "teacher.cache": tmp_path / "cache", "data.crop_seconds": 0,
        "run.max_steps": 6, "optim.lr": 3e-3})
    record = distill(cfg, export=tmp_path / "student")
    assert sorted(k for k in record if k.startswith("cos_")) == ["cos_0", "cos_1", "cos_2"]  # 2 members + 1 layer
    losses = log_losses(tmp_path / "run")
    assert losses[6] < losses[1]
    enc = harmonia.load_encoder(tmp_path / "student")
    assert type(enc).__name__ == "DashengEncoder" and enc.output_dim == 32
    # the input normalisation took the first batch's statistics (not the identity it is built with)
    assert not torch.allclose(enc.model.mel_norm.running_mean, torch.zeros(64))


def test_demo_verdict_states_both_targets_and_says_when_they_fail():
    from harmonia.demo.run import distill_verdict

    def runs(student, ensemble):
        return {"student": {"summary": {"mlp_all": student}}, "ensemble": {"summary": {"mlp_all": ensemble}}}

    ok = distill_verdict(runs(0.57, 0.60), {"student": 1.0, "ensemble": 4.0})
    assert ok[0].startswith("HOLDS") and "95.0 %" in ok[0]
    assert ok[1].startswith("HOLDS") and "0.25x" in ok[1]
    bad = distill_verdict(runs(0.45, 0.60), {"student": 2.0, "ensemble": 4.0})
    assert bad[0].startswith("DOES NOT HOLD") and "75.0 %" in bad[0]
    # just under the target is not rounded up into a pass
    edge = distill_verdict(runs(0.4229, 0.470), {"student": 1.0, "ensemble": 4.0})
    assert edge[0].startswith("DOES NOT HOLD") and "90.0 %" in edge[0]
    assert bad[1].startswith("DOES NOT HOLD") and "0.50x" in bad[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_distillation_lowers_the_loss_and_exports_fp32(tiny_shards, tmp_path):
    """On a GPU: bf16 autocast (run.precision=auto), teacher and student on the device."""
    cfg = tiny_distill_config(tiny_shards, tmp_path / "run", **{"run.max_steps": 12, "optim.lr": 3e-3,
                                                                 "data.crop_seconds": 0})
    distill(cfg, export=tmp_path / "student")
    losses = log_losses(tmp_path / "run")
    assert sum(losses[s] for s in (10, 11, 12)) < sum(losses[s] for s in (1, 2, 3))
    enc = harmonia.load_encoder(tmp_path / "student")
    assert enc.dtype == torch.float32 and enc.device.type == "cpu"
    assert torch.isfinite(enc(0.1 * torch.randn(1, 16000))).all()


def test_cli_reports_errors_without_a_traceback(tiny_shards, tmp_path, capsys):
    from harmonia.cli import main

    base = ["distill", "distill_tiny_debug", "--set", f"data.shards={tiny_shards}", "--set",
            f"run.out_dir={tmp_path / 'run'}", "--set", "run.progress=false"]
    assert main(base + ["--set", f"teacher.source={TEACHER}", "--set", "student.family=dasheng", "--set",
                        'student.arch={"embed_dim": 32, "depth": 1, "num_heads": 2, "sample_rate": 32000}']) == 2
    assert "configuration error: sampling-rate mismatch" in capsys.readouterr().err
    assert main(base + ["--set", "teacher.source=no-such-encoder"]) == 2
    assert "teacher.source='no-such-encoder'" in capsys.readouterr().err
    assert main(["distill", "distill_tiny_debg"]) == 2
    assert "did you mean distill_tiny_debug" in capsys.readouterr().err
    assert main(["distill", "distill_cmu_ensemble_base", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["teacher"]["source"] == "cmu-aist-icme2025" and cfg["student"]["arch"]["encoder_layers"] == 12


@pytest.mark.parametrize("pair,match", [("2:5:1", r"member\(s\) \[5\]"), ("2:0:9", "hidden states")])
def test_layer_target_outside_the_teacher_is_a_config_error(tiny_shards, tmp_path, pair, match):
    cfg = tiny_distill_config(tiny_shards, tmp_path / "run", **{"distill.layer_targets": f'["{pair}"]'})
    with pytest.raises(ConfigError, match=match):
        distill(cfg)


def test_resume_with_another_teacher_is_refused(tiny_shards, tmp_path):
    """A run's checkpoint is tied to its teacher and targets: resuming with another is an error."""
    distill(tiny_distill_config(tiny_shards, tmp_path / "run", **{"run.max_steps": 2}))
    other = f"{FIX / 'beats' / 'openbeats_small_ssl.pt'}+{FIX / 'dasheng' / 'model_a.pt'}"
    with pytest.raises(ConfigError, match="teacher.source"):
        distill(tiny_distill_config(tiny_shards, tmp_path / "run", **{"run.max_steps": 4, "teacher.source": other}))
    record = distill(tiny_distill_config(tiny_shards, tmp_path / "run", **{"run.max_steps": 4}))
    assert record["step"] == 4
