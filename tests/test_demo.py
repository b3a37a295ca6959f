"""The offline demo: synthetic audio, X-ARES-layout tasks, and the whole run end to end (slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from harmonia.demo import synth
from harmonia.demo.tasks import MAKERS, demo_tasks, write_task_data
from harmonia.eval.readers import read_audio_shard


@pytest.mark.parametrize("domain", ["speech", "music", "sound"])
def test_pool_clips_are_seeded_finite_and_scaled(domain):
    a = synth.pool_clip(np.random.default_rng([1, 2]), domain, 2.0)
    b = synth.pool_clip(np.random.default_rng([1, 2]), domain, 2.0)
    c = synth.pool_clip(np.random.default_rng([1, 3]), domain, 2.0)
    assert a.dtype == np.float32 and a.shape == (32000,)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.isfinite(a).all() and 0.25 < np.abs(a).max() <= 0.75


def test_vowels_differ_in_their_formants():
    """The speech-like generator really puts the vowel's formants where the table says."""
    rng = np.random.default_rng(0)
    spectra = {}
    for v in ("i", "a"):
        y = synth.vowel(rng, v, 120.0, 1.0, 0.5)
        spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
        freqs = np.fft.rfftfreq(len(y), 1 / synth.SR)
        spectra[v] = spec[(freqs > 200) & (freqs < 400)].sum() / spec[(freqs > 600) & (freqs < 900)].sum()
    assert spectra["i"] > 3 * spectra["a"]  # /i/ has F1 ≈ 270 Hz, /a/ has F1 ≈ 730 Hz


def test_task_data_in_xares_layout_and_deterministic(tmp_path):
    sizes = {"train": 3, "valid": 2, "test": 2}
    tasks = write_task_data(tmp_path / "a", sizes, seed=5)
    write_task_data(tmp_path / "b", sizes, seed=5)
    assert {t.name for t in tasks} == set(MAKERS) and len(tasks) >= 6
    assert {t.domain for t in tasks} == {"speech", "music", "sound"} and any(t.type == "frame" for t in tasks)
    for t in tasks:
        for split in ("train", "valid", "test"):
            shard = tmp_path / "a" / t.name / f"{split}-000000.tar"
            assert shard.read_bytes() == (tmp_path / "b" / t.name / f"{split}-000000.tar").read_bytes()
            samples = list(read_audio_shard(shard))
            assert len(samples) == sizes[split] and all(s.error is None for s in samples)
            if t.type == "frame":
                assert all(isinstance(s.json, list) and {"onset", "offset", "label"} <= set(s.json[0])
                           for s in samples)
            else:
                assert all(t.label_key in s.json for s in samples)
        spec = json.loads((tmp_path / "a" / "tasks" / f"{t.name}.json").read_text())
        assert spec["name"] == t.name and spec["metric"] == t.metric
    assert [t.weight for t in demo_tasks(7)] == [7] * len(MAKERS)


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "harmonia", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report" / "report.md").read_text()
    models = ["beats-speech-heavy", "beats-balanced", "dasheng-mae", "ensemble", "random-init"]
    for name in models:
        assert f"{name} (clean)" in report
        res = json.loads((out / "results" / name / "results.json").read_text())
        assert {e["status"] for e in res["tasks"].values()} == {"ok"} and len(res["tasks"]) == 7
        assert all(0.0 <= e["mlp"]["mean"] <= 1.0 for e in res["tasks"].values())
    assert (out / "report" / "report.png").stat().st_size > 10_000
    assert "Do the paper's effects appear?" in report and report.count("HOLD") >= 4
    # learned fusion rows and their verdict against concatenation
    for fusion in ("layer-weighted", "gated"):
        assert f"ensemble (clean, {fusion} fusion)" in report
        assert f"{fusion} fusion" in report.split("Do the paper's effects appear?")[1]
        res = json.loads((out / "results" / f"ensemble-{fusion}" / "results.json").read_text())
        assert res["fusion"] == fusion and all(e["fusion"]["members"] for e in res["tasks"].values())
        assert (out / "results" / f"ensemble-{fusion}" / "charts" / "fusion_weights.png").exists()
    # the real pre-training loop learned: masked-patch accuracy far above chance (1/64)
    for run in ("beats_speech_heavy", "beats_balanced"):
        last = json.loads((out / "models" / run / "run" / "log.jsonl").read_text().splitlines()[-1])
        assert last["acc"] > 10 / 64
    # the realised domain shares follow the two mixtures (70:15:15 vs 40:30:30, in hours)
    sh = json.loads((out / "models" / "beats_speech_heavy" / "run" / "log.jsonl").read_text().splitlines()[-1])
    share = sh["hours"]["speech"] / sum(sh["hours"].values())
    assert abs(share - 0.70) < 0.05
