"""Audio pools as JSONL manifests: one line per file with path, duration, sample rate, channels,
domain, corpus and id.

`scan_sources` walks folders in parallel (header reads only, through libsndfile), reports every
unreadable file instead of dropping it silently, and removes blacklisted ids (evaluation leaks: the
paper filtered Freesound / FMA / YouTube ids that appear in the X-ARES test sets).

Duplicates: every id and every audio path appears once in a pool. `read_manifest` drops a line
that repeats an earlier line exactly (e.g. two overlapping manifests concatenated) with a warning
naming both line numbers, and refuses two different lines with the same id or the same path
(which one is right cannot be guessed). Counting a file twice would double its hours in the mixture
and write it twice into the shards.
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")
DOMAINS = ("speech", "music", "sound")
# Domain and corpus names become folder and file names of the shards: no separators, no '..'.
NAME_PATTERN = r"[A-Za-z0-9_\-]+"


class ManifestError(ValueError):
    """A manifest or a source specification is malformed; the message names the fix."""


class ManifestWarning(UserWarning):
    """A manifest was usable after a harmless repair (exact duplicate lines dropped)."""


@dataclass(frozen=True)
class Source:
    """One folder of audio: every file below `root` belongs to `domain` / `corpus`."""

    domain: str
    corpus: str
    root: Path

    @classmethod
    def parse(cls, spec: str) -> Source:
        """Parse `DOMAIN/CORPUS=DIR`, e.g. `speech/commonvoice=/data/cv`."""
        m = re.fullmatch(rf"({NAME_PATTERN})/({NAME_PATTERN})=(.+)", spec)
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

    def __post_init__(self) -> None:
        """Every field has its type and a usable value: a crafted or hand-edited manifest cannot
        write shards outside their folder (domain '..') or put NaN hours into a mixture."""
        for name in ("domain", "corpus"):
            value = getattr(self, name)
            if not (isinstance(value, str) and re.fullmatch(NAME_PATTERN, value)):
                raise ManifestError(f"{name} {value!r}: expected a name of letters, digits, '_' or '-' "
                                    "(it becomes a folder or file name of the shards)")
        for name in ("id", "path"):
            if not (isinstance(getattr(self, name), str) and getattr(self, name)):
                raise ManifestError(f"{name} {getattr(self, name)!r}: expected a non-empty string")
        for name in ("sample_rate", "channels", "num_frames"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ManifestError(f"{name} {value!r}: expected an integer >= 1")
        d = self.duration
        if not (isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d) and d > 0):
            raise ManifestError(f"duration {d!r}: expected a finite number of seconds > 0")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def iter_audio_files(root: Path) -> Iterator[Path]:
    """Audio files under `root`, sorted (deterministic manifests). Symlinked folders are followed
    (corpora are often assembled from links); a folder reached a second time (a link cycle, or a
    link to a folder already scanned) is scanned once."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
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


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of an input file; a binary or wrongly encoded file is a ManifestError naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected a {what}") from None


def read_blacklist(path: str | os.PathLike) -> set[str]:
    """Ids to exclude, one per line ('#' comments allowed). An id matches an entry's full id
    (`corpus/rel/path`), its path relative to the corpus, or its file stem (e.g. a Freesound id)."""
    ids = set()
    for line in read_text_file(path, "blacklist (one id per line)").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.add(unicodedata.normalize("NFC", line))
    return ids


def is_blacklisted(entry: Entry, blacklist: set[str]) -> bool:
    """Ids compare in Unicode NFC: 'é' typed in the list matches a file name stored decomposed (NFD,
    as macOS writes them)."""
    full = unicodedata.normalize("NFC", entry.id)
    rel = full.split("/", 1)[-1]
    return full in blacklist or rel in blacklist or rel.rsplit("/", 1)[-1] in blacklist


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
    check_disjoint(sources)
    jobs = [(s, p) for s in sources for p in iter_audio_files(s.root)]
    entries, failures, dropped = [], [], []
    with ThreadPoolExecutor(max(1, workers)) as pool:  # libsndfile releases the GIL on I/O
        results = pool.map(_probe, jobs, chunksize=64)
        for res in tqdm(results, total=len(jobs), desc="scan", unit="file", disable=not progress):
            if isinstance(res, Entry):
                (dropped if blacklist and is_blacklisted(res, blacklist) else entries).append(res)
            else:
                failures.append(res)
    check_unique(entries, lambda e: e.path)
    return ScanResult(entries, failures, dropped)


def check_disjoint(sources: Sequence[Source]) -> None:
    """Refuse two sources whose folders are the same or one inside the other: their files would be
    scanned twice, under two ids."""
    roots = [s.root.resolve() for s in sources]
    for i, a in enumerate(roots):
        for j in range(i):
            b = roots[j]
            if a == b or a.is_relative_to(b) or b.is_relative_to(a):
                first, second = sources[j], sources[i]
                raise ManifestError(
                    f"sources {first.domain}/{first.corpus}={first.root} and {second.domain}/{second.corpus}="
                    f"{second.root} overlap ({'the same folder' if a == b else 'one folder is inside the other'}): "
                    "their files would be counted twice; give each folder once, and never a folder with its "
                    "sub-folder")


def check_unique(entries: Sequence[Entry], where) -> None:
    """Raise ManifestError when two entries share an id or a path; `where(entry)` says where each
    one came from (a file path, a manifest line)."""
    for field in ("id", "path"):
        seen: dict[str, Entry] = {}
        for e in entries:
            key = getattr(e, field)
            if key in seen:
                hint = ("two files with the same stem in one folder: rename one, or give the folders different "
                        "corpus names" if field == "id" else "one file listed under two ids: keep one")
                raise ManifestError(f"duplicate {field} {key!r} ({where(seen[key])} and {where(e)}); {hint}")
            seen[key] = e


def write_manifest(entries: Iterable[Entry], path: str | os.PathLike) -> None:
    """Write the manifest atomically (readers see the old file or the whole new one)."""
    from harmonia.io import write_text_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(e.to_json() + "\n" for e in entries))


def read_manifest(path: str | os.PathLike) -> list[Entry]:
    """Read a JSONL manifest. A malformed line raises naming the line number; an exact repeat of an
    earlier entry is dropped with a ManifestWarning naming both lines; two different entries with
    the same id or path raise ManifestError naming both lines."""
    entries: list[Entry] = []
    lines: dict[Entry, int] = {}  # entry -> line number of its first occurrence
    repeats: list[tuple[int, int]] = []
    fields = set(Entry.__dataclass_fields__)
    for i, line in enumerate(read_text_file(path, "JSONL manifest").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            entry = Entry(**{k: obj[k] for k in fields})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ManifestError(f"{path}:{i}: not a manifest line ({e}); expected JSON with keys "
                                f"{sorted(fields)}; regenerate it with `harmonia data manifest`") from e
        except ManifestError as e:
            raise ManifestError(f"{path}:{i}: {e}; fix the line or regenerate the manifest with "
                                "`harmonia data manifest`") from None
        if entry in lines:
            repeats.append((i, lines[entry]))
            continue
        lines[entry] = i
        entries.append(entry)
    if repeats:
        shown = ", ".join(f"{i} (= line {first})" for i, first in repeats[:10])
        more = f" and {len(repeats) - 10} more" if len(repeats) > 10 else ""
        warnings.warn(f"{path}: dropped {len(repeats)} duplicate line(s): {shown}{more}; each file is counted "
                      "once. Rewrite the manifest without them to silence this warning", ManifestWarning,
                      stacklevel=2)
    check_unique(entries, lambda e: f"{path}:{lines[e]}")
    return entries
