"""The offline demo: synthetic audio, X-ARES-layout tasks, and the whole run end to end (slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from harmonia.demo import synth
from harmonia.demo.run import verdict
from harmonia.demo.tasks import MAKERS, demo_tasks, write_task_data
from harmonia.eval.metrics import call_effect
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


# -- the verdict, on hand-made scores ------------------------------------------------------------------


class _Task:
    def __init__(self, name: str, domain: str, weight: int = 1):
        self.name, self.domain, self.weight = name, domain, weight


TASKS = [_Task("talk", "speech"), _Task("tune", "music"), _Task("bang", "sound")]


def _run(per_seed: dict[str, list[float] | None]) -> dict:
    """A results dict as `evaluate` writes it: per task the MLP score of every probe seed."""
    tasks = {t: {"status": "failed", "error": "x"} if v is None else
             {"status": "ok", "mlp": {"mean": float(np.mean(v)), "per_seed": v}} for t, v in per_seed.items()}
    return {"tasks": tasks, "summary": {"mlp_all": float(np.mean([np.mean(v) for v in per_seed.values() if v]))}}


def test_call_effect_uses_the_seed_spread():
    a = np.array([0.60, 0.62, 0.58])
    assert call_effect(a, a - 0.10)[0] == "HOLDS"  # 0.10 apart on every seed: spread 0
    assert call_effect(a - 0.10, a)[0] == "DOES NOT HOLD"
    # mean difference +0.01, per-seed differences +0.05, -0.04, +0.02 (std 0.046): noise
    status, numbers = call_effect(a, np.array([0.55, 0.66, 0.56]))
    assert status == "WITHIN SEED NOISE" and "+0.010 ± 0.046 over 3 probe seeds" in numbers
    status, numbers = call_effect(np.array([0.5]), np.array([0.4]))
    assert status == "UNDECIDED" and "spread not measured" in numbers
    # pairing: both runs drop together on seed 1; the unpaired spread would call this noise
    status, _ = call_effect([0.70, 0.50, 0.72], [0.60, 0.41, 0.61])
    assert status == "HOLDS"
    with pytest.raises(ValueError):
        call_effect([], [0.5])


def _runs(**over):
    runs = {"beats-speech-heavy": _run({"talk": [0.8, 0.8], "tune": [0.5, 0.5], "bang": [0.5, 0.5]}),
            "beats-balanced": _run({"talk": [0.6, 0.6], "tune": [0.7, 0.7], "bang": [0.7, 0.7]}),
            "dasheng-mae": _run({"talk": [0.7, 0.7], "tune": [0.7, 0.7], "bang": [0.7, 0.7]}),
            "random-init": _run({"talk": [0.3, 0.3], "tune": [0.3, 0.3], "bang": [0.3, 0.3]}),
            "ensemble": _run({"talk": [0.9, 0.9], "tune": [0.8, 0.8], "bang": [0.8, 0.8]}),
            "width-matched": _run({"talk": [0.72, 0.74], "tune": [0.7, 0.72], "bang": [0.7, 0.72]})}
    runs.update({k: _run(v) for k, v in over.items()})
    return runs


def test_verdict_on_hand_made_scores():
    lines = verdict(_runs(), TASKS)
    assert [line.split(":")[0] for line in lines] == ["HOLDS"] * 5
    assert "9/9 better, 0 worse, 0 within the spread" in lines[0]
    assert "0.800 vs 0.600" in lines[1] and "0.700 vs 0.500" in lines[2]
    assert "(ensemble vs dasheng-mae: 0.833 vs 0.700" in lines[3]  # best member by weighted average


def test_a_failed_random_init_score_is_no_win():
    runs = _runs(**{"random-init": {"talk": None, "tune": None, "bang": [0.9, 0.9]}})
    line = verdict(runs, TASKS)[0]
    assert line.startswith("DOES NOT HOLD:") and "0/3 better, 3 worse, 0 within the spread" in line
    assert "6 pair(s) without both scores not counted" in line


def test_member_wins_within_the_spread_are_not_called():
    # speech-heavy and balanced beat random init on every task, but by less than their seed spread
    noisy = {"talk": [0.2, 0.6], "tune": [0.2, 0.6], "bang": [0.2, 0.6]}
    runs = _runs(**{"beats-speech-heavy": noisy, "beats-balanced": noisy})
    line = verdict(runs, TASKS)[0]
    assert line.startswith("WITHIN SEED NOISE:") and "3/9 better, 0 worse, 6 within the spread" in line


def test_width_matched_control_and_seed_noise_are_reported():
    # the ensemble is no better than the same width made of the best member and random encoders
    runs = _runs(**{"width-matched": {"talk": [0.95, 0.85], "tune": [0.85, 0.75], "bang": [0.85, 0.75]}})
    assert verdict(runs, TASKS)[4].startswith("WITHIN SEED NOISE: the ensemble beats a width-matched control")
    runs.pop("width-matched")
    assert verdict(runs, TASKS)[4].startswith("NOT MEASURED:")


def test_one_probe_seed_is_undecided_not_a_loss():
    one = {name: {t: v[:1] for t, v in per_task.items()} for name, per_task in {
        "beats-speech-heavy": {"talk": [0.8], "tune": [0.5], "bang": [0.5]},
        "beats-balanced": {"talk": [0.6], "tune": [0.7], "bang": [0.7]},
        "dasheng-mae": {"talk": [0.7], "tune": [0.7], "bang": [0.7]},
        "random-init": {"talk": [0.3], "tune": [0.3], "bang": [0.3]},
        "ensemble": {"talk": [0.9], "tune": [0.8], "bang": [0.8]},
        "width-matched": {"talk": [0.72], "tune": [0.7], "bang": [0.7]}}.items()}
    lines = verdict(_runs(**one), TASKS)
    assert [line.split(":")[0] for line in lines] == ["UNDECIDED"] * 5
    assert "0/9 better, 0 worse, 0 within the spread, 9 undecided (one probe seed)" in lines[0]


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "harmonia", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report" / "report.md").read_text()
    models = ["beats-speech-heavy", "beats-balanced", "dasheng-mae", "ensemble", "random-init", "student"]
    for name in models:
        assert f"{name} (clean)" in report
        res = json.loads((out / "results" / name / "results.json").read_text())
        assert {e["status"] for e in res["tasks"].values()} == {"ok"} and len(res["tasks"]) == 7
        assert all(0.0 <= e["mlp"]["mean"] <= 1.0 for e in res["tasks"].values())
    assert (out / "report" / "report.png").stat().st_size > 10_000
    assert "width-matched (clean)" in report
    effects = report.split("Do the paper's effects appear?")[1].split("## Beyond the paper")[0].strip().splitlines()
    assert len(effects) == 7  # five of the paper's effects, then layer-weighted and gated fusion vs concat
    assert all(line.startswith(("- HOLDS:", "- DOES NOT HOLD:", "- WITHIN SEED NOISE:")) for line in effects)
    # the distilled student: its share of the ensemble's score and its measured encode cost are stated
    student = [x for x in report.split("Beyond the paper")[1].splitlines()[1:] if x.strip()]
    assert len(student) == 2 and all(line.startswith(("- HOLDS:", "- DOES NOT HOLD:")) for line in student)
    assert "of the ensemble's weighted MLP score" in student[0] and "of the ensemble's time" in student[1]
    distill_log = [json.loads(x) for x in (out / "models" / "student" / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in distill_log if "loss" in r]
    assert losses[-1] < 0.8 * losses[0]
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
