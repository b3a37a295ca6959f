"""End to end: `harmonia evaluate` in both modes on the tiny datasets, reports, `harmonia report`."""

import json
import math

import numpy as np
import pytest
from conftest import EVENT_TASK, FOLD_TASK, TONE_TASK, knn_accuracy_numpy, tone, write_shard

from harmonia.cli import main
from harmonia.eval.embed import EmbeddingCache
from harmonia.eval.runner import evaluate, load_encoder_source

ENCODER_FILE = "tests/eval/eval_test_encoder.py"


def expected_knn(encoder, task, data_root, mode) -> list[float]:
    """Per scoring round, the kNN accuracy computed with numpy from the cached embeddings (read
    back through the cache: nothing is encoded again) and the raw JSON labels."""
    embs = EmbeddingCache(data_root / ".harmonia_cache", encoder, mode=mode, progress=False).embed_task(task, data_root)
    names = sorted({j[task.label_key] for e in embs.values() for j in e.jsons})
    label = lambda e: [names.index(j[task.label_key]) for j in e.jsons]
    out = []
    for train_parts, _, test in task.rounds():
        tx = np.concatenate([embs[p].pooled.numpy() for p in train_parts])
        ty = [y for p in train_parts for y in label(embs[p])]
        out.append(knn_accuracy_numpy(tx, ty, embs[test].pooled.numpy(), label(embs[test]), mode))
    return out


