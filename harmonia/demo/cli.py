"""`harmonia demo`: the paper in miniature, offline (see harmonia.demo.run)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="offline end-to-end demo: synthetic pool, pre-training, ensemble, evaluation")
    p.add_argument("--quick", action="store_true", help="smaller corpus and fewer steps (about 3 minutes)")
    p.add_argument("--out", default="demo-out", help="output directory (finished stages are reused)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from harmonia.demo.run import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed)
    return 0
