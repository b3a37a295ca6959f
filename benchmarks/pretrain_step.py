"""Pre-training step benchmark: BEATs base, forward + backward + AdamW step, fp32 on CPU.

harmonia:  `MaskedPatchObjective` (fbank → keep 25 % → encoder → 3-layer predictor → CE on masked)
reference: ESPnet `BeatsEncoder(is_pretraining=True)` + `BeatsPretrainingPredictor` (PyPI openbeats
           0.1.1) with the same config and the same loss, run in the side environment that
           `bash tools/make_reference_env.sh /tmp/refenv` builds, never imported by harmonia.

Like with like: both use the same optimiser (`--optimizer`: torch's default AdamW or its fused
kernel, which harmonia.train.optim picks on CPU). harmonia computes predictor logits for the masked
patches only; ESPnet computes them for every patch and then selects. Both reference variants are
timed: `reference` (ESPnet as shipped, logits for all patches) and `reference-masked` (its
`decoder_pred` applied to the masked patches only: the same work as harmonia). The analytic FLOPs
of each variant are printed beside the times.

Each run is a fresh process (peak RSS is per process); the implementations alternate `--repeats`
times and the median over processes of each one's median step is reported (the minimum is in the
JSON too). Labels are random codes (the tokenizer is outside every timing).

    python benchmarks/pretrain_step.py --batch 4 --repeats 3 [--optimizer fused] [--refenv /tmp/refenv]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# BEATs-base as a plain dict (= harmonia.models.beats.preset("beats-base", dropout=0.1, attention_dropout=0.1),
# checked by tests/test_benchmarks_config.py): the reference child process runs without harmonia installed.
BASE = dict(encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=12,
            embed_dim=512, input_patch_size=16, conv_bias=False, activation_fn="gelu", layer_norm_first=False,
            deep_norm=True, conv_pos=128, conv_pos_groups=16, relative_position_embedding=True, num_buckets=320,
            max_distance=800, gru_rel_pos=True, dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
            encoder_layerdrop=0.0, dropout_input=0.0)
DECODER_DIM, DECODER_LAYERS, VOCAB, MASK_RATIO = 768, 3, 1024, 0.75


def rss_mb() -> float:
    """This process's own peak RSS (VmHWM; its reference child runs without harmonia, so this is not
    harmonia.bench.peak_rss_mb, which reads the same field)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024.0 for line in f if line.startswith("VmHWM:"))


