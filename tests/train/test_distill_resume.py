"""Two gloo processes under torchrun: distillation for 6 steps straight vs 3 + resume + 3 gives
identical losses (teacher on the fly, gradient accumulation), and the export loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train.conftest import torchrun_cpu
from tests.train.test_distill import TEACHER


def _torchrun(shards: Path, out: Path, steps: int, *extra: str) -> None:
    torchrun_cpu(["distill", "distill_tiny_debug"], {
        "data.shards": shards, "run.out_dir": out, "run.max_steps": steps, "run.ckpt_every": 3,
        "run.log_every": 1, "run.progress": "false", "data.batch_size": 2, "optim.warmup_steps": 2,
        "optim.decay_steps": 10, "optim.grad_accum": 2, "teacher.source": TEACHER, "data.crop_seconds": 1.0}, *extra)


@pytest.mark.dist
def test_two_process_distill_resume_identical_losses(tiny_shards, tmp_path):
    import torch

    import harmonia

    _torchrun(tiny_shards, tmp_path / "straight", 6)
    _torchrun(tiny_shards, tmp_path / "split", 3)
    _torchrun(tiny_shards, tmp_path / "split", 6, "--export", str(tmp_path / "export"))

    def losses(out):
        recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        assert [r["world_size"] for r in recs if "event" in r][0] == 2
        return {r["step"]: r["loss"] for r in recs if "loss" in r}

    a, b = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert [a[s] for s in range(4, 7)] == [b[s] for s in range(4, 7)]
    assert len(set(a.values())) == 6
    frames = harmonia.load_encoder(tmp_path / "export")(0.1 * torch.randn(1, 16000))
    assert frames.shape == (1, 48, 64) and torch.isfinite(frames).all()


@pytest.mark.dist
def test_two_process_fsdp_distill_resumes_and_exports(tiny_shards, tmp_path):
    """FSDP2 (`fully_shard` per student layer) on gloo: checkpoint at 3, resume to 4, export loads."""
    import torch

    import harmonia

    for steps in (3, 4):
        _torchrun(tiny_shards, tmp_path / "run", steps, "--export", str(tmp_path / "export"),
                  "--set", "run.parallel=fsdp")
    recs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in recs if "event" in r] == ["start", "resume"]
    assert sorted(r["step"] for r in recs if "loss" in r) == [1, 2, 3, 4]
    frames = harmonia.load_encoder(tmp_path / "export")(0.1 * torch.randn(1, 16000))
    assert frames.shape == (1, 48, 64) and torch.isfinite(frames).all()
