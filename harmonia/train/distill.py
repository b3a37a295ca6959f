"""Distillation: one student encoder learns to predict a teacher (any encoder or ensemble that
`harmonia.load_encoder` accepts) on the pre-training data pools, mixtures and shards.

Reads top to bottom: config → student → heads and loss → the loop (setup → resume → data → teacher
targets, on the fly or from a cache → steps with accumulation, clipping, bf16 autocast on GPU → logs
→ atomic checkpoints) → export (heads dropped: a normal harmonia checkpoint).

Targets are frame-level. Each teacher member m (an ensemble's members, or the teacher itself) gets
one linear head on a chosen student layer; the member's frames are resampled along time to the
student's frame grid with `align_frames` (per item, valid frames only). Optional layer-to-layer
targets pair a student hidden state with a member's hidden state, each through its own linear head.
The loss per target is DistilHuBERT's (Chang et al., ICASSP 2022), which USAD (Chang et al. 2025)
uses for audio: mean absolute error over the valid frames and dimensions, minus log σ(cosine
similarity) per frame, summed over targets.

The student stays in eval mode (no dropout; `AudioEncoder` never trains its normalisation
statistics), so a run is deterministic given its data: exact resume after a kill.

Run: `harmonia distill RECIPE --set key=value ... [--export DIR]`, or several processes with
`torchrun --nproc_per_node N -m harmonia.train.distill RECIPE ...`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from harmonia.encoder import AudioEncoder, EncoderOutput, tune_allocator
from harmonia.ensemble import ALIGN_MODES, align_frames
from harmonia.train.config import ConfigError, DataConfig, OptimConfig, PretrainConfig, RunConfig, _need
from harmonia.train.teacher_cache import CachedTargets, MemberSpec, Targets, Teacher

CHECKPOINT_VERSION = 1
FAMILIES = ("beats", "dasheng")


# -------------------------------------------------------------------------------------------------
# configuration


@dataclass
class StudentConfig:
    family: str = "beats"  # beats | dasheng
    preset: str = ""  # a preset of harmonia.models.<family> (beats-base, openbeats-large, dasheng-base, ...); "" = defaults
    arch: dict[str, Any] = field(default_factory=dict)  # BeatsConfig / DashengConfig overrides
    init: str = ""  # initialise from this checkpoint (anything load_encoder reads); "" = from scratch


@dataclass
class TeacherConfig:
    source: str = ""  # anything load_encoder accepts: a path, a registry name, "a+b+c"
    options: dict[str, Any] = field(default_factory=dict)  # load_encoder options, e.g. {"align": "linear"}
    cache: str = ""  # folder of cached teacher targets ("" = computed on the fly every step)
    cache_batch_size: int = 8  # segments per teacher forward while caching


@dataclass
class LossConfig:
    head_layer: int = -1  # student state the per-member heads read: k = after k layers, -1 = final output
    align: str = "linear"  # align_frames mode from each member's grid to the student's
    layer_targets: list[str] = field(default_factory=list)  # "S:M:T": student state S -> member M's state T
    l1_weight: float = 1.0  # weight of the L1 term
    cos_weight: float = 1.0  # weight of the -log sigmoid(cosine) term


@dataclass
class DistillConfig:
    name: str = "custom"
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/distill"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def layer_pairs(self) -> list[tuple[int, int, int]]:
        """`distill.layer_targets` parsed: [(student state, member index, member state)]."""
        out = []
        for item in self.distill.layer_targets:
            parts = str(item).split(":")
            if len(parts) != 3 or not all(p.strip().lstrip("-").isdigit() for p in parts):
                raise ConfigError(f"distill.layer_targets item {item!r}: expected 'S:M:T' (student state S "
                                  "predicts teacher member M's hidden state T), e.g. '4:0:8'")
            out.append(tuple(int(p) for p in parts))
        return out

    def validate(self, check_data: bool = True) -> None:
        """Raise ConfigError for a configuration that cannot train (the data, optimiser and run
        sections are checked exactly as for pre-training)."""
        s, t, d = self.student, self.teacher, self.distill
        _need(s.family in FAMILIES, "student.family", s.family, " or ".join(FAMILIES))
        student_config(s)  # raises for a bad preset or architecture key
        _need(bool(t.source), "teacher.source", t.source,
              "a teacher: a checkpoint path, a registry name (e.g. cmu-aist-icme2025) or 'a+b+c'")
        _need(t.cache_batch_size >= 1, "teacher.cache_batch_size", t.cache_batch_size, "an integer >= 1")
        _need(d.align in ALIGN_MODES, "distill.align", d.align, " or ".join(ALIGN_MODES))
        _need(d.l1_weight >= 0 and d.cos_weight >= 0 and d.l1_weight + d.cos_weight > 0,
              "distill.l1_weight/cos_weight", (d.l1_weight, d.cos_weight), "non-negative weights, not both 0")
        self.layer_pairs()
        if t.cache:
            _need(self.data.crop_seconds == 0, "data.crop_seconds", self.data.crop_seconds,
                  "0 with a teacher cache (cached targets cover whole segments; cut the shards to the "
                  "length you train on instead, or set teacher.cache= to compute targets on the fly)")
        PretrainConfig(data=self.data, optim=self.optim, run=self.run).validate(check_data)


def student_config(s: StudentConfig):
    """The student's architecture config (BeatsConfig or DashengConfig) from preset + overrides."""
    try:
        if s.family == "beats":
            from harmonia.models.beats import PRESETS, BeatsConfig

            if s.preset and s.preset not in PRESETS:
                raise ConfigError(f"student.preset={s.preset!r}: expected a BEATs preset {sorted(PRESETS)} or ''")
            return BeatsConfig(**{**PRESETS.get(s.preset, {}), **s.arch})
        from harmonia.models.dasheng import PRESETS, DashengConfig

        if s.preset and s.preset not in PRESETS:
            raise ConfigError(f"student.preset={s.preset!r}: expected a Dasheng preset {sorted(PRESETS)} or ''")
        base = PRESETS[s.preset].to_dict() if s.preset else {}
        return DashengConfig(**{**base, **s.arch})
    except TypeError as e:
        raise ConfigError(f"student.arch: {e}; see the {s.family} config dataclass for the keys") from e
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"student.arch: {e}") from e