def flops_per_clip(seconds: float = 10.0, masked_logits_only: bool = True) -> dict[str, float]:
    """Analytical forward FLOPs per clip (multiply-add = 2 FLOPs); a training step is ~3x forward
    (backward = 2x). Returns the parts and the step total."""
    N = int(seconds * 16000)
    T = 1 + (N - 400) // 160
    P = (T // 16) * 8
    K = round(P * (1 - MASK_RATIO))
    E, D, F, L, Dd = BASE["embed_dim"], BASE["encoder_embed_dim"], BASE["encoder_ffn_embed_dim"], BASE["encoder_layers"], DECODER_DIM

    def layers(n_tok: int, d: int, n_layers: int) -> float:
        proj = 2 * n_tok * 4 * d * d  # q, k, v, out
        attn = 2 * 2 * n_tok * n_tok * d  # q·k and attn·v
        ffn = 2 * 2 * n_tok * d * F
        return n_layers * (proj + attn + ffn)

    parts = {
        "patch_embed": 2 * P * E * 256,
        "post_extract_proj": 2 * K * E * D,
        "pos_conv": 2 * K * D * (D // BASE["conv_pos_groups"]) * BASE["conv_pos"],
        "encoder_layers": layers(K, D, L),
        "decoder_embed": 2 * K * D * Dd,
        "predictor_layers": layers(P, Dd, DECODER_LAYERS),
        "decoder_pred": 2 * (P - K if masked_logits_only else P) * Dd * VOCAB,
    }
    parts["forward"] = sum(parts.values())
    parts["step"] = 3 * parts["forward"]
    return parts


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


# -------------------------------------------------------------------------------------------------
# one implementation, in this process


IMPLS = ("harmonia", "reference", "reference-masked")


def _run(impl: str, batch: int, steps: int, seconds: float, optimizer: str) -> dict:
    import torch

    torch.manual_seed(0)
    N = int(seconds * 16000)
    wav = 0.1 * torch.randn(batch, N)
    lengths = torch.full((batch,), N, dtype=torch.long)
    if impl == "harmonia":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from harmonia.encoder import tune_allocator
        from harmonia.layers.frontend import beats_fbank
        from harmonia.models.beats import BeatsConfig, exact_patch_mask
        from harmonia.train.objective import MaskedPatchObjective

        tune_allocator()  # as harmonia.train.pretrain does at start
        model = MaskedPatchObjective(BeatsConfig(**BASE), DECODER_DIM, DECODER_LAYERS, VOCAB, MASK_RATIO, 0.1)
        gen = torch.Generator().manual_seed(0)

        def loss_fn(labels):
            fbank = beats_fbank(wav)
            pad = exact_patch_mask(lengths, fbank.shape[1] // 16)
            return model(fbank, pad, labels, gen)[0]
    else:
        from openbeats.beats_encoder import BeatsEncoder, BeatsPretrainingPredictor

        cfg = {**BASE, "decoder_embed_dim": DECODER_DIM, "decoder_layers": DECODER_LAYERS,
               "codebook_vocab_size": VOCAB, "mask_ratio": MASK_RATIO, "use_flash_attn": False}
        encoder = BeatsEncoder(input_size=1, beats_config=cfg, is_pretraining=True)
        predictor = BeatsPretrainingPredictor(cfg)
        model = torch.nn.ModuleDict({"encoder": encoder, "decoder": predictor})
        head = predictor.decoder_pred
        if impl == "reference-masked":  # the predictor returns normalised states; the head runs on masked ones
            predictor.decoder_pred = torch.nn.Identity()
            model["head"] = head

        def loss_fn(labels):
            x, patch_len, restore_ids, kept = encoder(wav, lengths)
            out = predictor(x, patch_len, restore_ids, kept)
            pad = torch.arange(out.shape[1])[None] >= patch_len[:, None]
            sel = ~kept & ~pad  # masked, valid patches (as ESPnet BeatsPretrainModel)
            logits = head(out[sel]) if impl == "reference-masked" else out[sel]
            return torch.nn.functional.cross_entropy(logits, labels[:, : out.shape[1]][sel],
                                                     label_smoothing=0.1, reduction="sum") / sel.sum()

    model.train()
    # one optimiser for every implementation (like with like)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01,
                            fused=True if optimizer == "fused" else None)
    T = 1 + (N - 400) // 160
    labels = torch.randint(0, VOCAB, (batch, (T // 16) * 8))
    rss_model = rss_mb()
    times = []
    for i in range(steps + 1):  # the first step warms up allocators and kernels
        t = time.perf_counter()
        loss = loss_fn(labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t)
    params = sum(p.numel() for p in model.parameters())
    return {"impl": impl, "optimizer": optimizer, "batch": batch, "seconds": seconds, "threads": torch.get_num_threads(),
            "step_s": statistics.median(times), "times": times, "params": params,
            "rss_after_build_mb": rss_model, "peak_rss_mb": rss_mb(), "loss": float(loss)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--impl", choices=[*IMPLS, "all"], default="all")
    ap.add_argument("--optimizer", choices=["default", "fused"], default="default",
                    help="AdamW for every implementation: torch's default or its fused kernel")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=2, help="alternating fresh processes per implementation")
    ap.add_argument("--refenv", default="/tmp/refenv")
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args()
    if args.impl != "all":
        print(json.dumps(_run(args.impl, args.batch, args.steps, args.seconds, args.optimizer)))
        return 0

    me = str(Path(__file__).resolve())
    ref_py = str(Path(args.refenv) / "bin" / "python")
    pys = {"harmonia": sys.executable, "reference": ref_py, "reference-masked": ref_py}
    if not Path(ref_py).exists():
        print(f"no reference environment at {args.refenv}: build it with "
              f"`bash tools/make_reference_env.sh {args.refenv}`", file=sys.stderr)
        return 2
    results: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
    for r in range(args.repeats):
        for impl in IMPLS:
            cmd = [pys[impl], me, "--impl", impl, "--batch", str(args.batch), "--steps", str(args.steps),
                   "--seconds", str(args.seconds), "--optimizer", args.optimizer]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[impl].append(res)
            print(f"[{r}] {impl:<16} step {res['step_s']:.2f} s  peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    gflops = matmul_gflops()
    flops = {impl: flops_per_clip(args.seconds, masked_logits_only=impl != "reference") for impl in IMPLS}
    print(f"\nBEATs base pre-training step, batch {args.batch} x {args.seconds:g} s, fp32 CPU, "
          f"{results['harmonia'][0]['threads']} threads, {args.optimizer} AdamW for all; "
          f"fp32 matmul now: {gflops:.0f} GFLOP/s")
    print(f"{'impl':<18}{'params':>12}{'median s':>10}{'min s':>8}{'clips/s':>9}{'GFLOP/step':>12}{'GFLOP/s':>9}"
          f"{'RSS model MB':>14}{'peak RSS MB':>13}")
    summary = {}
    for impl in IMPLS:
        rs = results[impl]
        step = statistics.median(r["step_s"] for r in rs)  # median over processes of per-process medians
        gf = flops[impl]["step"] * args.batch / 1e9
        summary[impl] = {"median_step_s": step, "min_step_s": min(r["step_s"] for r in rs),
                         "clips_per_s": args.batch / step, "gflop_step": gf, "gflops": gf / step,
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                         "rss_after_build_mb": max(r["rss_after_build_mb"] for r in rs), "params": rs[0]["params"]}
        s = summary[impl]
        print(f"{impl:<18}{s['params']:>12,}{step:>10.2f}{s['min_step_s']:>8.2f}{s['clips_per_s']:>9.3f}{gf:>12.0f}"
              f"{s['gflops']:>9.1f}{s['rss_after_build_mb']:>14.0f}{s['peak_rss_mb']:>13.0f}")
    for ref in ("reference", "reference-masked"):
        print(f"speed-up harmonia / {ref}: {summary[ref]['median_step_s'] / summary['harmonia']['median_step_s']:.2f}x")
    print("forward FLOPs per clip (harmonia):", {k: f"{v / 1e9:.2f}G" for k, v in flops["harmonia"].items()})
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": results, "summary": summary, "matmul_gflops": gflops,
                                               "flops": flops, "optimizer": args.optimizer}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
