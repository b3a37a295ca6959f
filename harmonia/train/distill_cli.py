"""`harmonia distill RECIPE [--set key=value ...] [--export DIR] [--cache-only]`.

Multi-process: `torchrun --nproc_per_node N -m harmonia distill RECIPE ...` (or
`-m harmonia.train.distill_cli`). The command line lives apart from the loop (harmonia.train.distill)
because the recipes import the loop's config classes: the loop never imports the recipes.
"""

from __future__ import annotations

import argparse
import json
import sys

from harmonia.train.config import ConfigError
from harmonia.train.distill import distill


def add_arguments(p) -> None:
    p.add_argument("recipe", help="a recipe of harmonia.recipes.distill, e.g. distill_tiny_debug, "
                                  "distill_cmu_ensemble_base")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.shards=DIR --set teacher.source=cmu-aist-icme2025")
    p.add_argument("--export", metavar="DIR", help="write the trained student (heads dropped) in harmonia's format")
    p.add_argument("--cache-only", action="store_true",
                   help="only write the teacher cache (teacher.cache) for the mixture's shards, then stop")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--override-resume-config", action="store_true",
                   help="resume even though --set changed settings (lr, schedule, mixture...; the student, the "
                        "teacher and the targets are still refused) and record them in run.out_dir")


def run_from_args(args) -> int:
    from harmonia.io import CheckpointError
    from harmonia.recipes.distill import RECIPES
    from harmonia.train.config import finish_run, recipe_config

    try:
        cfg = recipe_config(RECIPES, args.recipe, args.overrides)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=1))
            return 0
        record = distill(cfg, export=args.export, cache_only=args.cache_only,
                         override_resume_config=args.override_resume_config)
    except ConfigError as e:
        print(f"harmonia distill: configuration error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:  # a teacher cache of another teacher; no intact checkpoint to resume
        print(f"harmonia distill: error: {e}", file=sys.stderr)
        return 2
    return finish_run(record)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("distill", help="distil a teacher encoder or ensemble into one student "
                                              "(torchrun for several processes)")
    add_arguments(p)
    p.set_defaults(func=run_from_args)


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m harmonia.train.distill_cli` (and torchrun)."""
    parser = argparse.ArgumentParser(prog="harmonia distill", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
