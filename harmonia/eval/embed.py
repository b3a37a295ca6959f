"""Encoding task audio into an embedding cache, keyed by a fingerprint of the encoder and protocol.

Cache layout::

    <cache_root>/<task.name>/<key>/            key = sha256(encoder fingerprint + protocol)[:20]
        fingerprint.json                       what the key was computed from
        <partition>/state.json                 resume position, failed items, and per chunk its
                                               size and sha256 (rewritten after every chunk)
        <partition>/chunk-00000.safetensors    finished chunks, each written atomically

Nothing in the cache is ever unpickled: chunks are safetensors (tensors) with the item keys and
JSON labels in the safetensors metadata, and state.json is plain JSON. Every chunk is checked
against the size and sha256 recorded when it was written; a chunk or state file that is missing,
truncated, replaced or unreadable is named in a `CacheWarning` and its partition is encoded again.

The key never uses the encoder's class name (X-ARES's cache trap, specs/xares.md §0 point 8): it
hashes the class, `output_dim`, `hop_size_in_ms`, `sampling_rate`, `export_config()` when the
encoder has one, and every state-dict tensor (name, shape, dtype, bytes), plus the protocol mode,
crop length and — in xares mode, where batch-mates' padding is baked in — the encode batch size.
Encoding is resumable: an interrupted partition restarts after its last finished chunk.

Two encoding protocols:
- ``xares`` (X-ARES 0.1.3, §0 points 1-2): consecutive items are batched by the task's encode
  batch size, zero-padded to the longest, encoded *without lengths*, and every item keeps the
  batch's T' frames (padding included). A clip shorter than the crop length is zero-padded to it;
  longer clips give floor(len/crop) crops; of several crops of one clip in one batch only the first
  is kept (X-ARES writes them under one key and webdataset drops the duplicates).
- ``clean``: the same batches, encoded with lengths so padding is masked; every crop is kept; a clip
  shorter than the crop length is encoded as it is. An encoder that only has X-ARES's
  `forward(audio)` (no `encode` with lengths) encodes each item alone, so no padding is involved.

Any module that passes X-ARES's `check_audio_encoder` can be cached: it needs no parameters and no
`device` attribute (its device is that of its first parameter or buffer, else the CPU).

Clip and contrastive tasks store only the mean over each item's stored frames (`pooled`, what
every clip protocol uses); frame tasks store the frames.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from harmonia.audio import AudioError, pad_batch
from harmonia.encoder import AudioEncoder
from harmonia.eval.readers import ShardScan, find_shards, read_audio_shard
from harmonia.eval.tasks import EvalDataError, Task
from harmonia.io import (
    CheckpointError,
    read_safetensors,
    remove_stale_temps,
    safetensors_metadata,
    write_json_atomic,
    write_safetensors,
)

CACHE_VERSION = 2  # 2: safetensors chunks + state.json with sizes and checksums (1: pickled chunks)
MODES = ("xares", "clean")
STATE_FILE = "state.json"


class CacheCorruptError(EvalDataError):
    """A cache file differs from what was recorded when it was written; the message names it."""


class CacheWarning(UserWarning):
    """A corrupt cache file was found and its partition is being encoded again."""


# --------------------------------------------------------------------------------------------------
# Fingerprints


def encoder_device(encoder: nn.Module) -> torch.device:
    """The device of the encoder's first parameter or buffer; the CPU for a module without any
    (a valid X-ARES encoder needs neither parameters nor a `device` attribute)."""
    for t in itertools.chain(encoder.parameters(), encoder.buffers()):
        return t.device
    return torch.device("cpu")


def encoder_fingerprint(encoder: nn.Module) -> dict:
    """What identifies an encoder's outputs: class, X-ARES attributes, exported config, weights."""
    h = hashlib.sha256()
    for name, t in sorted(encoder.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    config = None
    if hasattr(encoder, "export_config"):
        try:
            config = encoder.export_config()
        except (NotImplementedError, AttributeError):
            config = None
    cls = type(encoder)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "output_dim": int(encoder.output_dim),
        "hop_size_in_ms": float(encoder.hop_size_in_ms),
        "sampling_rate": int(encoder.sampling_rate),
        "config": json.loads(json.dumps(config, sort_keys=True, default=str)) if config is not None else None,
        "weights_sha256": h.hexdigest(),
    }