# -------------------------------------------------------------------------------------------------
# the student


def build_student(s: StudentConfig) -> AudioEncoder:
    """A BEATs (flat layout) or Dasheng encoder: from `student.init`, or freshly initialised as its
    own pre-training does (BEATs: DeepNorm; Dasheng: the MAE initialisation)."""
    if s.init:
        from harmonia.hub import load_encoder

        if s.arch or s.preset:
            raise ConfigError(f"student.init={s.init!r} fixes the architecture; remove student.preset/student.arch")
        enc = load_encoder(s.init)
        if type(enc).__name__ != {"beats": "BeatsEncoder", "dasheng": "DashengEncoder"}[s.family]:
            raise ConfigError(f"student.init={s.init!r} is a {type(enc).__name__}; student.family={s.family!r} "
                              "expects a single encoder of that family")
        if s.family == "dasheng":
            enc.model.mel_norm.requires_grad_(False)  # input normalisation: fixed, as in its pre-training
        return enc
    cfg = student_config(s)
    if s.family == "beats":
        from harmonia.encoders.beats import BeatsEncoder
        from harmonia.models.beats import BeatsModel
        from harmonia.train.objective import deepnorm_init_

        model = BeatsModel(cfg)
        deepnorm_init_(model.encoder, cfg.encoder_layers)
        return BeatsEncoder(model, layout="flat")
    from harmonia.encoders.dasheng import DashengEncoder
    from harmonia.train.mae import DashengMAE

    enc = DashengEncoder(DashengMAE(cfg, decoder_dim=8, decoder_depth=1, decoder_heads=1).encoder)
    enc.model.mel_norm.requires_grad_(False)  # input normalisation: fixed, as in its pre-training
    return enc


@torch.no_grad()
def set_input_statistics(student: AudioEncoder, data) -> None:
    """A from-scratch Dasheng's input BatchNorm takes the mean/variance per mel bin of one batch of
    the training mixture (as its MAE pre-training does). The batch is drawn by a loader of its own,
    as rank 0 of 1 would see it: the same on every rank, no collective, the training stream untouched.
    BEATs needs nothing."""
    from harmonia.data.loader import build_loader
    from harmonia.encoders.dasheng import DashengEncoder

    if not isinstance(student, DashengEncoder):
        return
    loader = build_loader(data.shards, data.ratio, data.batch_size, data.seed, 0, 1, 0, data.corpus_weights,
                          crop_seconds=data.crop_seconds)
    mel = student.model.log_mel(next(iter(loader))["wav"])
    student.model.mel_norm.running_mean.copy_(mel.mean(dim=(0, 2)))
    student.model.mel_norm.running_var.copy_(mel.var(dim=(0, 2)))


