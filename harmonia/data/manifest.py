"""Audio pools as JSONL manifests: one line per file with path, duration, sample rate, channels,
domain, corpus and id.

`scan_sources` walks folders in parallel (header reads only, through libsndfile), reports every
unreadable file instead of dropping it silently, and removes blacklisted ids (evaluation leaks: the
paper filtered Freesound / FMA / YouTube ids that appear in the X-ARES test sets).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")
DOMAINS = ("speech", "music", "sound")


class ManifestError(ValueError):
    """A manifest or a source specification is malformed; the message names the fix."""


@dataclass(frozen=True)
class Source:
    """One folder of audio: every file below `root` belongs to `domain` / `corpus`."""

    domain: str
    corpus: str
    root: Path

    @classmethod
    def parse(cls, spec: str) -> Source:
        """Parse `DOMAIN/CORPUS=DIR`, e.g. `speech/commonvoice=/data/cv`."""
        m = re.fullmatch(r"([A-Za-z0-9_\-]+)/([A-Za-z0-9_\-]+)=(.+)", spec)
        if not m:
            raise ManifestError(
                f"source {spec!r}: expected DOMAIN/CORPUS=DIR, e.g. speech/commonvoice=/data/cv "
                "(domain and corpus made of letters, digits, '_' or '-')")
        return cls(m.group(1), m.group(2), Path(m.group(3)))


@dataclass(frozen=True)
class Entry:
    """One audio file of the pool. `duration` in seconds; `id` is `corpus/relative/path/stem`."""

    id: str
    path: str
    duration: float
    sample_rate: int
    channels: int
    num_frames: int
    domain: str
    corpus: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def iter_audio_files(root: Path) -> Iterator[Path]:
    """Audio files under `root`, sorted (deterministic manifests)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(AUDIO_EXTENSIONS):
                yield Path(dirpath) / name


def _probe(args: tuple[Source, Path]) -> Entry | tuple[str, str]:
    source, path = args
    rel = path.relative_to(source.root).with_suffix("").as_posix()
    try:
        info = sf.info(str(path))
        if info.frames <= 0 or info.samplerate <= 0:
            raise ValueError(f"no audio frames (frames={info.frames}, rate={info.samplerate})")
    except Exception as e:  # noqa: BLE001 - every failure is reported, the scan goes on
        return str(path), f"{type(e).__name__}: {e}".strip()
    return Entry(id=f"{source.corpus}/{rel}", path=str(path.resolve()), duration=info.frames / info.samplerate,
                 sample_rate=int(info.samplerate), channels=int(info.channels), num_frames=int(info.frames),
                 domain=source.domain, corpus=source.corpus)


def read_blacklist(path: str | os.PathLike) -> set[str]:
    """Ids to exclude, one per line ('#' comments allowed). An id matches an entry's full id
    (`corpus/rel/path`), its path relative to the corpus, or its file stem (e.g. a Freesound id)."""
    ids = set()
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.add(line)
    return ids


def is_blacklisted(entry: Entry, blacklist: set[str]) -> bool:
    rel = entry.id.split("/", 1)[1]
    return entry.id in blacklist or rel in blacklist or rel.rsplit("/", 1)[-1] in blacklist


@dataclass
class ScanResult:
    entries: list[Entry]
    failures: list[tuple[str, str]]  # (path, reason)
    blacklisted: list[Entry]


def scan_sources(sources: Iterable[Source], workers: int = 8, blacklist: set[str] | None = None,
                 progress: bool = True) -> ScanResult:
    """Probe every audio file of every source in parallel. Output order is deterministic (by source
    order, then sorted path), whatever the number of workers."""
    from tqdm import tqdm

    sources = list(sources)
    for s in sources:
        if not s.root.is_dir():
            raise ManifestError(f"source {s.domain}/{s.corpus}: {s.root} is not a directory; "
                                "pass an existing folder of audio files")
    jobs = [(s, p) for s in sources for p in iter_audio_files(s.root)]
    entries, failures, dropped = [], [], []
    with ThreadPoolExecutor(max(1, workers)) as pool:  # libsndfile releases the GIL on I/O
        results = pool.map(_probe, jobs, chunksize=64)
        for res in tqdm(results, total=len(jobs), desc="scan", unit="file", disable=not progress):
            if isinstance(res, Entry):
                (dropped if blacklist and is_blacklisted(res, blacklist) else entries).append(res)
            else:
                failures.append(res)
    seen: dict[str, str] = {}
    for e in entries:
        if e.id in seen:
            raise ManifestError(f"duplicate id {e.id!r} ({seen[e.id]} and {e.path}): two files with the same "
                                "stem in one folder; rename one, or give the folders different corpus names")
        seen[e.id] = e.path
    return ScanResult(entries, failures, dropped)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file via a temporary name and rename, so that readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_manifest(entries: Iterable[Entry], path: str | os.PathLike) -> None:
    atomic_write_text(path, "".join(e.to_json() + "\n" for e in entries))


def read_manifest(path: str | os.PathLike) -> list[Entry]:
    """Read a JSONL manifest; a malformed line raises naming the line number."""
    entries = []
    fields = set(Entry.__dataclass_fields__)
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            entries.append(Entry(**{k: obj[k] for k in fields}))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ManifestError(f"{path}:{i}: not a manifest line ({e}); expected JSON with keys "
                                f"{sorted(fields)}; regenerate it with `harmonia data manifest`") from e
    return entries
