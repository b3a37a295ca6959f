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

import torch

from harmonia.encoder import AudioEncoder

FAMILY_MODULES = {
    "beats": "harmonia.encoders.beats",
    "dasheng": "harmonia.encoders.dasheng",
    "ensemble": "harmonia.ensemble",  # EnsembleEncoder: members' configs + `members.{i}.` weights
}
HARMONIA_FORMAT = "harmonia-encoder"
HARMONIA_FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not match the architecture it declares."""


def _family(name: str) -> ModuleType:
    if name not in FAMILY_MODULES:
        raise CheckpointError(f"unknown encoder family {name!r}; known: {sorted(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[name])


def _families() -> list[ModuleType]:
    return [_family(n) for n in FAMILY_MODULES]


def torch_load(path: str | os.PathLike) -> dict:
    """torch.load with weights_only=True (never unpickle code) and mmap when the file allows it."""
    path = Path(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) serialisation cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        hint = ""
        if "invalid load key" in str(e):
            hint = " The file is probably an HTML page or a partial download: download it again."
        raise CheckpointError(f"{path}: cannot read as a torch checkpoint with weights_only=True ({e}).{hint}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict (state dict or {{'cfg','model'}}), found {type(obj).__name__}")
    return obj


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
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"format": HARMONIA_FORMAT, "version": HARMONIA_FORMAT_VERSION, **encoder.export_config()}
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.export_state().items()}
    tmp_w, tmp_c = out / "model.safetensors.tmp", out / "config.json.tmp"
    save_file(state, str(tmp_w), metadata={"format": HARMONIA_FORMAT})
    tmp_c.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(tmp_w, out / "model.safetensors")
    os.replace(tmp_c, out / "config.json")
    return out


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path: str | os.PathLike, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file without a second copy in RAM.

    dtype None: views of one copy-on-write memory map; nothing is read until used, so loading costs
    no RAM beyond the pages touched. With `dtype`: floating matrices (ndim >= 2) are read one at a time
    with plain reads and converted, so the peak is the converted weights plus one tensor (a memory
    map would keep every touched fp32 page resident while converting). Smaller tensors keep their
    stored dtype; the family decides (e.g. Dasheng's input BatchNorm stays fp32).
    """
    path = Path(path)
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        base = 8 + header_len
        storage = None
        out = {}
        for name, info in header.items():
            start, end = info["data_offsets"]
            stored = _SAFETENSORS_DTYPES[info["dtype"]]
            if dtype is not None and stored.is_floating_point and len(info["shape"]) >= 2 and stored != dtype:
                f.seek(base + start)
                buf = bytearray(end - start)
                f.readinto(buf)
                out[name] = torch.frombuffer(buf, dtype=stored).reshape(info["shape"]).to(dtype)
                continue
            if storage is None:
                storage = torch.from_file(str(path), shared=False, size=path.stat().st_size, dtype=torch.uint8)
            raw = storage[base + start: base + end]
            if (base + start) % stored.itemsize:  # misaligned for a view: copy this one tensor
                raw = raw.clone()
            out[name] = raw.view(stored).reshape(info["shape"])
    return out


def load_harmonia(path: str | os.PathLike, **options) -> AudioEncoder:
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    if config.get("version", 0) > HARMONIA_FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer harmonia (format version {config['version']}); upgrade harmonia")
    dtype = options.get("dtype")
    state = read_safetensors(path / "model.safetensors", getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    return _family(config["family"]).from_harmonia(config, state, **options)


# -------------------------------------------------------------------------------------------------
# entry point


def list_encoders() -> list[str]:
    """Names accepted by `load_encoder` (the registry of named checkpoints)."""
    from harmonia import registry

    return sorted(registry.REGISTRY)


def load_encoder(source: str | os.PathLike, **options) -> AudioEncoder:
    """Build an encoder from a registry name, a local checkpoint file or directory in any supported
    format, or a Hugging Face repo id. Options are passed to the family's encoder (e.g. `layout`,
    `layer`, `chunk_seconds`, `dtype`, `device`)."""
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
