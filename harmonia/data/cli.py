"""`harmonia data manifest|mix|shard`: build a pre-training pool from folders of audio."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _manifest(args: argparse.Namespace) -> int:
    from harmonia.data.manifest import Source, read_blacklist, scan_sources, write_manifest

    sources = [Source.parse(s) for s in args.source]
    blacklist = read_blacklist(args.blacklist) if args.blacklist else None
    res = scan_sources(sources, workers=args.workers, blacklist=blacklist, progress=not args.quiet)
    write_manifest(res.entries, args.output)
    hours = sum(e.duration for e in res.entries) / 3600
    print(f"{args.output}: {len(res.entries)} files, {hours:.2f} h"
          + (f"; {len(res.blacklisted)} blacklisted ids removed" if blacklist else ""))
    if res.failures:
        failed = Path(str(args.output) + ".failed.tsv")
        failed.write_text("".join(f"{p}\t{why}\n" for p, why in res.failures))
        print(f"{len(res.failures)} unreadable files (listed in {failed}):", file=sys.stderr)
        for p, why in res.failures:
            print(f"  {p}: {why}", file=sys.stderr)
    return 0


def _seg_seconds(entries, max_seconds: float) -> dict[str, float]:
    """Mean segment length per stream under the shard writer's equal-split rule."""
    import math

    tot: dict[str, list[float]] = {}
    for e in entries:
        n = max(1, math.ceil(e.duration / max_seconds))
        acc = tot.setdefault(f"{e.domain}/{e.corpus}", [0.0, 0.0])
        acc[0] += e.duration
        acc[1] += n
    return {s: a / n for s, (a, n) in tot.items()}


def _mix(args: argparse.Namespace) -> int:
    from harmonia.data.manifest import read_manifest
    from harmonia.data.mixture import format_plan, plan_mixture

    entries = read_manifest(args.manifest)
    hours: dict[str, float] = {}
    for e in entries:
        hours[f"{e.domain}/{e.corpus}"] = hours.get(f"{e.domain}/{e.corpus}", 0.0) + e.duration / 3600
    weights = dict(_kv(w) for w in args.weight)
    plan = plan_mixture(hours, args.ratio, weights)
    print(format_plan(plan, _seg_seconds(entries, args.max_seconds), args.steps, args.batch_size))
    if args.output:
        from harmonia.data.manifest import atomic_write_text

        atomic_write_text(args.output, json.dumps({"ratio": plan.domain_ratio, "corpus_weights": weights,
                                                   "target": plan.target, "hours": plan.hours}, indent=1))
    return 0


def _kv(s: str) -> tuple[str, float]:
    k, sep, v = s.partition("=")
    try:
        if not sep:
            raise ValueError
        return k, float(v)
    except ValueError:
        raise SystemExit(f"--weight {s!r}: expected CORPUS=NUMBER, e.g. --weight commonvoice=0.5") from None


def _shard(args: argparse.Namespace) -> int:
    from harmonia.data.manifest import read_manifest
    from harmonia.data.shards import write_shards

    index = write_shards(read_manifest(args.manifest), args.output, shard_seconds=args.shard_seconds,
                         max_seconds=args.max_seconds, min_seconds=args.min_seconds, seed=args.seed,
                         workers=args.workers, progress=not args.quiet)
    for name, st in sorted(index["streams"].items()):
        print(f"{name:<28}{len(st['shards']):>6} shards{st['segments']:>9} segments{st['seconds'] / 3600:>9.2f} h")
    if index["failures"]:
        print(f"{len(index['failures'])} files could not be decoded and were skipped:", file=sys.stderr)
        for f in index["failures"]:
            print(f"  {f['path']}: {f['error']}", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="pre-training data pools: manifest, mix, shard")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    m = sub.add_parser("manifest", help="scan audio folders into a JSONL manifest")
    m.add_argument("--source", action="append", required=True, metavar="DOMAIN/CORPUS=DIR",
                   help="a folder of audio, e.g. speech/commonvoice=/data/cv (repeat for each corpus)")
    m.add_argument("-o", "--output", required=True, type=Path, help="manifest .jsonl to write")
    m.add_argument("--blacklist", type=Path, help="file of ids to exclude (evaluation leaks), one per line")
    m.add_argument("--workers", type=int, default=8)
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=_manifest)

    x = sub.add_parser("mix", help="hours, shares and sampling weights of a domain mixture")
    x.add_argument("manifest", type=Path)
    x.add_argument("--ratio", default="balanced",
                   help="speech-heavy (70:15:15), balanced (40:30:30), S:M:S numbers, or speech=0.5,music=...")
    x.add_argument("--weight", action="append", default=[], metavar="CORPUS=W",
                   help="multiply a corpus's hours within its domain (default 1)")
    x.add_argument("--steps", type=int, default=0, help="planned training steps (for effective epochs)")
    x.add_argument("--batch-size", type=int, default=0, help="segments per step, all ranks together")
    x.add_argument("--max-seconds", type=float, default=10.0)
    x.add_argument("-o", "--output", type=Path, help="write the plan as JSON")
    x.set_defaults(func=_mix)

    s = sub.add_parser("shard", help="write webdataset tar shards of <= 10 s segments, per domain")
    s.add_argument("manifest", type=Path)
    s.add_argument("-o", "--output", required=True, type=Path, help="shard folder")
    s.add_argument("--shard-seconds", type=float, default=3600.0, help="audio per shard (default 1 h)")
    s.add_argument("--max-seconds", type=float, default=10.0)
    s.add_argument("--min-seconds", type=float, default=1.0, help="drop shorter segments")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_shard)
