"""The training loop every harmonia pre-training task shares: setup → resume → steps → logs →
checkpoints → export, with DDP / FSDP2, gradient accumulation, bf16 autocast on GPU and exact resume.

    record = Trainer(task, cfg, override_resume_config=False).fit(export="out/model")

A *task* says what is trained and how one micro-batch's loss is computed; the Trainer does the rest.
Subclass `Task` (its methods document the contract; `harmonia.train.pretrain.BeatsTask` and
`harmonia.train.mae.DashengMAETask` are the two tasks there are). A third loop, e.g. distillation:

    class DistillTask(Task):
        name = "distill"                            # checkpoints of another task are refused
        frozen = ("model", "teacher", "data.batch_size", "data.seed", "data.num_workers", "run.seed")
        fsdp_units = (TransformerLayer,)            # block classes FSDP2 shards one by one
        def build_model(self, device):              # the student (+ heads): trained, checkpointed
            self.teacher = load_teacher(...).to(device).eval()   # frozen helpers: the task keeps them
            return Student(...)
        def build_optimizer(self, model): ...       # build_scheduler / build_loader: Task's defaults
        def make_generators(self, rank): ...        # named per-rank generators, checkpointed
        def forward(self, model, batch, device, autocast):
            with torch.no_grad(), autocast:
                target = self.teacher(batch["wav"].to(device))
            with autocast:
                loss = ...model(...)...
            return loss, {"num": ..., "den": ...}   # summable stats; metrics() turns them into log fields
        def export(self, model, out): ...
        def state_dict(self): return {...}          # anything else a resume needs (small, per rank)

The config is any object with `name`, `data` (`DataConfig`), `optim` (`OptimConfig`: grad_accum,
clip_norm, lr...), `run` (`RunConfig`) and `to_dict()`: `TrainConfig` subclasses. The checkpoint
holds each Stateful part's `state_dict()` (torchtitan-style): the model and optimiser (full,
unsharded), the scheduler, every rank's data position, RNG streams and task state, plus the format
version, the task name, the step, the world size and the config, which a resume checks.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from harmonia.data.loader import build_loader
from harmonia.data.mixture import RATIO_ORDER
from harmonia.encoder import tune_allocator
from harmonia.io import CheckpointError, write_json_atomic
from harmonia.train.checkpoint import load_latest_intact, remove_stale_checkpoint_temps, save_checkpoint
from harmonia.train.config import ConfigError, TrainConfig
from harmonia.train.distributed import (
    all_reduce_sum,
    barrier,
    gather_objects,
    init_distributed,
    unwrap,
    wrap_model,
)
from harmonia.train.optim import build_scheduler

CHECKPOINT_VERSION = 2  # 2: adds "task" (and optional "task_state"); 1 (BEATs only) is still read
READABLE_VERSIONS = (1, 2)
REQUIRED_KEYS = ("version", "step", "config", "world_size", "model", "optimizer", "scheduler", "data", "rng")

# Config keys that may change between a run and its resume without --override-resume-config: they
# change how long the run goes and what it writes, not what it computes. (With optim.decay_steps=0
# the decay follows run.max_steps, so extending such a run stretches the rest of its schedule.)
FREE_KEYS = ("name", "run.out_dir", "run.max_steps", "run.log_every", "run.ckpt_every", "run.keep_last",
             "run.progress")


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Task:
    """What a training loop plugs into the Trainer. Set `cfg`, `name`, `frozen`, `fsdp_units`;
    implement build_model, build_optimizer, make_generators, forward and export."""

    cfg: Any
    name: str  # recorded in every checkpoint; resuming another task's checkpoint is refused
    frozen: tuple[str, ...] = ()  # config keys (dotted prefixes) that cannot change in a resumed run
    fsdp_units: tuple[type[nn.Module], ...] = ()  # module types FSDP2 shards one by one

    def build_model(self, device: torch.device) -> nn.Module:
        """The module to train, initialised (on the CPU is fine: the Trainer moves it to `device`,
        wraps it for DDP/FSDP, checkpoints and exports it). Called once more on rank 0 to export an
        FSDP model: frozen helpers (targets, a teacher) should be built once, moved to `device`."""
        raise NotImplementedError

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        raise NotImplementedError

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """Warmup then linear decay (cfg.optim), a LambdaLR (a resume with a changed lr relies on it)."""
        return build_scheduler(optimizer, self.cfg.optim, self.cfg.run.max_steps)

    def build_loader(self, rank: int, world_size: int, state: dict | None):
        """This rank's `MixtureLoader` over cfg.data, resumed exactly from `state` when given."""
        d = self.cfg.data
        return build_loader(d.shards, d.ratio, d.batch_size, d.seed, rank, world_size, d.num_workers,
                            d.corpus_weights, state=state, crop_seconds=d.crop_seconds)

    def make_generators(self, rank: int) -> dict[str, torch.Generator]:
        """The named generators the task draws from on this rank, seeded; checkpointed per rank."""
        return {}

    def forward(self, model: nn.Module, batch: dict, device: torch.device, autocast) -> tuple[Tensor, dict]:
        """One micro-batch (wav (B, N) and lengths (B,) on the CPU) -> (loss to back-propagate, stats):
        stats are summable numbers (counts, sums), added over micro-batches and ranks for the log.
        Run the model under `autocast` (bf16 on GPU); keep feature extraction outside it."""
        raise NotImplementedError

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Log fields from the summed stats, e.g. {"acc": sums["num"] / sums["den"]}."""
        return {}

    def export(self, model: nn.Module, out: Path) -> Path:
        """Write the trained model (rank 0, the unwrapped module)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """The task's own extra state a resume needs (small: it is saved from every rank)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# -------------------------------------------------------------------------------------------------
# Stateful parts


class ModelState:
    """The trained module: full (unsharded) state dict; a collective under FSDP (call on every rank)."""

    def __init__(self, model: nn.Module, fsdp: bool) -> None:
        self.model, self.fsdp = model, fsdp

    def state_dict(self) -> dict:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return unwrap(self.model).state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))
        else:
            unwrap(self.model).load_state_dict(state)


class OptimizerState:
    """The optimiser, unsharded under FSDP (a collective there)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> None:
        self.model, self.optimizer, self.fsdp = model, optimizer, fsdp

    def state_dict(self) -> dict:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.model, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, state, options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state)