def _task_files(tmp_path):
    paths = []
    for t in (TONE_TASK, FOLD_TASK, EVENT_TASK):
        p = tmp_path / f"{t.name}.json"
        d = t.to_dict()
        d.pop("extra")
        p.write_text(json.dumps(d))
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("mode", ["clean", "xares"])
def test_cli_evaluate_writes_every_report(data_root, tmp_path, mode):
    out = tmp_path / f"out_{mode}"
    rc = main(["evaluate", "--model", ENCODER_FILE, "--tasks", *_task_files(tmp_path), "esc50",
               "--data-root", str(data_root), "--mode", mode, "--seeds", "2", "--out", str(out), "--no-progress",
               "--allow-partial"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == mode and res["seeds"] == ([0, 1] if mode == "clean" else [42])
    tasks = res["tasks"]
    assert tasks["esc50"]["status"] == "failed" and "zenodo.org/records/14614287" in tasks["esc50"]["error"]
    for name in ("tones", "tonefolds", "toneevents"):
        assert tasks[name]["status"] == "ok", tasks[name]
        assert 0.0 <= tasks[name]["mlp"]["mean"] <= 1.0
        assert (out / "charts" / f"{name}.png").stat().st_size > 1000
    assert len(tasks["tonefolds"]["mlp"]["per_fold"][0]) == 3
    assert len(tasks["tones"]["mlp"]["per_seed"]) == (2 if mode == "clean" else 1)
    assert "knn" not in tasks["toneevents"] or tasks["toneevents"].get("knn") is None
    # kNN scores equal an independent numpy computation on the same cached embeddings
    enc = load_encoder_source(ENCODER_FILE)
    for task in (TONE_TASK, FOLD_TASK):
        expected = expected_knn(enc, task, data_root, mode)
        assert tasks[task.name]["knn"]["per_fold"] == pytest.approx(expected, abs=1e-6)
        assert tasks[task.name]["knn"]["mean"] == pytest.approx(sum(expected) / len(expected), abs=1e-6)
    assert enc.calls == 0  # those were the cached embeddings the run scored
    # tones differ by frequency band: cosine kNN separates them perfectly
    if mode == "clean":
        assert tasks["tones"]["knn"]["mean"] == 1.0 and tasks["tonefolds"]["knn"]["mean"] == 1.0
    # probe scores are accuracies over whole test items: k / n for an integer k, per fold and seed
    n_test = {"tones": [9], "tonefolds": [12, 12, 12]}
    for name, ns in n_test.items():
        for per_fold in tasks[name]["mlp"]["per_fold"]:
            for score, n in zip(per_fold, ns, strict=True):
                assert math.isclose(score * n, round(score * n), abs_tol=1e-4), (name, score)
        assert tasks[name]["mlp"]["per_seed"] == pytest.approx([sum(f) / len(f) for f in tasks[name]["mlp"]["per_fold"]])
    # the 8 kHz stereo wav shard is decoded, mixed and resampled like the rest
    assert tasks["tones"]["partitions"]["tones_train"]["clips"] == 18
    s = res["summary"]
    expected = (tasks["tones"]["mlp"]["mean"] * 300 + tasks["tonefolds"]["mlp"]["mean"] * 100
                + tasks["toneevents"]["mlp"]["mean"] * 50) / 450
    assert s["mlp_all"] == pytest.approx(expected)
    assert "Tone folds" in (out / "results.md").read_text()
    assert (out / "results.csv").read_text().splitlines()[0].startswith("task,formal_name")

    rc = main(["report", str(out), str(out), "--out", str(tmp_path / "combined")])
    assert rc == 0
    text = (tmp_path / "combined" / "report.md").read_text()
    assert "Weighted average (all)" in text and "Tone events" in text
    assert (tmp_path / "combined" / "report.png").stat().st_size > 1000


def test_probe_learns_a_separable_task(data_root, tmp_path, encoder):
    from dataclasses import replace

    task = replace(TONE_TASK, epochs=30, batch_size=4)
    res = evaluate(encoder, [task], data_root, tmp_path / "o", seeds=1, progress=False, write_reports=False)
    assert res["tasks"]["tones"]["mlp"]["mean"] >= 0.8  # chance is 1/3


def test_clotho_is_skipped_without_vocab_and_runs_with_one(tmp_path, encoder, monkeypatch):
    from dataclasses import replace

    from harmonia.eval.tasks import BUILTIN_TASKS

    monkeypatch.setenv("HF_HOME", str(tmp_path / "nohf"))
    monkeypatch.delenv("HARMONIA_BERT_VOCAB", raising=False)
    clotho = replace(BUILTIN_TASKS["clotho"], epochs=2, batch_size=8, crop_length=0.2)
    root = tmp_path / "env"
    words = ["low", "hum", "high", "whistle"]
    for split, n in (("clotho_development", 4), ("clotho_evaluation", 2), ("clotho_validation", 2)):
        samples = []
        for i in range(n):
            f, w = (300, "low hum") if i % 2 else (5000, "high whistle")
            samples.append((f"{split}_{i}", tone(f, 0.3), 16000, {f"caption_{c}": f"A {w}, number {c}." for c in range(5)}))
        write_shard(root / "clotho" / f"{split}_000000.tar", samples)
    res = evaluate(encoder, [clotho], root, tmp_path / "o1", seeds=1, progress=False, write_reports=False)
    assert res["tasks"]["clotho"]["status"] == "skipped" and "bert-base-uncased" in res["tasks"]["clotho"]["error"]
    (root / "clotho" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", ",", ".", "number",
                                                          *words, *"01234"]))
    res = evaluate(encoder, [clotho], root, tmp_path / "o2", seeds=1, progress=False, write_reports=False)
    entry = res["tasks"]["clotho"]
    assert entry["status"] == "ok" and 0.0 <= entry["mlp"]["mean"] <= 1.0
    assert entry["partitions"]["clotho_validation"]["items"] == 2


BEATS_FIXTURE = "tests/fixtures/beats/beats_ms_iter3_small.pt"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["clean", "xares"])
def test_evaluate_with_the_real_beats_fixture(data_root, tmp_path, mode):
    out = tmp_path / "beats"
    rc = main(["evaluate", "--model", BEATS_FIXTURE, "--tasks", _task_files(tmp_path)[0], "--data-root",
               str(data_root), "--mode", mode, "--seeds", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    entry = res["tasks"]["tones"]
    assert entry["status"] == "ok", entry
    assert res["encoder"]["class"].endswith("BeatsEncoder") and res["encoder"]["hop_size_in_ms"] == 20.0
    assert 0.0 <= entry["mlp"]["mean"] <= 1.0
    expected = expected_knn(load_encoder_source(BEATS_FIXTURE), TONE_TASK, data_root, mode)
    assert entry["knn"]["per_fold"] == pytest.approx(expected, abs=1e-6)
    assert (out / "results.md").exists() and (out / "charts" / "tones.png").exists()
