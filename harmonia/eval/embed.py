"""Encoding task audio into an embedding cache, keyed by a fingerprint of the encoder and protocol.

Cache layout::

    <cache_root>/<task.name>/<key>/            key = sha256(encoder fingerprint + protocol)[:20]
        fingerprint.json                       what the key was computed from
        <partition>/chunk-00000.pt ...         finished chunks, each written atomically
        <partition>/done.json                  the partition is complete (counts, failures)

The key never uses the encoder's class name (X-ARES's cache trap, docs/xares.md §0 point 8): it
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
  shorter than the crop length is encoded as it is.

Clip and contrastive tasks store only the mean over each item's stored frames (`pooled`, what
every clip protocol uses); frame tasks store the frames.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from harmonia.audio import AudioError, pad_batch
from harmonia.encoder import AudioEncoder
from harmonia.eval.readers import ShardScan, find_shards, read_audio_shard
from harmonia.eval.tasks import Task

CACHE_VERSION = 1
MODES = ("xares", "clean")


# --------------------------------------------------------------------------------------------------
# Fingerprints


def encoder_fingerprint(encoder: AudioEncoder) -> dict:
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
# Atomic writes


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def atomic_torch_save(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Stored embeddings


@dataclass
class Embeddings:
    """The encoded items of one partition, in tar order.

    keys (N) item keys (xares: `<clip><batch index>`, clean: `<clip>#<crop>`); clips (N) source clip
    keys; jsons (N) the samples' JSON; pooled (N, D) mean over each item's stored frames, or None;
    frame tasks: `chunks` of frames (sum T, D) with per-item (chunk, start, length) in `index`.
    """

    keys: list[str]
    clips: list[str]
    jsons: list
    pooled: torch.Tensor | None
    chunks: list[torch.Tensor] = field(default_factory=list)
    index: list[tuple[int, int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def frames(self, i: int) -> torch.Tensor:
        """(T_i, D) stored frames of item i (frame tasks)."""
        c, start, n = self.index[i]
        return self.chunks[c][start:start + n]

    def frame_lengths(self) -> torch.Tensor:
        return torch.tensor([n for _, _, n in self.index], dtype=torch.long)


@dataclass
class _Item:
    clip: int  # index of the clip in partition order
    crop: int
    n_crops: int
    key: str
    json: object
    wav: torch.Tensor  # (N,)
    shard: str


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


def _shard_sig(p: Path) -> list:
    st = p.stat()
    return [p.name, st.st_size, int(st.st_mtime_ns)]


class EmbeddingCache:
    """Encodes tasks once per (encoder, protocol) and serves the stored embeddings."""

    def __init__(self, root: str | os.PathLike, encoder: AudioEncoder, mode: str = "clean",
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

    # ----------------------------------------------------------------------------------------------
    def embed_task(self, task: Task, data_root: str | os.PathLike) -> dict[str, Embeddings]:
        """Encode every partition of `task` (resuming finished chunks) and return them all."""
        shards = find_shards(task, data_root)
        tdir = self.task_dir(task)
        tdir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(tdir / "fingerprint.json",
                          {"encoder": self.enc_fp, "protocol": protocol_fingerprint(task, self.mode)})
        out = {}
        for part, paths in shards.items():
            self._embed_partition(task, part, paths, tdir / _safe(part))
            out[part] = load_partition(tdir / _safe(part))
        return out

    def _embed_partition(self, task: Task, part: str, shards: list[Path], pdir: Path) -> None:
        pdir.mkdir(parents=True, exist_ok=True)
        sigs = {p.name: _shard_sig(p) for p in shards}
        chunks = sorted(pdir.glob("chunk-*.pt"))
        done = pdir / "done.json"
        if done.exists():
            info = json.loads(done.read_text())
            if info.get("shards") == [sigs[p.name] for p in shards]:
                return
        # Invalidate when a shard the finished chunks read has changed since.
        state = None
        if chunks:
            state = torch.load(chunks[-1], map_location="cpu", weights_only=False)["state"]
            if any(sigs.get(name) != sig for name, sig in state["touched"].items()):
                state = None
            if state is None:
                shutil.rmtree(pdir)
                pdir.mkdir(parents=True)
                chunks = []
        if done.exists():
            done.unlink()
        next_clip, next_crop = (state["next_clip"], state["next_crop"]) if state else (0, 0)
        batch_index = state["batch_index"] if state else 0
        errors: list[str] = list(state["errors"]) if state else []
        touched: dict[str, list] = dict(state["touched"]) if state else {}
        n_chunk = len(chunks)

        crop = round(task.crop_length * self.encoder.sampling_rate) if task.crop_length else None
        frames_mode = task.type == "frame"
        bs = task.encode_batch_size
        pending: dict[str, list] = _empty_chunk()
        bar = tqdm(desc=f"encode {task.name}/{part}", unit="item", disable=not self.progress,
                   initial=0, leave=False)

        def flush(last: _Item | None) -> None:
            nonlocal n_chunk, pending
            if last is None:
                return
            nxt_clip, nxt_crop = ((last.clip, last.crop + 1) if last.crop + 1 < last.n_crops else (last.clip + 1, 0))
            payload = {
                "keys": pending["keys"], "clips": pending["clips"], "jsons": pending["jsons"],
                "pooled": torch.stack(pending["pooled"]) if pending["pooled"] else None,
                "frames": torch.cat(pending["frames"]) if pending["frames"] else None,
                "lengths": pending["lengths"],
                "state": {"next_clip": nxt_clip, "next_crop": nxt_crop, "batch_index": batch_index,
                          "errors": errors, "touched": touched},
            }
            atomic_torch_save(pdir / f"chunk-{n_chunk:05d}.pt", payload)
            n_chunk += 1
            pending = _empty_chunk()

        batch: list[_Item] = []
        last: _Item | None = None
        try:
            for item in self._items(shards, sigs, touched, crop, next_clip, next_crop, errors):
                batch.append(item)
                if len(batch) == bs:
                    self._encode_batch(batch, batch_index, pending, frames_mode)
                    batch_index += 1
                    last = batch[-1]
                    bar.update(len(batch))
                    batch = []
                    if len(pending["keys"]) >= self.chunk_items:
                        flush(last)
                        last = None
            if batch:
                self._encode_batch(batch, batch_index, pending, frames_mode)
                batch_index += 1
                last = batch[-1]
                bar.update(len(batch))
            flush(last)
        finally:
            bar.close()
        atomic_write_json(done, {"shards": [sigs[p.name] for p in shards], "errors": errors,
                                 "chunks": n_chunk})

    def _items(self, shards: list[Path], sigs: dict, touched: dict, crop: int | None,
               start_clip: int, start_crop: int, errors: list[str]) -> Iterator[_Item]:
        sr = self.encoder.sampling_rate
        clip = -1
        for shard in shards:
            scan = ShardScan()
            touched[shard.name] = sigs[shard.name]
            for s in read_audio_shard(shard, scan):  # a corrupt shard raises ShardError here
                clip += 1
                if clip < start_clip:
                    continue
                if s.error is not None:
                    errors.append(s.error)
                    continue
                try:
                    wav = s.load(sr)
                except AudioError as e:
                    errors.append(str(e))
                    continue
                pieces = _crops(wav, crop, self.mode)
                for c, piece in enumerate(pieces):
                    if clip == start_clip and c < start_crop:
                        continue
                    yield _Item(clip, c, len(pieces), s.key, s.json, piece, shard.name)

    @torch.no_grad()
    def _encode_batch(self, batch: list[_Item], batch_index: int, pending: dict, frames_mode: bool) -> None:
        wav_BN, lengths_B = pad_batch([it.wav for it in batch])
        if self.mode == "xares":
            # X-ARES: encoder(audio) on the zero-padded batch, lengths discarded (§0 point 1).
            frames_BTD = self.encoder(wav_BN.to(self.encoder.device)).float().cpu()
            keep_T = [frames_BTD.shape[1]] * len(batch)
        else:
            out = self.encoder.encode(wav_BN, lengths=lengths_B)
            frames_BTD, keep_T = out.frames.float().cpu(), out.lengths.cpu().tolist()
        seen: set[int] = set()
        for i, it in enumerate(batch):
            if self.mode == "xares":
                # Every crop of one clip in one batch is written under `<clip><batch>`; webdataset
                # keeps the first and drops the others as duplicates (§0 point 2).
                if it.clip in seen:
                    continue
                seen.add(it.clip)
                key = f"{it.key}{batch_index}"
            else:
                key = f"{it.key}#{it.crop}"
            x_TD = frames_BTD[i, :int(keep_T[i])]
            pending["keys"].append(key)
            pending["clips"].append(it.key)
            pending["jsons"].append(it.json)
            pending["pooled"].append(x_TD.mean(0))
            if frames_mode:
                pending["frames"].append(x_TD.clone())
                pending["lengths"].append(int(x_TD.shape[0]))


def _empty_chunk() -> dict[str, list]:
    return {"keys": [], "clips": [], "jsons": [], "pooled": [], "frames": [], "lengths": []}


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part)


def load_partition(pdir: Path) -> Embeddings:
    """Read a finished partition (frames memory-mapped, so large frame tasks need not fit in RAM)."""
    done = pdir / "done.json"
    if not done.exists():
        raise FileNotFoundError(f"{pdir}: partition not finished (no done.json); run the encoding again")
    info = json.loads(done.read_text())
    keys, clips, jsons, pooled, chunks, index = [], [], [], [], [], []
    for path in sorted(pdir.glob("chunk-*.pt")):
        d = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        keys += d["keys"]
        clips += d["clips"]
        jsons += d["jsons"]
        if d["pooled"] is not None:
            pooled.append(d["pooled"])
        if d["frames"] is not None:
            chunks.append(d["frames"])
            start = 0
            for n in d["lengths"]:
                index.append((len(chunks) - 1, start, n))
                start += n
    return Embeddings(keys, clips, jsons, torch.cat(pooled) if pooled else None, chunks, index,
                      info.get("errors", []))