class DataState:
    """This rank's loader. The loader takes its position at construction, so loading a state builds
    it anew from that state."""

    def __init__(self, build: Callable[[dict | None], Any]) -> None:
        self.build = build
        self.loader = build(None)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader = self.build(state)


class RNGState:
    """This rank's random streams: the task's generators, the global torch RNG (dropout) and CUDA's."""

    def __init__(self, generators: dict[str, torch.Generator], device: torch.device) -> None:
        self.generators, self.cuda = generators, device.type == "cuda"

    def state_dict(self) -> dict:
        return {**{name: g.get_state() for name, g in self.generators.items()}, "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if self.cuda else None}

    def load_state_dict(self, state: dict) -> None:
        for name, g in self.generators.items():
            g.set_state(state[name])
        torch.set_rng_state(state["torch"])
        if self.cuda and state.get("cuda") is not None:
            torch.cuda.set_rng_state(state["cuda"])


# -------------------------------------------------------------------------------------------------
# config comparison on resume


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.loads(json.dumps(d))}  # tuples and lists compare equal


def config_changes(saved: dict, requested: dict) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved value, requested value) for every field that differs (absent = None)."""
    a, b = _flatten(saved), _flatten(requested)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {json.dumps(old)} -> {json.dumps(new)}" for k, (old, new) in changes.items())


def check_resume_config(path: Path, saved: dict, requested: dict, frozen: tuple[str, ...],
                        override: bool) -> dict[str, tuple[Any, Any]]:
    """The changes a resume applies (besides FREE_KEYS); ConfigError when it must not go on."""
    changes = {k: v for k, v in config_changes(saved, requested).items() if not _matches(k, FREE_KEYS)}
    fixed = {k: v for k, v in changes.items() if _matches(k, frozen)}
    if fixed:
        raise ConfigError(f"{path} was made with a different setting that cannot change mid-run: {_describe(fixed)}. "
                          "Resume with the checkpoint's values or start a new run.out_dir.")
    if changes and not override:
        raise ConfigError(f"{path} was made with different settings: {_describe(changes)}. Resume with the "
                          "checkpoint's values, start a new run.out_dir, or pass --override-resume-config to "
                          "apply the changes from this step on.")
    return changes


def _reapply_hyperparameters(optimizer: torch.optim.Optimizer, scheduler, fresh: list[dict]) -> None:
    """After loading an old optimiser/scheduler state, put this run's hyperparameters back (lr, betas,
    eps, weight decay) and recompute the current lr from the new base lr and the schedule."""
    if not hasattr(scheduler, "lr_lambdas"):
        raise ConfigError(f"cannot change optimiser settings of a {type(scheduler).__name__} mid-run")
    for group, new in zip(optimizer.param_groups, fresh):
        group.update({k: v for k, v in new.items() if k != "lr"})
    scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    lrs = [base * lam(scheduler.last_epoch) for base, lam in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs


# -------------------------------------------------------------------------------------------------
# the Trainer


class Trainer:
    """Builds the task's parts (model wrapped for DDP/FSDP2, optimiser, scheduler, loader, RNG
    streams); `fit()` resumes from the newest intact checkpoint of run.out_dir and trains to
    run.max_steps. `override_resume_config`: resume although settings changed (see check_resume_config)."""

    def __init__(self, task: Task, cfg: TrainConfig, override_resume_config: bool = False) -> None:
        # -- setup --------------------------------------------------------------------------------
        tune_allocator()  # large activations re-fault their pages every step otherwise (~15 % on CPU)
        self.task, self.cfg, self.run = task, cfg, cfg.run
        self.override = override_resume_config
        self.info = info = init_distributed()
        self.device = info.device
        use_bf16 = self.run.precision == "bf16" or (self.run.precision == "auto" and info.device.type == "cuda")
        self.autocast = (torch.autocast(info.device.type, dtype=torch.bfloat16) if use_bf16
                         else contextlib.nullcontext())
        self.out = Path(self.run.out_dir)
        torch.manual_seed(self.run.seed)  # identical initial weights on every rank

        # -- the Stateful parts ------------------------------------------------------------------
        fsdp = self.run.parallel == "fsdp" and dist.is_initialized() and info.world_size > 1
        self.data = DataState(lambda state: task.build_loader(info.rank, info.world_size, state))
        model = task.build_model(info.device).to(info.device)
        self.model = wrap_model(model, info, self.run.parallel, task.fsdp_units)
        self.optimizer = task.build_optimizer(self.model)
        self.scheduler = task.build_scheduler(self.optimizer)
        self._fresh_hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        generators = task.make_generators(info.rank)
        # Generators are seeded by the task; the global stream (dropout) is reseeded per rank here.
        # 104729 (the 10000th prime) only separates this stream from the init (seed) and mask streams.
        torch.manual_seed(self.run.seed * 104729 + info.rank)
        self.parts: dict[str, Stateful] = {"model": ModelState(self.model, fsdp),
                                           "optimizer": OptimizerState(self.model, self.optimizer, fsdp),
                                           "scheduler": self.scheduler}
        self.rank_parts: dict[str, Stateful] = {"data": self.data, "rng": RNGState(generators, info.device),
                                                "task_state": task}
        self.step = 0
        self.changes: dict[str, tuple[Any, Any]] = {}

    # ---------------------------------------------------------------------------------------------
    def resume(self) -> int:
        """Load the newest intact checkpoint of run.out_dir, if any; returns the step to continue from."""
        info = self.info
        if info.is_main:
            remove_stale_checkpoint_temps(self.out)
            found = load_latest_intact(self.out, REQUIRED_KEYS, set_aside=True)
        barrier()  # rank 0 has set damaged files aside before the others look
        if not info.is_main:
            found = load_latest_intact(self.out, REQUIRED_KEYS, set_aside=False)
        if found is None:
            return 0
        path, ckpt = found
        if ckpt["version"] not in READABLE_VERSIONS:
            raise CheckpointError(f"{path}: checkpoint format version {ckpt['version']}; this harmonia reads "
                                  f"{list(READABLE_VERSIONS)}: resume with the harmonia version that wrote it")
        task = ckpt.get("task", "beats")
        if task != self.task.name:
            raise ConfigError(f"{path}: a {task!r} checkpoint; this run trains {self.task.name!r}: "
                              "use another run.out_dir")
        if ckpt["world_size"] != info.world_size:
            raise ConfigError(f"{path}: written by {ckpt['world_size']} processes, resumed with "
                              f"{info.world_size}; resume with the same number (the data position is per rank)")
        self.changes = check_resume_config(path, ckpt["config"], self.cfg.to_dict(), self.task.frozen, self.override)
        for name, part in self.parts.items():
            part.load_state_dict(ckpt[name])
        for name, part in self.rank_parts.items():
            if name in ckpt:
                part.load_state_dict(ckpt[name][info.rank])
        if self.changes:
            _reapply_hyperparameters(self.optimizer, self.scheduler, self._fresh_hyper)
            if info.is_main:
                warnings.warn(f"resuming {path} with changed settings (--override-resume-config): "
                              f"{_describe(self.changes)}", stacklevel=2)
        self.step = int(ckpt["step"])
        return self.step

    def save(self) -> None:
        """Checkpoint every part (collectives: call on every rank); rank 0 writes the file."""
        state = {name: part.state_dict() for name, part in self.parts.items()}
        state.update({name: gather_objects(part.state_dict()) for name, part in self.rank_parts.items()})
        if self.info.is_main:
            save_checkpoint({"version": CHECKPOINT_VERSION, "task": self.task.name, "step": self.step,
                             "config": self.cfg.to_dict(), "world_size": self.info.world_size, **state},
                            self.out, self.step, self.run.keep_last)
        barrier()

    def _open_log(self, resumed: bool):
        """config.json = what runs now; config_history.jsonl = every start/resume and what it changed."""
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out / "config.json", self.cfg.to_dict(), indent=1)
        with open(self.out / "config_history.jsonl", "a") as f:
            f.write(json.dumps({"event": "resume" if resumed else "start", "step": self.step,
                                "changes": {k: list(v) for k, v in self.changes.items()}}) + "\n")
        log = open(self.out / "log.jsonl", "a")  # noqa: SIM115 - closed at the end of fit()
        log.write(json.dumps({"event": "resume" if resumed else "start", "step": self.step,
                              "world_size": self.info.world_size}) + "\n")
        return log

    # ---------------------------------------------------------------------------------------------
    def fit(self, export: str | Path | None = None) -> dict:
        """Train (or resume) to run.max_steps; returns the last record. Collective under torchrun."""
        run, info, task, model = self.run, self.info, self.task, self.model
        resumed = self.resume() > 0
        log = self._open_log(resumed) if info.is_main else None
        bar = None
        if info.is_main and run.progress:
            from tqdm import tqdm

            bar = tqdm(total=run.max_steps, initial=self.step, desc=self.cfg.name, unit="step", dynamic_ncols=True)

        accum, loader = self.cfg.optim.grad_accum, self.data.loader
        it = iter(loader)
        record: dict = {}
        model.train()
        while self.step < run.max_steps:
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            for micro in range(accum):
                batch = next(it)
                sync = (model.no_sync() if micro < accum - 1 and isinstance(model, nn.parallel.DistributedDataParallel)
                        else contextlib.nullcontext())
                with sync:
                    loss, stats = task.forward(model, batch, self.device, self.autocast)
                    (loss / accum).backward()
                for key, value in {"loss": loss.item(), **stats, "clips": batch["wav"].shape[0]}.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.optim.clip_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1

            # -- log: statistics summed over ranks, on the training device (NCCL reduces CUDA only)
            totals = torch.tensor(list(sums.values()), dtype=torch.float64, device=self.device)
            hours = torch.tensor([loader.domain_hours().get(d, 0.0) for d in RATIO_ORDER], dtype=torch.float64,
                                 device=self.device)
            all_reduce_sum(totals)
            all_reduce_sum(hours)
            dt = time.perf_counter() - t0
            sums = dict(zip(sums, totals.tolist()))
            metrics = task.metrics(sums)
            record = {"step": self.step, "loss": sums["loss"] / (accum * info.world_size), **metrics,
                      "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                      "clips_per_s": sums["clips"] / dt,
                      "hours": {d: round(h, 6) for d, h in zip(RATIO_ORDER, hours.tolist())}}
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(f"step {self.step}: loss is {record['loss']}; lower optim.lr or check the data")
            if log and (self.step % run.log_every == 0 or self.step == run.max_steps):
                log.write(json.dumps(record) + "\n")
                log.flush()
            if bar is not None:
                bar.update()
                bar.set_postfix({k: f"{record[k]:.3f}" for k in ("loss", *metrics)})

            # -- checkpoint
            if self.step % run.ckpt_every == 0 or self.step == run.max_steps:
                self.save()

        # -- export -------------------------------------------------------------------------------
        if bar is not None:
            bar.close()
        if export is not None:
            self.export(export)
        if log:
            log.close()
        return record

    def export(self, out: str | Path) -> None:
        """Write the trained model with the task's exporter (rank 0; a collective under FSDP)."""
        if self.parts["model"].fsdp:
            state = self.parts["model"].state_dict()  # collective; full on every rank
            if self.info.is_main:
                model = self.task.build_model(self.device)
                model.load_state_dict(state)
                self.task.export(model, Path(out))
        elif self.info.is_main:
            self.task.export(unwrap(self.model), Path(out))
        barrier()

