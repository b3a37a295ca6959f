"""The whole pipeline through the CLI: manifest → mix → shard → pretrain → export → encode, and the
tiny model's masked-patch accuracy rises well above chance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.train.conftest import make_structured_pool

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "harmonia", *args], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
def test_tiny_recipe_end_to_end(tmp_path):
    pool = make_structured_pool(tmp_path / "audio")
    srcs = sum((["--source", f"{dom}/{c}={d}"] for c, (dom, d) in pool.items()), [])
    _cli("data", "manifest", *srcs, "-o", "manifest.jsonl", "--quiet", cwd=tmp_path)
    table = _cli("data", "mix", "manifest.jsonl", "--ratio", "balanced", "--steps", "25", "--batch-size", "8",
                 cwd=tmp_path)
    assert "= speech" in table and "40.0%" in table
    _cli("data", "shard", "manifest.jsonl", "-o", "shards", "--shard-seconds", "12", "--quiet", cwd=tmp_path)
    _cli("pretrain", "beats_tiny_debug", "--set", "data.shards=shards", "--set", "run.out_dir=run",
         "--set", "run.max_steps=25", "--set", "run.log_every=1", "--set", "run.progress=false",
         "--set", "data.batch_size=6", "--export", "export", cwd=tmp_path)
    recs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    acc = [r["acc"] for r in recs if "acc" in r]
    chance = 1 / 64  # codebook_size of the tiny recipe
    late = float(np.mean(acc[-10:]))
    assert acc[0] < 4 * chance and late > 10 * chance, acc
    hours = recs[-1]["hours"]
    assert abs(hours["speech"] / sum(hours.values()) - 0.4) < 0.05
    _cli("encode", "--model", "export", "--out", "emb", str(pool["talk"][1] / "talk000.wav"), cwd=tmp_path)
    emb = np.load(tmp_path / "emb" / "talk000.npy")
    assert emb.shape == (8 * ((1 + (48000 - 400) // 160) // 16), 64) and np.isfinite(emb).all()
