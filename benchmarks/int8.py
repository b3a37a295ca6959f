#!/usr/bin/env python3
"""Opt-in int8 on the CPU (`load_encoder(..., quantize="int8")`), or bf16 weights and compute
(`--variant bf16`: `load_encoder(..., dtype=torch.bfloat16)`, fast on CPUs with native bf16 such as
AVX512-BF16, very slow on others): speed-up and fidelity against float32.

Speed: BEATs-base and Dasheng-base with random weights (the architectures of `openbeats-base-i1` and
`dasheng-base`, no download), 10 s clips at batch 1 and 8; float32 and int8 alternate `--rounds`
times in one process (the machine may be shared: compare the medians and the ratio).
Fidelity: cosine similarity of every int8 frame to the float32 frame (mean and minimum) on a real
recording (tests/fixtures/audio/example.wav tiled to 10 s), for the same random base-size models
and for the fixture checkpoints in tests/fixtures (small models in the released formats).

    python benchmarks/int8.py --batches 1 8 --rounds 3
    python benchmarks/int8.py --fidelity-only
    python benchmarks/int8.py --variant bf16 --batches 1 8 --rounds 3
    python benchmarks/int8.py --demo demo-out      # + xares-mode scores on the demo's tasks and models

`--demo DIR` (the output folder of `harmonia demo`) also scores the demo's pre-trained models in
float32 and int8 on its seven tasks in `xares` mode (one seed; the MLP track's training order is
unseeded in that mode, so its differences include run-to-run noise; the kNN track is deterministic).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harmonia  # noqa: E402
from harmonia.bench import encode_times, random_encoder  # noqa: E402
from harmonia.encoders.accel import quantize_int8  # noqa: E402

MODELS = {"beats-base": "openbeats-base-i1", "dasheng-base": "dasheng-base"}
FIXTURES = {"beats fixture (ms iter3 small)": ROOT / "tests/fixtures/beats/beats_ms_iter3_small.pt",
            "openbeats fixture (small)": ROOT / "tests/fixtures/beats/openbeats_small_ssl.pt",
            "dasheng fixture (model_a)": ROOT / "tests/fixtures/dasheng/model_a.pt",
            "dasheng fixture (model_b)": ROOT / "tests/fixtures/dasheng/model_b.pt"}


def real_clip(seconds: float) -> torch.Tensor:
    wav = harmonia.load_audio(ROOT / "tests/fixtures/audio/example.wav")
    n = int(seconds * 16000)
    return wav.repeat(1 + n // wav.numel())[:n][None]


def cosines(a: torch.Tensor, b: torch.Tensor) -> dict:
    c = F.cosine_similarity(a.double(), b.double(), dim=-1).flatten()
    return {"cos_mean": round(float(c.mean()), 6), "cos_min": round(float(c.min()), 6),
            "rel_err": round(float((a - b).norm() / a.norm()), 5)}


def demo_scores(demo: Path, work: Path, models: list[str], test_size: int) -> list[dict]:
    """Weighted MLP and kNN scores (and per task) of each demo model in float32 and int8, xares mode."""
    from harmonia.demo.tasks import demo_tasks
    from harmonia.eval.runner import evaluate

    rows = []
    for name in models:
        row = {"model": f"demo {name}"}
        for q in (None, "int8"):
            enc = harmonia.load_encoder(demo / "models" / name / "model", quantize=q)
            res = evaluate(enc, demo_tasks(test_size), demo / "tasks", work / f"{name}-{q}", mode="xares", seeds=1,
                           cache_dir=work / "cache", model_name=f"{name}-{q or 'fp32'}", progress=False,
                           write_reports=False)
            row[q or "fp32"] = {"mlp": res["summary"]["mlp_all"], "knn": res["summary"]["knn_all"],
                                "tasks": {t: [e.get(k, {}).get("mean") if e.get(k) else None for k in ("mlp", "knn")]
                                          for t, e in res["tasks"].items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| demo model (xares mode, 1 seed) | MLP fp32 | MLP int8 | kNN fp32 | kNN int8 |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['fp32']['mlp']:.3f} | {r['int8']['mlp']:.3f} | {r['fp32']['knn']:.3f} | "
              f"{r['int8']['knn']:.3f} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variant", choices=["int8", "bf16"], default="int8",
                   help="int8: quantize='int8' (default); bf16: bfloat16 weights and compute")
    p.add_argument("--fidelity-only", action="store_true")
    p.add_argument("--demo", type=Path, help="a `harmonia demo` output folder: also compare xares-mode scores")
    p.add_argument("--demo-models", nargs="+", default=["beats_speech_heavy", "dasheng_mae"])
    p.add_argument("--demo-test-size", type=int, default=48, help="test clips per task (48 quick, 120 full)")
    p.add_argument("--demo-only", action="store_true")
    p.add_argument("--work", type=Path, default=Path("/tmp/harmonia-int8-bench"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.demo and a.variant != "int8":
        p.error("--demo compares int8 scores; run it without --variant")
    if a.demo:
        demo_scores(a.demo, a.work, a.demo_models, a.demo_test_size)
        if a.demo_only:
            return
    clip = real_clip(a.seconds)
    rows = []
    low_options = {"quantize": "int8"} if a.variant == "int8" else {"dtype": torch.bfloat16}
    for label, path in FIXTURES.items():
        ref = harmonia.load_encoder(path)(clip)
        out = harmonia.load_encoder(path, **low_options)(clip).float()
        rows.append({"model": label, **cosines(ref, out)})
        print(json.dumps(rows[-1]), flush=True)
    for label in a.models:
        fp32 = random_encoder(MODELS[label])
        low = random_encoder(MODELS[label])  # same seed: the same weights
        low = quantize_int8(low) if a.variant == "int8" else low.to(torch.bfloat16)
        ref, out = fp32(clip), low(clip).float()
        row = {"model": f"{label} (random weights)", **cosines(ref, out)}
        if not a.fidelity_only:
            g = torch.Generator().manual_seed(0)
            for b in a.batches:
                wav = (torch.rand(b, clip.shape[1], generator=g) * 2 - 1) * 0.5
                per = {"fp32": [], a.variant: []}
                for _ in range(a.rounds):
                    per["fp32"].append(statistics.median(encode_times(fp32, wav, repeats=a.repeats)))
                    per[a.variant].append(statistics.median(encode_times(low, wav, repeats=a.repeats)))
                med = {k: statistics.median(v) for k, v in per.items()}
                row[f"b{b}"] = {"fp32_audio_s_per_s": round(b * a.seconds / med["fp32"], 2),
                                f"{a.variant}_audio_s_per_s": round(b * a.seconds / med[a.variant], 2),
                                "speedup": round(med["fp32"] / med[a.variant], 3),
                                "runs": {k: [round(x, 3) for x in v] for k, v in per.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{a.variant} vs float32, {a.seconds:g} s real clip, {torch.get_num_threads()} threads")
    print("| model | cosine mean | cosine min | " + " | ".join(f"speed-up b{b}" for b in a.batches) + " |")
    print("|---|---|---|" + "---|" * len(a.batches))
    for r in rows:
        sp = [f"{r[f'b{b}']['speedup']:.2f}× ({r[f'b{b}']['fp32_audio_s_per_s']} → "
              f"{r[f'b{b}'][f'{a.variant}_audio_s_per_s']})"
              if f"b{b}" in r else "" for b in a.batches]
        print(f"| {r['model']} | {r['cos_mean']:.4f} | {r['cos_min']:.4f} | " + " | ".join(sp) + " |")


if __name__ == "__main__":
    main()