def protocol_fingerprint(task: Task, mode: str) -> dict:
    """The encoding protocol of one task: mode, crop, stored form, and the xares batch size."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, found {mode!r}")
    return {
        "version": CACHE_VERSION,
        "mode": mode,
        "crop_length": task.crop_length,
        "stored": "frames" if task.type == "frame" else "pooled",
        # Only in xares mode do batch-mates change an item's embedding.
        "encode_batch_size": task.encode_batch_size if mode == "xares" else None,
    }


def cache_key(enc_fp: dict, proto_fp: dict) -> str:
    blob = json.dumps({"encoder": enc_fp, "protocol": proto_fp}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


# --------------------------------------------------------------------------------------------------
# Stored embeddings


@dataclass
class Embeddings:
    """The encoded items of one partition, in tar order.

    keys (N) item keys (xares: `<clip><batch index>`, clean: `<clip>#<crop>`); clips (N) source clip
    keys; jsons (N) the samples' JSON; pooled (N, D) mean over each item's stored frames, or None;
    frame tasks: `chunks` of frames (sum T, D) with per-item (chunk, start, length) in `index`;
    errors: one line per item that could not be decoded; repaired: the corrupt cache files found
    (and encoded again) on the way.
    """

    keys: list[str]
    clips: list[str]
    jsons: list
    pooled: torch.Tensor | None
    chunks: list[torch.Tensor] = field(default_factory=list)
    index: list[tuple[int, int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def frames(self, i: int) -> torch.Tensor:
        """(T_i, D) stored frames of item i (frame tasks)."""
        c, start, n = self.index[i]
        return self.chunks[c][start:start + n]

    def frame_lengths(self) -> torch.Tensor:
        return torch.tensor([n for _, _, n in self.index], dtype=torch.long)


@dataclass
class PartitionState:
    """How far one partition is encoded (state.json): the shards it was read from ([name, size,
    mtime_ns] each, in order), where to resume (clip, crop, xares batch index), the items that
    failed, and per finished chunk its size, sha256 and item count."""

    shards: list
    next_clip: int = 0
    next_crop: int = 0
    batch_index: int = 0
    errors: list[str] = field(default_factory=list)
    chunks: list[dict] = field(default_factory=list)
    finished: bool = False

    @classmethod
    def read(cls, path: Path) -> PartitionState:
        """Parse and check state.json; anything unexpected is a CacheCorruptError naming it."""
        try:
            state = cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as e:
            raise CacheCorruptError(f"{path}: unreadable cache state ({type(e).__name__}: {e})") from None
        counters = (state.next_clip, state.next_crop, state.batch_index)
        if not (isinstance(state.shards, list) and all(isinstance(s, list) for s in state.shards)
                and all(type(c) is int and c >= 0 for c in counters)
                and isinstance(state.errors, list) and all(isinstance(e, str) for e in state.errors)
                and isinstance(state.finished, bool)
                and isinstance(state.chunks, list) and all(_chunk_record_ok(c) for c in state.chunks)):
            raise CacheCorruptError(f"{path}: malformed cache state")
        return state

    def write(self, path: Path) -> None:
        write_json_atomic(path, asdict(self), indent=1)

    def advance_past(self, item: _Item) -> None:
        """Resume after `item` (its next crop, or the next clip)."""
        if item.crop + 1 < item.n_crops:
            self.next_clip, self.next_crop = item.clip, item.crop + 1
        else:
            self.next_clip, self.next_crop = item.clip + 1, 0


def _chunk_record_ok(c) -> bool:
    return (isinstance(c, dict) and set(c) == {"size", "sha256", "items"} and type(c["size"]) is int
            and type(c["items"]) is int and isinstance(c["sha256"], str))


@dataclass
class _Item:
    clip: int  # index of the clip in partition order
    crop: int
    n_crops: int
    key: str
    json: object
    wav: torch.Tensor  # (N,)
    shard: str


@dataclass
class ChunkBuffer:
    """Encoded items not yet written to a chunk."""

    keys: list[str] = field(default_factory=list)
    clips: list[str] = field(default_factory=list)
    jsons: list = field(default_factory=list)
    pooled: list[torch.Tensor] = field(default_factory=list)
    frames: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str, it: _Item, x_TD: torch.Tensor, keep_frames: bool) -> None:
        self.keys.append(key)
        self.clips.append(it.key)
        self.jsons.append(it.json)
        self.pooled.append(x_TD.mean(0))
        if keep_frames:
            self.frames.append(x_TD.clone())


def _crops(wav: torch.Tensor, crop: int | None, mode: str) -> list[torch.Tensor]:
    """X-ARES crop_or_pad: floor(len/crop) full crops, the remainder dropped; a clip without a full
    crop is one crop, zero-padded to `crop` in xares mode and kept as it is in clean mode."""
    if crop is None:
        return [wav]
    n = wav.shape[0] // crop
    if n == 0:
        if mode == "xares":
            return [torch.nn.functional.pad(wav, (0, crop - wav.shape[0]))]
        return [wav]
    return [wav[i * crop:(i + 1) * crop] for i in range(n)]


def _batched(items: Iterable[_Item], size: int) -> Iterator[list[_Item]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _shard_sig(p: Path) -> list:
    st = p.stat()
    return [p.name, st.st_size, int(st.st_mtime_ns)]


# --------------------------------------------------------------------------------------------------
# Chunk files


def _chunk_path(pdir: Path, index: int) -> Path:
    return pdir / f"chunk-{index:05d}.safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_chunk(path: Path, pending: ChunkBuffer) -> dict:
    """Write the pending items as one safetensors chunk (atomically); returns its state record."""
    tensors = {"pooled": torch.stack(pending.pooled)}
    if pending.frames:
        tensors["frames"] = torch.cat(pending.frames)
    items = {"keys": pending.keys, "clips": pending.clips, "jsons": pending.jsons,
             "lengths": [int(f.shape[0]) for f in pending.frames]}
    write_safetensors(tensors, path, metadata={"items": json.dumps(items)})
    return {"size": path.stat().st_size, "sha256": _sha256(path), "items": len(pending)}


def read_chunk(path: Path, record: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Verify a chunk against its state record, then read it (tensors memory-mapped)."""
    if not path.is_file():
        raise CacheCorruptError(f"{path}: cache chunk is missing")
    size = path.stat().st_size
    if size != record["size"]:
        raise CacheCorruptError(f"{path}: cache chunk has {size} bytes, {record['size']} were written")
    if _sha256(path) != record["sha256"]:
        raise CacheCorruptError(f"{path}: cache chunk checksum differs from the one recorded when it was written")
    try:
        tensors = read_safetensors(path)
        items = json.loads(safetensors_metadata(path)["items"])
        n = len(items["keys"])
        ok = (n == record["items"] == len(items["clips"]) == len(items["jsons"]) == tensors["pooled"].shape[0]
              and ("frames" not in tensors or sum(items["lengths"]) == tensors["frames"].shape[0]))
    except (CheckpointError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise CacheCorruptError(f"{path}: unreadable cache chunk ({type(e).__name__}: {e})") from None
    if not ok:
        raise CacheCorruptError(f"{path}: cache chunk contents do not match its item counts")
    return tensors, items


def load_partition(pdir: Path) -> Embeddings:
    """Read a finished partition, each chunk verified against the size and sha256 recorded when it
    was written (frames memory-mapped, so large frame tasks need not fit in RAM). Raises
    CacheCorruptError naming the first bad file."""
    state = PartitionState.read(pdir / STATE_FILE)
    if not state.finished:
        raise CacheCorruptError(f"{pdir / STATE_FILE}: partition not finished; run the encoding again")
    out = Embeddings([], [], [], None, errors=list(state.errors))
    pooled = []
    for i, record in enumerate(state.chunks):
        tensors, items = read_chunk(_chunk_path(pdir, i), record)
        out.keys += items["keys"]
        out.clips += items["clips"]
        out.jsons += items["jsons"]
        pooled.append(tensors["pooled"])
        if "frames" in tensors:
            out.chunks.append(tensors["frames"])
            start = 0
            for n in items["lengths"]:
                out.index.append((len(out.chunks) - 1, start, n))
                start += n
    out.pooled = torch.cat(pooled) if pooled else None
    return out


def _reset(pdir: Path) -> None:
    shutil.rmtree(pdir, ignore_errors=True)
    pdir.mkdir(parents=True)


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part)


