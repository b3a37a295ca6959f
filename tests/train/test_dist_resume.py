"""Two gloo processes under torchrun: 10 steps straight vs 5 + resume + 5 give identical losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.conftest import REPO, torchrun_cpu


def _torchrun(shards: Path, out: Path, steps: int) -> None:
    torchrun_cpu(["pretrain", "beats_tiny_debug"], {
        "data.shards": shards, "run.out_dir": out, "run.max_steps": steps, "run.ckpt_every": 5,
        "run.log_every": 1, "run.progress": "false", "data.batch_size": 2, "optim.warmup_steps": 3,
        "optim.decay_steps": 10, "optim.grad_accum": 2, "model.encoder.dropout": 0.1}, timeout=300)


@pytest.mark.dist
def test_two_process_resume_identical_losses(tiny_shards, tmp_path):
    _torchrun(tiny_shards, tmp_path / "straight", 10)
    _torchrun(tiny_shards, tmp_path / "split", 5)
    _torchrun(tiny_shards, tmp_path / "split", 10)

    def losses(out):
        recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        assert [r["world_size"] for r in recs if "event" in r][0] == 2
        return {r["step"]: r["loss"] for r in recs if "loss" in r}

    a, b = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert sorted(a) == list(range(1, 11)) and sorted(b) == list(range(1, 11))
    assert [a[s] for s in range(6, 11)] == [b[s] for s in range(6, 11)]
    assert len({a[s] for s in range(1, 11)}) == 10


@pytest.mark.dist
def test_two_process_fsdp_trains_resumes_and_exports(tiny_shards, tmp_path):
    """FSDP2 (`fully_shard` per layer) on gloo: checkpoint at 2, resume to 3, export loads."""
    import torch

    import harmonia

    for steps in (2, 3):
        torchrun_cpu(["pretrain", "beats_tiny_debug", "--export", str(tmp_path / "export")], {
            "data.shards": tiny_shards, "run.out_dir": tmp_path / "run", "run.max_steps": steps,
            "run.ckpt_every": 2, "run.log_every": 1, "run.progress": "false", "data.batch_size": 2,
            "run.parallel": "fsdp"}, timeout=300)
    recs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in recs if "event" in r] == ["start", "resume"]
    assert sorted(r["step"] for r in recs if "loss" in r) == [1, 2, 3]
    frames = harmonia.load_encoder(tmp_path / "export")(0.1 * torch.randn(1, 16000))
    assert frames.shape == (1, 48, 64) and torch.isfinite(frames).all()


_MAE_SCRIPT = """
import sys
from harmonia.train.mae import MAEConfig, MAEModelConfig, pretrain_mae
from harmonia.train.distributed import exit_after_shutdown

cfg = MAEConfig(model=MAEModelConfig(encoder=dict(embed_dim=32, depth=2, num_heads=4), decoder_dim=32,
                                     decoder_depth=1))
cfg.data.shards, cfg.data.batch_size = sys.argv[1], 2
cfg.run.out_dir, cfg.run.max_steps, cfg.run.ckpt_every = sys.argv[2], int(sys.argv[3]), 2
cfg.run.log_every, cfg.run.progress, cfg.optim.decay_steps = 1, False, 10
pretrain_mae(cfg)
exit_after_shutdown()
"""


@pytest.mark.dist
def test_two_process_dasheng_mae_resumes_identically(tiny_shards, tmp_path):
    """The MAE task on the same Trainer under DDP: the input BatchNorm statistics are averaged over
    ranks, and 4 steps straight equal 2 + resume + 2."""
    import torch

    from harmonia.train.checkpoint import list_checkpoints, load_checkpoint

    script = tmp_path / "mae_run.py"
    script.write_text(_MAE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for out, steps in (("straight", 4), ("split", 2), ("split", 4)):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(tiny_shards), str(tmp_path / out), str(steps)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    def losses(out):
        recs = [json.loads(x) for x in (tmp_path / out / "log.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in recs if "loss" in r}

    a, b = losses("straight"), losses("split")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert [a[s] for s in (3, 4)] == [b[s] for s in (3, 4)] and a[3] != a[4]
    ck = load_checkpoint(list_checkpoints(tmp_path / "straight")[-1])
    assert ck["task"] == "dasheng-mae" and ck["task_state"] == [{"calibrated": True}] * 2
    assert torch.all(ck["model"]["encoder.mel_norm.running_var"] > 0)