def student_forward(student: AudioEncoder, wav_BN: Tensor, lengths_B: Tensor, hidden: bool) -> EncoderOutput:
    """`student.encode` with gradients (encode itself runs under no_grad): the same short-input
    padding, frames and hidden states on the student's grid (padded frames not zeroed)."""
    if wav_BN.shape[1] < student.min_samples:
        wav_BN = F.pad(wav_BN, (0, student.min_samples - wav_BN.shape[1]))
    return student._encode(wav_BN, lengths_B.clamp(min=student.min_samples).to(wav_BN.device), hidden)


def num_states(student: AudioEncoder) -> int:
    """Layers L of the student: states 0..L (state L is the final output)."""
    cfg = student.model.cfg
    return cfg.encoder_layers if hasattr(cfg, "encoder_layers") else cfg.depth


# -------------------------------------------------------------------------------------------------
# heads and loss


def distill_loss(pred_BTD: Tensor, target_BTD: Tensor, valid_BT: Tensor, l1_weight: float, cos_weight: float
                 ) -> tuple[Tensor, Tensor]:
    """l1_weight · mean |pred − target| − cos_weight · mean log σ(cos(pred, target)) over valid
    frames. Returns (loss, mean cosine similarity (detached))."""
    p, t = pred_BTD[valid_BT].float(), target_BTD[valid_BT].float()
    cos = F.cosine_similarity(p, t, dim=-1)
    loss = l1_weight * (p - t).abs().mean() - cos_weight * F.logsigmoid(cos).mean()
    return loss, cos.detach().mean()


class DistillModel(nn.Module):
    """The student and its prediction heads (dropped at export).

    heads[m]: Linear(student width, member m's width) on student state `head_layer`;
    layer_heads[i]: Linear on student state S_i predicting member M_i's state T_i."""

    def __init__(self, student: AudioEncoder, members: list[MemberSpec], head_layer: int,
                 pairs: list[tuple[int, int, int]], align: str, l1_weight: float, cos_weight: float) -> None:
        super().__init__()
        self.student = student
        L = num_states(student)
        self.head_layer = L if head_layer in (-1, L) else head_layer
        for s, m, t in pairs:
            if not 0 <= s <= L:
                raise ConfigError(f"distill.layer_targets '{s}:{m}:{t}': the student has states 0..{L}")
            if not 0 <= m < len(members) or t not in members[m].hidden_dims:
                raise ConfigError(f"distill.layer_targets '{s}:{m}:{t}': the teacher has members 0..{len(members) - 1}")
        if not 0 <= self.head_layer <= L:
            raise ConfigError(f"distill.head_layer={head_layer}: the student has states 0..{L} (-1 = final)")
        top = max([self.head_layer] + [s for s, _, _ in pairs])
        if top < L:
            raise ConfigError(f"no target reads the student's layers above state {top} of {L}: they would stay "
                              f"untrained; use a {top}-layer student or put a head on the last state (-1)")
        D = student.output_dim
        self.heads = nn.ModuleList(nn.Linear(D, m.dim) for m in members)
        self.layer_heads = nn.ModuleList(nn.Linear(D, members[m].hidden_dims[t]) for _, m, t in pairs)
        self.pairs, self.align = pairs, align
        self.l1_weight, self.cos_weight = l1_weight, cos_weight

    def forward(self, wav_BN: Tensor, lengths_B: Tensor, targets: Targets) -> tuple[Tensor, dict[str, float]]:
        L = num_states(self.student)
        need_hidden = self.head_layer < L or any(s < L for s, _, _ in self.pairs)
        out = student_forward(self.student, wav_BN, lengths_B, need_hidden)
        T, lens = out.frames.shape[1], out.lengths.cpu()
        valid_BT = torch.arange(T)[None] < lens[:, None]

        def state(k: int) -> Tensor:
            return out.frames if k == L else out.hidden_states[k]

        def on_grid(x_BTD: Tensor, x_lens: Tensor) -> Tensor:
            return align_frames(x_BTD, T, self.align, x_lens, lens.clamp(max=T))

        losses, cosines = [], []
        for m, head in enumerate(self.heads):
            loss, cos = distill_loss(head(state(self.head_layer)), on_grid(targets.frames[m], targets.lengths[m]),
                                     valid_BT.to(wav_BN.device), self.l1_weight, self.cos_weight)
            losses.append(loss)
            cosines.append(cos)
        for (s, m, t), head in zip(self.pairs, self.layer_heads):
            loss, cos = distill_loss(head(state(s)), on_grid(targets.hidden[m][t], targets.lengths[m]),
                                     valid_BT.to(wav_BN.device), self.l1_weight, self.cos_weight)
            losses.append(loss)
            cosines.append(cos)
        stats = {f"cos_{i}": float(c) for i, c in enumerate(cosines)}
        return torch.stack(losses).sum(), stats


