"""Subcommands `list` (the registry of named checkpoints) and `xares-export` (X-ARES plug-ins)."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="named pretrained checkpoints: source, licence, paper, output contract")
    p.add_argument("--json", action="store_true", help="machine-readable output (one object per entry)")
    p.add_argument("-v", "--verbose", action="store_true", help="also print licence, paper and notes")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("xares-export", help="write an X-ARES encoder plug-in (.py) for a model")
    p.add_argument("--model", required=True, help="registry name, checkpoint path, HF repo id, or a+b+c")
    p.add_argument("--out", required=True, help="output module, e.g. my_encoder.py")
    p.add_argument("--class-name", default=None, help="class name (default: derived from the model, unique)")
    p.add_argument("--layout", choices=["flat", "mean", "concat"], default=None, help="BEATs output layout")
    p.add_argument("--layer", type=int, default=None, help="state after N transformer layers (default: last)")
    p.add_argument("--align", choices=["nearest", "linear"], default=None, help="ensemble frame alignment")
    p.add_argument("--fuse", choices=["concat", "mean"], default=None, help="ensemble fusion")
    p.add_argument("--reference", type=int, default=None, help="ensemble member whose frame grid is used")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="weight dtype (output stays float32)")
    p.set_defaults(func=cmd_xares_export)


def cmd_list(args: argparse.Namespace) -> int:
    from harmonia.registry import REGISTRY

    rows = [REGISTRY[n].describe() for n in sorted(REGISTRY)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<22} {'family':<9} {'params':>7} {'dim':>5} {'hop ms':>6} {'T/10s':>5}  source")
    for r in rows:
        params = f"{r['parameters'] / 1e6:.0f}M"
        source = r["source"] if r["family"] != "ensemble" else " + ".join(r["members"])
        print(f"{r['name']:<22} {r['family']:<9} {params:>7} {r['output_dim']:>5} {r['hop_size_in_ms']:>6g} "
              f"{r['frames_per_10s']:>5}  {source}")
        if args.verbose:
            for key in ("description", "licence", "paper", "alternatives", "notes"):
                if r[key]:
                    print(f"{'':<24}{key}: {r[key]}")
    print("\nall take mono 16 kHz float waveforms; load with harmonia.load_encoder(NAME) or --model NAME",
          file=sys.stderr)
    return 0


def cmd_xares_export(args: argparse.Namespace) -> int:
    from harmonia.commands import flags_not_taken
    from harmonia.xares_export import export_xares

    options = {k: getattr(args, k) for k in ("layout", "layer", "align", "fuse", "reference", "dtype")
               if getattr(args, k) is not None}
    with flags_not_taken(args.model, options):
        out = export_xares(args.model, args.out, options, class_name=args.class_name)
    print(f"wrote {out}: run `python -m xares.run --max-jobs 0 {out.name} TASK.py ...` from {out.parent.resolve()}")
    return 0
