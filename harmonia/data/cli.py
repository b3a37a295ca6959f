"""`harmonia data manifest|mix|shard`: build a pre-training pool from folders of audio."""

from __future__ import annotations

import argparse
from pathlib import Path

from harmonia.cli_args import (
    add_allow_partial,
    non_negative_int,
    one_line,
    partial_exit,
    positive_int,
    report_failures,
    seconds,
)


def _manifest(args: argparse.Namespace) -> int:
    from harmonia.data.manifest import Source, read_blacklist, scan_sources, write_manifest
    from harmonia.io import remove_stale_temps, write_text_atomic

    sources = [Source.parse(s) for s in args.source]
    blacklist = read_blacklist(args.blacklist) if args.blacklist else None
    output_parent(args.output)
    remove_stale_temps(args.output.parent)
    res = scan_sources(sources, workers=args.workers, blacklist=blacklist, progress=not args.quiet)
    write_manifest(res.entries, args.output)
    hours = sum(e.duration for e in res.entries) / 3600
    print(f"{args.output}: {len(res.entries)} files, {hours:.2f} h"
          + (f"; {len(res.blacklisted)} blacklisted ids removed" if blacklist else ""))
    failed = Path(str(args.output) + ".failed.tsv")
    if res.failures:
        write_text_atomic(failed, "".join(f"{one_line(p)}\t{' '.join(why.split())}\n" for p, why in res.failures))
    else:
        failed.unlink(missing_ok=True)  # from an earlier run whose failures are now fixed
    report_failures(res.failures, "unreadable file(s), left out of the manifest",
                    f"listed in {failed}")
    return partial_exit(len(res.failures), args)


def output_parent(path: Path) -> None:
    """Create the folder of an output file; refuse an output path that is a folder."""
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; expected the path of the file to write")
    path.parent.mkdir(parents=True, exist_ok=True)


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
    weights = dict(args.weight)
    if len(weights) < len(args.weight):
        repeated = sorted({c for c, _ in args.weight if sum(c == d for d, _ in args.weight) > 1})
        raise ValueError(f"--weight given more than once for {repeated}; give each corpus one weight")
    plan = plan_mixture(hours, args.ratio, weights)
    print(format_plan(plan, _seg_seconds(entries, args.max_seconds), args.steps, args.batch_size))
    if args.output:
        from harmonia.io import write_json_atomic

        output_parent(args.output)
        write_json_atomic(args.output, {"ratio": plan.domain_ratio, "corpus_weights": weights,
                                        "target": plan.target, "hours": plan.hours}, indent=1)
    return 0


def corpus_weight(text: str) -> tuple[str, float]:
    """argparse type of --weight CORPUS=W (W finite and >= 0)."""
    from harmonia.data.mixture import MixtureError, check_weight

    corpus, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not sep or not corpus or number is None:
        raise argparse.ArgumentTypeError(f"expected CORPUS=NUMBER, e.g. commonvoice=0.5, found {text!r}")
    try:
        return corpus, check_weight(corpus, number)
    except MixtureError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _shard(args: argparse.Namespace) -> int:
    from harmonia.data.manifest import read_manifest
    from harmonia.data.shards import write_shards

    if args.output.exists() and not args.output.is_dir():
        raise NotADirectoryError(f"-o {args.output}: exists and is not a directory; expected the shard folder")
    index = write_shards(read_manifest(args.manifest), args.output, shard_seconds=args.shard_seconds,
                         max_seconds=args.max_seconds, min_seconds=args.min_seconds, seed=args.seed,
                         workers=args.workers, progress=not args.quiet)
    for name, st in sorted(index["streams"].items()):
        print(f"{name:<28}{len(st['shards']):>6} shards{st['segments']:>9} segments{st['seconds'] / 3600:>9.2f} h")
    report_failures([(f["id"], f["error"]) for f in index["failures"]],
                    "file(s) could not be decoded and were skipped", "the next run tries them again")
    return partial_exit(len(index["failures"]), args)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="pre-training data pools: manifest, mix, shard")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    m = sub.add_parser("manifest", help="scan audio folders into a JSONL manifest")
    m.add_argument("--source", action="append", required=True, metavar="DOMAIN/CORPUS=DIR",
                   help="a folder of audio, e.g. speech/commonvoice=/data/cv (repeat for each corpus)")
    m.add_argument("-o", "--output", required=True, type=Path, help="manifest .jsonl to write")
    m.add_argument("--blacklist", type=Path, help="file of ids to exclude (evaluation leaks), one per line")
    m.add_argument("--workers", type=positive_int, default=8)
    m.add_argument("--quiet", action="store_true")
    add_allow_partial(m)
    m.set_defaults(func=_manifest)

    x = sub.add_parser("mix", help="hours, shares and sampling weights of a domain mixture")
    x.add_argument("manifest", type=Path)
    x.add_argument("--ratio", default="balanced",
                   help="speech-heavy (70:15:15), balanced (40:30:30), S:M:S numbers, or speech=0.5,music=...")
    x.add_argument("--weight", action="append", default=[], metavar="CORPUS=W", type=corpus_weight,
                   help="multiply a corpus's hours within its domain (default 1, 0 leaves it out)")
    x.add_argument("--steps", type=non_negative_int, default=0, help="planned training steps (for effective epochs)")
    x.add_argument("--batch-size", type=non_negative_int, default=0, help="segments per step, all ranks together")
    x.add_argument("--max-seconds", type=seconds, default=10.0)
    x.add_argument("-o", "--output", type=Path, help="write the plan as JSON")
    x.set_defaults(func=_mix)

    s = sub.add_parser("shard", help="write webdataset tar shards of <= 10 s segments, per domain")
    s.add_argument("manifest", type=Path)
    s.add_argument("-o", "--output", required=True, type=Path, help="shard folder")
    s.add_argument("--shard-seconds", type=seconds, default=3600.0, help="audio per shard (default 1 h)")
    s.add_argument("--max-seconds", type=seconds, default=10.0)
    s.add_argument("--min-seconds", type=seconds, default=1.0, help="drop shorter segments")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=positive_int, default=1)
    s.add_argument("--quiet", action="store_true")
    add_allow_partial(s)
    s.set_defaults(func=_shard)