# -------------------------------------------------------------------------------------------------
# teacher


def load_teacher(cfg: DistillConfig, device: torch.device, student: AudioEncoder) -> Teacher:
    """The teacher on `device`, with the hidden states the layer targets need; refuses a
    sampling-rate mismatch with the student (both must read the same waveform)."""
    from harmonia.hub import load_encoder

    layers: dict[int, list[int]] = {}
    for _, m, t in cfg.layer_pairs():
        layers.setdefault(m, []).append(t)
    try:
        encoder = load_encoder(cfg.teacher.source, **cfg.teacher.options).to(device)
    except (ValueError, TypeError, OSError) as e:  # unknown name, unreadable checkpoint, bad option
        raise ConfigError(f"teacher.source={cfg.teacher.source!r} (options {cfg.teacher.options}): {e}") from e
    teacher = Teacher(encoder, layers)
    if int(student.sampling_rate) != teacher.sampling_rate:
        raise ConfigError(f"sampling-rate mismatch: the teacher {cfg.teacher.source!r} reads {teacher.sampling_rate} Hz "
                          f"audio, the student {int(student.sampling_rate)} Hz; the student learns from the teacher's "
                          f"view of the same waveform: choose a student at {teacher.sampling_rate} Hz "
                          f"(e.g. --set student.arch.sample_rate={teacher.sampling_rate}) or a teacher at "
                          f"{int(student.sampling_rate)} Hz")
    return teacher


def prepare_cache(cfg: DistillConfig, teacher: Teacher, streams: list[str], info, progress: bool) -> int:
    """Make sure `teacher.cache` holds this teacher's targets for every shard of `streams`
    (fingerprint checked, missing shards computed, split over ranks). Returns shards written here."""
    from harmonia.train.distributed import barrier
    from harmonia.train.teacher_cache import build_cache, check_fingerprint, write_fingerprint

    fp = teacher.fingerprint()
    if info.is_main:
        write_fingerprint(cfg.teacher.cache, fp)
    barrier()
    check_fingerprint(Path(cfg.teacher.cache), fp)
    n = build_cache(teacher, cfg.data.shards, streams, cfg.teacher.cache, cfg.teacher.cache_batch_size,
                    info.rank, info.world_size, progress)
    barrier()
    return n


# -------------------------------------------------------------------------------------------------
# the loop


def export_student(model: DistillModel, out_dir: str | Path) -> Path:
    """The student alone (heads dropped) in harmonia's format: load_encoder, encode, evaluate and
    xares-export read it like any other encoder."""
    from harmonia.hub import save_harmonia

    return save_harmonia(copy.deepcopy(model.student).cpu().float(), out_dir)


