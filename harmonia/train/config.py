"""Pre-training configuration: nested dataclasses, `--set section.key=value` overrides with type
checks, and validation that fails at start with a message naming the fix."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """Bad configuration; the message names the key, what was expected and the fix."""


@dataclass
class ModelConfig:
    task: str = "mlm"  # mlm: masked acoustic-token prediction | vqkd: tokenizer distillation
    encoder: dict[str, Any] = field(default_factory=dict)  # BeatsConfig overrides (architecture)
    decoder_embed_dim: int = 768  # predictor width (ESPnet decoder_embed_dim)
    decoder_layers: int = 3  # predictor depth (docs/beats.md §6.4)
    codebook_size: int = 1024  # label vocabulary (tokenizer quant_n)
    mask_ratio: float = 0.75  # share of valid patches dropped from the encoder input
    label_smoothing: float = 0.1  # cross-entropy smoothing (docs/beats.md §6.4)
    # vqkd only
    quant_dim: int = 256  # code dimension
    vq_beta: float = 1.0  # VQ commitment weight (MS 1.0, ESPnet recipe 10.0)
    vq_decay: float = 0.99  # codebook EMA decay


@dataclass
class TokenizerConfig:
    kind: str = "random"  # random (iteration 1) | checkpoint (Microsoft / harmonia tokenizer) | teacher (vqkd)
    path: str = ""  # checkpoint path for kind=checkpoint; teacher encoder for task=vqkd
    seed: int = 42  # random-projection seed (ESPnet default 42)
    quant_dim: int = 256  # random-projection code dimension


@dataclass
class DataConfig:
    shards: str = ""  # folder written by `harmonia data shard`
    ratio: str = "balanced"  # speech-heavy | balanced | S:M:S | speech=..,music=..,sound=..
    corpus_weights: dict[str, float] = field(default_factory=dict)
    batch_size: int = 8  # segments per rank per micro-batch
    num_workers: int = 0  # dataloader workers per rank
    crop_seconds: float = 0.0  # random crop of longer segments (0 = whole segments, <= 10 s)
    seed: int = 0


@dataclass
class OptimConfig:
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 100
    decay_steps: int = 0  # linear decay to 0 at this step; 0 = max_steps
    clip_norm: float = 1.0
    grad_accum: int = 1


@dataclass
class RunConfig:
    out_dir: str = "runs/pretrain"
    max_steps: int = 1000
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 3
    seed: int = 0
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    parallel: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard per layer)
    progress: bool = True


@dataclass
class TrainConfig:
    """What every training config has: the Trainer reads name, data, optim and run. Subclasses add
    their own sections (dataclasses) and extend `validate`."""

    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        cfg = cls()
        for key, value in _flatten(d, _sections(cfg)):
            set_value(cfg, key, value)
        cfg.validate()
        return cfg

    def validate(self, check_data: bool = True) -> None:
        """Raise ConfigError for data, optimiser or run settings that cannot train."""
        from harmonia.data.mixture import MixtureError, parse_ratio

        d, o, r = self.data, self.optim, self.run
        _need(d.batch_size >= 1, "data.batch_size", d.batch_size, "an integer >= 1")
        _need(o.lr > 0, "optim.lr", o.lr, "a positive learning rate")
        _need(o.grad_accum >= 1, "optim.grad_accum", o.grad_accum, "an integer >= 1")
        _need(r.max_steps >= 1 and r.ckpt_every >= 1 and r.keep_last >= 1, "run.max_steps/ckpt_every/keep_last",
              (r.max_steps, r.ckpt_every, r.keep_last), "integers >= 1")
        _need(r.precision in ("auto", "fp32", "bf16"), "run.precision", r.precision, "auto, fp32 or bf16")
        _need(r.parallel in ("ddp", "fsdp"), "run.parallel", r.parallel, "ddp or fsdp")
        try:
            parse_ratio(d.ratio)
        except MixtureError as e:
            raise ConfigError(f"data.ratio: {e}") from e
        if check_data:
            from pathlib import Path

            from harmonia.data.loader import stream_hours
            from harmonia.data.manifest import ManifestError
            from harmonia.data.mixture import plan_mixture

            _need(bool(d.shards), "data.shards", d.shards,
                  "a shard folder: --set data.shards=DIR (write one with `harmonia data shard`)")
            _need(Path(d.shards).is_dir(), "data.shards", d.shards, "an existing folder written by `harmonia data shard`")
            try:
                plan_mixture(stream_hours(d.shards), d.ratio, d.corpus_weights)
            except (MixtureError, ManifestError) as e:
                raise ConfigError(f"data: {e}") from e


@dataclass
class PretrainConfig(TrainConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def validate(self, check_data: bool = True) -> None:
        """Raise ConfigError for a configuration that cannot train."""
        from harmonia.models.beats import BeatsConfig

        m, t = self.model, self.tokenizer
        _need(m.task in ("mlm", "vqkd"), "model.task", m.task, "mlm or vqkd")
        _need(0.0 < m.mask_ratio < 1.0, "model.mask_ratio", m.mask_ratio, "a fraction in (0, 1), e.g. 0.75")
        _need(0.0 <= m.label_smoothing < 1.0, "model.label_smoothing", m.label_smoothing, "a value in [0, 1)")
        _need(t.kind in ("random", "checkpoint", "teacher"), "tokenizer.kind", t.kind, "random, checkpoint or teacher")
        if t.kind == "checkpoint" or m.task == "vqkd":
            _need(bool(t.path), "tokenizer.path", t.path, "a tokenizer / teacher checkpoint path")
        build_architecture(BeatsConfig, m.encoder, "model.encoder")
        super().validate(check_data)


def build_architecture(cls: type, values: dict[str, Any], key: str):
    """`cls(**values)` for an architecture dataclass, or one ConfigError naming `key` (unknown
    fields listed with the accepted ones, or the value the class refuses)."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{key} has unknown keys {unknown}; {cls.__name__} keys are {sorted(fields)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from e


