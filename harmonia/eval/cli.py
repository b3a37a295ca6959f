"""`harmonia evaluate` and `harmonia report`."""

from __future__ import annotations

import argparse

from harmonia.cli_args import add_allow_partial, device, partial_exit, positive_int, report_failures
from harmonia.fusion import STATES_HELP, select_states


def fusion_states(value: str) -> str:
    """argparse type of --fusion-states: a valid `harmonia.fusion.select_states` spec."""
    try:
        select_states(value, 1)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score an encoder on X-ARES tasks (linear probe + kNN)",
        description="Encode X-ARES audio shards (cached per encoder fingerprint), train linear probes and "
                    "run kNN, write results.json/.md/.csv and a chart per task.")
    p.add_argument("--model", required=True,
                   help="registry name, checkpoint file/dir, HF repo id, or an X-ARES encoder file path.py[:Class]")
    p.add_argument("--tasks", nargs="+", default=["table1"],
                   help="task names, `table1` (default), `all`, comma lists, custom task files (.json/.py) or "
                        "X-ARES 0.1.3 task modules (*_task.py, used as they are; xares need not be installed)")
    p.add_argument("--data-root", required=True, help="directory holding <task>/ shard folders (X-ARES env/)")
    p.add_argument("--mode", choices=["clean", "xares"], default="clean",
                   help="clean (default): masked padding, all crops, cosine kNN, seeded; xares: X-ARES 0.1.3 exactly")
    p.add_argument("--seeds", type=positive_int, default=3, help="probe seeds in clean mode (mean ± std); default 3")
    p.add_argument("--out", required=True, help="output directory for the reports")
    p.add_argument("--cache-dir", default=None, help="embedding cache (default: <data-root>/.harmonia_cache)")
    p.add_argument("--fusion", choices=["concat", "layer-weighted", "gated"], default="concat",
                   help="concat (default): the encoder's output (an ensemble's concatenated final frames); "
                        "layer-weighted / gated: learned fusion over every member's hidden states, trained "
                        "inside the probe on the training split (weights saved and plotted)")
    p.add_argument("--fusion-states", type=fusion_states, default="all", metavar="all|last:K|every:K",
                   help="learned fusion: which hidden states of each member it weighs and the cache stores "
                        "(the cache holds kept states x width per frame: subsample for frame tasks of big "
                        "models). " + STATES_HELP)
    p.add_argument("--device", type=device, default=None, help="encoder device, e.g. cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_allow_partial(p)
    p.set_defaults(func=_evaluate)

    r = subparsers.add_parser("report", help="combine evaluation runs into one Table-I-like table and chart",
                              description="Combine the --out directories of several `harmonia evaluate` runs.")
    r.add_argument("runs", nargs="+", help="run directories (each with results.json)")
    r.add_argument("--out", default=None, help="write report.md, report.csv and report.png here")
    r.set_defaults(func=_report)


def _evaluate(args: argparse.Namespace) -> int:
    from harmonia.eval.runner import check_seeds, evaluate, load_encoder_source

    check_seeds(args.seeds)  # before loading the model
    if args.fusion == "concat" and args.fusion_states != "all":
        raise ValueError(f"--fusion-states {args.fusion_states} selects the hidden states of a learned fusion; "
                         "add --fusion layer-weighted or --fusion gated, or drop --fusion-states")
    encoder = load_encoder_source(args.model, device=args.device)
    results = evaluate(encoder, args.tasks, args.data_root, args.out, mode=args.mode, seeds=args.seeds,
                       cache_dir=args.cache_dir, model_name=str(args.model), progress=not args.no_progress,
                       fusion=args.fusion, fusion_states=args.fusion_states)
    s = results["summary"]
    print(f"wrote {args.out}/results.{{json,md,csv}}; weighted MLP {_score(s, 'mlp_all')}, "
          f"kNN {_score(s, 'knn_all')}")
    failed = not_scored(results)
    report_failures(failed, f"of {len(results['tasks'])} tasks not scored")
    return partial_exit(len(failed), args)


def not_scored(results: dict) -> list[tuple[str, str]]:
    """One line per task that was asked for but not scored (failed, or skipped for missing data);
    tasks disabled in their task file do not count."""
    return [(name, f"{e['status']}: {e.get('error', '')}") for name, e in results["tasks"].items()
            if e["status"] in ("failed", "skipped")]


def _score(summary: dict, key: str) -> str:
    value, n = summary.get(key), summary.get(f"{key}_tasks", 0)
    return "– (no scored task with a weight > 0)" if value is None else f"{value:.4f} ({n} task{'s' * (n != 1)})"


def _report(args: argparse.Namespace) -> int:
    from harmonia.eval.report import write_combined

    print(write_combined(args.runs, args.out))
    return 0
