#!/usr/bin/env python3
"""Dasheng benchmarks: throughput of `DashengEncoder` and peak host RAM while loading.

  throughput  encode synthetic audio with a Dasheng checkpoint; one JSON line in the format of
              tools/reference_encode.py `bench`, so the two can be compared.
  make        write a random-weight checkpoint of a released size, tensor by tensor (the HF
              layout is streamed to disk, so even 1.2B needs little RAM to write).
  load        in a fresh process, load a checkpoint and report peak RSS right after loading and
              after encoding 1 s (which touches every weight page), against the fp32 weight size.
              With --reference-python (the side environment of tools/make_reference_env.sh) the
              reference loader (`dasheng` 0.0.9: torch.load of the whole file, then the model) is
              measured the same way, in its own fresh process, on the same checkpoint, which must
              then be in the Zenodo format the reference reads (`make --format zenodo`).

Examples (2 threads, quiet machine; repeat and take the median, these machines are noisy):
  python benchmarks/dasheng_load.py throughput --checkpoint /tmp/dasheng_base.pt --batch 8
  python benchmarks/dasheng_load.py make --size 1.2B --format hf --out /tmp/dasheng_12b_hf
  python benchmarks/dasheng_load.py load --checkpoint /tmp/dasheng_12b_hf
  python benchmarks/dasheng_load.py make --size 1.2B --format zenodo --out /tmp/dasheng_12b.pt
  python benchmarks/dasheng_load.py load --checkpoint /tmp/dasheng_12b.pt --reference-python /tmp/refenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

SR = 16000
REF_SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "reference_encode.py"


def _peak_rss_mb() -> float:
    from harmonia.bench import peak_rss_mb

    return peak_rss_mb()


def _current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def throughput(a) -> None:
    import harmonia

    torch.set_num_threads(a.threads)
    enc = harmonia.load_encoder(a.checkpoint)
    wav = torch.randn(a.batch, int(a.seconds * SR), generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.inference_mode():
        for _ in range(a.warmup):
            enc(wav)
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            frames = enc(wav)
            times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    print(json.dumps({
        "impl": "harmonia", "family": "dasheng", "checkpoint": str(a.checkpoint), "seconds": a.seconds,
        "batch": a.batch, "threads": a.threads, "median_s": round(med, 4),
        "audio_s_per_s": round(a.batch * a.seconds / med, 3), "frames": list(frames.shape[1:]),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }))


def _reference_shapes(size: str) -> dict[str, tuple[int, ...]]:
    from harmonia.models.dasheng import PRESETS

    c = PRESETS[f"dasheng-{size}"]
    D, H = c.embed_dim, int(c.embed_dim * c.mlp_ratio)
    shapes: dict[str, tuple[int, ...]] = {
        "time_pos_embed": (1, D, 1, c.chunk_tokens), "freq_pos_embed": (1, D, 1, 1),
        "init_bn.1.weight": (64,), "init_bn.1.bias": (64,), "init_bn.1.running_mean": (64,),
        "init_bn.1.running_var": (64,), "patch_embed.proj.weight": (D, 1, 64, 4), "patch_embed.proj.bias": (D,),
    }
    for i in range(c.depth):
        p = f"blocks.{i}."
        shapes.update({p + "norm1.weight": (D,), p + "norm1.bias": (D,), p + "attn.qkv.weight": (3 * D, D),
                       p + "attn.qkv.bias": (3 * D,), p + "attn.proj.weight": (D, D), p + "attn.proj.bias": (D,),
                       p + "norm2.weight": (D,), p + "norm2.bias": (D,), p + "mlp.fc1.weight": (H, D),
                       p + "mlp.fc1.bias": (H,), p + "mlp.fc2.weight": (D, H), p + "mlp.fc2.bias": (D,)})
    shapes.update({"norm.weight": (D,), "norm.bias": (D,)})
    return shapes


def _random(shape: tuple[int, ...], g: torch.Generator, name: str) -> torch.Tensor:
    if name.endswith("running_var") or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
        return 1.0 + 0.1 * torch.rand(shape, generator=g)
    return 0.02 * torch.randn(shape, generator=g)


def make(a) -> None:
    """Random-weight checkpoint of a released size: `hf` (streamed safetensors, `encoder.` keys +
    config.json) or `zenodo` ({'model','config'} .pt; needs the weights in RAM once to write)."""
    g = torch.Generator().manual_seed(0)
    shapes = _reference_shapes(a.size)
    out = Path(a.out)
    if a.format == "zenodo":
        from harmonia.layers.frontend import hann_window, htk_mel_filterbank
        from harmonia.models.dasheng import PRESETS

        state = {k: _random(s, g, k) for k, s in shapes.items()}
        state["front_end.0.spectrogram.window"] = hann_window(512).clone()
        state["front_end.0.mel_scale.fb"] = htk_mel_filterbank().clone()
        c = PRESETS[f"dasheng-{a.size}"]  # the constructor kwargs, as the reference factories force
        torch.save({"model": state, "config": {"embed_dim": c.embed_dim, "depth": c.depth, "num_heads": c.num_heads}}, out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for k, s in shapes.items():
            n = int(np.prod(s)) * 4
            header["encoder." + k] = {"dtype": "F32", "shape": list(s), "data_offsets": [offset, offset + n]}
            offset += n
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        with open(out / "model.safetensors", "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for k, s in shapes.items():
                f.write(_random(s, g, k).numpy().tobytes())
        from harmonia.models.dasheng import PRESETS

        c = PRESETS[f"dasheng-{a.size}"]
        (out / "config.json").write_text(json.dumps({
            "architectures": ["DashengModel"], "model_type": "dasheng", "name": f"dasheng-{a.size}",
            "encoder_kwargs": {"embed_dim": c.embed_dim, "depth": c.depth, "num_heads": c.num_heads,
                               "patch_size": [64, 4], "patch_stride": [64, 4], "target_length": 1008}}))
    n = sum(int(np.prod(s)) for s in shapes.values())
    print(json.dumps({"written": str(out), "size": a.size, "format": a.format, "elements": n,
                      "fp32_mb": round(n * 4 / 2**20, 1)}))


def _load_child(a) -> None:
    """Runs in a fresh process: imports, load, encode 1 s; RSS at each step."""
    import harmonia

    torch.set_num_threads(a.threads)
    base = _current_rss_mb()
    t0 = time.perf_counter()
    enc = harmonia.load_encoder(a.checkpoint)
    load_s = time.perf_counter() - t0
    after_load = _peak_rss_mb()
    weights_mb = sum(p.numel() * p.element_size() for p in enc.parameters()) / 2**20
    weights_mb += sum(b.numel() * b.element_size() for b in enc.buffers()) / 2**20
    with torch.inference_mode():
        enc(torch.zeros(1, SR))
    print(json.dumps({
        "impl": "harmonia", "checkpoint": str(a.checkpoint), "load_s": round(load_s, 2), "weights_mb": round(weights_mb, 1),
        "rss_after_import_mb": round(base, 1), "peak_rss_after_load_mb": round(after_load, 1),
        "peak_rss_after_encode_1s_mb": round(_peak_rss_mb(), 1),
        "ratio_load": round(after_load / weights_mb, 3),
        "ratio_load_and_encode": round(_peak_rss_mb() / weights_mb, 3),
    }))


def load(a) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    cmds = [[sys.executable, __file__, "_load_child", "--checkpoint", str(a.checkpoint), "--threads", str(a.threads)]]
    if a.reference_python:
        cmds.append([a.reference_python, str(REF_SCRIPT), "load", "--family", "dasheng", "--checkpoint",
                     str(a.checkpoint), "--threads", str(a.threads)])
    for cmd in cmds:  # each in a fresh process: peak RSS is that process's own
        subprocess.run(cmd, check=True, env=env)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--checkpoint", required=True)
    t.add_argument("--seconds", type=float, default=10.0)
    t.add_argument("--batch", type=int, default=1)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--warmup", type=int, default=1)
    t.add_argument("--repeats", type=int, default=3)
    m = sub.add_parser("make")
    m.add_argument("--size", choices=["base", "0.6B", "1.2B"], required=True)
    m.add_argument("--format", choices=["hf", "zenodo"], default="hf")
    m.add_argument("--out", required=True)
    for name in ("load", "_load_child"):
        s = sub.add_parser(name)
        s.add_argument("--checkpoint", required=True)
        s.add_argument("--threads", type=int, default=2)
        if name == "load":
            s.add_argument("--reference-python", help="also measure the reference loader with this python")
    a = p.parse_args()
    {"throughput": throughput, "make": make, "load": load, "_load_child": _load_child}[a.cmd](a)


if __name__ == "__main__":
    main()
