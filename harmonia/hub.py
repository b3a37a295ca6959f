"""Where encoders come from: local checkpoints in every supported format, harmonia's own format
(`config.json` + `model.safetensors`), and named checkpoints of the registry.

Format detection is delegated to the family modules in `harmonia.encoders`: each exposes
  sniff_file(ckpt: dict) -> bool            is this torch.load()-ed object one of mine?
  from_file(ckpt, path, **options)          build the encoder from it
  sniff_dir(path) -> bool / from_dir(path, **options)     directory layouts (e.g. Hugging Face)
  from_harmonia(config: dict, state, **options)           harmonia's own format
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
from pathlib import Path
from types import ModuleType

import harmonia.encoders.accel as accel
from harmonia.encoder import AudioEncoder
from harmonia.io import (
    CheckpointError,
    parse_dtype,
    read_safetensors,
    torch_load,
    write_json_atomic,
    write_safetensors,
)

__all__ = ["CheckpointError", "torch_load", "read_safetensors", "load_encoder", "load_local", "save_harmonia",
           "load_harmonia", "list_encoders"]

FAMILY_MODULES = {
    "beats": "harmonia.encoders.beats",
    "dasheng": "harmonia.encoders.dasheng",
    "ensemble": "harmonia.ensemble",  # EnsembleEncoder: members' configs + `members.{i}.` weights
}
HARMONIA_FORMAT = "harmonia-encoder"
HARMONIA_FORMAT_VERSION = 1


def _family(name: str) -> ModuleType:
    if name not in FAMILY_MODULES:
        raise CheckpointError(f"unknown encoder family {name!r}; known: {sorted(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[name])


def _families() -> list[ModuleType]:
    return [_family(n) for n in FAMILY_MODULES]


def load_local(path: str | os.PathLike, **options) -> AudioEncoder:
    """Load an encoder from a local file or directory in any supported format."""
    path = Path(path)
    if path.is_dir():
        cfg_file = path / "config.json"
        if cfg_file.exists():
            cfg = json.loads(cfg_file.read_text())
            if cfg.get("format") == HARMONIA_FORMAT:
                return load_harmonia(path, **options)
        for fam in _families():
            if fam.sniff_dir(path):
                return fam.from_dir(path, **options)
        raise CheckpointError(
            f"{path}: directory is not a known checkpoint layout. Expected harmonia's config.json + "
            "model.safetensors (written by `harmonia convert`), or a Hugging Face Dasheng folder "
            "(config.json + model.safetensors); or pass the checkpoint file itself."
        )
    if path.suffix == ".safetensors":
        return load_local(path.parent, **options)
    ckpt = torch_load(path)
    for fam in _families():
        if fam.sniff_file(ckpt, path):
            return fam.from_file(ckpt, path, **options)
    keys = list(ckpt)[:8]
    raise CheckpointError(
        f"{path}: unrecognised checkpoint layout (top-level keys {keys}...). Supported: Microsoft "
        "BEATs/Tokenizer {'cfg','model'}, OpenBEATs {'cfg','model'}, ESPnet 'encoder.'-prefixed state "
        "dicts (with config.yaml beside them or beats_config=...), Dasheng {'model','config'}."
    )


# -------------------------------------------------------------------------------------------------
# harmonia's own format


def save_harmonia(encoder: AudioEncoder, out_dir: str | os.PathLike) -> Path:
    """Write `config.json` + `model.safetensors` atomically (temp names, then rename)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"format": HARMONIA_FORMAT, "version": HARMONIA_FORMAT_VERSION, **encoder.export_config()}
    write_safetensors(encoder.export_state(), out / "model.safetensors", metadata={"format": HARMONIA_FORMAT})
    write_json_atomic(out / "config.json", config, indent=2, sort_keys=True)
    return out


def load_harmonia(path: str | os.PathLike, **options) -> AudioEncoder:
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    if config.get("version", 0) > HARMONIA_FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer harmonia (format version {config['version']}); upgrade harmonia")
    dtype = options.get("dtype")
    state = read_safetensors(path / "model.safetensors", parse_dtype(dtype))
    return _family(config["family"]).from_harmonia(config, state, **options)


# -------------------------------------------------------------------------------------------------
# entry point


def list_encoders() -> list[str]:
    """Names accepted by `load_encoder` (the registry of named checkpoints)."""
    from harmonia import registry

    return sorted(registry.REGISTRY)


def load_encoder(source: str | os.PathLike, quantize: str | None = None, compile: bool = False,
                 **options) -> AudioEncoder:
    """Build an encoder from a registry name, a local checkpoint file or directory in any supported
    format, or a Hugging Face repo id. Options are passed to the family's encoder (e.g. `layout`,
    `layer`, `chunk_seconds`, `dtype`, `device`). `quantize="int8"` (CPU) and `compile=True` are
    opt-in speed options (`harmonia.encoders.accel`)."""
    accel.check_options(quantize, compile, options.get("device"), options.get("dtype"))
    return accel.accelerate(_load_encoder(source, **options), quantize=quantize, compile=compile)


def _load_encoder(source: str | os.PathLike, **options) -> AudioEncoder:
    if isinstance(source, (str, os.PathLike)) and Path(source).exists():
        return load_local(source, **options)
    source = str(source)
    from harmonia import registry

    if source in registry.REGISTRY:
        return registry.load_named(source, **options)
    if "+" in source:
        return registry.load_adhoc_ensemble(source, **options)
    if source.count("/") == 1 and not source.startswith((".", "/")):
        return registry.load_hf_repo(source, **options)
    close = difflib.get_close_matches(source, list(registry.REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown encoder {source!r}: not a local path, a registry name or a Hugging Face repo id.{hint} "
        "See `harmonia list` for the names."
    )
