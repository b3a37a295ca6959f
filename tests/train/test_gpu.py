"""Pre-training on CUDA: a 1-rank NCCL process group (torchrun), 2 ranks where two GPUs exist (DDP and
FSDP2), exact resume, bf16 autocast, the Dasheng MAE loop. Run with `pytest -m gpu tests/train`.

On GPU the losses of a straight and a resumed run agree to float rounding rather than bit for bit:
some CUDA backward kernels accumulate with atomics (not deterministic by default), so the resume
checks run in fp32 (bf16 has its own test, where a rounding flip could change a label). The data
position (batches consumed per rank) must agree exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harmonia.train.checkpoint import list_checkpoints, load_checkpoint
from tests.train.conftest import tiny_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

REPO = Path(__file__).resolve().parents[2]


def _torchrun(nproc: int, shards: Path, out: Path, steps: int, export: Path | None = None, **extra
              ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "harmonia", "pretrain", "beats_tiny_debug"] + (["--export", str(export)] if export else [])
    sets = {"data.shards": shards, "run.out_dir": out, "run.max_steps": steps, "run.ckpt_every": 3,
            "run.log_every": 1, "run.progress": "false", "data.batch_size": 2, "optim.warmup_steps": 3,
            "optim.decay_steps": 10, "optim.grad_accum": 2, "run.precision": "fp32", **extra}
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(out) if "loss" in r}


def _straight_vs_resumed(nproc: int, shards: Path, tmp_path: Path, **extra) -> None:
    _torchrun(nproc, shards, tmp_path / "straight", 6, **extra)
    _torchrun(nproc, shards, tmp_path / "split", 3, **extra)
    _torchrun(nproc, shards, tmp_path / "split", 6, **extra)
    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "split")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert [b[s] for s in range(4, 7)] == pytest.approx([a[s] for s in range(4, 7)], rel=1e-4)
    assert len({round(a[s], 6) for s in range(1, 7)}) == 6  # the steps differ: the match above means something
    events = [r for r in _records(tmp_path / "split") if "event" in r]
    assert [(e["event"], e["step"], e["world_size"]) for e in events] == [("start", 0, nproc), ("resume", 3, nproc)]
    ca = load_checkpoint(list_checkpoints(tmp_path / "straight")[-1])
    cb = load_checkpoint(list_checkpoints(tmp_path / "split")[-1])
    assert [d["batches"] for d in ca["data"]] == [d["batches"] for d in cb["data"]] == [12] * nproc
    assert all(rng["cuda"] is not None for rng in cb["rng"])


def test_one_rank_nccl_run_resumes(tiny_shards, tmp_path):
    """torchrun with one process joins a cpu:gloo,cuda:nccl group: every logging step all-reduces."""
    _straight_vs_resumed(1, tiny_shards, tmp_path)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_rank_nccl_ddp_run_resumes(tiny_shards, tmp_path):
    _straight_vs_resumed(2, tiny_shards, tmp_path)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_rank_nccl_fsdp_run_resumes_and_exports(tiny_shards, tmp_path):
    import harmonia

    _straight_vs_resumed(2, tiny_shards, tmp_path, **{"run.parallel": "fsdp"})
    _torchrun(2, tiny_shards, tmp_path / "split", 7, export=tmp_path / "export", **{"run.parallel": "fsdp"})
    frames = harmonia.load_encoder(tmp_path / "export")(0.1 * torch.randn(1, 16000))
    assert frames.shape == (1, 48, 64) and torch.isfinite(frames).all()


def test_bf16_autocast_pretraining(tiny_shards, tmp_path):
    """precision=auto is bf16 autocast on CUDA: close to fp32 at the first step, not identical to it,
    finite, and it learns."""
    from harmonia.train.pretrain import pretrain

    common = {"run.max_steps": "12", "run.ckpt_every": "12", "optim.decay_steps": "0"}
    bf16 = pretrain(tiny_config(tiny_shards, tmp_path / "bf16", **common))
    fp32 = pretrain(tiny_config(tiny_shards, tmp_path / "fp32", **{**common, "run.precision": "fp32"}))
    a, b = _losses(tmp_path / "bf16"), _losses(tmp_path / "fp32")
    assert a[1] == pytest.approx(b[1], rel=2e-2) and a[1] != b[1]
    assert all(torch.isfinite(torch.tensor(list(a.values()))))
    assert sum(a[s] for s in (10, 11, 12)) < sum(a[s] for s in (1, 2, 3))
    assert bf16["step"] == fp32["step"] == 12


def test_dasheng_mae_on_cuda(tiny_shards, tmp_path):
    from harmonia.models.dasheng import DashengConfig
    from harmonia.train.mae import train_dasheng_mae

    enc = train_dasheng_mae(tiny_shards, "balanced", DashengConfig(embed_dim=32, depth=2, num_heads=4), 4,
                            batch_size=2, seed=1, out_dir=tmp_path / "mae")
    loss = [r["loss"] for r in _records(tmp_path / "mae") if "loss" in r]
    assert [r["step"] for r in _records(tmp_path / "mae") if "loss" in r] == [4]
    assert all(torch.isfinite(torch.tensor(loss)))
    assert next(enc.model.parameters()).device.type == "cuda"
    frames = enc(0.1 * torch.randn(1, 16000, device="cuda"))
    assert frames.shape[-1] == 32 and torch.isfinite(frames).all()
