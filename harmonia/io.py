"""Leaf I/O: checkpoint reading and writing, the one dtype parser and the one atomic-write helper.

This module imports nothing of harmonia, so every other module (models, encoders, hub, data, train,
eval) can use it without import cycles.

- `CheckpointError`: a checkpoint (or cache file) could not be read or does not match its declared
  architecture. Every message names the file.
- `torch_load`: `torch.load` with `weights_only=True` (never unpickles code), memory-mapped when the
  file allows it.
- `read_safetensors` / `write_safetensors`: the one safetensors reader (memory-mapped views, or
  streamed per-tensor dtype conversion) and writer (atomic).
- `parse_dtype`: "bf16", "bfloat16", "torch.bfloat16" and `torch.bfloat16` all mean the same thing.
- `check_type` / `check_fields`: a config value (or every field of a config dataclass) has the type
  its annotation says, so that `deep_norm: "false"` is an error instead of a truthy string.
- `check_state_dict`: one error listing every missing, unexpected and wrong-shape key.
- `atomic_write` / `atomic_path` / `remove_stale_temps`: write to a unique temp name beside the target,
  rename on success, delete the temp on any failure (ENOSPC, exception, Ctrl-C); temp files left by a
  killed process are recognisable by name and removed on the next run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import secrets
import socket
import time
import types
import typing
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not match the architecture it declares."""


# -------------------------------------------------------------------------------------------------
# dtypes

_DTYPE_NAMES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32, "f32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16, "f16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """One parser for every dtype option: None, a `torch.dtype`, or a name ("bf16", "bfloat16",
    "torch.bfloat16", "fp16", "float32", ...). Raises ValueError naming the accepted spellings."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in _DTYPE_NAMES:
            return _DTYPE_NAMES[key]
    raise ValueError(f"unknown dtype {dtype!r}: expected one of {sorted(_DTYPE_NAMES)} or a torch.dtype")


# -------------------------------------------------------------------------------------------------
# config value types


def _matches(value: object, hint: object) -> bool:
    """isinstance() for the annotations our configs use: bool/int/float/str, `X | None`, tuple[...],
    list[...], dict[...], Any. An int is a valid float; a bool is neither an int nor a float."""
    if hint is typing.Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:  # JSON and YAML give lists for tuples
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args)))
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            return False
        return not args or all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    return isinstance(value, origin or hint)


def _whole(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _type_name(hint: object) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def check_type(name: str, value: object, hint: object, error: type[ValueError] = ValueError) -> None:
    """Raise `error` naming `name`, the expected type and the value when `value` is not a `hint`."""
    if not _matches(value, hint):
        raise error(f"{name}: expected {_type_name(hint)}, found {type(value).__name__} {value!r}"
                         + (" (write true/false without quotes)" if hint is bool and isinstance(value, str) else ""))


def check_fields(obj: object) -> None:
    """Check every field of a dataclass instance against its annotation (see `check_type`); call it
    first in `__post_init__`. The error names `Class.field`."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        check_type(f"{type(obj).__name__}.{f.name}", getattr(obj, f.name), hints[f.name])


def check_tensors(state: object, source: str) -> None:
    """A state dict maps names to tensors: anything else (a crafted or damaged checkpoint) is one
    CheckpointError listing the offending keys, before any code reads `.shape`."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: expected a state dict (names to tensors), found {type(state).__name__}")
    bad = [f"{k!r}: {type(v).__name__}" for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(f"{source}: the state dict holds {len(bad)} entries that are not named tensors "
                              f"({', '.join(bad[:8])}{', ...' if len(bad) > 8 else ''}); the file is damaged or "
                              "not a checkpoint of this model")


def check_state_dict(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str,
                     what: str) -> None:
    """One CheckpointError listing every missing, unexpected, wrong-shape and wrong-kind (integer
    where floating point is expected, or the reverse) key of `state` against the `expected` state
    dict (a model's, possibly on the meta device) of architecture `what`."""
    check_tensors(state, source)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    wrong += [f"{k}: {state[k].dtype} vs {v.dtype}" for k, v in expected.items()
              if k in state and state[k].is_floating_point() != v.is_floating_point()]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source}: the weights do not match the architecture of its config ({what}).\n"
            f"  missing keys ({len(missing)}): {missing}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected}\n"
            f"  shape or dtype mismatches, found vs expected ({len(wrong)}): {wrong}\n"
            "Check that the file is the checkpoint you meant and that its config belongs to it.")


