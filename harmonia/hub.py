"""Where encoders come from: local checkpoints in every supported format, harmonia's own format
(`config.json` + `model.safetensors`), ensembles, named checkpoints of the registry and Hugging Face
repositories (downloaded through `huggingface_hub` and its cache).

Format detection is delegated to the family modules in `harmonia.encoders`: each exposes
  sniff_file(ckpt: dict, path) -> bool      is this torch.load()-ed object one of mine?
  from_file(ckpt, path, **options)          build the encoder from it
  sniff_dir(path) -> bool / from_dir(path, weights=None, **options)   directory layouts (Hugging Face)
  from_harmonia(config: dict, state, source=..., **options)           harmonia's own format
Ensembles are built here, since their members are loaded like any other source.
"""

from __future__ import annotations

import contextvars
import difflib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import Tensor

import harmonia.encoders.accel as accel
from harmonia.encoder import AudioEncoder
from harmonia.encoders import beats, dasheng
from harmonia.encoders.beats import BeatsEncoder, espnet_beats_config, find_espnet_yaml
from harmonia.ensemble import ENSEMBLE_OPTIONS, EnsembleEncoder, configure_members, split_options
from harmonia.io import (
    CheckpointError,
    check_type,
    read_safetensors,
    torch_load,
    write_json_atomic,
    write_safetensors,
)
from harmonia.models.beats_tokenizer import BeatsTokenizerModel
from harmonia.registry import DASHENG_HF_PATTERNS, OPENBEATS_PATTERNS, REGISTRY, get_entry

__all__ = ["CheckpointError", "DownloadError", "torch_load", "read_safetensors", "load_encoder", "load_local",
           "save_harmonia", "load_harmonia", "list_encoders", "load_named", "load_tokenizer",
           "write_linked_ensemble"]

FAMILIES: dict[str, ModuleType] = {"beats": beats, "dasheng": dasheng}
ENSEMBLE = "ensemble"
HARMONIA_FORMAT = "harmonia-encoder"  # config.json + model.safetensors (any family, ensembles too)
LINKED_FORMAT = "harmonia-ensemble"  # config.json listing member sources, no weights
FORMAT_VERSION = 1  # of both formats; a newer one is refused
WEIGHTS = "model.safetensors"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


class DownloadError(OSError):
    """A named checkpoint could not be downloaded and is not in the local cache."""


# -------------------------------------------------------------------------------------------------
# local files and folders


def _read_config(path: Path) -> dict[str, Any]:
    """A config.json as a dict; anything else is a CheckpointError naming the file."""
    try:
        text = path.read_bytes()
    except OSError as e:  # permissions, a folder in its place, I/O errors
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e}); check that it is a file you may "
                              "read") from None
    try:
        config = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot read as JSON ({e}); write it again (harmonia convert)") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


def _config_format(folder: Path) -> str | None:
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        return None
    try:
        fmt = json.loads(cfg_file.read_text()).get("format")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, AttributeError):
        return None
    return fmt if fmt in (HARMONIA_FORMAT, LINKED_FORMAT) else None


def load_local(path: str | os.PathLike, **options) -> AudioEncoder:
    """Load an encoder from a local file or directory in any supported format. A `.safetensors`
    file is loaded itself, with the `config.json` beside it (harmonia's or Hugging Face's)."""
    path = Path(path)
    if path.is_dir():
        return _load_dir(path, path / WEIGHTS, **options)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"{path}: no such safetensors file")
        return _load_dir(path.parent, path, **options)
    ckpt = torch_load(path)
    for fam in FAMILIES.values():
        if fam.sniff_file(ckpt, path):
            return fam.from_file(ckpt, path, **options)
    keys = list(ckpt)[:8]
    raise CheckpointError(
        f"{path}: unrecognised checkpoint layout (top-level keys {keys}...). Supported: Microsoft "
        "BEATs/Tokenizer {'cfg','model'}, OpenBEATs {'cfg','model'}, ESPnet 'encoder.'-prefixed state "
        "dicts (with config.yaml beside them or beats_config=...), Dasheng {'model','config'}."
    )


