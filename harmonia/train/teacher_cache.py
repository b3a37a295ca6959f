"""Teacher targets for distillation: the teacher's members, their frames (and chosen hidden states)
computed on the fly or read from a cache written once per teacher.

A teacher is anything `harmonia.load_encoder` accepts. An `EnsembleEncoder` teacher is split into
its members: each member is one target (one prediction head in the student), at the member's own
frame rate. Targets are stored and returned on the member's *own* frame grid; the training step
aligns them to each student's grid (`align_frames`), so one cache serves students of any frame rate.

Cache layout (one teacher pass, reused by every student trained on the same shards)::

    <cache>/fingerprint.json                   teacher fingerprint, members, cached layers, dtype
    <cache>/<domain>/<corpus>-000000.safetensors   one file per webdataset shard, fp16 tensors
                                                   "<key>|<m>" (T_m, D_m) and
                                                   "<key>|<m>|<layer>", m = member index

Every file is written atomically (`harmonia.io`); a killed caching run continues with the shards
it had not finished; a cache written by a different teacher (weights, config, options) or with
other layers is refused by its fingerprint.
"""

from __future__ import annotations

import io as _io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch
from torch import Tensor

from harmonia.encoder import AudioEncoder
from harmonia.ensemble import EnsembleEncoder
from harmonia.io import (
    CheckpointError,
    read_safetensors,
    remove_stale_temps,
    write_json_atomic,
    write_safetensors,
)
from harmonia.train.config import ConfigError

CACHE_VERSION = 1
FINGERPRINT = "fingerprint.json"
CACHE_DTYPE = torch.float16


@dataclass(frozen=True)
class MemberSpec:
    """One teacher member as the student sees it: a name, its output width, and the width of each
    hidden state the layer-to-layer targets use ({layer: dim})."""

    name: str
    dim: int
    hidden_dims: dict[int, int]


@dataclass
class Targets:
    """Per member: frames (B, T_m, D_m) float32 on the member's grid, valid lengths (B,), and the
    requested hidden states {layer: (B, T_m, D_m)} on the same grid."""

    frames: list[Tensor]
    lengths: list[Tensor]
    hidden: list[dict[int, Tensor]]


def teacher_members(teacher: AudioEncoder) -> tuple[list[AudioEncoder], list[str]]:
    """The teacher's members (an ensemble's members, or the encoder itself) and their names."""
    if isinstance(teacher, EnsembleEncoder):
        return list(teacher.members), [str(n) for n in teacher.names]
    return [teacher], [type(teacher).__name__]


class Teacher:
    """A frozen teacher on a device, computing member targets on the fly.

    layers: {member index: [hidden-state indices]} needed by layer-to-layer targets."""

    def __init__(self, encoder: AudioEncoder, layers: dict[int, list[int]] | None = None) -> None:
        self.encoder = encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.members, self.names = teacher_members(encoder)
        self.layers = {m: sorted(set(ls)) for m, ls in (layers or {}).items()}
        bad = [m for m in self.layers if not 0 <= m < len(self.members)]
        if bad:
            raise ConfigError(f"distill.layer_targets name teacher member(s) {bad}; the teacher has {len(self.members)} "
                             f"member(s) {self.names} (indices 0..{len(self.members) - 1})")

    @property
    def sampling_rate(self) -> int:
        return int(self.encoder.sampling_rate)

    @torch.no_grad()
    def targets(self, wav_BN: Tensor, lengths_B: Tensor) -> Targets:
        frames, lengths, hidden = [], [], []
        for m, member in enumerate(self.members):
            want = self.layers.get(m, [])
            out = member.encode(wav_BN, lengths_B, output_hidden_states=bool(want))
            if want and len(out.hidden_states) <= max(want):
                raise ConfigError(f"teacher member {m} ({self.names[m]}) has {len(out.hidden_states)} hidden states "
                                  f"(0..{len(out.hidden_states) - 1}); distill.layer_targets asks for {max(want)}")
            frames.append(out.frames)
            lengths.append(out.lengths.cpu())
            hidden.append({k: out.hidden_states[k] for k in want})
        return Targets(frames, lengths, hidden)

    def specs(self) -> list[MemberSpec]:
        """Member widths, read from a forward pass over one second of silence."""
        t = self.targets(torch.zeros(1, self.sampling_rate, device=self.encoder.device), torch.tensor([self.sampling_rate]))
        return [MemberSpec(n, int(f.shape[-1]), {k: int(h.shape[-1]) for k, h in hs.items()})
                for n, f, hs in zip(self.names, t.frames, t.hidden)]

    def fingerprint(self) -> dict:
        """What identifies the cached targets: the teacher's encoder fingerprint (weights, config,
        options; `harmonia.eval.embed.encoder_fingerprint`), its members and the cached layers."""
        from harmonia.eval.embed import encoder_fingerprint

        return {"version": CACHE_VERSION, "dtype": str(CACHE_DTYPE).removeprefix("torch."),
                "teacher": encoder_fingerprint(self.encoder), "members": self.names,
                "layers": {str(m): ls for m, ls in sorted(self.layers.items())}}


