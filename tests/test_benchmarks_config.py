"""The benchmarks' restated architectures equal the model presets (one source of truth)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from harmonia.models.beats import BeatsConfig, preset


def test_pretrain_step_benchmark_builds_the_beats_base_preset():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "pretrain_step.py"
    spec = importlib.util.spec_from_file_location("pretrain_step_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert BeatsConfig(**bench.BASE) == preset("beats-base", dropout=0.1, attention_dropout=0.1)