def _load_dir(folder: Path, weights: Path, **options) -> AudioEncoder:
    fmt = _config_format(folder)
    if fmt == LINKED_FORMAT:
        if weights.name != WEIGHTS:
            raise CheckpointError(f"{weights}: {folder / 'config.json'} describes a linked ensemble, which has no "
                                  "weights file; load the folder itself")
        return _load_linked_ensemble(folder, **options)
    if fmt == HARMONIA_FORMAT:
        return load_harmonia(folder, weights=weights, **options)
    for fam in FAMILIES.values():
        if fam.sniff_dir(folder):
            return fam.from_dir(folder, weights=weights, **options)
    if (folder / "config.json").exists():  # a damaged config.json: say so rather than "unknown layout"
        _read_config(folder / "config.json")
    raise CheckpointError(
        f"{weights if weights.name != WEIGHTS else folder}: not a known checkpoint layout. Expected harmonia's "
        "config.json + model.safetensors (written by `harmonia convert`) or a Hugging Face Dasheng folder "
        "(config.json + model.safetensors) with the config.json beside the weights; or pass the checkpoint "
        "file itself.")


# -------------------------------------------------------------------------------------------------
# harmonia's own format


def save_harmonia(encoder: AudioEncoder, out_dir: str | os.PathLike) -> Path:
    """Write `config.json` + `model.safetensors` atomically (temp names, then rename)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"format": HARMONIA_FORMAT, "version": FORMAT_VERSION, **encoder.export_config()}
    write_safetensors(encoder.export_state(), out / WEIGHTS, metadata={"format": HARMONIA_FORMAT})
    write_json_atomic(out / "config.json", config, indent=2, sort_keys=True)
    return out


def _check_version(config: Mapping[str, Any], source: Path) -> None:
    version = config.get("version", FORMAT_VERSION)
    check_type(f"{source}: version", version, int, CheckpointError)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{source}: written by a newer harmonia (format version {version}, this one reads "
                              f"up to {FORMAT_VERSION}); upgrade harmonia")


# what each family's config.json holds, the required key first (the architecture configs themselves
# are checked by the family's config dataclass)
_SCHEMA: dict[str, dict[str, Any]] = {
    "beats": {"config": dict, "tokenizer": bool, "options": dict},
    "dasheng": {"model": dict, "options": dict},
    ENSEMBLE: {"members": list[dict], "names": list[str] | None, "options": dict},
}


def from_config(config: dict[str, Any], state: Mapping[str, Tensor], source: str = "harmonia checkpoint",
                **options) -> AudioEncoder:
    """Build an encoder from harmonia's config dict (as in config.json) and its state dict."""
    family = config.get("family")
    if family not in _SCHEMA:
        raise CheckpointError(f"{source}: unknown encoder family {family!r}; expected one of {sorted(_SCHEMA)}")
    required = next(iter(_SCHEMA[family]))
    if required not in config:
        raise CheckpointError(f"{source}: a {family} config needs the key {required!r}; found keys {sorted(config)}")
    for key, hint in _SCHEMA[family].items():
        if key in config:
            check_type(f"{source}: {key}", config[key], hint, CheckpointError)
    try:
        if family == ENSEMBLE:
            return _ensemble_from_config(config, state, source, **options)
        return FAMILIES[family].from_harmonia(config, state, source=source, **options)
    except CheckpointError:
        raise
    except ValueError as e:  # a config field of the wrong type or value
        raise CheckpointError(f"{source}: {e}") from e


def load_harmonia(path: str | os.PathLike, weights: str | os.PathLike | None = None, **options) -> AudioEncoder:
    """harmonia's format: `path/config.json` + `weights` (default `path/model.safetensors`)."""
    path = Path(path)
    weights = Path(weights) if weights is not None else path / WEIGHTS
    config = _read_config(path / "config.json")
    _check_version(config, path / "config.json")
    state = read_safetensors(weights, options.get("dtype"))
    return from_config(config, state, str(path / "config.json"), **options)


def _ensemble_from_config(config: dict[str, Any], state: Mapping[str, Tensor], source: str,
                          **options: Any) -> EnsembleEncoder:
    """The member configs in `config["members"]`, weights `members.{i}.*`."""
    ens, build, shared = split_options(options)
    member_cfgs = config.get("members") or []
    per_item: list[dict[str, Tensor]] = [{} for _ in member_cfgs]
    for key, value in state.items():
        head, _, rest = key.partition(".")
        idx, _, name = rest.partition(".")
        if head != "members" or not idx.isdigit() or int(idx) >= len(member_cfgs):
            raise CheckpointError(f"{source}: unexpected key {key!r} in the ensemble weights; expected "
                                  f"'members.<i>.<key>' with i < {len(member_cfgs)}")
        per_item[int(idx)][name] = value
    accepted = [set(c.get("options", {})) for c in member_cfgs]
    unused = set(shared) - set().union(*accepted)
    if unused:
        raise TypeError(f"no ensemble member takes option(s) {sorted(unused)}; the members take "
                        f"{sorted(set().union(*accepted))}")
    members = [from_config(cfg, sub, f"{source} member {i}", **build, **{k: v for k, v in shared.items() if k in acc})
               for i, (cfg, sub, acc) in enumerate(zip(member_cfgs, per_item, accepted))]
    return EnsembleEncoder(members, names=config.get("names"), **{**config.get("options", {}), **ens})


