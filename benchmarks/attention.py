#!/usr/bin/env python3
"""Fused attention (`F.scaled_dot_product_attention`) against attention written out by hand
(`softmax(q kᵀ / √d + mask) v`, as the reference implementations compute it), in the full encoders.

Both families call SDPA: Dasheng with its boolean key-padding mask, BEATs with the gated
relative-position bias (+ padding) as one additive float mask (B, H, N, N). "manual" swaps SDPA for
the hand-written formula inside the same encoder and the same random base-size weights, so the
difference is the attention kernel alone. The two variants alternate `--rounds` times in one
process (the machine may be shared: compare the medians and the ratio, not single runs), after a
parity check on a 10 s clip.

    python benchmarks/attention.py --families beats dasheng --batches 1 8 --rounds 3
    python benchmarks/attention.py --device cuda --dtype float16      # on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harmonia.bench import encode_times, random_encoder  # noqa: E402

MODELS = {"beats": "openbeats-base-i1", "dasheng": "dasheng-base"}
_SDPA = F.scaled_dot_product_attention


def manual_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """The unfused formula: scores (B, H, N, N) materialised, softmax, weighted sum."""
    scores = (q @ k.transpose(-2, -1)) * (scale or 1.0 / math.sqrt(q.shape[-1]))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


@contextlib.contextmanager
def attention(kind: str):
    """Run the encoders with SDPA ("sdpa", as shipped) or the hand-written formula ("manual")."""
    F.scaled_dot_product_attention = _SDPA if kind == "sdpa" else manual_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _SDPA


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3, help="alternating manual/sdpa rounds")
    p.add_argument("--repeats", type=int, default=2, help="timed encodes per round (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--padded", action="store_true", help="second half of each batch at 60 %% length (masks on)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    rows = []
    for fam in a.families:
        enc = random_encoder(MODELS[fam]).to(device=a.device, dtype=dtype)
        if fam == "dasheng":
            enc.model.mel_norm.float()  # the mel BatchNorm stays float32, as the loaders keep it
        n = int(a.seconds * 16000)
        g = torch.Generator().manual_seed(0)
        for b in a.batches:
            wav = (torch.rand(b, n, generator=g) * 2 - 1) * 0.5
            lengths = torch.full((b,), n)
            if a.padded:
                lengths[b // 2:] = int(0.6 * n)
            with torch.no_grad(), attention("manual"):
                ref = enc.encode(wav, lengths).frames
            with torch.no_grad(), attention("sdpa"):
                out = enc.encode(wav, lengths).frames
            diff = float((ref - out).abs().max())
            per = {"manual": [], "sdpa": []}
            for _ in range(a.rounds):
                for kind in per:
                    with attention(kind):
                        enc.encode(wav[:1, :16000])  # warm the kernels of this variant
                        per[kind].append(statistics.median(encode_times(enc, wav, lengths, a.repeats)))
            med = {k: statistics.median(v) for k, v in per.items()}
            row = {"family": fam, "model": MODELS[fam], "batch": b, "seconds": a.seconds, "device": a.device,
                   "dtype": a.dtype, "threads": torch.get_num_threads(), "padded": a.padded,
                   "manual_s": round(med["manual"], 4), "sdpa_s": round(med["sdpa"], 4),
                   "speedup": round(med["manual"] / med["sdpa"], 3), "max_abs_diff": diff,
                   "runs": {k: [round(x, 4) for x in v] for k, v in per.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n| model | batch | manual (s per batch) | SDPA | speed-up | max abs diff |  ({a.device}, {a.dtype})")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['manual_s']:.3f} | {r['sdpa_s']:.3f} | {r['speedup']:.2f}× | "
              f"{r['max_abs_diff']:.1e} |")


if __name__ == "__main__":
    main()
