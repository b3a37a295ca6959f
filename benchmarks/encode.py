#!/usr/bin/env python3
"""Encoding throughput (audio-seconds per wall-second) and peak RSS of harmonia vs the reference
implementation, on the same checkpoint and the same kind of audio, fp32 CPU, fixed thread count.

Each measurement runs in a fresh process (so peak RSS is that run's own) and harmonia/reference runs
alternate, which spreads machine noise over both. Before timing, both encode the same 10 s clip and
the max abs difference of their outputs is reported ("equal outputs").

  # side environment with the references (never a dependency of harmonia)
  bash tools/make_reference_env.sh /tmp/refenv
  python benchmarks/encode.py --family beats --size base --reference-python /tmp/refenv/bin/python
  python benchmarks/encode.py --family dasheng --size base --reference-python /tmp/refenv/bin/python
  python benchmarks/encode.py --model PATH          # harmonia only, any encoder or ensemble
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REF_SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "reference_encode.py"


def run_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def harmonia_bench(model: str, seconds: float, batch: int, threads: int, repeats: int) -> dict:
    return run_json([sys.executable, "-m", "harmonia", "bench", "--model", model, "--seconds", str(seconds),
                     "--batch", str(batch), "--threads", str(threads), "--repeats", str(repeats)])


def reference_bench(py: str, family: str, ckpt: str, seconds: float, batch: int, threads: int,
                    repeats: int) -> dict:
    return run_json([py, str(REF_SCRIPT), "bench", "--family", family, "--checkpoint", ckpt, "--seconds",
                     str(seconds), "--batch", str(batch), "--threads", str(threads), "--repeats", str(repeats)])


def parity(py: str, family: str, ckpt: str, workdir: Path) -> float:
    """Encode one 10 s clip with both implementations; return the max abs difference."""
    import soundfile as sf
    import torch

    from harmonia import load_encoder

    rng = np.random.default_rng(0)
    t = np.arange(160000) / 16000
    wav = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.standard_normal(160000)).astype(np.float32)
    sf.write(workdir / "clip.wav", wav, 16000, subtype="FLOAT")
    subprocess.run([py, str(REF_SCRIPT), "encode", "--family", family, "--checkpoint", ckpt, "--out",
                    str(workdir / "ref"), str(workdir / "clip.wav")], check=True, capture_output=True)
    ref = np.load(workdir / "ref" / "clip.npy")
    ours = load_encoder(ckpt)(torch.from_numpy(wav)[None])[0].numpy()
    if ref.shape != ours.shape:
        raise RuntimeError(f"frame shapes differ: reference {ref.shape}, harmonia {ours.shape}")
    return float(np.abs(ref - ours).max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="harmonia source to time alone (no reference comparison)")
    p.add_argument("--family", choices=["beats", "dasheng"])
    p.add_argument("--size", default="base", help="beats: base|large; dasheng: base|0.6b|1.2b")
    p.add_argument("--reference-python", help="python of the side environment (tools/make_reference_env.sh)")
    p.add_argument("--checkpoint", help="reuse this reference-format checkpoint instead of making one")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="alternating harmonia/reference rounds")
    a = p.parse_args()

    if a.model:
        for b in a.batches:
            print(json.dumps(harmonia_bench(a.model, a.seconds, b, a.threads, a.repeats)))
        return
    if not (a.family and a.reference_python):
        p.error("give --model, or --family and --reference-python")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = a.checkpoint or str(work / f"{a.family}_{a.size}.pt")
        if not a.checkpoint:
            run_json([a.reference_python, str(REF_SCRIPT), "make-checkpoint", "--family", a.family,
                      "--size", a.size, "--out", ckpt])
        diff = parity(a.reference_python, a.family, ckpt, work)
        rows = []
        for b in a.batches:
            ours, ref = [], []
            for _ in range(a.rounds):
                ours.append(harmonia_bench(ckpt, a.seconds, b, a.threads, a.repeats))
                ref.append(reference_bench(a.reference_python, a.family, ckpt, a.seconds, b, a.threads, a.repeats))
            o = statistics.median(r["audio_s_per_s"] for r in ours)
            r = statistics.median(x["audio_s_per_s"] for x in ref)
            rows.append({"family": a.family, "size": a.size, "batch": b, "seconds": a.seconds,
                         "threads": a.threads, "harmonia_audio_s_per_s": o, "reference_audio_s_per_s": r,
                         "speedup": round(o / r, 3),
                         "harmonia_peak_rss_mb": max(x["peak_rss_mb"] for x in ours),
                         "reference_peak_rss_mb": max(x["peak_rss_mb"] for x in ref),
                         "max_abs_diff_10s": diff})
            print(json.dumps(rows[-1]), flush=True)
        print("\n| family | batch | harmonia (audio-s/s) | reference | speed-up | peak RSS MB (h / ref) |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['family']}-{r['size']} | {r['batch']} | {r['harmonia_audio_s_per_s']:.2f} | "
                  f"{r['reference_audio_s_per_s']:.2f} | {r['speedup']:.2f}× | "
                  f"{r['harmonia_peak_rss_mb']:.0f} / {r['reference_peak_rss_mb']:.0f} |")
        print(f"\nmax abs difference of the outputs on a 10 s clip: {diff:.3g}")


if __name__ == "__main__":
    main()
