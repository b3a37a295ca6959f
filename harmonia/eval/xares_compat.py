"""Running X-ARES 0.1.3 task modules (`tasks/*_task.py`) without xares installed.

An X-ARES task module imports `TaskConfig` from `xares.task` (some also `logger` from `loguru`) and
defines one `<name>_config(encoder) -> TaskConfig` function. Importing the real `xares.task` pulls in
torchaudio, webdataset and ignite, and its constructor changes global torch state (thread count,
seeds); so harmonia never imports it. `exec_task_module` runs the file with its own `__import__`
that answers `xares`, `xares.task` and `loguru` with the small stand-ins below (every other import
is the normal one), so a user's task files run unchanged. `TaskConfig` here accepts exactly the
constructor arguments of xares 0.1.3's `TaskConfig`, with the same defaults, and derives the shard
names per split the same way; `harmonia.eval.tasks.task_from_xares_config` turns it into a `Task`.

This module imports nothing of harmonia.
"""

from __future__ import annotations

import builtins
import logging
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TaskConfig:
    """Stand-in for `xares.task.TaskConfig` (0.1.3): same fields and defaults, no side effects."""

    name: str
    formal_name: str = ""
    xares_settings: Any = None
    env_root: Any = None
    disabled: bool = False
    private: bool = False
    torch_num_threads: int = 2
    seed: int = 42
    label_processor: Callable | None = None
    merge_processor: Callable | None = None
    task_type: str = "clip"
    eval_weight: int = 0
    train_split: str | None = "train"
    valid_split: str | None = "valid"
    test_split: str | None = "test"
    k_fold_splits: list | None = None
    use_mini_dataset: bool = False
    force_download: bool = False
    audio_tar_name_of_split: dict = field(default_factory=dict)
    zenodo_id: str | None = None
    force_encode: bool = False
    encoder: Any = None
    pretrained_dependencies: list | None = None
    encoded_tar_name_of_split: dict = field(default_factory=dict)
    save_encoded_per_batches: int = 2000
    batch_size_encode: int = 16
    num_encoder_workers: int = 4
    crop_length: float | None = None
    force_retrain_mlp: bool = False
    criterion: Any = "CrossEntropyLoss"
    batch_size_train: int = 32
    batch_size_valid: int | None = None
    learning_rate: float = 1e-3
    epochs: int = 10
    valid_every: int = 1
    num_training_workers: int = 0
    num_validation_workers: int = 0
    sort_by_length: bool = False
    model: Any = None
    output_dim: int | None = None
    metric: str = "accuracy"
    metric_args: dict = field(default_factory=dict)
    do_knn: bool = True

    # plain class attributes in xares 0.1.3 (not constructor arguments)
    num_shards_rawaudio = 4
    trim_length = None
    ckpt_dir_name = "checkpoints"
    embedding_dir_name = "embeddings"
    ckpt_name = "best.ckpt"

    def __post_init__(self) -> None:
        self.formal_name = self.formal_name or self.name
        if self.batch_size_valid is None:
            self.batch_size_valid = self.batch_size_train
        self.update_tar_name_of_split()

    def update_tar_name_of_split(self) -> None:
        """The default shard globs: `wds-audio-fold-<k>-*.tar` per fold, else `<split>*.tar`; task
        modules may overwrite `audio_tar_name_of_split` afterwards (most k-fold ones do)."""
        if self.k_fold_splits is not None:
            self.audio_tar_name_of_split = {k: f"wds-audio-fold-{k}-*.tar" for k in self.k_fold_splits}
            self.encoded_tar_name_of_split = {k: f"wds-encoded-fold-{k}-*.tar" for k in self.k_fold_splits}
        else:
            splits = (self.train_split, self.valid_split, self.test_split)
            self.audio_tar_name_of_split = {s: f"{s}*.tar" for s in splits}
            self.encoded_tar_name_of_split = {s: f"wds-encoded-{s}*.tar" for s in splits}


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


_TASK = _module("xares.task", TaskConfig=TaskConfig)
_STANDINS = {
    "xares.task": _TASK,
    "xares": _module("xares", task=_TASK),
    "loguru": _module("loguru", logger=logging.getLogger("xares_task")),
}


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name in _STANDINS:
        # `import xares.task` binds the package; `from xares.task import TaskConfig` the submodule
        return _STANDINS[name] if fromlist or "." not in name else _STANDINS[name.split(".")[0]]
    try:
        return builtins.__import__(name, globals, locals, fromlist, level)
    except ImportError as e:
        if name.split(".")[0] == "xares":
            raise ImportError(f"{name}: harmonia runs X-ARES task modules with stand-ins for xares.task "
                              f"(TaskConfig) and loguru only; this import needs xares itself ({e})") from e
        raise


def exec_task_module(path: Path) -> types.ModuleType:
    """Execute a task file as a fresh module whose `xares`, `xares.task` and `loguru` imports get the
    stand-ins. Exceptions of the file's own code propagate unchanged (the caller names the file)."""
    module = types.ModuleType(f"harmonia_task_{path.stem}")
    module.__file__ = str(path)
    module.__builtins__ = {**vars(builtins), "__import__": _import}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), vars(module))
    return module


def config_functions(module: types.ModuleType) -> dict[str, Callable]:
    """The module's own `*_config` functions (the X-ARES task entry point is one of them)."""
    return {n: f for n, f in vars(module).items()
            if n.endswith("_config") and isinstance(f, types.FunctionType) and f.__module__ == module.__name__}