# --------------------------------------------------------------------------------------------------
# The cache


class EmbeddingCache:
    """Encodes tasks once per (encoder, protocol) and serves the stored embeddings.

    `embed_task(task, data_root)` is the one entry point: {partition name: Embeddings}."""

    def __init__(self, root: str | os.PathLike, encoder: nn.Module, mode: str = "clean",
                 chunk_items: int = 512, progress: bool = True):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, found {mode!r}")
        self.root = Path(root)
        self.encoder = encoder
        self.mode = mode
        self.chunk_items = chunk_items
        self.progress = progress
        self.enc_fp = encoder_fingerprint(encoder)

    def task_dir(self, task: Task) -> Path:
        return self.root / task.name / cache_key(self.enc_fp, protocol_fingerprint(task, self.mode))

    def embed_task(self, task: Task, data_root: str | os.PathLike) -> dict[str, Embeddings]:
        """The embeddings of every partition of `task` (split name or fold), encoded on first use,
        resumed after an interruption and encoded again where a cache file is corrupt."""
        shards = find_shards(task, data_root)
        tdir = self.task_dir(task)
        tdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(tdir / "fingerprint.json", {"encoder": self.enc_fp,
                                                      "protocol": protocol_fingerprint(task, self.mode)},
                          indent=2, sort_keys=True)
        return {part: self.embed_partition(task, paths, tdir / _safe(part)) for part, paths in shards.items()}

    def embed_partition(self, task: Task, shards: list[Path], pdir: Path) -> Embeddings:
        """One partition: resume (or start), encode what is missing, load and verify. A corrupt
        cache file is named in a CacheWarning and the partition is encoded from scratch, once (a
        second failure, right after a fresh encoding, raises)."""
        sigs = [_shard_sig(p) for p in shards]
        try:
            return self._resume_encode_load(task, shards, pdir, sigs)
        except CacheCorruptError as e:
            warnings.warn(f"{e}; encoding {pdir} again", CacheWarning, stacklevel=2)
            _reset(pdir)
            emb = self._resume_encode_load(task, shards, pdir, sigs)
            emb.repaired = [str(e)]
            return emb

    def _resume_encode_load(self, task: Task, shards: list[Path], pdir: Path, sigs: list) -> Embeddings:
        state = self._resume(pdir, sigs)
        if not state.finished:
            self._encode(task, shards, pdir, state)
        return load_partition(pdir)

    def _resume(self, pdir: Path, sigs: list) -> PartitionState:
        """The saved state when it belongs to these shards (its chunks verified if unfinished), else
        a fresh one in an emptied directory."""
        path = pdir / STATE_FILE
        remove_stale_temps(pdir)  # half-written chunks of a killed run
        if path.exists():
            state = PartitionState.read(path)
            if state.shards == sigs:
                if not state.finished:
                    for i, record in enumerate(state.chunks):
                        read_chunk(_chunk_path(pdir, i), record)
                return state
        _reset(pdir)  # new, or its shards changed since
        return PartitionState(shards=sigs)

    def _encode(self, task: Task, shards: list[Path], pdir: Path, state: PartitionState) -> None:
        """Encode from the state's position on, writing a chunk (then the state) every
        `chunk_items` items; mark the state finished at the end."""
        crop = round(task.crop_length * self.encoder.sampling_rate) if task.crop_length else None
        keep_frames = task.type == "frame"
        pending = ChunkBuffer()
        bar = tqdm(desc=f"encode {task.name}/{pdir.name}", unit="item", disable=not self.progress, leave=False)
        try:
            for batch in _batched(self._items(shards, state, crop), task.encode_batch_size):
                self._encode_batch(batch, state.batch_index, pending, keep_frames)
                state.batch_index += 1
                state.advance_past(batch[-1])
                bar.update(len(batch))
                if len(pending) >= self.chunk_items:
                    self._flush(pdir, pending, state)
                    pending = ChunkBuffer()
            self._flush(pdir, pending, state, finished=True)
        finally:
            bar.close()

    @staticmethod
    def _flush(pdir: Path, pending: ChunkBuffer, state: PartitionState, finished: bool = False) -> None:
        if len(pending):
            state.chunks.append(write_chunk(_chunk_path(pdir, len(state.chunks)), pending))
        state.finished = finished
        state.write(pdir / STATE_FILE)

    def _items(self, shards: list[Path], state: PartitionState, crop: int | None) -> Iterator[_Item]:
        """The items from the state's position on; undecodable clips go to `state.errors`."""
        sr = self.encoder.sampling_rate
        clip = -1
        for shard in shards:
            for s in read_audio_shard(shard, ShardScan()):  # a corrupt shard raises ShardError here
                clip += 1
                if clip < state.next_clip:
                    continue
                if s.error is not None:
                    state.errors.append(s.error)
                    continue
                try:
                    wav = s.load(sr)
                except AudioError as e:
                    state.errors.append(str(e))
                    continue
                pieces = _crops(wav, crop, self.mode)
                for c, piece in enumerate(pieces):
                    if clip == state.next_clip and c < state.next_crop:
                        continue
                    yield _Item(clip, c, len(pieces), s.key, s.json, piece, shard.name)

    @torch.no_grad()
    def _encode_batch(self, batch: list[_Item], batch_index: int, pending: ChunkBuffer, keep_frames: bool) -> None:
        if self.mode == "xares":
            # X-ARES: encoder(audio) on the zero-padded batch, lengths discarded (§0 point 1).
            wav_BN, _ = pad_batch([it.wav for it in batch])
            frames_BTD = self._forward(wav_BN)
            per_item = [frames_BTD[i] for i in range(len(batch))]
        elif isinstance(self.encoder, AudioEncoder):
            wav_BN, lengths_B = pad_batch([it.wav for it in batch])
            out = self.encoder.encode(wav_BN, lengths=lengths_B)
            frames_BTD, keep_T = out.frames.float().cpu(), out.lengths.cpu().tolist()
            per_item = [frames_BTD[i, :int(keep_T[i])] for i in range(len(batch))]
        else:  # forward(audio) only: no lengths to mask padding with, so each item alone
            per_item = [self._forward(it.wav[None])[0] for it in batch]
        seen: set[int] = set()
        for it, x_TD in zip(batch, per_item):
            if self.mode == "xares":
                # Every crop of one clip in one batch is written under `<clip><batch>`; webdataset
                # keeps the first and drops the others as duplicates (§0 point 2).
                if it.clip in seen:
                    continue
                seen.add(it.clip)
                key = f"{it.key}{batch_index}"
            else:
                key = f"{it.key}#{it.crop}"
            pending.add(key, it, x_TD, keep_frames)

    def _forward(self, wav_BN: torch.Tensor) -> torch.Tensor:
        """X-ARES's call: encoder(audio) -> (B, T', D), returned as float32 on the CPU."""
        return self.encoder(wav_BN.to(encoder_device(self.encoder))).float().cpu()
