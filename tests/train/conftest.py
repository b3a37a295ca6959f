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
