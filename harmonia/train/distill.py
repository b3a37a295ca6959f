"""Distillation: one student encoder learns to predict a teacher (any encoder or ensemble that
`harmonia.load_encoder` accepts) on the pre-training data pools, mixtures and shards.

Reads top to bottom: config → student → heads and loss → teacher (on the fly, or a cache written once)
→ `DistillTask`, which the shared pre-training Trainer (`harmonia.train.trainer`) runs: DDP / FSDP2,
gradient accumulation, clipping, bf16 autocast on GPU, logs, atomic checkpoints, exact resume → export
(heads dropped: a normal harmonia checkpoint).

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
`torchrun --nproc_per_node N -m harmonia distill RECIPE ...` (the command line: harmonia.train.distill_cli).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harmonia.encoder import AudioEncoder, EncoderOutput
from harmonia.ensemble import ALIGN_MODES, align_frames
from harmonia.models.beats import TransformerLayer
from harmonia.models.dasheng import Block
from harmonia.train.config import ConfigError, RunConfig, TrainConfig, _need
from harmonia.train.teacher_cache import CachedTargets, MemberSpec, Targets, Teacher
from harmonia.train.trainer import Task

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
class DistillConfig(TrainConfig):
    """data, optim and run as for pre-training (`TrainConfig`), plus student, teacher and distill."""

    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/distill"))

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
        super().validate(check_data)


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
# the loop: a Task of the shared Trainer


def export_student(model: DistillModel, out_dir: str | Path) -> Path:
    """The student alone (heads dropped) in harmonia's format: load_encoder, encode, evaluate and
    xares-export read it like any other encoder."""
    from harmonia.hub import save_harmonia

    return save_harmonia(copy.deepcopy(model.student).cpu().float(), out_dir)


class DistillTask(Task):
    """Distillation for the Trainer (`harmonia.train.trainer`): the student and its heads are trained
    and checkpointed; the teacher (or its cache) is a frozen helper built once, on the first
    `build_model` (every rank, inside the process group: the cache is written there)."""

    name = "distill"
    # Cannot change mid-run: the student's architecture, what the targets are, and the data stream's
    # identity. teacher.cache may move (its fingerprint is checked whenever it is opened).
    frozen = ("student", "teacher.source", "teacher.options", "distill", "data.batch_size", "data.seed",
              "data.num_workers", "run.seed")

    fsdp_units = (TransformerLayer, Block)  # BEATs layers, Dasheng blocks: FSDP2 shards each one

    def __init__(self, cfg: DistillConfig) -> None:
        self.cfg = cfg
        self.teacher: Teacher | None = None
        self.cached: CachedTargets | None = None
        self.specs: list[MemberSpec] | None = None

    def prepare_targets(self, device: torch.device, student: AudioEncoder, cache_only: bool = False) -> dict:
        """Load the teacher (refusing a sampling-rate mismatch); with teacher.cache, make sure the
        cache is complete (fingerprint checked, missing shards written, split over ranks) and read
        targets from it instead. Collective under torchrun."""
        from harmonia.data.loader import stream_hours
        from harmonia.data.mixture import plan_mixture
        from harmonia.train.distributed import init_distributed

        cfg, d = self.cfg, self.cfg.data
        info = init_distributed()
        teacher = load_teacher(cfg, device, student)
        streams = sorted(n for n, v in plan_mixture(stream_hours(d.shards), d.ratio, d.corpus_weights).target.items()
                         if v > 0)
        if not cfg.teacher.cache:
            if cache_only:
                raise ConfigError("--cache-only needs a cache folder: --set teacher.cache=DIR")
            self.teacher, self.specs = teacher, teacher.specs()
            return {}
        written = prepare_cache(cfg, teacher, streams, info, cfg.run.progress and info.is_main)
        if not cache_only:
            self.cached = CachedTargets(cfg.teacher.cache, d.shards, streams, len(teacher.members), teacher.layers)
            self.specs = self.cached.specs(teacher.names)
        return {"cache": cfg.teacher.cache, "streams": streams, "shards_written": written}

    def build_model(self, device: torch.device) -> DistillModel:
        student = build_student(self.cfg.student)
        if self.specs is None:  # the first call (every rank); an FSDP export builds the model again
            self.prepare_targets(device, student)
        if not self.cfg.student.init:
            set_input_statistics(student, self.cfg.data)  # a resume loads the checkpoint's over it
        d = self.cfg.distill
        return DistillModel(student, self.specs, d.head_layer, self.cfg.layer_pairs(), d.align, d.l1_weight,
                            d.cos_weight)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        from harmonia.train.optim import build_optimizer

        return build_optimizer(model, self.cfg.optim)

    def forward(self, model: nn.Module, batch: dict, device: torch.device, autocast) -> tuple[Tensor, dict]:
        wav_BN, lengths_B = batch["wav"].to(device), batch["lengths"]
        with torch.no_grad(), autocast:
            targets = (self.cached.targets(batch["keys"], device) if self.cached is not None
                       else self.teacher.targets(wav_BN, lengths_B))
        with autocast:
            loss, stats = model(wav_BN, lengths_B, targets)
        return loss, {**stats, "micro_batches": 1}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Mean cosine similarity of each target (member heads, then layer targets) to its prediction."""
        return {k: sums[k] / sums["micro_batches"] for k in sums if k.startswith("cos_")}

    def export(self, model: nn.Module, out: Path) -> Path:
        return export_student(model, out)


def distill(cfg: DistillConfig, export: str | Path | None = None, cache_only: bool = False,
            override_resume_config: bool = False) -> dict:
    """Train (or resume) per `cfg`; returns the last logged record. Multi-process under torchrun.
    `cache_only`: write the teacher cache (teacher.cache) for the mixture's shards and stop."""
    from harmonia.train.distributed import init_distributed
    from harmonia.train.trainer import Trainer

    cfg.validate()
    task = DistillTask(cfg)
    if cache_only:
        torch.manual_seed(cfg.run.seed)
        return task.prepare_targets(init_distributed().device, build_student(cfg.student), cache_only=True)
    return Trainer(task, cfg, override_resume_config).fit(export=export)
