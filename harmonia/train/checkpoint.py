"""Training checkpoints: one dict per step holding everything a resume needs (model, optimiser,
scheduler, every rank's data position and RNG states, step, config), written atomically
(temporary file + rename) by rank 0, keeping the last k."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

CKPT_PATTERN = re.compile(r"ckpt-(\d{8})\.pt$")


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"ckpt-{step:08d}.pt"


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    d = Path(out_dir) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if CKPT_PATTERN.search(p.name))


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def save_checkpoint(state: dict, out_dir: str | os.PathLike, step: int, keep_last: int) -> Path:
    """Write `state` atomically as ckpt-<step>.pt and delete all but the last `keep_last`."""
    path = checkpoint_path(out_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in list_checkpoints(out_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    # Everything we store is tensors, numbers, strings, lists and dicts: weights_only is enough.
    return torch.load(path, map_location="cpu", weights_only=True)
