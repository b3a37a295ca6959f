#!/usr/bin/env python3
"""GPU measurements run by benchmarks/gpu_check.sh: inference throughput and memory, pre-training
step speed and MFU. Every result is one JSON line on stdout; `summary` turns them into the table
block for the README. Random full-size weights (the registry's architectures, no download).

  # inference: fp16 weights, fp32 front end; peak GPU memory (allocated and reserved) and host RSS
  python benchmarks/gpu_bench.py infer --model cmu-aist-icme2025 --dtype float16 --batch 1 8
  # pre-training step: bf16 autocast, fused AdamW, SDPA; tokens/s and MFU against the GPU's peak
  python benchmarks/gpu_bench.py pretrain --recipe beats_large_speech_heavy --batch 32 --steps 6
  python benchmarks/gpu_bench.py summary results.jsonl
  # CPU smoke of the same code paths on tiny models (no GPU needed)
  python benchmarks/gpu_bench.py infer --dry-run ; python benchmarks/gpu_bench.py pretrain --dry-run

`infer` writes the random model once in harmonia's format (float16 safetensors, in `--work`) and
loads it in a fresh process, as a user would after `harmonia convert --dtype float16`, so that
the host RSS is that of the real loading path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

#: the challenge's budget for the ensemble (ICME 2025 Audio Encoder Challenge: one T4)
T4_GPU_GB, T4_HOST_GB = 16.0, 12.0
#: --dry-run: tiny stand-ins that exercise the same code on a CPU in seconds
DRY_INFER_MODEL = ROOT / "tests" / "fixtures" / "dasheng" / "model_a.pt"
DRY_PRETRAIN = ["model.encoder.encoder_layers=2", "model.encoder.encoder_embed_dim=64",
                "model.encoder.encoder_ffn_embed_dim=128", "model.encoder.encoder_attention_heads=4",
                "model.encoder.embed_dim=64", "model.encoder.conv_pos=16", "model.encoder.conv_pos_groups=4",
                "model.decoder_embed_dim=64"]


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


# -------------------------------------------------------------------------------------------------
# inference


def write_checkpoint(model: str, out: Path, dtype: str) -> Path:
    """Random weights of a registry architecture (or, for a path, that checkpoint) in harmonia's
    format with `dtype` weights; written once per model and dtype."""
    from harmonia import load_encoder
    from harmonia.bench import random_encoder
    from harmonia.hub import save_harmonia

    if (out / "config.json").exists():
        return out
    enc = load_encoder(model) if Path(model).exists() else random_encoder(model)
    save_harmonia(enc.to(getattr(torch, dtype)), out)
    return out


def cmd_infer(a: argparse.Namespace) -> int:
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.dry_run:
        a.device, a.dtype, a.seconds, a.repeats, a.batch = "cpu", "bfloat16", 2.0, 1, [1, 2]
        a.model = [str(DRY_INFER_MODEL)]
    sources = {}
    for m in a.model:
        t = time.perf_counter()
        sources[Path(m).stem if a.dry_run else m] = str(write_checkpoint(m, work / f"{Path(m).stem}-{a.dtype}", a.dtype))
        print(f"# {m}: {a.dtype} checkpoint ready in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    failed = 0
    for name, src in sources.items():
        for b in a.batch:
            # a fresh process per measurement: its peak RSS and GPU memory are its own
            cmd = [sys.executable, "-m", "harmonia", "bench", "--model", src, "--batch", str(b), "--seconds",
                   str(a.seconds), "--repeats", str(a.repeats), "--dtype", a.dtype, "--device", a.device]
            if a.compile:
                cmd.append("--compile")
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            if out.returncode:
                failed += 1
                print(f"# {name} batch {b} FAILED:\n{out.stderr[-3000:]}", file=sys.stderr)
                emit({"kind": "infer", "model": name, "batch": b, "error": out.stderr.strip().splitlines()[-1:]})
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            gpu_gb = r.get("peak_gpu_reserved_mb", 0) / 1024
            host_gb = r["peak_rss_mb"] / 1024
            emit({"kind": "infer", "model": name, **{k: r[k] for k in (
                "batch", "seconds", "dtype", "device", "parameters", "audio_s_per_s", "real_time_factor",
                "batch_time_s", "load_s", "peak_rss_mb")},
                "peak_gpu_mb": r.get("peak_gpu_mb"), "peak_gpu_reserved_mb": r.get("peak_gpu_reserved_mb"),
                "gpu": r.get("gpu"), "compile": a.compile,
                "fits_t4_budget": gpu_gb <= T4_GPU_GB and host_gb <= T4_HOST_GB})
    return 1 if failed else 0


# -------------------------------------------------------------------------------------------------
# pre-training step


def cmd_pretrain(a: argparse.Namespace) -> int:
    """`harmonia.bench.bench_pretrain` (what `harmonia bench --pretrain` runs) per recipe and batch, in
    this process; an out-of-memory batch is reported as a failed row and the next one runs."""
    from harmonia.bench import bench_pretrain

    overrides = []
    if a.dry_run:
        a.device, a.seconds, a.batch, a.steps, a.recipe = "cpu", 2.0, [2], 2, a.recipe[:1]
        overrides = DRY_PRETRAIN
    failed = 0
    for recipe in a.recipe:
        for b in a.batch:
            try:
                r = bench_pretrain(recipe, overrides, batch=b, seconds=a.seconds, steps=a.steps, device=a.device,
                                   bf16=True if a.dry_run else None, peak=a.peak_tflops)
            except torch.OutOfMemoryError as e:
                failed += 1
                emit({"kind": "pretrain", "recipe": recipe, "batch": b, "error": f"out of memory: {e}"[:300]})
                torch.cuda.empty_cache()
                continue
            emit({"kind": "pretrain", **r})
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return 1 if failed else 0


# -------------------------------------------------------------------------------------------------
# summary


def num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def infer_row(r: dict) -> str:
    gpu_mb = f"{num(r['peak_gpu_mb'])} / {num(r['peak_gpu_reserved_mb'])}"
    return (f"| {r['model']} encode, {r['dtype']}{' + compile' if r.get('compile') else ''} | {r['batch']} | "
            f"{r['audio_s_per_s']:.0f} audio-s/s | {r['real_time_factor']:.2e} | {gpu_mb} | {r['peak_rss_mb']:.0f} | "
            f"{'fits' if r['fits_t4_budget'] else 'EXCEEDS'} (memory; speed measured on {r['gpu'] or r['device']}) |")


def pretrain_row(r: dict) -> str:
    mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "n/a"
    return (f"| {r['recipe']} ({r['parameters'] / 1e6:.0f}M) | {r['batch']} | {r['step_s']:.3f} | "
            f"{r['patch_tokens_per_s']:,} | {r['achieved_tflops']:.0f} | {mfu} |")


SUMMARY_TABLES = (  # kind, header, what names the row, row formatter
    ("infer", ["what", "batch", "throughput", "real-time factor", "peak GPU MB (alloc / reserved)",
               "peak host RSS MB", "T4 budget (16 GB GPU, 12 GB host)"], "model", infer_row),
    ("pretrain", ["pre-training step (bf16 autocast, fused AdamW)", "batch × 10 s", "step s", "patch tokens/s",
                  "TFLOP/s", "MFU"], "recipe", pretrain_row),
)


def cmd_summary(a: argparse.Namespace) -> int:
    rows = [json.loads(line) for f in a.files for line in Path(f).read_text().splitlines() if line.startswith("{")]
    gpu = next((r["gpu"] for r in rows if r.get("gpu")), "no GPU")
    print(f"GPU rows measured by benchmarks/gpu_check.sh on {gpu}, torch {torch.__version__}, random weights:")
    for kind, header, name, fmt in SUMMARY_TABLES:
        print("\n| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
        for r in rows:
            if r["kind"] == kind:
                print(fmt(r) if "error" not in r else
                      f"| {r[name]} | {r['batch']} | FAILED: {str(r['error'])[:120]} |" + " |" * (len(header) - 3))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("infer", help="encode throughput and memory (fresh process per measurement)")
    i.add_argument("--model", nargs="+", default=["openbeats-base-i1", "dasheng-base", "cmu-aist-icme2025"])
    i.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    i.add_argument("--seconds", type=float, default=10.0)
    i.add_argument("--repeats", type=int, default=5)
    i.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    i.add_argument("--device", default="cuda")
    i.add_argument("--compile", action="store_true")
    i.add_argument("--work", default="/tmp/harmonia-gpu-bench", help="where the random checkpoints are written")
    i.add_argument("--dry-run", action="store_true", help="CPU smoke on a tiny fixture model")
    i.set_defaults(func=cmd_infer)
    t = sub.add_parser("pretrain", help="pre-training step: tokens/s and MFU")
    t.add_argument("--recipe", nargs="+", default=["beats_base", "beats_large_speech_heavy"])
    t.add_argument("--batch", type=int, nargs="+", default=[64])
    t.add_argument("--seconds", type=float, default=10.0)
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--device", default="cuda")
    t.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (else from its name)")
    t.add_argument("--dry-run", action="store_true", help="CPU smoke: a 2-layer model, batch 2 x 2 s")
    t.set_defaults(func=cmd_pretrain)
    s = sub.add_parser("summary", help="README table block from the JSON lines of infer/pretrain")
    s.add_argument("files", nargs="+")
    s.set_defaults(func=cmd_summary)
    a = p.parse_args()
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