# -------------------------------------------------------------------------------------------------
# linked ensembles: config.json listing member sources


def write_linked_ensemble(out_dir: str | os.PathLike, members: Sequence[str], names: Sequence[str] | None = None,
                          member_options: Sequence[Mapping[str, Any]] | None = None, **options: Any) -> Path:
    """Write `out_dir/config.json` describing an ensemble of member sources (paths relative to
    `out_dir`, absolute paths, registry names or repo ids), e.g. member sub-directories written by
    `harmonia convert`. Loading it loads each member; no weights are duplicated."""
    ens, _, rest = split_options(options)
    if rest:
        raise TypeError(f"write_linked_ensemble: unknown option(s) {sorted(rest)}; expected {list(ENSEMBLE_OPTIONS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"format": LINKED_FORMAT, "version": FORMAT_VERSION, "members": [str(m) for m in members],
              "names": list(names) if names else None,
              "member_options": [dict(o) for o in member_options] if member_options else None, "options": ens}
    write_json_atomic(out / "config.json", config, indent=2)
    return out


# the linked ensembles being loaded (outermost first): a member leading back to one of them is a loop
_LINKED_STACK: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("linked_stack", default=())


def _load_linked_ensemble(path: Path, **options: Any) -> EnsembleEncoder:
    cfg_file = path / "config.json"
    stack = _LINKED_STACK.get()
    if path.resolve() in stack:
        chain = " -> ".join(str(p) for p in (*stack, path.resolve()))
        raise CheckpointError(f"{stack[-1] / 'config.json'}: a member leads back to {path.resolve()}, so the linked "
                              f"ensemble contains itself ({chain}); list member checkpoints in 'members', not "
                              "the ensemble's own folder")
    token = _LINKED_STACK.set((*stack, path.resolve()))
    try:
        return _build_linked_ensemble(path, cfg_file, **options)
    finally:
        _LINKED_STACK.reset(token)


def _build_linked_ensemble(path: Path, cfg_file: Path, **options: Any) -> EnsembleEncoder:
    config = _read_config(cfg_file)
    _check_version(config, cfg_file)
    members = config.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise CheckpointError(f"{cfg_file}: expected a non-empty list 'members' of member sources "
                              f"(sub-directories, files or registry names), found {members!r}")
    per_member = config.get("member_options") or [{}] * len(members)
    check_type(f"{cfg_file}: member_options", per_member, list[dict], CheckpointError)
    check_type(f"{cfg_file}: names", config.get("names"), list[str] | None, CheckpointError)
    check_type(f"{cfg_file}: options", config.get("options", {}), dict, CheckpointError)
    if len(per_member) != len(members):
        raise CheckpointError(f"{cfg_file}: member_options has {len(per_member)} entries for {len(members)} members")
    ens, build, shared = split_options(options)
    built = []
    for src, opts in zip(members, per_member):
        local = path / src
        built.append(load_encoder(local if local.exists() else src, **build, **opts))
    return EnsembleEncoder(configure_members(built, shared), names=config.get("names"),
                           **{**config.get("options", {}), **ens})


# -------------------------------------------------------------------------------------------------
# downloads and snapshot folders


