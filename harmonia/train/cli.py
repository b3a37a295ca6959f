"""`harmonia pretrain RECIPE [--set key=value ...] [--export DIR] [--iterations N]`.

Multi-process: `torchrun --nproc_per_node N -m harmonia pretrain RECIPE ...` (or `-m harmonia.train.cli`).
This module imports the loop (inside the function, so `harmonia --help` stays fast); the loop never
imports it."""

from __future__ import annotations

import argparse
import json
import sys

from harmonia.cli_args import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a recipe of harmonia.recipes.pretrain, e.g. beats_tiny_debug, beats_base, "
                                  "beats_large_speech_heavy, beats_large_balanced")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.shards=DIR --set optim.lr=1e-4")
    p.add_argument("--export", metavar="DIR", help="write the trained encoder in harmonia's format")
    p.add_argument("--iterations", type=positive_int, default=1,
                   help="BEATs iterations (tokenizer -> encoder -> VQ-KD tokenizer -> ...); exports under run.out_dir")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--override-resume-config", action="store_true",
                   help="resume even though --set changed settings: apply the changes from the resumed step on "
                        "(lr, schedule, mixture...; architecture changes are still refused) and record them in "
                        "run.out_dir/config_history.jsonl")


def run_from_args(args: argparse.Namespace) -> int:
    from harmonia.io import CheckpointError
    from harmonia.recipes.pretrain import RECIPES
    from harmonia.train.config import ConfigError, finish_run, recipe_config
    from harmonia.train.pretrain import iterate, pretrain

    try:
        cfg = recipe_config(RECIPES, args.recipe, args.overrides)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=1))
            return 0
        cfg.validate()
    except ConfigError as e:
        print(f"harmonia pretrain: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        if args.iterations > 1:
            out = iterate(cfg, args.iterations, cfg.run.out_dir, override_resume_config=args.override_resume_config)
            print(f"final encoder: {out}")
            record = None
        else:
            record = pretrain(cfg, export=args.export, override_resume_config=args.override_resume_config)
    except ConfigError as e:  # e.g. a resume with changed settings
        print(f"harmonia pretrain: configuration error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:  # e.g. no intact checkpoint in run.out_dir
        print(f"harmonia pretrain: error: {e}", file=sys.stderr)
        return 2
    return finish_run(record)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="BEATs pre-training from a recipe (torchrun for several processes)")
    add_arguments(p)
    p.set_defaults(func=run_from_args)


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m harmonia.train.cli` (and torchrun)."""
    parser = argparse.ArgumentParser(prog="harmonia pretrain", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
