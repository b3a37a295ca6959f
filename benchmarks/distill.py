#!/usr/bin/env python3
"""Distillation at demo scale: does one distilled student keep >= 90 % of the ensemble's weighted
MLP score at <= 1/3 of its encode time on CPU?

For each seed, the offline demo is run (`harmonia.demo.run.run_demo`; finished stages are reused),
which pre-trains the three members, distils the ensemble into the demo's student and evaluates all of
them on the seven synthetic tasks. Extra students (`--variant NAME=JSON`, keys family, arch,
teacher_options; missing keys take the demo's values) are distilled
from the same cached teacher and evaluated on the same tasks. Encode cost is then measured apart from
the demo: the ensemble and every student encode the same batch (8 clips of 10 s) in interleaved
rounds, one thread, and the medians are compared.

Examples (the machine is shared and noisy: compare ratios, repeat):
  python benchmarks/distill.py --out /tmp/bench-distill --quick --seeds 0
  python benchmarks/distill.py --out /tmp/bench-distill --seeds 0 1 --variant 'flat={"teacher_options": {}}' \\
      --variant 'dasheng-3x192={"arch": {"embed_dim": 192, "depth": 3, "num_heads": 4}}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from harmonia import load_encoder
    from harmonia.demo import run as demo
    from harmonia.demo.tasks import demo_tasks
    from harmonia.eval.runner import evaluate

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="one demo folder per seed is written (and reused) here")
    ap.add_argument("--quick", action="store_true", help="the quick demo's sizes")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help='another student to distil and evaluate: NAME={"family": ..., "arch": {...}, '
                         '"teacher_options": {...}} (missing keys: the demo\'s)')
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    args = ap.parse_args()
    torch.set_num_threads(1)
    size = demo.QUICK if args.quick else demo.FULL
    steps = demo.DISTILL_STEPS["quick" if args.quick else "full"]
    variants = {}
    for v in args.variant:
        name, _, spec = v.partition("=")
        variants[name] = {"family": "dasheng", "arch": None, "teacher_options": None, **json.loads(spec)}
    members = ["beats-speech-heavy", "beats-balanced", "dasheng-mae"]
    rows = []
    for seed in args.seeds:
        out = Path(args.out) / f"seed{seed}"
        summary = demo.run_demo(out, quick=args.quick, seed=seed)
        models = {m: out / "models" / m.replace("-", "_") / "model" for m in members}
        models["student"] = out / "models" / "student" / "model"
        scores = dict(summary["weighted_mlp"])
        tasks = demo_tasks(size.task_sizes["test"])
        for name, v in variants.items():
            models[name] = demo.distill_student(out / "pool" / "shards", models, members, out / "variants" / name,
                                                steps, size.batch_size, seed, v["family"], v["arch"],
                                                v["teacher_options"])
            res = evaluate(load_encoder(models[name]), tasks, out / "tasks", out / "results" / name, mode="clean",
                           seeds=size.seeds, cache_dir=out / "cache", model_name=name, progress=False)
            scores[name] = res["summary"]["mlp_all"]
        wav = torch.from_numpy(np.stack([demo.synth.pool_clip(np.random.default_rng([seed, 9, i]),
                                                              demo.DOMAINS[i % 3], 10.0) for i in range(8)]))
        encoders = {"ensemble": demo._evaluate_encoder("ensemble", models, members)}
        encoders.update({n: load_encoder(models[n]) for n in ["student", *variants]})
        secs = demo.encode_seconds(encoders, wav, args.rounds)
        for name in ["student", *variants]:
            share, cost = scores[name] / scores["ensemble"], secs[name] / secs["ensemble"]
            rows.append({"seed": seed, "student": name, "params_M": round(sum(p.numel() for p in encoders[name]
                                                                             .parameters()) / 1e6, 3),
                         "student_mlp": round(scores[name], 4), "ensemble_mlp": round(scores["ensemble"], 4),
                         "score_share": round(share, 3), "encode_s": round(secs[name], 3),
                         "ensemble_encode_s": round(secs["ensemble"], 3), "cost_share": round(cost, 3),
                         "targets_hold": share >= 0.9 and cost <= 1 / 3})
    print("| seed | student | params (M) | student MLP | ensemble MLP | score share | encode cost share | "
          "both targets |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['student']} | {r['params_M']} | {r['student_mlp']:.3f} | {r['ensemble_mlp']:.3f} | "
              f"{100 * r['score_share']:.0f} % | {r['cost_share']:.2f}x | {'yes' if r['targets_hold'] else 'NO'} |")
    (Path(args.out) / "distill_benchmark.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
