from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harmonia.train.checkpoint import list_checkpoints, load_checkpoint
from harmonia.train.pretrain import pretrain
from tests.train.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


def _losses(out: Path) -> dict[int, float]:
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def test_resume_continues_with_identical_losses_and_exports(tiny_shards, tmp_path):
    straight = tiny_config(tiny_shards, tmp_path / "a", **{"run.max_steps": "4"})
    pretrain(straight, export=tmp_path / "export")
    first = tiny_config(tiny_shards, tmp_path / "b", **{"run.max_steps": "2"})
    pretrain(first)
    pretrain(tiny_config(tiny_shards, tmp_path / "b", **{"run.max_steps": "4"}))  # resumes at step 2
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(a) == [1, 2, 3, 4] and sorted(b) == [1, 2, 3, 4]
    assert [a[s] for s in (3, 4)] == [b[s] for s in (3, 4)]
    assert a[1] != a[2]  # steps differ: the equality above is not trivially true
    # checkpoints: every 2 steps, keep_last=2, one dict with everything a resume needs
    ckpts = list_checkpoints(tmp_path / "a")
    assert [p.name for p in ckpts] == ["ckpt-00000002.pt", "ckpt-00000004.pt"]
    ck = load_checkpoint(ckpts[-1])
    assert {"model", "optimizer", "scheduler", "data", "rng", "step", "config"} <= set(ck) and ck["step"] == 4
    assert ck["data"][0]["batches"] == 4
    assert not any(p.name.endswith(".tmp") or ".tmp" in p.name for p in ckpts[0].parent.iterdir())
    # log records carry lr, masked-patch accuracy, throughput and realised domain hours
    rec = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()][-1]
    assert {"lr", "acc", "clips_per_s", "hours", "grad_norm"} <= set(rec) and 0 <= rec["acc"] <= 1
    assert sum(rec["hours"].values()) > 0
    # the export is an ordinary harmonia encoder holding the trained student
    import harmonia

    enc = harmonia.load_encoder(tmp_path / "export")
    frames = enc(0.1 * torch.randn(1, 16000))
    assert frames.shape == (1, 48, 64)
    trained = ck["model"]["backbone.patch_embedding.weight"]
    assert torch.equal(enc.model.patch_embedding.weight, trained)


def test_cli_reports_bad_recipe_and_overrides(tiny_shards, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "harmonia", "pretrain", "beats_tiny_debgu"], capture_output=True,
                       text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "did you mean beats_tiny_debug" in r.stderr
    r = subprocess.run([sys.executable, "-m", "harmonia", "pretrain", "beats_tiny_debug", "--set", "optim.lr=3e-4",
                        "--print-config"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["optim"]["lr"] == 3e-4
    r = subprocess.run([sys.executable, "-m", "harmonia", "pretrain", "beats_tiny_debug", "--set",
                        f"data.shards={tiny_shards}", "--set", "data.ratio=10:10:10"], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 2 and "sum to 30" in r.stderr


@pytest.mark.slow
def test_iterations_random_then_vqkd_tokenizer(tiny_shards, tmp_path):
    """Iteration 1 (random projection) -> VQ-KD tokenizer distilled from it -> iteration 2 on its labels."""
    from harmonia.hub import load_tokenizer
    from harmonia.train.pretrain import iterate

    cfg = tiny_config(tiny_shards, tmp_path, **{"run.max_steps": "2", "model.quant_dim": "8"})
    final = iterate(cfg, 2, tmp_path / "iters")
    tok = load_tokenizer(tmp_path / "iters" / "iter1" / "tokenizer" / "export")
    labels = tok.labels(0.1 * torch.randn(1, 16000))
    assert labels.shape == (1, 48) and int(labels.max()) < cfg.model.codebook_size
    saved = json.loads((tmp_path / "iters" / "iter2" / "encoder" / "config.json").read_text())
    assert saved["tokenizer"]["kind"] == "checkpoint"
    assert (final / "model.safetensors").exists()
    log = [json.loads(x) for x in (tmp_path / "iters" / "iter1" / "tokenizer" / "log.jsonl").read_text().splitlines()]
    assert "cosine" in log[-1]
