"""Streaming, mixed, resumable loader over the shards of `harmonia.data.shards`.

- One infinite, seeded stream per `domain/corpus` (`ShardStream`): each epoch visits its shards in
  a seeded order and each shard's segments in a seeded order. Shards are split across
  (rank, dataloader worker) pairs; a corpus with fewer shards than pairs is split by segment.
- A deficit scheduler in seconds (`HoursScheduler`) picks the stream of every next segment, so
  realised *hours* match the mixture target.
- Each worker builds whole batches and attaches its state (stream positions + scheduler) after
  the batch; the `MixtureLoader` keeps the state of the last batch it handed out per worker and
  which worker comes next. `state_dict()` is therefore exactly "the batches consumed so far":
  a loader rebuilt from it yields the batches that would have come next, whatever was prefetched.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from harmonia.data.manifest import ManifestError
from harmonia.data.mixture import HoursScheduler, MixturePlan, plan_mixture
from harmonia.data.shards import read_index

LOADER_STATE_VERSION = 1


def _stream_hash(name: str) -> int:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)


class ShardReadError(ManifestError):
    """A shard is missing, truncated or corrupt; the message names it and how to rewrite it."""


def _shard_error(path: Path, what: str) -> ShardReadError:
    return ShardReadError(f"shard {path}: {what}. Re-run `harmonia data shard MANIFEST -o {path.parent.parent}` "
                          "with the manifest and options that wrote it: it rewrites missing or damaged shards "
                          "and keeps the intact ones")


def _read_tar(path: Path, expected: int | None = None) -> list[tuple[str, bytes, bytes]]:
    """All (key, flac bytes, json bytes) samples of a webdataset tar, in tar order; `expected` is the
    sample count the index records (a truncated tar can end cleanly at a member boundary)."""
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, "r") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    except FileNotFoundError:
        raise _shard_error(path, "missing (listed in the index but not on disk)") from None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise _shard_error(path, f"cannot be read, it is truncated or corrupt ({type(e).__name__}: {e})") from None
    out = []
    for key, parts in samples.items():
        if "flac" not in parts:
            raise _shard_error(path, f"sample {key!r} has no .flac member")
        out.append((key, parts["flac"], parts.get("json", b"{}")))
    if expected is not None and len(out) != expected:
        raise _shard_error(path, f"holds {len(out)} samples but the index records {expected} (truncated?)")
    return out


class ShardStream:
    """Infinite seeded stream of (key, wav_N float32, meta) for one corpus and one split.

    split g of G = rank * num_workers + worker, world_size * num_workers. Position state:
    (epoch, shard position in the epoch's order, segment position in the shard's order)."""

    def __init__(self, name: str, root: Path, shards: list[dict], seed: int, split: int, num_splits: int):
        self.name, self.root, self.seed = name, root, seed
        self.split, self.num_splits = split, num_splits
        self.shards = shards  # [{"path", "segments", "seconds"}] in index order
        self.by_shard = len(shards) >= num_splits
        self.epoch = self.shard_pos = self.sample_pos = 0
        self._cache: tuple[int, int, list[int], list] | None = None  # (epoch, shard_pos, order, samples)

    def _epoch_shards(self, epoch: int) -> list[int]:
        idx = list(range(len(self.shards)))
        if self.by_shard:
            idx = idx[self.split::self.num_splits]
        rng = np.random.default_rng([self.seed, _stream_hash(self.name), epoch, self.split])
        return [idx[i] for i in rng.permutation(len(idx))]

    def _shard_samples(self, epoch: int, shard_pos: int) -> tuple[list[int], list]:
        if self._cache and self._cache[:2] == (epoch, shard_pos):
            return self._cache[2], self._cache[3]
        shard = self._epoch_shards(epoch)[shard_pos]
        samples = _read_tar(self.root / self.shards[shard]["path"], self.shards[shard].get("segments"))
        rng = np.random.default_rng([self.seed, _stream_hash(self.name), epoch, shard, 1])
        order = [int(i) for i in rng.permutation(len(samples))]
        if not self.by_shard:
            order = order[self.split::self.num_splits]
        self._cache = (epoch, shard_pos, order, samples)
        return order, samples

    def next(self) -> tuple[str, np.ndarray, dict]:
        import json

        empty_epochs = 0
        while True:
            n_shards = len(self._epoch_shards(self.epoch))
            if self.shard_pos >= n_shards:
                self.epoch, self.shard_pos, self.sample_pos = self.epoch + 1, 0, 0
                empty_epochs += 1
                if empty_epochs > 1:
                    raise ManifestError(
                        f"stream {self.name}: split {self.split} of {self.num_splits} gets no segments (the corpus "
                        "has too few); write more or smaller shards, or use fewer ranks / workers")
                continue
            order, samples = self._shard_samples(self.epoch, self.shard_pos)
            if self.sample_pos >= len(order):
                self.shard_pos, self.sample_pos = self.shard_pos + 1, 0
                continue
            key, flac, meta = samples[order[self.sample_pos]]
            self.sample_pos += 1
            try:
                wav, sr = sf.read(io.BytesIO(flac), dtype="float32")
                return key, wav, {**json.loads(meta), "sample_rate": sr}
            except (sf.LibsndfileError, RuntimeError, ValueError) as e:
                path = self.root / self.shards[self._epoch_shards(self.epoch)[self.shard_pos]]["path"]
                raise _shard_error(path, f"sample {key!r} cannot be decoded ({e})") from None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "sample_pos": self.sample_pos}

    def load_state_dict(self, state: Mapping) -> None:
        self.epoch, self.shard_pos, self.sample_pos = (int(state[k]) for k in ("epoch", "shard_pos", "sample_pos"))


def collate_wavs(wavs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to (B, N_max) float32 and return (wav_BN, lengths_B)."""
    lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
    out = torch.zeros(len(wavs), int(lengths.max()), dtype=torch.float32)
    for i, w in enumerate(wavs):
        out[i, : len(w)] = torch.from_numpy(w)
    return out, lengths