def distill(cfg: DistillConfig, export: str | Path | None = None, cache_only: bool = False) -> dict:
    """Train (or resume) per `cfg`; returns the last logged record. Multi-process under torchrun."""
    from harmonia.data.loader import build_loader, stream_hours
    from harmonia.data.mixture import RATIO_ORDER, plan_mixture
    from harmonia.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from harmonia.train.distributed import (
        all_reduce_sum,
        barrier,
        gather_objects,
        init_distributed,
        unwrap,
        wrap_model,
    )
    from harmonia.train.optim import build_optimizer, build_scheduler
    from harmonia.train.pretrain import _full_state, _load_optimizer

    # -- setup ------------------------------------------------------------------------------------
    cfg.validate()
    tune_allocator()
    info = init_distributed()
    run, out, d = cfg.run, Path(cfg.run.out_dir), cfg.data
    use_bf16 = run.precision == "bf16" or (run.precision == "auto" and info.device.type == "cuda")
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    torch.manual_seed(run.seed)  # identical initial weights on every rank

    # -- student (first: identical initial weights on every rank), teacher --------------------------
    student = build_student(cfg.student)
    teacher = load_teacher(cfg, info.device, student)
    streams = sorted(n for n, v in plan_mixture(stream_hours(d.shards), d.ratio, d.corpus_weights).target.items() if v > 0)
    cached = None
    if cfg.teacher.cache:  # written once (fingerprint-checked, resumable), then read instead of the teacher
        written = prepare_cache(cfg, teacher, streams, info, run.progress and info.is_main)
        if cache_only:
            return {"cache": cfg.teacher.cache, "streams": streams, "shards_written": written}
        cached = CachedTargets(cfg.teacher.cache, d.shards, streams, len(teacher.members), teacher.layers)
        specs = cached.specs(teacher.names)
        teacher = None  # free its memory
    elif cache_only:
        raise ConfigError("--cache-only needs a cache folder: --set teacher.cache=DIR")
    else:
        specs = teacher.specs()

    # -- resume -----------------------------------------------------------------------------------
    ckpt_path = latest_checkpoint(out)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
    if ckpt is not None and ckpt["world_size"] != info.world_size:
        raise ConfigError(f"{ckpt_path}: written by {ckpt['world_size']} processes, resumed with "
                          f"{info.world_size}; resume with the same number (the data position is per rank)")

    # -- data -------------------------------------------------------------------------------------
    loader = build_loader(d.shards, d.ratio, d.batch_size, d.seed, info.rank, info.world_size, d.num_workers,
                          d.corpus_weights, state=ckpt["data"][info.rank] if ckpt else None,
                          crop_seconds=d.crop_seconds)
    it = iter(loader)

    # -- heads, optimiser ---------------------------------------------------------------------------
    model = DistillModel(student, specs, cfg.distill.head_layer, cfg.layer_pairs(), cfg.distill.align,
                         cfg.distill.l1_weight, cfg.distill.cos_weight)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    elif not cfg.student.init:
        set_input_statistics(student, cfg.data)
    model.to(info.device)
    model_w = wrap_model(model, info, run.parallel)
    optimizer = build_optimizer(model_w, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, run.max_steps)
    torch.manual_seed(run.seed * 104729 + info.rank)
    step = 0
    if ckpt is not None:
        _load_optimizer(model_w, optimizer, ckpt["optimizer"], run.parallel)
        scheduler.load_state_dict(ckpt["scheduler"])
        rng = ckpt["rng"][info.rank]
        torch.set_rng_state(rng["torch"])
        if info.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"])
        step = int(ckpt["step"])

    # -- logging ----------------------------------------------------------------------------------
    log_file = None
    if info.is_main:
        from harmonia.io import write_json_atomic

        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", cfg.to_dict(), indent=1)
        log_file = open(out / "log.jsonl", "a")  # noqa: SIM115 - closed at the end
        log_file.write(json.dumps({"event": "resume" if ckpt else "start", "step": step, "world_size": info.world_size,
                                   "members": [m.name for m in specs], "cached": bool(cached)}) + "\n")
    bar = None
    if info.is_main and run.progress:
        from tqdm import tqdm

        bar = tqdm(total=run.max_steps, initial=step, desc=cfg.name, unit="step", dynamic_ncols=True)

    # -- steps ------------------------------------------------------------------------------------
    record: dict = {}
    accum = cfg.optim.grad_accum
    n_targets = len(model.heads) + len(model.layer_heads)
    model_w.train()
    while step < run.max_steps:
        t0 = time.perf_counter()
        sums = torch.zeros(2 + n_targets, dtype=torch.float64)  # loss, clips, cosine per target
        for micro in range(accum):
            batch = next(it)
            wav_BN, lengths_B = batch["wav"].to(info.device), batch["lengths"]
            with torch.no_grad(), autocast:
                targets = (cached.targets(batch["keys"], info.device) if cached is not None
                           else teacher.targets(wav_BN, lengths_B))
            sync = (model_w.no_sync() if micro < accum - 1 and isinstance(model_w, nn.parallel.DistributedDataParallel)
                    else contextlib.nullcontext())
            with sync:
                with autocast:
                    loss, stats = model_w(wav_BN, lengths_B, targets)
                (loss / accum).backward()
            sums += torch.tensor([loss.item(), wav_BN.shape[0]] + [stats[f"cos_{i}"] for i in range(n_targets)],
                                 dtype=torch.float64)
        grad_norm = torch.nn.utils.clip_grad_norm_(model_w.parameters(), cfg.optim.clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        # -- log ----------------------------------------------------------------------------------
        hours = torch.tensor([loader.domain_hours().get(dn, 0.0) for dn in RATIO_ORDER], dtype=torch.float64)
        all_reduce_sum(sums)
        all_reduce_sum(hours)
        dt = time.perf_counter() - t0
        n = accum * info.world_size
        record = {"step": step, "loss": sums[0].item() / n,
                  "cosine": [round(c / n, 6) for c in sums[2:].tolist()], "lr": scheduler.get_last_lr()[0],
                  "grad_norm": float(grad_norm), "clips_per_s": sums[1].item() / dt,
                  "hours": {dn: round(h, 6) for dn, h in zip(RATIO_ORDER, hours.tolist())}}
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"step {step}: loss is {record['loss']}; lower optim.lr or check the data")
        if log_file and (step % run.log_every == 0 or step == run.max_steps):
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        if bar is not None:
            bar.update()
            bar.set_postfix(loss=f"{record['loss']:.3f}", cos=f"{sum(record['cosine']) / n_targets:.3f}")

        # -- checkpoint ---------------------------------------------------------------------------
        if step % run.ckpt_every == 0 or step == run.max_steps:
            model_state, optim_state = _full_state(model_w, optimizer, run.parallel)
            rng = {"torch": torch.get_rng_state(),
                   "cuda": torch.cuda.get_rng_state() if info.device.type == "cuda" else None}
            data_states, rng_states = gather_objects(loader.state_dict()), gather_objects(rng)
            if info.is_main:
                save_checkpoint({"version": CHECKPOINT_VERSION, "step": step, "config": cfg.to_dict(),
                                 "world_size": info.world_size, "model": model_state, "optimizer": optim_state,
                                 "scheduler": scheduler.state_dict(), "data": data_states, "rng": rng_states},
                                out, step, run.keep_last)
            barrier()

    # -- export -----------------------------------------------------------------------------------
    if bar is not None:
        bar.close()
    if export is not None:
        if run.parallel == "fsdp" and dist.is_initialized():
            state, _ = _full_state(model_w, optimizer, run.parallel)  # collective; full only on rank 0
            if info.is_main:
                model = DistillModel(build_student(cfg.student), specs, cfg.distill.head_layer, cfg.layer_pairs(),
                                     cfg.distill.align, cfg.distill.l1_weight, cfg.distill.cos_weight)
                model.load_state_dict(state)
        if info.is_main:
            export_student(unwrap(model), export)
        barrier()
    if log_file:
        log_file.close()
    return record


