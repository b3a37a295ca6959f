"""A tiny sharded pool (1–2 s clips in three domains) and a tiny pre-training config over it."""

from __future__ import annotations

from pathlib import Path

import pytest

from harmonia.data.manifest import Source, scan_sources
from harmonia.data.shards import write_shards
from harmonia.recipes.pretrain import beats_tiny_debug
from harmonia.train.config import PretrainConfig, apply_overrides
from tests.data.conftest import make_pool

TINY_POOL = {
    "talk": ("speech", 8, 1.2, 16000, 1),
    "songs": ("music", 4, 2.0, 16000, 1),
    "noise": ("sound", 4, 1.5, 16000, 1),
}


def build_shards(root: Path, pool: dict = TINY_POOL) -> Path:
    dirs = make_pool(root / "audio", pool)
    srcs = [Source(pool[c][0], c, d) for c, d in dirs.items()]
    entries = scan_sources(srcs, workers=1, progress=False).entries
    write_shards(entries, root / "shards", shard_seconds=4.0, progress=False)
    return root / "shards"


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    return build_shards(tmp_path_factory.mktemp("tinypool"))


def tiny_config(shards: Path, out: Path, **extra: str) -> PretrainConfig:
    sets = {"data.shards": str(shards), "run.out_dir": str(out), "run.progress": "false",
            "data.batch_size": "2", "run.log_every": "1", "run.ckpt_every": "2", "run.max_steps": "4",
            "optim.warmup_steps": "2", "optim.decay_steps": "10", **extra}
    return apply_overrides(beats_tiny_debug(), [f"{k}={v}" for k, v in sets.items()])


def make_structured_pool(root: Path, seed: int = 0) -> dict[str, tuple[str, Path]]:
    """Audio with learnable structure: AM tones (music), gated harmonic chirps (speech), low-passed
    noise bursts (sound). Returns corpus -> (domain, folder)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    sr = 16000

    def tone(sec):
        t = np.arange(int(sec * sr)) / sr
        return 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))

    def noise(sec):
        k = int(rng.integers(1, 50))
        x = np.convolve(rng.standard_normal(int(sec * sr)), np.ones(k) / k, "same")
        return 0.3 * x / np.abs(x).max()

    def chirp(sec):
        t = np.arange(int(sec * sr)) / sr
        f0 = rng.uniform(100, 250)
        x = sum(np.sin(2 * np.pi * f0 * h * t + 3 * np.sin(2 * np.pi * 4 * t)) / h for h in range(1, 6))
        return 0.2 * x * (np.sin(2 * np.pi * 3 * t) > 0)

    out = {}
    for corpus, domain, fn, n, sec in [("talk", "speech", chirp, 12, 3.0), ("songs", "music", tone, 6, 6.0),
                                       ("fx", "sound", noise, 8, 2.5)]:
        d = root / corpus
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            sf.write(d / f"{corpus}{i:03d}.wav", fn(sec).astype(np.float32), sr)
        out[corpus] = (domain, d)
    return out


REPO = Path(__file__).resolve().parents[2]


def torchrun_cpu(command: list[str], sets: dict, *extra: str, nproc: int = 2, timeout: int = 600) -> None:
    """`torchrun --standalone --nproc_per_node N -m harmonia COMMAND --set k=v ... EXTRA` with gloo on
    the CPU, one thread per process; fails the test with the end of stderr when a rank fails."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "harmonia", *command, *extra]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