class MixtureDataset(IterableDataset):
    """Yields whole batches {wav (B,N), lengths (B,), streams [B], seconds [B], keys [B], _worker, _state}.
    `crop_seconds` > 0 takes a seeded random crop of longer segments (realised hours count the crop)."""

    def __init__(self, shard_dir: str | Path, target: Mapping[str, float], batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, worker_states: Mapping[int, dict] | None = None,
                 worker_offset: int = 0, crop_seconds: float = 0.0):
        self.root = Path(shard_dir)
        self.crop_samples = round(crop_seconds * 16000)
        self.index = read_index(self.root)
        missing = sorted(set(target) - set(self.index["streams"]))
        if missing:
            raise ManifestError(f"mixture streams {missing} have no shards in {self.root}; "
                                f"available: {sorted(self.index['streams'])}")
        self.target, self.batch_size, self.seed = dict(target), batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.worker_states = dict(worker_states or {})
        self.worker_offset = worker_offset

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        num_workers = info.num_workers if info else 1
        worker = ((info.id if info else 0) + self.worker_offset) % num_workers
        split, num_splits = self.rank * num_workers + worker, self.world_size * num_workers
        streams = {name: ShardStream(name, self.root, self.index["streams"][name]["shards"], self.seed, split, num_splits)
                   for name in self.target if self.target[name] > 0}
        sched = HoursScheduler(self.target)
        state = self.worker_states.get(worker)
        if state is not None:
            sched.load_state_dict(state["scheduler"])
            for name, st in state["streams"].items():
                streams[name].load_state_dict(st)
        batches = state.get("batches", 0) if state is not None else 0
        while True:
            wavs, names, secs, keys = [], [], [], []
            for i in range(self.batch_size):
                name = sched.next_stream()
                key, wav, meta = streams[name].next()
                if self.crop_samples and len(wav) > self.crop_samples:
                    # random crop, drawn from (seed, split, batch, item) alone: no RNG state to carry
                    rng = np.random.default_rng([self.seed, split, batches, i, 2])
                    start = int(rng.integers(0, len(wav) - self.crop_samples + 1))
                    wav = wav[start:start + self.crop_samples]
                sec = len(wav) / meta["sample_rate"]
                sched.add(name, sec)
                wavs.append(wav)
                names.append(name)
                secs.append(sec)
                keys.append(key)
            wav_BN, lengths_B = collate_wavs(wavs)
            batches += 1
            yield {"wav": wav_BN, "lengths": lengths_B, "streams": names, "seconds": secs, "keys": keys, "_worker": worker,
                   "_state": {"batches": batches, "scheduler": sched.state_dict(),
                              "streams": {n: s.state_dict() for n, s in streams.items()}}}


