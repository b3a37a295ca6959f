"""Named pretrained checkpoints, as data: where each one lives, its licence, paper, architecture (a
preset of its model file) and input/output contract. Loading and downloading them is
`harmonia.hub.load_named` / `harmonia.download`.

`harmonia.load_encoder(name)` resolves a name of `REGISTRY`; `harmonia list` prints them. Every
entry names its architecture, so its contract (output_dim, hop, frames per 10 s, parameter count)
can be checked offline by building it on the meta device (`Entry.build_meta`).

Local copies instead of downloads:
  load_encoder("openbeats-large-i3", path="/data/OpenBEATs-Large-i3")   a snapshot folder or a file
  load_encoder("/data/OpenBEATs-Large-i3/.../epoch_latest.pt")           the checkpoint itself
  HF_HUB_CACHE=/data/hf-cache (a copied Hugging Face cache) with HF_HUB_OFFLINE=1
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from harmonia.encoder import AudioEncoder
from harmonia.encoders.beats import BeatsEncoder
from harmonia.encoders.dasheng import DashengEncoder
from harmonia.ensemble import EnsembleEncoder, with_options
from harmonia.models import beats as beats_model
from harmonia.models import dasheng as dasheng_model

# the files the `openbeats` package downloads; OpenBEATs checkpoints sit deep in exp/... folders
OPENBEATS_PATTERNS = ("*config.yaml", "*epoch*.pt", "*.pth", "*.ckpt")
DASHENG_HF_PATTERNS = ("config.json", "model.safetensors", "preprocessor_config.json")
OPENBEATS_PAPER = "Bharadwaj et al., OpenBEATs: A Fully Open-Source General-Purpose Audio Encoder, arXiv:2507.14129"
DASHENG_PAPER = ("Dinkel et al., Scaling up masked audio encoder learning for general audio classification, "
                 "Interspeech 2024, arXiv:2406.06992")
BEATS_PAPER = "Chen et al., BEATs: Audio Pre-Training with Acoustic Tokenizers, ICML 2023, arXiv:2212.09058"
ICME_PAPER = ("Bharadwaj, Cornell et al., The CMU-AIST submission for the ICME 2025 Audio Encoder Challenge, "
              "arXiv:2601.16273")
UNVERIFIED_LICENCE = "not verified here: see the model card at https://huggingface.co/{repo}"


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
    architecture: str | None = None  # a preset name of the family's model file (models/beats.py, dasheng.py)
    options: Mapping[str, Any] = field(default_factory=dict)  # encoder (or ensemble) options
    members: tuple[str, ...] = ()  # ensembles: registry names of the members
    member_options: tuple[Mapping[str, Any], ...] = ()  # ensembles: options per member
    local_env: str | None = None  # environment variable naming a local copy
    notes: str = ""

    @property
    def url(self) -> str | None:
        return f"https://huggingface.co/{self.repo_id}" if self.repo_id else None

    def build_meta(self, **options: Any) -> AudioEncoder:
        """The encoder with weights on the meta device (no memory, no download): its contract.
        `options` change encoder options (e.g. layout) of a single-model entry."""
        if self.family == "ensemble":
            opts = self.member_options or tuple({} for _ in self.members)
            return EnsembleEncoder([REGISTRY[m].build_meta(**o) for m, o in zip(self.members, opts)],
                                   names=list(self.members), **self.options)
        with torch.device("meta"):
            if self.family == "beats":
                enc = BeatsEncoder(beats_model.BeatsModel(beats_model.preset(self.architecture)), **self.options)
            elif self.family == "dasheng":
                enc = DashengEncoder(dasheng_model.Dasheng(dasheng_model.preset(self.architecture)), **self.options)
            else:
                raise ValueError(f"registry entry {self.name}: unknown family {self.family!r}")
        return with_options(enc, **options)

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

# BEATs in the flat layout (the paper's): 496 tokens per 10 s at a nominal 20 ms
_BASE_CONTRACT = Contract(output_dim=768, hop_size_in_ms=20.0, frames_per_10s=496, parameters=90_311_792)
_LARGE_CONTRACT = Contract(output_dim=1024, hop_size_in_ms=20.0, frames_per_10s=496, parameters=311_376_576)
_DASHENG = {  # name -> (HF repo, pinned revision (mteb), Zenodo file, model preset, parameters)
    "base": ("mispeech/dasheng-base", "d29a721c75b996ffa49e2a1f985349d191a4ae5e", "dasheng_base.pt",
             "dasheng-base", 85_447_808),
    "0.6b": ("mispeech/dasheng-0.6B", "9ea8bcc013ef3d220855368b2be7e0e3e74641d8", "dasheng_06b.pt",
             "dasheng-0.6B", 630_333_568),
    "1.2b": ("mispeech/dasheng-1.2B", "e830b3b0014affc8447a9c15d18bb196a747137f", "dasheng_12b.pt",
             "dasheng-1.2B", 1_134_047_360),
}


def _entries() -> list[Entry]:
    out: list[Entry] = []
    for size, contract in (("base", _BASE_CONTRACT), ("large", _LARGE_CONTRACT)):
        for it in (1, 2, 3):
            repo = f"shikhar7ssu/OpenBEATs-{size.capitalize()}-i{it}"
            out.append(Entry(
                name=f"openbeats-{size}-i{it}", family="beats",
                description=f"OpenBEATs {size.capitalize()} ({contract.parameters / 1e6:.0f}M), tokenizer "
                            f"iteration {it}, self-supervised, multi-domain pre-training",
                contract=contract, licence=UNVERIFIED_LICENCE.format(repo=repo), paper=OPENBEATS_PAPER,
                repo_id=repo, allow_patterns=OPENBEATS_PATTERNS, architecture=f"beats-{size}"))
    for suffix, what in (("", "speech-heavy"), ("-sound", "sound-heavy")):
        repo = f"shikhar7ssu/OpenBEATs-ICME{suffix.upper()}"
        out.append(Entry(
            name=f"openbeats-icme{suffix}", family="beats",
            description=f"BEATs 300M of the CMU-AIST ICME 2025 submission ({what} pre-training mixture)",
            contract=_LARGE_CONTRACT, licence=UNVERIFIED_LICENCE.format(repo=repo), paper=ICME_PAPER,
            repo_id=repo, allow_patterns=OPENBEATS_PATTERNS, architecture="beats-large",
            notes="architecture assumed OpenBEATs-Large (paper: 300M, ViT-Large-like); the checkpoint's own cfg "
                  "decides when loading. Which repository is the 'Speech' and which the 'Balanced' mixture of "
                  "Table I is not stated on the model cards we could read."))
    for size, (repo, rev, zfile, arch, params) in _DASHENG.items():
        out.append(Entry(
            name=f"dasheng-{size}", family="dasheng",
            description=f"Dasheng {size} ({params / 1e6:.0f}M), masked autoencoder, 25 Hz frames",
            contract=Contract(output_dim=dasheng_model.PRESETS[arch].embed_dim, hop_size_in_ms=40.0,
                              frames_per_10s=250, parameters=params),
            licence="Apache-2.0", paper=DASHENG_PAPER, repo_id=repo, revision=rev,
            allow_patterns=DASHENG_HF_PATTERNS,
            alternatives=(f"https://zenodo.org/records/11511780/files/{zfile}",), architecture=arch))
    out.append(Entry(
        name="beats-iter3", family="beats",
        description="Microsoft BEATs iter3 (90M), AudioSet-2M self-supervised",
        contract=_BASE_CONTRACT, licence="MIT", paper=BEATS_PAPER, architecture="beats-base",
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