# -------------------------------------------------------------------------------------------------
# command line


def add_arguments(p) -> None:
    p.add_argument("recipe", help="a recipe of harmonia.recipes.distill, e.g. distill_tiny_debug, "
                                  "distill_cmu_ensemble_base")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.shards=DIR --set teacher.source=cmu-aist-icme2025")
    p.add_argument("--export", metavar="DIR", help="write the trained student (heads dropped) in harmonia's format")
    p.add_argument("--cache-only", action="store_true",
                   help="only write the teacher cache (teacher.cache) for the mixture's shards, then stop")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run_from_args(args) -> int:
    import difflib
    import os

    from harmonia.io import CheckpointError
    from harmonia.recipes.distill import RECIPES
    from harmonia.train.config import apply_overrides
    from harmonia.train.distributed import shutdown

    if args.recipe not in RECIPES:
        close = difflib.get_close_matches(args.recipe, list(RECIPES), n=3)
        print(f"unknown recipe {args.recipe!r}; known: {sorted(RECIPES)}"
              + (f" (did you mean {close[0]}?)" if close else ""), file=sys.stderr)
        return 2
    try:
        cfg = apply_overrides(RECIPES[args.recipe](), args.overrides)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=1))
            return 0
        record = distill(cfg, export=args.export, cache_only=args.cache_only)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:  # a teacher cache of another teacher, or an incomplete one
        print(f"teacher cache error: {e}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(record))
    shutdown()  # on success only: a failing rank must exit with its error, not wait in a barrier
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("distill", help="distil a teacher encoder or ensemble into one student "
                                              "(torchrun for several processes)")
    add_arguments(p)
    p.set_defaults(func=run_from_args)


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m harmonia.train.distill` (and torchrun)."""
    import argparse

    parser = argparse.ArgumentParser(prog="harmonia.train.distill", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
