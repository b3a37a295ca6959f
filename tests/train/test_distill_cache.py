"""The teacher cache: written once, atomic and resumable, refused for another teacher, and training
from it matches training with the teacher on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harmonia.data.shards import read_index
from harmonia.io import CheckpointError, read_safetensors
from harmonia.train import teacher_cache
from harmonia.train.distill import distill
from tests.train.test_distill import FIX, log_losses, tiny_distill_config


def all_shards(shards: Path) -> list[str]:
    return [s["path"] for st in read_index(shards)["streams"].values() for s in st["shards"]]


def cache_files(cache: Path) -> dict[str, float]:
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.rglob("*.safetensors")}


def test_cache_is_resumable_after_a_crash_and_atomic(tiny_shards, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = tiny_distill_config(tiny_shards, tmp_path / "run", **{"teacher.cache": cache, "data.crop_seconds": 0})
    n = len(all_shards(tiny_shards))
    assert n >= 3
    real_write = teacher_cache.write_safetensors
    calls = []

    def crash_on_third(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")  # like Ctrl-C in the middle of the third shard
        real_write(tensors, path, metadata)

    monkeypatch.setattr(teacher_cache, "write_safetensors", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, cache_only=True)
    done = cache_files(cache)
    assert len(done) == 2  # the third shard left nothing behind: no partial file, no temp file
    assert [p for p in cache.rglob("*") if p.is_file() and ".harmonia-tmp-" in p.name] == []
    monkeypatch.setattr(teacher_cache, "write_safetensors", real_write)

    result = distill(cfg, cache_only=True)
    assert result["shards_written"] == n - 2
    after = cache_files(cache)
    assert len(after) == n and all(after[k] == v for k, v in done.items())  # finished shards not redone

    # the resumed cache equals one written in a single pass
    fresh = tmp_path / "fresh"
    assert distill(tiny_distill_config(tiny_shards, tmp_path / "run2", **{"teacher.cache": fresh,
                                                                            "data.crop_seconds": 0}),
                   cache_only=True)["shards_written"] == n
    for rel in after:
        a, b = read_safetensors(cache / rel), read_safetensors(fresh / rel)
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
        assert all(v.dtype == torch.float16 for v in a.values())


def test_cache_of_another_teacher_is_refused(tiny_shards, tmp_path):
    cache = tmp_path / "cache"
    distill(tiny_distill_config(tiny_shards, tmp_path / "a", **{"teacher.cache": cache, "data.crop_seconds": 0}),
            cache_only=True)
    other = f"{FIX / 'beats' / 'openbeats_small_ssl.pt'}+{FIX / 'dasheng' / 'model_a.pt'}"
    cfg = tiny_distill_config(tiny_shards, tmp_path / "b", **{"teacher.cache": cache, "data.crop_seconds": 0,
                                                              "teacher.source": other})
    with pytest.raises(CheckpointError, match="different teacher"):
        distill(cfg)
    cfg = tiny_distill_config(tiny_shards, tmp_path / "c", **{"teacher.cache": cache, "data.crop_seconds": 0,
                                                              "distill.layer_targets": '["2:0:1"]'})
    with pytest.raises(CheckpointError, match="other teacher layers"):
        distill(cfg)


def test_training_from_the_cache_matches_the_teacher_on_the_fly(tiny_shards, tmp_path):
    common = {"data.crop_seconds": 0, "run.max_steps": 3}
    distill(tiny_distill_config(tiny_shards, tmp_path / "fly", **common))
    distill(tiny_distill_config(tiny_shards, tmp_path / "cached", **common, **{"teacher.cache": tmp_path / "c"}))
    a, b = log_losses(tmp_path / "fly"), log_losses(tmp_path / "cached")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for s in a:  # fp16 targets and per-segment (vs batched) teacher passes: equal to rounding
        assert b[s] == pytest.approx(a[s], rel=2e-3)


def test_cache_needs_whole_segments(tiny_shards, tmp_path):
    from harmonia.train.config import ConfigError

    cfg = tiny_distill_config(tiny_shards, tmp_path / "run", **{"teacher.cache": tmp_path / "c",
                                                                 "data.crop_seconds": 1.0})
    with pytest.raises(ConfigError, match="data.crop_seconds"):
        cfg.validate()
