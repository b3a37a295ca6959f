"""Readers of X-ARES audio shards (specs/xares.md §4): plain tar files of `<key>.<ext>` +
`<key>.json` member pairs, found under `<data_root>/<task.name>/` by the task's shard globs.

Key rules are webdataset's, as X-ARES reads them: a member name splits into (key, ext) at the first
dot of its basename (the key keeps any directory prefix); consecutive members with the same key form
one sample; a member whose extension the current sample already has is skipped (webdataset's
"duplicate file name"). Audio is decoded with soundfile, mixed to mono and resampled with soxr
(harmonia.audio) — X-ARES uses torchaudio's sinc resampler, which no current torchaudio can even
decode with (§7); the resampler is the one documented difference in input audio.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from harmonia.audio import AudioError, check_waveform, resample, to_mono
from harmonia.eval.tasks import EvalDataError, Task

AUDIO_EXTS = ("flac", "wav", "mp3", "ogg", "opus", "sox", "m4a", "wma")


class DatasetMissingError(EvalDataError, FileNotFoundError):
    """A task's shards are not on disk; the message names the expected files and their source."""


class ShardError(EvalDataError, ValueError):
    """A shard cannot be read as a tar of X-ARES samples."""


@dataclass
class RawSample:
    """One sample of a shard in tar order: `key`, parsed `json`, the audio member's bytes and
    extension (`audio`, `ext`), or `error` (one line) when the pair is incomplete or unreadable."""

    key: str
    json: object
    audio: bytes | None
    ext: str | None
    where: str
    error: str | None = None

    def load(self, sample_rate: int) -> torch.Tensor:
        """Decode -> mono float32 (N,) at `sample_rate`; raises AudioError naming the sample."""
        if self.error is not None:
            raise AudioError(self.error)
        return decode_audio(self.audio, sample_rate, self.where)


@dataclass
class ShardScan:
    """What reading one shard found besides the samples."""

    duplicates: list[str] = field(default_factory=list)  # "key.ext" members skipped
    errors: list[str] = field(default_factory=list)  # one line per failed sample


def split_member_name(name: str) -> tuple[str, str]:
    """`dir/a.b.wav` -> (`dir/a`, `b.wav`): webdataset splits at the first dot of the basename."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext if dot else ""


def iter_tar_members(path: str | os.PathLike, scan: ShardScan | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {ext: bytes}) per sample of a tar, following the webdataset key rules above."""
    path = Path(path)
    scan = scan if scan is not None else ShardScan()
    try:
        tar = tarfile.open(path, mode="r|*")
    except (tarfile.TarError, OSError) as e:
        raise ShardError(f"{path}: cannot open as a tar archive ({e}). Expected an X-ARES audio shard; "
                         "delete it and download the task's data again.") from e
    key, sample = None, {}
    try:
        with tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = split_member_name(member.name)
                if k.startswith("__") or not ext:
                    continue
                if k != key:
                    if key is not None:
                        yield key, sample
                    key, sample = k, {}
                if ext in sample:  # webdataset: "duplicate file name in tar file" -> skipped
                    scan.duplicates.append(f"{k}.{ext}")
                    continue
                sample[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ShardError(f"{path}: corrupt or truncated tar after sample {key!r} ({e}). "
                         "Delete the shard and download the task's data again.") from e
    if key is not None:
        yield key, sample


def decode_audio(data: bytes, sample_rate: int, name: str = "<bytes>") -> torch.Tensor:
    """Decode audio bytes with soundfile -> mono float32 (N,) at `sample_rate` (soxr)."""
    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{name}: could not decode audio ({e}); expected a format libsndfile reads "
                         "(wav, flac, ogg, mp3)") from e
    wav = to_mono(audio)
    check_waveform(wav, name)
    return torch.from_numpy(np.ascontiguousarray(resample(wav, sr, sample_rate)))


def read_audio_shard(path: str | os.PathLike, scan: ShardScan | None = None) -> Iterator[RawSample]:
    """Yield the samples of one audio shard in tar order, undecoded (see `RawSample.load`). A pair
    without audio or with a bad JSON is yielded with `error` set and listed in `scan.errors`, so that
    a batch job can report every failure and keep going."""
    scan = scan if scan is not None else ShardScan()
    for key, members in iter_tar_members(path, scan):
        where = f"{Path(path).name}:{key}"
        audio_ext = next((e for e in members if e.lower().rsplit(".", 1)[-1] in AUDIO_EXTS), None)
        error, meta = None, None
        if "json" not in members:
            error = f"{where}: no {key}.json beside the audio (members: {sorted(members)})"
        else:
            try:
                meta = json.loads(members["json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                error = f"{where}: {key}.json is not valid UTF-8 JSON ({e})"
        if error is None and audio_ext is None:
            error = f"{where}: no audio member (expected one of {AUDIO_EXTS}; found {sorted(members)})"
        if error is not None:
            scan.errors.append(error)
        yield RawSample(key, meta, members.get(audio_ext) if audio_ext else None, audio_ext, where, error)


def find_shards(task: Task, data_root: str | os.PathLike) -> dict[str, list[Path]]:
    """Partition -> sorted shard paths. Raises DatasetMissingError naming every missing pattern,
    the directory searched and where X-ARES publishes the data.

    X-ARES lists shards in directory order (Path.glob); we sort them, so our sample order is the
    same on every file system."""
    task_dir = Path(data_root) / task.name
    found: dict[str, list[Path]] = {}
    missing: list[str] = []
    for part, pattern in task.partitions().items():
        paths = sorted(p for p in task_dir.glob(pattern) if p.is_file()) if task_dir.is_dir() else []
        if not paths:
            missing.append(pattern)
        found[part] = paths
    if missing:
        where = (f"X-ARES publishes them in Zenodo record {task.zenodo_id} ({task.zenodo_url}); download "
                 f"and unzip it into {task_dir}/" if task.zenodo_id else
                 "this task has no public source: write the shards yourself (specs/xares.md §4.4)")
        raise DatasetMissingError(
            f"task {task.name!r} ({task.formal_name}): no shards match {missing} in {task_dir}/. "
            f"Expected tar files of <key>.<audio ext> + <key>.json pairs. {where}.")
    return found