class MixtureLoader:
    """Iterable of batches with an exact, checkpointable position.

    Batches are dicts: wav (B, N) float32 16 kHz, lengths (B,), streams (list of `domain/corpus`),
    seconds (list of float). `state_dict()` / `MixtureLoader(..., state=...)` resume exactly."""

    def __init__(self, shard_dir: str | Path, mixture: MixturePlan | Mapping[str, float], batch_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 state: Mapping | None = None, crop_seconds: float = 0.0):
        target = mixture.target if isinstance(mixture, MixturePlan) else dict(mixture)
        self.shard_dir, self.target = Path(shard_dir), target
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.num_workers = num_workers
        self.worker_states: dict[int, dict] = {}
        self.next_worker = 0
        self.seconds = dict.fromkeys(sorted(target), 0.0)  # realised seconds per stream, consumed batches
        self.batches = 0
        if state is not None:
            self._load(state)
        self._dataset = MixtureDataset(shard_dir, target, batch_size, seed, rank, world_size,
                                       self.worker_states, self.next_worker, crop_seconds)

    def _load(self, state: Mapping) -> None:
        if state.get("version") != LOADER_STATE_VERSION:
            raise ManifestError(f"loader state version {state.get('version')}, expected {LOADER_STATE_VERSION}")
        for key in ("batch_size", "seed", "world_size", "num_workers"):
            if state[key] != getattr(self, key):
                raise ManifestError(f"cannot resume the data stream exactly: checkpoint has {key}={state[key]}, "
                                    f"this run {key}={getattr(self, key)}; resume with the same value")
        if sorted(state["seconds"]) != sorted(self.seconds):
            raise ManifestError(f"checkpointed mixture streams {sorted(state['seconds'])} differ from this run's "
                                f"{sorted(self.seconds)}; resume with the same shards and mixture")
        self.worker_states = {int(k): v for k, v in state["workers"].items()}
        self.next_worker = int(state["next_worker"])
        self.seconds = {k: float(v) for k, v in state["seconds"].items()}
        self.batches = int(state["batches"])

    def __iter__(self) -> Iterator[dict]:
        # Its own generator: creating the iterator must not draw from the global torch RNG, whose
        # state the training checkpoint restores (a resumed run would otherwise shift dropout).
        dl = DataLoader(self._dataset, batch_size=None, num_workers=self.num_workers,
                        persistent_workers=False, prefetch_factor=2 if self.num_workers else None,
                        generator=torch.Generator().manual_seed(self.seed))
        for batch in dl:
            w = batch.pop("_worker")
            self.worker_states[w] = batch.pop("_state")
            self.next_worker = (w + 1) % max(1, self.num_workers)
            for name, sec in zip(batch["streams"], batch["seconds"]):
                self.seconds[name] += sec
            self.batches += 1
            yield batch

    def state_dict(self) -> dict:
        return {"version": LOADER_STATE_VERSION, "batch_size": self.batch_size, "seed": self.seed,
                "world_size": self.world_size, "num_workers": self.num_workers, "next_worker": self.next_worker,
                "workers": {str(k): v for k, v in self.worker_states.items()}, "seconds": dict(self.seconds),
                "batches": self.batches}

    def domain_hours(self) -> dict[str, float]:
        """Realised hours per domain over the batches consumed so far."""
        out: dict[str, float] = {}
        for name, sec in self.seconds.items():
            d = name.split("/", 1)[0]
            out[d] = out.get(d, 0.0) + sec / 3600.0
        return out


def stream_hours(shard_dir: str | Path) -> dict[str, float]:
    """Available hours per stream `domain/corpus` in a shard folder."""
    return {name: st["seconds"] / 3600.0 for name, st in read_index(shard_dir)["streams"].items()}


def build_loader(shard_dir: str | Path, ratio: str | Mapping[str, float], batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 corpus_weights: Mapping[str, float] | None = None, state: Mapping | None = None,
                 crop_seconds: float = 0.0) -> MixtureLoader:
    """Plan the mixture from the shard index and build the loader (optionally from a state)."""
    plan = plan_mixture(stream_hours(shard_dir), ratio, corpus_weights)
    return MixtureLoader(shard_dir, plan, batch_size, seed, rank, world_size, num_workers, state, crop_seconds)