def download(repo_id: str, revision: str | None = None, allow_patterns: Sequence[str] | None = None,
             cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
             name: str | None = None) -> Path:
    """`huggingface_hub.snapshot_download` into the Hugging Face cache (HF_HOME / HF_HUB_CACHE or
    `cache_dir`); a complete cached snapshot is used without network. Any failure becomes a
    `DownloadError` naming the repository and how to use a local copy instead (advice that
    `load_encoder(name or repo_id, path=DIR)` follows without touching the network)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                      allow_patterns=list(allow_patterns) if allow_patterns else None,
                                      local_files_only=local_files_only))
    except KeyboardInterrupt:
        raise
    except Exception as e:
        from huggingface_hub import constants

        cache = cache_dir or constants.HF_HUB_CACHE
        label = name or repo_id
        entry = REGISTRY.get(name or "")
        alt = f" Other sources: {', '.join(entry.alternatives)}." if entry and entry.alternatives else ""
        raise DownloadError(
            f"cannot download the Hugging Face repository {repo_id}"
            f"{f' (revision {revision})' if revision else ''} for {label!r}, and the local cache {cache} has no "
            f"complete copy ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Offline, use a local "
            f"copy: on a machine with internet run `hf download {repo_id} --local-dir DIR` (huggingface_hub's CLI), copy DIR "
            f"here and pass it: harmonia.load_encoder({label!r}, path='DIR') or `--model DIR/<checkpoint file>`; "
            f"or copy a Hugging Face cache that holds it and set HF_HUB_CACHE to it.{alt}") from e


def find_checkpoint(snapshot: str | os.PathLike) -> Path:
    """The checkpoint inside a downloaded snapshot, wherever it is nested (OpenBEATs repositories
    keep theirs under exp/... folders). A directory layout that is itself a checkpoint (harmonia's
    format, Hugging Face Dasheng, a linked ensemble) is returned as is. Among several files the
    choice must be unambiguous: a single file, or a single one named like a release (`*epoch*`,
    `*ave*`, `*best*`); otherwise the error lists the candidates."""
    root = Path(snapshot)
    if (root / "config.json").is_file() and ((root / WEIGHTS).is_file() or _config_format(root) == LINKED_FORMAT):
        return root
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        listing = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:20]
        raise CheckpointError(f"{root}: no checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}) in this snapshot; "
                              f"found {listing}. Pass the checkpoint file itself.")
    if len(files) == 1:
        return files[0]
    release = re.compile(r"epoch|\bave\b|\.ave|best|latest", re.I)
    preferred = [p for p in files if release.search(p.name) and "optim" not in p.name.lower()]
    if len(preferred) == 1:
        return preferred[0]
    raise CheckpointError(f"{root}: several checkpoint files and no single release file among "
                          f"{[str(p.relative_to(root)) for p in files]}; pass the one you want "
                          "(harmonia.load_encoder(FILE) or path=FILE)")


def load_snapshot(snapshot: str | os.PathLike, **options: Any) -> AudioEncoder:
    """Load the checkpoint of a downloaded (or copied) snapshot folder, or a checkpoint file. A bare
    ESPnet state dict takes its config.yaml from anywhere in the snapshot."""
    root = Path(snapshot)
    ckpt = find_checkpoint(root) if root.is_dir() else root
    if ckpt.is_file() and ckpt.suffix in CHECKPOINT_SUFFIXES and root.is_dir() and "beats_config" not in options:
        yaml_file = find_espnet_yaml(ckpt, root)
        if yaml_file is not None:
            loaded = torch_load(ckpt)  # memory-mapped: no second copy of the weights
            if beats.sniff_file(loaded, ckpt) and "cfg" not in loaded:
                options = {**options, "beats_config": espnet_beats_config(yaml_file)}
    return load_local(ckpt, **options)


def _local_copy(label: str, path: str | os.PathLike) -> Path:
    if not Path(path).exists():
        raise FileNotFoundError(f"{label}: local copy {path} does not exist; expected a checkpoint file or a "
                                "snapshot folder")
    return Path(path)


# -------------------------------------------------------------------------------------------------
# named checkpoints, ad-hoc ensembles, Hugging Face repositories


def load_named(name: str, path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
               cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
               **options: Any) -> AudioEncoder:
    """Load a registry entry. `path`: a local copy (snapshot folder or checkpoint file; for an
    ensemble, one per member) instead of downloading; `cache_dir`/`local_files_only` go to
    `huggingface_hub`. Other options go to the encoder (`layout`, `layer`, `dtype`, `device`, ...);
    for ensembles `align`, `reference`, `fuse` too."""
    entry = get_entry(name)
    if entry.family == ENSEMBLE:
        ens, build, shared = split_options(options)
        paths: Sequence[Any] = [None] * len(entry.members)
        if path is not None:
            if isinstance(path, (str, os.PathLike)) or len(path) != len(entry.members):
                raise ValueError(f"{name}: path must list one local copy per member {list(entry.members)}")
            paths = list(path)
        per_member = entry.member_options or tuple({} for _ in entry.members)
        members = [load_named(m, path=p, cache_dir=cache_dir, local_files_only=local_files_only, **build, **o)
                   for m, p, o in zip(entry.members, paths, per_member)]
        return EnsembleEncoder(configure_members(members, shared), names=list(entry.members),
                               **{**entry.options, **ens})
    options = {**entry.options, **options}
    local = path if path is not None else (os.environ.get(entry.local_env) if entry.local_env else None)
    if local is not None:
        return load_snapshot(_local_copy(name, local), **options)
    if entry.repo_id is None:
        raise DownloadError(f"{name!r} has no stable public host; get it from {', '.join(entry.alternatives)} and "
                            f"pass it: harmonia.load_encoder({name!r}, path='FILE.pt'), set {entry.local_env}=FILE.pt, "
                            "or load the file directly: harmonia.load_encoder('FILE.pt') / --model FILE.pt")
    snapshot = download(entry.repo_id, entry.revision, entry.allow_patterns, cache_dir, local_files_only, name)
    return load_snapshot(snapshot, **options)


def parse_member(spec: str) -> tuple[str, dict[str, Any]]:
    """'name' or 'name@LAYER' (the member's state after LAYER layers) -> (source, options). A spec
    that is an existing path is taken whole even if it contains '@'."""
    if "@" in spec and not Path(spec).exists():
        source, _, layer = spec.rpartition("@")
        if re.fullmatch(r"-?\d+", layer):
            return source, {"layer": int(layer)}
        raise ValueError(f"ensemble member {spec!r}: expected SOURCE or SOURCE@LAYER with an integer LAYER")
    return spec, {}


def load_adhoc_ensemble(spec: str, member_options: Sequence[Mapping[str, Any]] | None = None,
                        **options: Any) -> AudioEncoder:
    """'a+b+c': an ensemble of any sources (registry names, local paths, repo ids), each optionally
    'source@layer'. Options: align, reference, fuse (the ensemble), dtype, device (every member),
    others (layout, layer, chunk_seconds, ...) go to the members that take them; `member_options`
    gives one dict per member."""
    parts = [p.strip() for p in spec.split("+")]
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"ensemble spec {spec!r}: expected two or more sources joined by '+', e.g. "
                         "'openbeats-icme+openbeats-icme-sound+dasheng-1.2b'")
    if member_options is not None and len(member_options) != len(parts):
        raise ValueError(f"member_options: {len(member_options)} given for {len(parts)} members")
    ens, build, shared = split_options(options)
    members = []
    for i, part in enumerate(parts):
        source, opts = parse_member(part)
        opts = {**opts, **(member_options[i] if member_options else {})}
        members.append(load_encoder(source, **build, **opts))
    return EnsembleEncoder(configure_members(members, shared), names=[parse_member(p)[0] for p in parts], **ens)


def load_hf_repo(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                 local_files_only: bool = False, path: str | os.PathLike | None = None,
                 **options: Any) -> AudioEncoder:
    """Any Hugging Face repository id (owner/name) holding a supported checkpoint; for the repos of
    the registry their download patterns are used. `path`: a local copy of the repository (what
    `hf download REPO --local-dir DIR` wrote) instead of downloading."""
    if path is not None:
        return load_snapshot(_local_copy(repo_id, path), **options)
    known = next((e for e in REGISTRY.values() if e.repo_id and e.repo_id.lower() == repo_id.lower()), None)
    patterns = known.allow_patterns if known else (*OPENBEATS_PATTERNS, *DASHENG_HF_PATTERNS)
    snapshot = download(repo_id, revision or (known.revision if known else None), patterns, cache_dir,
                        local_files_only, known.name if known else None)
    return load_snapshot(snapshot, **options)


# -------------------------------------------------------------------------------------------------
# entry points


def list_encoders() -> list[str]:
    """Names accepted by `load_encoder` (the registry of named checkpoints)."""
    return sorted(REGISTRY)


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
    if source in REGISTRY:
        return load_named(source, **options)
    if "+" in source:
        return load_adhoc_ensemble(source, **options)
    if source.count("/") == 1 and not source.startswith((".", "/")):
        return load_hf_repo(source, **options)
    if source.startswith((".", "/", "~")) or Path(source).suffix in (*CHECKPOINT_SUFFIXES, ".safetensors"):
        raise FileNotFoundError(f"{source}: no such checkpoint file or folder")
    close = difflib.get_close_matches(source, list(REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown encoder {source!r}: not a local path, a registry name or a Hugging Face repo id.{hint} "
        "See `harmonia list` for the names."
    )


def load_tokenizer(path: str | os.PathLike, **options: Any) -> BeatsEncoder:
    """Load a Microsoft tokenizer checkpoint (or harmonia export of one); `.labels(wav)` gives codes."""
    enc = load_encoder(path, **options)
    if not isinstance(enc, BeatsEncoder) or not isinstance(enc.model, BeatsTokenizerModel):
        raise CheckpointError(f"{path}: not a BEATs tokenizer checkpoint (no quantize.* weights)")
    return enc
