"""`harmonia` command line. Each subsystem owns its subcommands in a small `cli.py` of its own
(`add_parser(subparsers)` registers them); this file only assembles them."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that register subcommands, in the order `harmonia --help` lists them.
SUBCOMMAND_MODULES = [
    "harmonia.demo.cli",  # demo (the README's main job)
    "harmonia.commands",  # encode, info, convert, bench
    "harmonia.registry_cli",  # list, xares-export
    "harmonia.eval.cli",  # evaluate, report
    "harmonia.data.cli",
    "harmonia.train.cli",
    "harmonia.train.distill",  # distill
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harmonia",
        description="General-purpose audio encoders: encode, ensemble, pre-train, evaluate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