# -------------------------------------------------------------------------------------------------
# the cache


def _cache_file(cache_dir: Path, shard_rel: str) -> Path:
    return cache_dir / (shard_rel.removesuffix(".tar") + ".safetensors")


def _shards_to_cache(shard_dir: Path, streams: Sequence[str]) -> list[str]:
    """Shard paths (relative to the shard folder) of the given streams, in index order."""
    from harmonia.data.shards import read_index

    index = read_index(shard_dir)["streams"]
    return [s["path"] for name in streams for s in index[name]["shards"]]


def check_fingerprint(cache_dir: Path, expected: dict) -> None:
    """Refuse a cache written for another teacher, layers or format (the message says what differs)."""
    stored = json.loads((cache_dir / FINGERPRINT).read_text())
    if stored == expected:
        return
    diff = [k for k in sorted(set(stored) | set(expected)) if stored.get(k) != expected.get(k)]
    if "teacher" in diff:
        what = "a different teacher (weights, config or options differ)"
    elif "layers" in diff:
        what = f"other teacher layers ({stored.get('layers')} cached, {expected.get('layers')} asked for)"
    else:
        what = f"different settings ({', '.join(diff)})"
    raise CheckpointError(f"{cache_dir / FINGERPRINT}: this teacher cache was written by {what}; use another "
                          "teacher.cache folder for this teacher, or delete this one to rebuild it")


def build_cache(teacher: Teacher, shard_dir: str | Path, streams: Sequence[str], cache_dir: str | Path,
                batch_size: int = 8, rank: int = 0, world_size: int = 1, progress: bool = False) -> int:
    """Write the teacher's targets for every segment of the given streams' shards (shard i is done by
    rank i % world_size). Shards already cached are skipped; returns the number written here.
    Call `write_fingerprint` (rank 0) before, and wait for every rank after."""
    from harmonia.data.loader import _read_tar, collate_wavs

    shard_dir, cache_dir = Path(shard_dir), Path(cache_dir)
    todo = [rel for i, rel in enumerate(_shards_to_cache(shard_dir, streams))
            if i % world_size == rank and not _cache_file(cache_dir, rel).exists()]
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="teacher cache", unit="shard", dynamic_ncols=True)
    device = teacher.encoder.device
    for rel in todo:
        out = _cache_file(cache_dir, rel)
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out.parent)
        samples = []
        for key, flac, _ in _read_tar(shard_dir / rel):
            wav, sr = sf.read(_io.BytesIO(flac), dtype="float32")
            if sr != teacher.sampling_rate:
                raise ValueError(f"{shard_dir / rel}: segment {key} is at {sr} Hz, the teacher expects "
                                 f"{teacher.sampling_rate} Hz; write the shards with `harmonia data shard`")
            samples.append((key, torch.from_numpy(wav)))
        samples.sort(key=lambda s: len(s[1]))  # similar lengths together: little padding
        tensors: dict[str, Tensor] = {}
        for start in range(0, len(samples), batch_size):
            batch = samples[start:start + batch_size]
            wav_BN, lengths_B = collate_wavs([w.numpy() for _, w in batch])
            t = teacher.targets(wav_BN.to(device), lengths_B)
            for i, (key, _) in enumerate(batch):
                for m in range(len(teacher.members)):
                    n = int(t.lengths[m][i])
                    tensors[f"{key}|{m}"] = t.frames[m][i, :n].to("cpu", CACHE_DTYPE)
                    for k, h in t.hidden[m].items():
                        tensors[f"{key}|{m}|{k}"] = h[i, :n].to("cpu", CACHE_DTYPE)
        write_safetensors(tensors, out, metadata={"format": "harmonia-teacher-cache", "shard": rel})
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return len(todo)


