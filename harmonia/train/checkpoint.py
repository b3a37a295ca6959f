"""Training checkpoints: one file per step, `run_dir/checkpoints/ckpt-<step>.pt`, holding everything a
resume needs (see `harmonia.train.trainer`). Written atomically by rank 0 (unique temp name, renamed
on success), keeping the last k; read with `weights_only=True` (tensors, numbers, strings, lists and
dicts only). A damaged latest file (truncated by a full disk, emptied by a crash) is set aside and
the newest intact one is used instead."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch

from harmonia.io import CheckpointError, atomic_path, remove_stale_temps, torch_load

CKPT_PATTERN = re.compile(r"^ckpt-(\d{8})\.pt$")


def checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "checkpoints"


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    return checkpoint_dir(out_dir) / f"ckpt-{step:08d}.pt"


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoint files, oldest first."""
    d = checkpoint_dir(out_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if CKPT_PATTERN.match(p.name))


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def remove_stale_checkpoint_temps(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the temp files of checkpoint writers that were killed (their process is gone)."""
    return remove_stale_temps(checkpoint_dir(out_dir))


def save_checkpoint(state: dict, out_dir: str | os.PathLike, step: int, keep_last: int) -> Path:
    """Write `state` atomically as ckpt-<step>.pt and delete all but the last `keep_last`."""
    path = checkpoint_path(out_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(out_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
    """Read one checkpoint; CheckpointError naming the file when it is unreadable or lacks a key."""
    ckpt = torch_load(path)
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a complete harmonia training checkpoint (missing {missing})")
    return ckpt


def load_latest_intact(out_dir: str | os.PathLike, required: tuple[str, ...] = (),
                       set_aside: bool = True) -> tuple[Path, dict] | None:
    """The newest checkpoint that reads back whole, or None when the run has none.

    A damaged newer file is renamed to `<name>.corrupt` (when `set_aside`; only one process should)
    so that later resumes and `keep_last` pruning ignore it, with a warning naming it. Raises
    CheckpointError listing every file when checkpoints exist but none is intact."""
    bad = []
    for path in reversed(list_checkpoints(out_dir)):
        try:
            ckpt = load_checkpoint(path, required)
        except CheckpointError as e:
            bad.append(str(e))
            if set_aside:
                path.replace(path.with_name(path.name + ".corrupt"))
            warnings.warn(f"skipping damaged checkpoint {path}"
                          + (f" (renamed to {path.name}.corrupt)" if set_aside else "") + f": {e}", stacklevel=2)
            continue
        return path, ckpt
    if bad:
        raise CheckpointError(f"{checkpoint_dir(out_dir)}: no intact checkpoint to resume from:\n  "
                              + "\n  ".join(bad) + "\nDelete the folder to start over, or restore a copy.")
    return None