def check_layer_count(state: Mapping[str, torch.Tensor], prefix: str, declared: int, source: str, field: str) -> None:
    """Before building a model: its config's layer count (`field`) equals the numbered `prefix<i>.`
    blocks of the state dict. Building first would take minutes (or all memory) for a config.json
    that says 100000 layers, only to report the missing keys afterwards."""
    found = {k[len(prefix):].partition(".")[0] for k in state if k.startswith(prefix)}
    layers = sum(i.isdigit() for i in found)
    if layers != declared:
        raise CheckpointError(f"{source}: its config says {field}={declared} but the weights hold {layers} layers "
                              f"({prefix}<i>.*); fix the config or load it with the weights it belongs to")


# -------------------------------------------------------------------------------------------------
# atomic writes

_TMP_MARK = ".harmonia-tmp-"
# The whole temp name: "." + (a prefix of) the target's name + mark + host tag + pid + random tag.
_TMP_RE = re.compile(r"^\..*\.harmonia-tmp-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}$", re.DOTALL)
_NAME_MAX = 255  # bytes in one path component on every file system we write to


def _host_tag() -> str:
    # A live writer on another host of a shared file system is not a dead local pid.
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def temp_name(target: str | os.PathLike, pid: int | None = None) -> Path:
    # Unique per host, process *and* call, so concurrent writers of one target never share a temp
    # file. Hidden (leading dot) so that globbing readers never pick it up; the host and pid let a
    # later run tell whether its writer is still alive. The target's name is cut (at a character
    # boundary) so that the temp name fits in one path component even when the target's name does.
    # `pid` other than our own only names another writer's temp (tests of the cleanup use it).
    target = Path(target)
    suffix = f"{_TMP_MARK}{_host_tag()}-{os.getpid() if pid is None else pid}-{secrets.token_hex(4)}"
    room = _NAME_MAX - 1 - len(suffix.encode())
    stem = target.name.encode()[:room].decode(errors="ignore")
    return target.with_name(f".{stem}{suffix}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temp path beside `target`; on success it is renamed onto `target`, on any
    failure it is deleted. Use when a library writes the file itself (e.g. `torch.save(obj, tmp)`)."""
    target = Path(target)
    tmp = temp_name(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator:
    """`open()` for writing, atomically: readers see the old file or the whole new one, never a part."""
    if not any(c in mode for c in "wx"):
        raise ValueError(f"atomic_write needs a write mode, got {mode!r}")
    with atomic_path(target) as tmp:
        with open(tmp, mode.replace("x", "w"), **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    with atomic_write(target, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomic(target: str | os.PathLike, obj, **dump_kwargs) -> None:
    write_text_atomic(target, json.dumps(obj, **dump_kwargs))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:  # 0 and negative numbers address process groups, not a writer
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: beyond any pid (a crafted name)
        return False
    except PermissionError:
        return True
    # A killed writer whose parent never reaps it (an orphan in a container whose init does not
    # wait) stays a zombie: it exists for kill(0) but will never finish its temp file.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux) or a race with its exit: assume alive, keep its file
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def remove_stale_temps(directory: str | os.PathLike, min_age_s: float = 0.0) -> list[Path]:
    """Delete temp files that `atomic_path` left in `directory` (not recursive) when their writer was
    killed: names of exactly the temp shape whose writer was this host's and no longer runs (another
    host's temps only when older than a day). Returns the paths removed."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    now, host = time.time(), _host_tag()
    for p in directory.iterdir():
        m = _TMP_RE.match(p.name)
        if m is None or not p.is_file() or p.is_symlink():
            continue
        try:
            age = now - p.stat().st_mtime
        except OSError:
            continue
        pid = int(m["pid"])
        if m["host"] == host:
            stale = pid != os.getpid() and not _pid_alive(pid)
        else:
            stale = age >= 86400
        if age < min_age_s or not stale:
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


# -------------------------------------------------------------------------------------------------
# torch checkpoints


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such {what} file")
    if not path.is_file():  # a folder, FIFO or device: reading it would fail oddly or never end
        kind = "a folder" if path.is_dir() else "not a regular file (a pipe or device?)"
        raise CheckpointError(f"{path}: expected a {what} file, found {kind}; pass the file itself")


def torch_load(path: str | os.PathLike) -> dict:
    """torch.load with weights_only=True (never unpickle code) and mmap when the file allows it."""
    path = Path(path)
    _require_file(path, "checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted download or copy?): fetch it again")
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


# -------------------------------------------------------------------------------------------------
# safetensors

_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}
_MAX_HEADER = 100 * 2**20  # the safetensors format itself caps the JSON header at 100 MB


