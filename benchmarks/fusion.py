"""Learned fusion vs concatenation on the demo-scale setup (issue 12: "learned fusion ≥ concatenation
on the weighted score, seed spread reported").

The demo's three pre-trained tiny members (two BEATs, one Dasheng-MAE; `harmonia demo` builds them)
form the paper's ensemble (BEATs flat grid as reference, Dasheng linearly resampled to it), which is
evaluated on the seven synthetic tasks with `--fusion concat`, `layer-weighted` and `gated`, in
clean mode with several probe seeds (probe initialisation, data order and fusion initialisation;
the members themselves come from one pre-training seed). Prints, per fusion, the weighted MLP score
per seed, mean ± std, the per-task means and the verdict of `harmonia.fusion.compare`; writes
everything to <out>/fusion_benchmark.json.

    python benchmarks/fusion.py --demo demo-out [--seeds 3] [--out bench-fusion]
    python benchmarks/fusion.py --out bench-fusion --build quick    # builds the demo models first
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from harmonia import fusion as fusionlib
from harmonia.io import write_json_atomic

MEMBERS = ["beats_speech_heavy", "beats_balanced", "dasheng_mae"]


def build(demo: Path, size_name: str, seed: int) -> None:
    """The demo's corpus, task data and member models (finished pieces are reused)."""
    from harmonia.demo import run
    from harmonia.demo.tasks import write_task_data

    size = run.QUICK if size_name == "quick" else run.FULL
    shards = run.write_pool(demo / "pool", size, seed)
    write_task_data(demo / "tasks", size.task_sizes, seed)
    m = demo / "models"
    run.pretrain_beats(shards, "speech-heavy", m / "beats_speech_heavy", size, seed)
    run.pretrain_beats(shards, "balanced", m / "beats_balanced", size, seed)
    run.pretrain_dasheng(shards, m / "dasheng_mae", size, seed)


@contextlib.contextmanager
def frozen_gates(active: bool):
    """While active, `harmonia.fusion.make_fusion` returns gated fusions whose layer weights and
    gates stay at their uniform start (the ablation: only the per-member projections train)."""
    if not active:
        yield
        return
    original = fusionlib.make_fusion

    def make(kind, layout, **kw):
        f = original(kind, layout, **kw)
        for p in [*f.layers.parameters(), *f.gate.parameters()]:
            p.requires_grad_(False)
        return f

    fusionlib.make_fusion = make
    try:
        yield
    finally:
        fusionlib.make_fusion = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", default=None, help="a finished `harmonia demo --out` directory (models/, tasks/)")
    ap.add_argument("--build", choices=["quick", "full"], default=None, help="build the demo models into <out>/demo")
    ap.add_argument("--seed", type=int, default=0, help="corpus and pre-training seed of --build")
    ap.add_argument("--seeds", type=int, default=3, help="probe seeds")
    ap.add_argument("--fusions", nargs="+", default=list(fusionlib.FUSIONS), choices=fusionlib.FUSIONS)
    ap.add_argument("--out", default="bench-fusion")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ablation", action="store_true",
                    help="also run gated fusion with its layer weights and gates frozen at their uniform start "
                         "(only the projections train): how much of gated fusion's score is the extra projection")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from harmonia import load_encoder
    from harmonia.demo.tasks import demo_tasks
    from harmonia.ensemble import EnsembleEncoder
    from harmonia.eval import evaluate
    from harmonia.eval.metrics import mean_std

    out = Path(args.out)
    demo = Path(args.demo) if args.demo else out / "demo"
    if args.build:
        build(demo, args.build, seed=args.seed)
    missing = [m for m in MEMBERS if not (demo / "models" / m / "model" / "config.json").exists()]
    if missing:
        raise SystemExit(f"{demo}/models: no trained member(s) {missing}; run `harmonia demo --quick --out {demo}` "
                         "first or pass --build quick")
    spec = json.loads((demo / "tasks" / "tasks" / "synth_vowel.json").read_text())
    tasks = demo_tasks(int(spec["weight"]))  # the demo weights every task by its test size

    results, seconds = {}, {}
    runs = [(f, f) for f in args.fusions] + ([("projection-only", "gated")] if args.ablation else [])
    for label, fusion in runs:
        ens = EnsembleEncoder([load_encoder(demo / "models" / m / "model") for m in MEMBERS], align="linear",
                              reference=0, fuse="concat", names=["beats-speech-heavy", "beats-balanced", "dasheng-mae"])
        t0 = time.perf_counter()
        with frozen_gates(label == "projection-only"):
            results[label] = evaluate(ens, tasks, demo / "tasks", out / label, mode="clean", seeds=args.seeds,
                                      cache_dir=out / "cache", model_name=f"ensemble [{label}]", progress=False,
                                      fusion=fusion)
        seconds[label] = round(time.perf_counter() - t0, 1)
        s = fusionlib.seed_scores(results[label])
        print(f"{label:>15}: weighted MLP per seed {[round(x, 4) for x in s]} ({seconds[label]} s incl. encoding)",
              flush=True)

    summary = {"demo": str(demo), "seeds": args.seeds, "seconds": seconds, "fusions": {}}
    for fusion, res in results.items():
        s = fusionlib.seed_scores(res)
        mean, std = mean_std(s)
        summary["fusions"][fusion] = {
            "weighted_mlp_per_seed": s, "mean": mean, "std": std,
            "tasks": {n: round(e["mlp"]["mean"], 4) for n, e in res["tasks"].items() if e.get("mlp")},
            "layer_weights": {n: e["fusion"]["members"] for n, e in res["tasks"].items() if e.get("fusion")}}
    print("\n| fusion | weighted MLP (mean ± std over seeds) | " + " | ".join(t.name for t in tasks) + " |")
    print("|---|---|" + "---|" * len(tasks))
    for fusion, f in summary["fusions"].items():
        print(f"| {fusion} | {f['mean']:.3f} ± {f['std']:.3f} | "
              + " | ".join(f"{f['tasks'].get(t.name, float('nan')):.3f}" for t in tasks) + " |")
    if "concat" in results:
        summary["verdicts"] = {}
        for fusion in results:
            if fusion != "concat":
                status, text = fusionlib.compare(fusion, fusionlib.seed_scores(results[fusion]),
                                                 fusionlib.seed_scores(results["concat"]))
                summary["verdicts"][fusion] = f"{status}: {text}"
                print(f"{status}: {text}")
    write_json_atomic(out / "fusion_benchmark.json", summary, indent=1)


if __name__ == "__main__":
    main()