def write_fingerprint(cache_dir: str | Path, fingerprint: dict) -> None:
    """Create the cache folder with its fingerprint, or check the existing one (refusing a mismatch)."""
    cache_dir = Path(cache_dir)
    if (cache_dir / FINGERPRINT).exists():
        check_fingerprint(cache_dir, fingerprint)
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cache_dir / FINGERPRINT, fingerprint, indent=1, sort_keys=True)


class CachedTargets:
    """Targets read from a complete cache (memory-mapped): `targets(keys)` gives what
    `Teacher.targets` gives for those segments, up to fp16 rounding."""

    def __init__(self, cache_dir: str | Path, shard_dir: str | Path, streams: Sequence[str],
                 num_members: int, layers: dict[int, list[int]]) -> None:
        self.cache_dir = Path(cache_dir)
        self.num_members, self.layers = num_members, layers
        self.tensors: dict[str, Tensor] = {}
        for rel in _shards_to_cache(Path(shard_dir), streams):
            path = _cache_file(self.cache_dir, rel)
            if not path.exists():
                raise CheckpointError(f"{path}: the teacher cache is incomplete (shard {rel} missing); run the "
                                      "caching step again (`harmonia distill ... --cache-only`)")
            self.tensors.update(read_safetensors(path))

    def _get(self, name: str) -> Tensor:
        t = self.tensors.get(name)
        if t is None:
            raise CheckpointError(f"{self.cache_dir}: no cached teacher target {name!r}; the cache was written for "
                                  "other shards: use a teacher.cache folder per shard folder")
        return t

    def specs(self, names: Sequence[str]) -> list[MemberSpec]:
        first = next(iter(self.tensors)).split("|")[0]
        return [MemberSpec(names[m], int(self._get(f"{first}|{m}").shape[-1]),
                           {k: int(self._get(f"{first}|{m}|{k}").shape[-1]) for k in self.layers.get(m, [])})
                for m in range(self.num_members)]

    def _stack(self, names: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """Right-padded (B, T_max, D) float32 on `device` and the lengths (B,)."""
        items = [self._get(n) for n in names]
        lens = torch.tensor([len(x) for x in items])
        out = torch.zeros(len(items), int(lens.max()), items[0].shape[-1])
        for i, x in enumerate(items):
            out[i, : len(x)] = x.float()
        return out.to(device), lens

    def targets(self, keys: Sequence[str], device: torch.device) -> Targets:
        frames, lengths, hidden = [], [], []
        for m in range(self.num_members):
            f, lens = self._stack([f"{k}|{m}" for k in keys], device)
            frames.append(f)
            lengths.append(lens)
            hidden.append({t: self._stack([f"{k}|{m}|{t}" for k in keys], device)[0] for t in self.layers.get(m, [])})
        return Targets(frames, lengths, hidden)
