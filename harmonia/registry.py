"""Named pretrained checkpoints: where each one lives, its licence, paper and input/output contract,
and how it is downloaded (`huggingface_hub`, through the local Hugging Face cache).

`harmonia.load_encoder(name)` resolves a name of `REGISTRY`; `harmonia list` prints them. Every
entry carries its architecture, so its contract (output_dim, hop, frames per 10 s, parameter
count) can be checked offline by building it on the meta device (`Entry.build_meta`).

Local copies instead of downloads:
  load_encoder("openbeats-large-i3", path="/data/OpenBEATs-Large-i3")   a snapshot folder or a file
  load_encoder("/data/OpenBEATs-Large-i3/.../epoch_latest.pt")           the checkpoint itself
  HF_HUB_CACHE=/data/hf-cache (a copied Hugging Face cache) with HF_HUB_OFFLINE=1
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harmonia.encoder import AudioEncoder

# the files the `openbeats` package downloads; OpenBEATs checkpoints sit deep in exp/... folders
OPENBEATS_PATTERNS = ("*config.yaml", "*epoch*.pt", "*.pth", "*.ckpt")
DASHENG_HF_PATTERNS = ("config.json", "model.safetensors", "preprocessor_config.json")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
OPENBEATS_PAPER = "Bharadwaj et al., OpenBEATs: A Fully Open-Source General-Purpose Audio Encoder, arXiv:2507.14129"
DASHENG_PAPER = ("Dinkel et al., Scaling up masked audio encoder learning for general audio classification, "
                 "Interspeech 2024, arXiv:2406.06992")
BEATS_PAPER = "Chen et al., BEATs: Audio Pre-Training with Acoustic Tokenizers, ICML 2023, arXiv:2212.09058"
ICME_PAPER = ("Bharadwaj, Cornell et al., The CMU-AIST submission for the ICME 2025 Audio Encoder Challenge, "
              "arXiv:2601.16273")
UNVERIFIED_LICENCE = "not verified here: see the model card at https://huggingface.co/{repo}"


class DownloadError(OSError):
    """A named checkpoint could not be downloaded and is not in the local cache."""


@dataclass(frozen=True)
class Contract:
    """What the encoder takes and gives: mono float waveform in [-1, 1] at `sampling_rate` Hz ->
    (B, T', output_dim) float32 frames every `hop_size_in_ms`; T' = `frames_per_10s` for 10 s."""

    output_dim: int
    hop_size_in_ms: float
    frames_per_10s: int
    parameters: int  # encoder parameters (buffers excluded)
    sampling_rate: int = 16000


@dataclass(frozen=True)
class Entry:
    """One named checkpoint (or ensemble of named checkpoints)."""

    name: str
    family: str  # "beats" | "dasheng" | "ensemble"
    description: str
    contract: Contract
    licence: str
    paper: str
    repo_id: str | None = None  # Hugging Face repository
    revision: str | None = None  # pinned commit (None: the default branch)
    allow_patterns: tuple[str, ...] = ()  # files of the repository that are downloaded
    alternatives: tuple[str, ...] = ()  # other stable sources (URLs)
    architecture: Mapping[str, Any] = field(default_factory=dict)  # BeatsConfig / DashengConfig fields
    options: Mapping[str, Any] = field(default_factory=dict)  # encoder (or ensemble) options
    members: tuple[str, ...] = ()  # ensembles: registry names of the members
    member_options: tuple[Mapping[str, Any], ...] = ()  # ensembles: options per member
    local_env: str | None = None  # environment variable naming a local copy
    notes: str = ""

    @property
    def url(self) -> str | None:
        return f"https://huggingface.co/{self.repo_id}" if self.repo_id else None

    def build_meta(self) -> AudioEncoder:
        """The encoder with weights on the meta device (no memory, no download): its contract."""
        import torch

        if self.family == "ensemble":
            from harmonia.ensemble import EnsembleEncoder

            opts = self.member_options or tuple({} for _ in self.members)
            return EnsembleEncoder([REGISTRY[m].build_meta_with(o) for m, o in zip(self.members, opts)],
                                   names=list(self.members), **self.options)
        with torch.device("meta"):
            if self.family == "beats":
                from harmonia.encoders.beats import BeatsEncoder
                from harmonia.models.beats import BeatsConfig, BeatsModel

                return BeatsEncoder(BeatsModel(BeatsConfig(**self.architecture)), **self.options)
            if self.family == "dasheng":
                from harmonia.encoders.dasheng import DashengEncoder
                from harmonia.models.dasheng import Dasheng, DashengConfig

                return DashengEncoder(Dasheng(DashengConfig(**self.architecture)), **self.options)
        raise ValueError(f"registry entry {self.name}: unknown family {self.family!r}")

    def build_meta_with(self, options: Mapping[str, Any]) -> AudioEncoder:
        from harmonia.ensemble import with_options

        return with_options(self.build_meta(), **options)

    def describe(self) -> dict[str, Any]:
        c = self.contract
        return {"name": self.name, "family": self.family, "description": self.description,
                "source": self.url or (f"local (${self.local_env})" if self.local_env else "members"),
                "revision": self.revision, "alternatives": list(self.alternatives), "licence": self.licence,
                "paper": self.paper, "members": list(self.members), "options": dict(self.options),
                "sampling_rate": c.sampling_rate, "output_dim": c.output_dim, "hop_size_in_ms": c.hop_size_in_ms,
                "frames_per_10s": c.frames_per_10s, "parameters": c.parameters, "notes": self.notes}


# -------------------------------------------------------------------------------------------------
# the entries

_BEATS_BASE = dict(encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=12)
_BEATS_LARGE = dict(encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096, encoder_attention_heads=16)
# BEATs in the flat layout (the paper's): 496 tokens per 10 s at a nominal 20 ms
_BASE_CONTRACT = Contract(output_dim=768, hop_size_in_ms=20.0, frames_per_10s=496, parameters=90_311_792)
_LARGE_CONTRACT = Contract(output_dim=1024, hop_size_in_ms=20.0, frames_per_10s=496, parameters=311_376_576)
_DASHENG = {  # name -> (HF repo, pinned revision (mteb), Zenodo file, embed_dim, depth, heads, parameters)
    "base": ("mispeech/dasheng-base", "d29a721c75b996ffa49e2a1f985349d191a4ae5e", "dasheng_base.pt",
             768, 12, 12, 85_447_808),
    "0.6b": ("mispeech/dasheng-0.6B", "9ea8bcc013ef3d220855368b2be7e0e3e74641d8", "dasheng_06b.pt",
             1280, 32, 16, 630_333_568),
    "1.2b": ("mispeech/dasheng-1.2B", "e830b3b0014affc8447a9c15d18bb196a747137f", "dasheng_12b.pt",
             1536, 40, 24, 1_134_047_360),
}


def _entries() -> list[Entry]:
    out: list[Entry] = []
    for size, arch, contract in (("base", _BEATS_BASE, _BASE_CONTRACT), ("large", _BEATS_LARGE, _LARGE_CONTRACT)):
        for it in (1, 2, 3):
            repo = f"shikhar7ssu/OpenBEATs-{size.capitalize()}-i{it}"
            out.append(Entry(
                name=f"openbeats-{size}-i{it}", family="beats",
                description=f"OpenBEATs {size.capitalize()} ({contract.parameters / 1e6:.0f}M), tokenizer "
                            f"iteration {it}, self-supervised, multi-domain pre-training",
                contract=contract, licence=UNVERIFIED_LICENCE.format(repo=repo), paper=OPENBEATS_PAPER,
                repo_id=repo, allow_patterns=OPENBEATS_PATTERNS, architecture=arch))
    for suffix, what in (("", "speech-heavy"), ("-sound", "sound-heavy")):
        repo = f"shikhar7ssu/OpenBEATs-ICME{suffix.upper()}"
        out.append(Entry(
            name=f"openbeats-icme{suffix}", family="beats",
            description=f"BEATs 300M of the CMU-AIST ICME 2025 submission ({what} pre-training mixture)",
            contract=_LARGE_CONTRACT, licence=UNVERIFIED_LICENCE.format(repo=repo), paper=ICME_PAPER,
            repo_id=repo, allow_patterns=OPENBEATS_PATTERNS, architecture=_BEATS_LARGE,
            notes="architecture assumed OpenBEATs-Large (paper: 300M, ViT-Large-like); the checkpoint's own cfg "
                  "decides when loading. Which repository is the 'Speech' and which the 'Balanced' mixture of "
                  "Table I is not stated on the model cards we could read."))
    for size, (repo, rev, zfile, dim, depth, heads, params) in _DASHENG.items():
        out.append(Entry(
            name=f"dasheng-{size}", family="dasheng",
            description=f"Dasheng {size} ({params / 1e6:.0f}M), masked autoencoder, 25 Hz frames",
            contract=Contract(output_dim=dim, hop_size_in_ms=40.0, frames_per_10s=250, parameters=params),
            licence="Apache-2.0", paper=DASHENG_PAPER, repo_id=repo, revision=rev,
            allow_patterns=DASHENG_HF_PATTERNS,
            alternatives=(f"https://zenodo.org/records/11511780/files/{zfile}",),
            architecture=dict(embed_dim=dim, depth=depth, num_heads=heads)))
    out.append(Entry(
        name="beats-iter3", family="beats",
        description="Microsoft BEATs iter3 (90M), AudioSet-2M self-supervised",
        contract=_BASE_CONTRACT, licence="MIT", paper=BEATS_PAPER, architecture=_BEATS_BASE,
        alternatives=("https://github.com/microsoft/unilm/tree/master/beats (OneDrive link in the README)",),
        local_env="HARMONIA_BEATS_ITER3",
        notes="no stable public host: download BEATs_iter3.pt from the README link, then pass path=FILE or set "
              "HARMONIA_BEATS_ITER3=FILE"))
    out.append(Entry(
        name="cmu-aist-icme2025", family="ensemble",
        description="the paper's ensemble: two BEATs-300M (flat, 20 ms) + Dasheng 1.2B upsampled to the BEATs "
                    "frame count, concatenated",
        contract=Contract(output_dim=1024 + 1024 + 1536, hop_size_in_ms=20.0, frames_per_10s=496,
                          parameters=2 * 311_376_576 + 1_134_047_360),
        licence="the members' licences", paper=ICME_PAPER,
        members=("openbeats-icme", "openbeats-icme-sound", "dasheng-1.2b"),
        member_options=({"layout": "flat"}, {"layout": "flat"}, {}),
        options={"align": "nearest", "reference": 0, "fuse": "concat"},
        notes="the upsampling method is not stated in the paper; 'nearest' repeats frames (pass align='linear' "
              "to interpolate)"))
    return out


REGISTRY: dict[str, Entry] = {e.name: e for e in _entries()}


def get_entry(name: str) -> Entry:
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown registry name {name!r}.{hint} Known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


# -------------------------------------------------------------------------------------------------
# downloading and finding the checkpoint in a snapshot


def download(repo_id: str, revision: str | None = None, allow_patterns: Sequence[str] | None = None,
             cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
             name: str | None = None) -> Path:
    """`huggingface_hub.snapshot_download` into the Hugging Face cache (HF_HOME / HF_HUB_CACHE or
    `cache_dir`); a complete cached snapshot is used without network. Any failure becomes a
    `DownloadError` naming the repository and how to use a local copy instead."""
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
    format, Hugging Face Dasheng) is returned as is. Among several files the choice must be
    unambiguous: a single file, or a single one named like a release (`*epoch*`, `*ave*`, `*best*`);
    otherwise the error lists the candidates."""
    from harmonia.hub import CheckpointError

    root = Path(snapshot)
    if (root / "config.json").is_file() and ((root / "model.safetensors").is_file()
                                             or _is_linked_ensemble(root)):
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


def _is_linked_ensemble(path: Path) -> bool:
    from harmonia.ensemble import sniff_dir

    return sniff_dir(path)


def _find_config_yaml(root: Path, ckpt: Path) -> Path | None:
    """An ESPnet config.yaml for a bare state dict, when it is not beside the file (the BEATs loader
    already looks in the file's folder and the one above)."""
    near = {ckpt.parent / "config.yaml", ckpt.parent.parent / "config.yaml"}
    if any(p.exists() for p in near):
        return None
    found = sorted(root.rglob("config.yaml"))
    return found[0] if found else None


def load_snapshot(snapshot: str | os.PathLike, **options: Any) -> AudioEncoder:
    """Load the checkpoint of a downloaded (or copied) snapshot folder."""
    from harmonia.hub import load_local, torch_load

    root = Path(snapshot)
    ckpt = find_checkpoint(root) if root.is_dir() else root
    if ckpt.is_file() and root.is_dir() and "beats_config" not in options:
        yaml_file = _find_config_yaml(root, ckpt)
        if yaml_file is not None and "cfg" not in torch_load(ckpt):
            import yaml

            conf = yaml.safe_load(yaml_file.read_text()) or {}
            cfg = (conf.get("encoder_conf") or {}).get("beats_config")
            if cfg is not None:
                options = {**options, "beats_config": cfg}
    return load_local(ckpt, **options)


# -------------------------------------------------------------------------------------------------
# entry points used by harmonia.hub.load_encoder


def load_named(name: str, path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
               cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
               **options: Any) -> AudioEncoder:
    """Load a registry entry. `path`: a local copy (snapshot folder or checkpoint file; for an
    ensemble, one per member) instead of downloading; `cache_dir`/`local_files_only` go to
    `huggingface_hub`. Other options go to the encoder (`layout`, `layer`, `dtype`, `device`, ...);
    for ensembles `align`, `reference`, `fuse` too."""
    entry = get_entry(name)
    if entry.family == "ensemble":
        from harmonia.ensemble import EnsembleEncoder, configure_members, split_options

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
        if not Path(local).exists():
            raise FileNotFoundError(f"{name}: local copy {local} does not exist; expected a checkpoint file or a "
                                    "snapshot folder")
        return load_snapshot(local, **options)
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
    from harmonia.ensemble import EnsembleEncoder, configure_members, split_options
    from harmonia.hub import load_encoder

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
                 local_files_only: bool = False, **options: Any) -> AudioEncoder:
    """Any Hugging Face repository id (owner/name) holding a supported checkpoint; for the repos of
    the registry their download patterns are used."""
    known = next((e for e in REGISTRY.values() if e.repo_id and e.repo_id.lower() == repo_id.lower()), None)
    patterns = known.allow_patterns if known else (*OPENBEATS_PATTERNS, *DASHENG_HF_PATTERNS)
    snapshot = download(repo_id, revision or (known.revision if known else None), patterns, cache_dir,
                        local_files_only, known.name if known else None)
    return load_snapshot(snapshot, **options)