def _safetensors_header(path: Path, f, size: int) -> tuple[dict, int, dict[str, str]]:
    """Parse and validate the header: (tensor entries, offset of the data, metadata). Every failure
    is a CheckpointError naming the file."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a valid safetensors file ({what}); the file is corrupt or "
                               "truncated: write or download it again")

    if size < 8:
        raise bad(f"{size} bytes, shorter than the 8-byte header length")
    header_len = int.from_bytes(f.read(8), "little")
    if header_len > min(_MAX_HEADER, size - 8):
        raise bad(f"header length {header_len} exceeds the file ({size} bytes)")

    def unique(pairs: list) -> dict:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise bad(f"keys {sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)} appear more "
                      "than once in one object of the header")
        return out

    try:
        header = json.loads(f.read(header_len), object_pairs_hook=unique)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # RecursionError: [[[[...
        raise bad(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise bad(f"__metadata__ must be an object of strings, found {meta!r}"[:300])
    base = 8 + header_len
    spans = []
    for name, info in header.items():
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape, offsets = list(info["shape"]), list(info["data_offsets"])
        except (KeyError, TypeError):
            raise bad(f"tensor {name!r}: unsupported dtype or malformed entry {info!r}") from None
        if not all(_whole(v) and v >= 0 for v in shape + offsets) or len(offsets) != 2:
            raise bad(f"tensor {name!r}: shape {shape} and data_offsets {offsets} must be whole numbers >= 0")
        start, end = offsets
        if start > end or end - start != math.prod(shape) * dtype.itemsize:
            raise bad(f"tensor {name!r}: data offsets {start}..{end} do not fit shape {shape} of {info['dtype']}")
        if base + end > size:
            raise bad(f"tensor {name!r} ends at byte {base + end} but the file has {size} bytes")
        spans.append((start, end, name))
    # the tensors tile the data buffer exactly: no overlap (two names sharing bytes), no gap, nothing after
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            raise bad(f"tensor {name!r} starts at data offset {start}, expected {position} (tensors overlap or "
                      "leave a gap)")
        position = end
    if base + position != size:
        raise bad(f"the tensors end at byte {base + position} but the file has {size} bytes")
    return header, base, meta or {}


def read_safetensors(path: str | os.PathLike, dtype: str | torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file without a second copy in RAM.

    dtype None: views of one copy-on-write memory map; nothing is read until used, so loading costs
    no RAM beyond the pages touched. With `dtype`: floating matrices (ndim >= 2) are read one at a time
    with plain reads and converted, so the peak is the converted weights plus one tensor (a memory
    map would keep every touched fp32 page resident while converting). Smaller tensors keep their
    stored dtype; the family decides (e.g. Dasheng's input BatchNorm stays fp32).
    """
    path = Path(path)
    dtype = parse_dtype(dtype)
    _require_file(path, "safetensors")
    size = path.stat().st_size
    with open(path, "rb") as f:
        header, base, _ = _safetensors_header(path, f, size)
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
                storage = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)
            raw = storage[base + start: base + end]
            if (base + start) % stored.itemsize:  # misaligned for a view: copy this one tensor
                raw = raw.clone()
            out[name] = raw.view(stored).reshape(info["shape"])
    return out


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` dict of a safetensors file (empty when absent); the header is validated."""
    path = Path(path)
    _require_file(path, "safetensors")
    with open(path, "rb") as f:
        return _safetensors_header(path, f, path.stat().st_size)[2]


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                      metadata: dict[str, str] | None = None) -> None:
    """Write tensors atomically (contiguous CPU copies; shared storage is fine)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