def _need(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {expected}")


def _sections(cfg: TrainConfig) -> set[str]:
    return {f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))}


def _flatten(d: dict[str, Any], sections: set[str], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and k in sections:
            out += _flatten(v, sections, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (possibly a string from the command line) to type `tp`, or raise."""
    origin = typing.get_origin(tp)
    if isinstance(value, str) and tp is not str:
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            if tp is bool and value.lower() in ("true", "false", "yes", "no"):
                value = value.lower() in ("true", "yes")
            elif origin is tuple and "," in value:
                value = value.split(",")
            else:
                raise ConfigError(f"{key}={value!r}: expected {getattr(tp, '__name__', tp)}") from None
    ok = True
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    elif origin is tuple:
        args = typing.get_args(tp)
        ok = isinstance(value, (list, tuple)) and len(value) == len(args)
        if ok:
            value = tuple(_coerce(v, a, key) for v, a in zip(value, args))
    elif origin is dict:
        ok = isinstance(value, dict)
    elif isinstance(tp, types.UnionType):
        ok = True
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {getattr(tp, '__name__', str(tp))}, found {type(value).__name__}")
    return value


def set_value(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set `section.key` (or `model.encoder.<BeatsConfig key>`) with type checking."""
    parts = key.split(".")
    if parts == ["name"]:
        cfg.name = str(value)
        return
    sections = {f.name: f for f in dataclasses.fields(cfg) if f.name != "name"}
    if parts[0] not in sections or len(parts) < 2:
        raise ConfigError(f"unknown config key {key!r}; keys look like section.name with section in {sorted(sections)}")
    section = getattr(cfg, parts[0])
    hints = typing.get_type_hints(type(section))
    name = parts[1]
    if name not in hints:
        close = difflib.get_close_matches(name, list(hints), n=3)
        raise ConfigError(f"unknown config key {key!r}" + (f"; did you mean {', '.join(parts[0] + '.' + c for c in close)}?"
                                                           if close else f"; {parts[0]} keys are {sorted(hints)}"))
    if len(parts) > 2:  # a key inside a dict field, e.g. model.encoder.encoder_layers=2
        if typing.get_origin(hints[name]) is not dict:
            raise ConfigError(f"{key!r}: {parts[0]}.{name} is not a mapping")
        sub = ".".join(parts[2:])
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        getattr(section, name)[sub] = value
        return
    setattr(section, name, _coerce(value, hints[name], key))


def recipe_config(recipes: dict, name: str, overrides: list[str]) -> TrainConfig:
    """The config of recipe `name` (a function of `recipes`) with `key=value` overrides applied; an
    unknown name is a ConfigError listing the known ones (and the closest)."""
    if name not in recipes:
        close = difflib.get_close_matches(name, list(recipes), n=1)
        raise ConfigError(f"unknown recipe {name!r}; known: {sorted(recipes)}"
                          + (f" (did you mean {close[0]}?)" if close else ""))
    return apply_overrides(recipes[name](), overrides)


def finish_run(record: dict | None) -> int:
    """The end of a successful training command: rank 0 prints the last record; under torchrun every
    rank then leaves the process group and ends its process at once (`exit_after_shutdown`: on
    success only, since a failing rank must exit with its error, not wait in a barrier). A plain
    process returns 0."""
    from harmonia.train.distributed import exit_after_shutdown

    if record is not None and os.environ.get("RANK", "0") == "0":
        print(json.dumps(record))
    exit_after_shutdown(0)
    return 0


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `key=value` strings (values parsed as JSON when possible)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=1e-4")
        set_value(cfg, key.strip(), value)
    return cfg
