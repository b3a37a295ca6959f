#!/usr/bin/env python3
"""Run the reference implementations of BEATs (ESPnet BeatsEncoder, as vendored by PyPI
`openbeats`) and Dasheng (PyPI `dasheng`) so harmonia can be compared with them on the same
weights and the same audio. Run it with the python of the side environment that
tools/make_reference_env.sh builds; the benchmarks call it that way.

  make-checkpoint  write a random-weight checkpoint of a released size in the released format
                   (BEATs: Microsoft {'cfg','model'}; Dasheng: Zenodo {'model','config'}).
  encode           encode WAV files with the reference and save <stem>.npy (T', D) per file.
  bench            time the reference on synthetic audio; print one JSON line.
  load             peak RSS of loading a checkpoint with the reference loader and of encoding 1 s
                   (which touches every weight), against the fp32 weight size; one JSON line.

Examples:
  python reference_encode.py make-checkpoint --family beats --size base --out beats_base.pt
  python reference_encode.py bench --family beats --checkpoint beats_base.pt --seconds 10 --batch 1
  python reference_encode.py encode --family dasheng --checkpoint d.pt --out outdir a.wav b.wav

Throughput is audio seconds encoded per wall-clock second (higher is better); peak RSS is the
process's maximum resident memory. Compare with harmonia only inside one run on one machine, with
the same thread count: these machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

SR = 16000

BEATS_SIZES = {  # released architecture flags; sizes of BEATs_iter3 (base) and OpenBEATs Large
    "base": dict(encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
                 encoder_attention_heads=12),
    "large": dict(encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096,
                  encoder_attention_heads=16),
}
BEATS_FLAGS = dict(input_patch_size=16, embed_dim=512, conv_bias=False, activation_fn="gelu",
                   layer_norm_first=False, deep_norm=True, conv_pos=128, conv_pos_groups=16,
                   relative_position_embedding=True, num_buckets=320, max_distance=800,
                   gru_rel_pos=True, finetuned_model=False, dropout=0.0, attention_dropout=0.0,
                   activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0)
DASHENG_SIZES = {"base": (768, 12, 12), "0.6b": (1280, 32, 16), "1.2b": (1536, 40, 24)}


def _beats(cfg: dict):
    from openbeats.beats_encoder import BeatsEncoder
    return BeatsEncoder(input_size=0, beats_config=cfg, is_pretraining=False)


def _dasheng(config: dict):
    from dasheng.pretrained.pretrained import Dasheng
    return Dasheng(**config)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter a non-trivial value so that no weight is a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.1 if p.ndim == 1 else 0.02))


def make_checkpoint(a) -> None:
    torch.manual_seed(a.seed)
    if a.family == "beats":
        cfg = {**BEATS_FLAGS, **BEATS_SIZES[a.size]}
        model = _beats(cfg)
        _perturb(model, a.seed)
        state = {k: v for k, v in model.state_dict().items() if not k.endswith("_pad.weight")}
        torch.save({"cfg": cfg, "model": state}, a.out)
    else:
        d, depth, heads = DASHENG_SIZES[a.size]
        config = dict(embed_dim=d, depth=depth, num_heads=heads)
        model = _dasheng(config)
        _perturb(model, a.seed)
        torch.save({"model": model.state_dict(), "config": config}, a.out)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"written": str(a.out), "family": a.family, "size": a.size, "params": n}))


def load(family: str, path: str) -> torch.nn.Module:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if family == "beats":
        model = _beats(ckpt["cfg"])
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
        missing = [k for k in missing if not k.endswith("_pad.weight")]
        if missing or unexpected:
            sys.exit(f"checkpoint does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    else:
        model = _dasheng(ckpt["config"])
        model.load_state_dict(ckpt["model"], strict=True)
    return model.eval()


@torch.inference_mode()
def run(family: str, model: torch.nn.Module, wav: torch.Tensor) -> torch.Tensor:
    """wav: (B, T) float32 at 16 kHz -> frames (B, T', D)."""
    if family == "beats":
        ilens = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long)
        frames, _, _ = model(wav, ilens)
        return frames
    return model(wav)


def encode(a) -> None:
    import soundfile as sf
    model = load(a.family, a.checkpoint)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in a.files:
        x, sr = sf.read(f, dtype="float32", always_2d=True)
        if sr != SR:
            sys.exit(f"{f}: expected {SR} Hz audio, got {sr}")
        frames = run(a.family, model, torch.from_numpy(x.mean(1))[None])
        np.save(out / (Path(f).stem + ".npy"), frames[0].numpy())
        print(f"{f}: {tuple(frames.shape[1:])}")


def bench(a) -> None:
    torch.set_num_threads(a.threads)
    model = load(a.family, a.checkpoint)
    wav = torch.randn(a.batch, int(a.seconds * SR), generator=torch.Generator().manual_seed(0)) * 0.1
    for _ in range(a.warmup):
        run(a.family, model, wav)
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        frames = run(a.family, model, wav)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    print(json.dumps({
        "impl": "reference", "family": a.family, "checkpoint": str(a.checkpoint),
        "seconds": a.seconds, "batch": a.batch, "threads": a.threads,
        "median_s": round(med, 4), "audio_s_per_s": round(a.batch * a.seconds / med, 3),
        "frames": list(frames.shape[1:]),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }))


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))


def _current_rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    """This process's own peak (VmHWM), as harmonia.bench.peak_rss_mb measures harmonia's side
    (getrusage's ru_maxrss would include a parent's peak, carried across fork and exec)."""
    return _status_mb("VmHWM")


def load_rss(a) -> None:
    """Peak host RAM of the reference loading path (torch.load of the whole file, then the model
    built and filled), as benchmarks/dasheng_load.py measures harmonia's."""
    torch.set_num_threads(a.threads)
    base = _current_rss_mb()
    t0 = time.perf_counter()
    model = load(a.family, a.checkpoint)
    load_s = time.perf_counter() - t0
    after_load = _peak_rss_mb()
    weights_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    run(a.family, model, torch.zeros(1, SR))
    peak = _peak_rss_mb()
    print(json.dumps({
        "impl": "reference", "family": a.family, "checkpoint": str(a.checkpoint), "load_s": round(load_s, 2),
        "weights_mb": round(weights_mb, 1), "rss_after_import_mb": round(base, 1),
        "peak_rss_after_load_mb": round(after_load, 1), "peak_rss_after_encode_1s_mb": round(peak, 1),
        "ratio_load": round(after_load / weights_mb, 3), "ratio_load_and_encode": round(peak / weights_mb, 3),
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-checkpoint")
    m.add_argument("--family", choices=["beats", "dasheng"], required=True)
    m.add_argument("--size", required=True, help="beats: base|large; dasheng: base|0.6b|1.2b")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", required=True)
    e = sub.add_parser("encode")
    e.add_argument("--family", choices=["beats", "dasheng"], required=True)
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("files", nargs="+")
    b = sub.add_parser("bench")
    b.add_argument("--family", choices=["beats", "dasheng"], required=True)
    b.add_argument("--checkpoint", required=True)
    b.add_argument("--seconds", type=float, default=10.0)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--repeats", type=int, default=3)
    r = sub.add_parser("load")
    r.add_argument("--family", choices=["beats", "dasheng"], required=True)
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    {"make-checkpoint": make_checkpoint, "encode": encode, "bench": bench, "load": load_rss}[a.cmd](a)


if __name__ == "__main__":
    main()
