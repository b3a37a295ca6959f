"""Webdataset tar shards of <= 10 s segments (16 kHz mono FLAC + JSON metadata), per domain.

Layout written by `write_shards(manifest, out_dir)`:

    out_dir/index.json                      streams -> shards (path, segments, seconds)
    out_dir/<domain>/<corpus>-000000.tar    webdataset samples: <key>.flac, <key>.json
    out_dir/<domain>/<corpus>-000000.tar.json   sidecar: plan hash, tar size, segment list, failures

Deterministic: the files of a corpus are shuffled with `seed` and packed into shards of about
`shard_seconds` of audio from the manifest alone, so every shard's content is known before any
audio is decoded. Atomic: each tar and sidecar is written under a unique temporary name and renamed;
temporary files of a killed run are removed by the next one. Resumable: a shard is skipped on the
next run only when its sidecar carries the same plan hash, the tar has the recorded size and no file
of it failed; a shard with failed files, a missing or a truncated shard is written again (so a file
that was missing and has been restored gets in).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from harmonia.audio import SAMPLE_RATE, load_audio
from harmonia.data.manifest import Entry, ManifestError, check_unique
from harmonia.io import atomic_path, remove_stale_temps, write_json_atomic

INDEX_NAME = "index.json"
INDEX_VERSION = 1


@dataclass(frozen=True)
class ShardJob:
    stream: str  # domain/corpus
    path: Path  # final tar path
    entries: tuple[Entry, ...]
    max_seconds: float
    min_seconds: float
    plan_hash: str


def segment_bounds(num_samples: int, max_samples: int, min_samples: int) -> list[tuple[int, int]]:
    """Split [0, N) into ceil(N / max) pieces of equal length (each <= max), so that no short
    remainder is left over; pieces shorter than `min_samples` are dropped."""
    if num_samples < min_samples:
        return []
    n = math.ceil(num_samples / max_samples)
    edges = [round(i * num_samples / n) for i in range(n + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b - a >= min_samples]


def _readable_key(entry_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", entry_id)


def key_prefixes(ids: Sequence[str]) -> dict[str, str]:
    """The webdataset key prefix of each id of one shard (the key of segment s is `PREFIX_%04d`):
    no dots (they separate the extension) and no slashes, so the id with every other character
    turned into '_'; plus a hash of the id where two ids read the same once sanitised ('a b' and
    'a_b', or two names in a non-Latin script), so that no two files share tar members."""
    readable = {i: _readable_key(i) for i in ids}
    counts: dict[str, int] = {}
    for r in readable.values():
        counts[r] = counts.get(r, 0) + 1
    return {i: r if counts[r] == 1 else f"{r}_{hashlib.sha1(i.encode()).hexdigest()[:10]}"
            for i, r in readable.items()}


def plan_shards(entries: Sequence[Entry], out_dir: str | os.PathLike, shard_seconds: float = 3600.0,
                max_seconds: float = 10.0, min_seconds: float = 1.0, seed: int = 0) -> list[ShardJob]:
    """Assign the files of each corpus to shards (seeded shuffle, then greedy packing)."""
    if not (1 / SAMPLE_RATE <= min_seconds <= max_seconds and math.isfinite(max_seconds * SAMPLE_RATE)):
        raise ManifestError(f"segment bounds: need 1/{SAMPLE_RATE} s <= min_seconds <= max_seconds (finite), found "
                            f"min_seconds={min_seconds}, max_seconds={max_seconds}; e.g. --min-seconds 1 "
                            "--max-seconds 10")
    check_unique(entries, lambda e: e.path)  # one id twice would be two tar members with one key
    out = Path(out_dir)
    streams: dict[str, list[Entry]] = {}
    for e in entries:
        streams.setdefault(f"{e.domain}/{e.corpus}", []).append(e)
    jobs = []
    for stream, es in sorted(streams.items()):
        domain, corpus = stream.split("/", 1)
        es = sorted(es, key=lambda e: e.id)
        rng = np.random.default_rng([seed, int(hashlib.sha1(stream.encode()).hexdigest()[:8], 16)])
        es = [es[i] for i in rng.permutation(len(es))]
        groups: list[list[Entry]] = [[]]
        acc = 0.0
        for e in es:
            if groups[-1] and acc + e.duration > shard_seconds:
                groups.append([])
                acc = 0.0
            groups[-1].append(e)
            acc += e.duration
        for k, group in enumerate(groups):
            plan = [INDEX_VERSION, max_seconds, min_seconds, SAMPLE_RATE, [(e.id, e.path, e.num_frames) for e in group]]
            hashed = sorted(key for i, key in key_prefixes([e.id for e in group]).items() if key != _readable_key(i))
            if hashed:  # keys that earlier versions wrote twice into one tar: such a shard is written again
                plan.append(hashed)
            h = hashlib.sha1(json.dumps(plan).encode()).hexdigest()
            jobs.append(ShardJob(stream, out / domain / f"{corpus}-{k:06d}.tar", tuple(group),
                                 max_seconds, min_seconds, h))
    return jobs


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def shard_done(job: ShardJob) -> dict | None:
    """The sidecar of a complete shard with this plan (intact tar, no failed file), else None."""
    side = _sidecar(job.path)
    if not (side.is_file() and job.path.is_file()):
        return None
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(meta, dict) or meta.get("plan_hash") != job.plan_hash or meta.get("failures"):
        return None
    return meta if meta.get("bytes") == job.path.stat().st_size else None


def write_shard(job: ShardJob) -> dict:
    """Decode, resample, segment and write one shard atomically; return its sidecar dict."""
    import webdataset as wds

    job.path.parent.mkdir(parents=True, exist_ok=True)
    segments, failures = [], []
    max_n, min_n = round(job.max_seconds * SAMPLE_RATE), round(job.min_seconds * SAMPLE_RATE)
    prefixes = key_prefixes([e.id for e in job.entries])
    with atomic_path(job.path) as tmp, open(tmp, "wb") as f:
        # Fixed mtime/user/group: the same plan gives byte-identical tars.
        writer = wds.TarWriter(f, mtime=0.0, user="harmonia", group="harmonia")
        try:
            for e in job.entries:
                try:
                    wav = load_audio(e.path).numpy()
                except Exception as err:  # noqa: BLE001 - reported in the sidecar and at the end
                    failures.append({"id": e.id, "path": e.path, "error": str(err)})
                    continue
                for s, (a, b) in enumerate(segment_bounds(len(wav), max_n, min_n)):
                    buf = io.BytesIO()
                    sf.write(buf, np.clip(wav[a:b], -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
                    key = f"{prefixes[e.id]}_{s:04d}"
                    meta = {"id": e.id, "segment": s, "start": a / SAMPLE_RATE, "seconds": (b - a) / SAMPLE_RATE,
                            "domain": e.domain, "corpus": e.corpus, "sample_rate": SAMPLE_RATE}
                    writer.write({"__key__": key, "flac": buf.getvalue(), "json": meta})
                    segments.append({"key": key, "id": e.id, "seconds": (b - a) / SAMPLE_RATE})
        except BaseException:
            with contextlib.suppress(Exception):  # the tar stream is discarded with its temp file
                writer.close()
            raise
        writer.close()
    meta = {"plan_hash": job.plan_hash, "stream": job.stream, "bytes": job.path.stat().st_size,
            "segments": segments, "seconds": sum(s["seconds"] for s in segments), "failures": failures}
    write_json_atomic(_sidecar(job.path), meta)
    return meta


def exit_with_parent(poll_s: float = 0.5) -> None:
    """Pool-worker initializer: exit when the process that started this worker is gone. A forked
    worker holds its own end of the task pipe, so after a `kill -9` of `harmonia data shard` it would
    otherwise wait for work forever (or finish its shard and race with the next run). The parent is
    whoever started the worker (the command itself, or a forkserver that exits with it)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)  # the temp file of an unfinished shard is removed by the next run

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def write_shards(entries: Sequence[Entry], out_dir: str | os.PathLike, shard_seconds: float = 3600.0,
                 max_seconds: float = 10.0, min_seconds: float = 1.0, seed: int = 0, workers: int = 1,
                 progress: bool = True) -> dict:
    """Write every shard not already complete, then the index. Returns the index dict, with
    `failures` listing every file that could not be decoded (they are skipped, not fatal, and their
    shards are tried again by the next run)."""
    from tqdm import tqdm

    out = Path(out_dir)
    jobs = plan_shards(entries, out, shard_seconds, max_seconds, min_seconds, seed)
    for folder in {out} | {j.path.parent for j in jobs}:
        remove_stale_temps(folder)  # tars and sidecars of a killed run
    metas: dict[Path, dict] = {}
    todo = []
    for j in jobs:
        done = shard_done(j)
        if done is not None:
            metas[j.path] = done
        else:
            todo.append(j)
    if todo:  # the old index no longer describes the folder once a shard changes: never leave it stale
        (out / INDEX_NAME).unlink(missing_ok=True)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="shards", unit="shard", disable=not progress)
    workers = min(workers, len(todo))  # a pool forks all its workers up front: never more than the shards
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=exit_with_parent) as pool:
            for j, meta in zip(todo, pool.map(write_shard, todo)):
                metas[j.path] = meta
                bar.update()
    else:
        for j in todo:
            metas[j.path] = write_shard(j)
            bar.update()
    bar.close()
    index: dict = {"version": INDEX_VERSION, "sample_rate": SAMPLE_RATE, "max_seconds": max_seconds,
                   "streams": {}, "failures": []}
    for j in jobs:
        meta = metas[j.path]
        st = index["streams"].setdefault(j.stream, {"shards": [], "seconds": 0.0, "segments": 0})
        st["shards"].append({"path": j.path.relative_to(out).as_posix(), "segments": len(meta["segments"]),
                             "seconds": meta["seconds"]})
        st["seconds"] += meta["seconds"]
        st["segments"] += len(meta["segments"])
        index["failures"].extend(meta["failures"])
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / INDEX_NAME, index, indent=1)
    return index


def read_index(shard_dir: str | os.PathLike) -> dict:
    path = Path(shard_dir) / INDEX_NAME
    if not path.exists():
        raise ManifestError(f"{path}: no shard index; write shards first with `harmonia data shard MANIFEST "
                            f"-o {shard_dir}`")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not a readable shard index ({e}); re-run `harmonia data shard MANIFEST "
                            f"-o {shard_dir}` to rewrite it") from None
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION:
        version = index.get("version") if isinstance(index, dict) else None
        raise ManifestError(f"{path}: index version {version}, expected {INDEX_VERSION}; "
                            "rewrite the shards with this harmonia")
    return index
