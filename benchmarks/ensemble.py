#!/usr/bin/env python3
"""Ensemble benchmarks (random weights of the released architectures; nothing is downloaded).

  throughput  time of `EnsembleEncoder.encode` against the sum of its members' `encode` times on the
              same batch (interleaved rounds, medians), and the time of the alignment + fusion alone.
              Goal: ensemble overhead <= 5 %.
  make        write a random-weight ensemble in harmonia's format (config.json + model.safetensors),
              streamed tensor by tensor (little RAM even for the 1.75B-parameter paper ensemble).
  load        in a fresh process, load it and report peak RSS after loading and after encoding 1 s
              (which touches every weight page), against the fp32 weight size. Goal: <= 1.3x.

Examples (2 threads; these machines are shared and noisy: repeat and take the median):
  python benchmarks/ensemble.py throughput --members openbeats-base-i3,openbeats-base-i3,dasheng-base
  python benchmarks/ensemble.py make --members openbeats-icme,openbeats-icme-sound,dasheng-1.2b --out /tmp/icme
  python benchmarks/ensemble.py load --checkpoint /tmp/icme [--dtype float16]
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

import torch

from harmonia.bench import peak_rss_mb

SR = 16000
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def current_rss_mb() -> float:
    """Resident memory now (MB), from /proc/self/statm (second field, in pages)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _meta_ensemble(members: list[str]):
    from harmonia import EnsembleEncoder
    from harmonia.registry import REGISTRY

    return EnsembleEncoder([REGISTRY[m].build_meta() for m in members], names=members)


def _random_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Plausible random values: norms' scales and running variances 1, biases 0, weights N(0, 0.02)."""
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("running_var",) or (leaf == "weight" and len(shape) == 1):
        return torch.ones(shape, dtype=dtype)
    if leaf in ("bias", "running_mean"):
        return torch.zeros(shape, dtype=dtype)
    return (torch.randn(shape, generator=g) * 0.02).to(dtype)


def random_member(name: str, seed: int = 0):
    """A registry architecture with random weights, built through the harmonia-format loader."""
    from harmonia.hub import from_config
    from harmonia.registry import REGISTRY

    meta = REGISTRY[name].build_meta()
    g = torch.Generator().manual_seed(seed)
    state = {k: _random_tensor(k, tuple(v.shape), v.dtype, g) for k, v in meta.export_state().items()}
    config = meta.export_config()
    return from_config(config, state)


# -------------------------------------------------------------------------------------------------


def throughput(a: argparse.Namespace) -> None:
    from harmonia import EnsembleEncoder
    from harmonia.ensemble import align_frames

    torch.set_num_threads(a.threads)
    names = a.members.split(",")
    members = [random_member(n, seed=i) for i, n in enumerate(names)]
    ens = EnsembleEncoder(members, align=a.align, names=names)
    wav = torch.randn(a.batch, int(a.seconds * SR), generator=torch.Generator().manual_seed(0)) * 0.1
    lengths = torch.full((a.batch,), wav.shape[1])
    outs = [m.encode(wav, lengths) for m in members]  # warm-up, and inputs of the fusion timing
    ens.encode(wav, lengths)
    ref = outs[0]

    def fusion() -> None:
        aligned = [o.frames if o.frames.shape[1] == ref.frames.shape[1] else
                   align_frames(o.frames, ref.frames.shape[1], a.align, o.lengths, ref.lengths) for o in outs]
        torch.cat(aligned, dim=-1)

    t_members: list[list[float]] = [[] for _ in members]
    t_ens, t_fuse = [], []
    for _ in range(a.repeats):  # interleaved, so slow drifts of a shared machine hit both sides alike
        for i, m in enumerate(members):
            t0 = time.perf_counter()
            m.encode(wav, lengths)
            t_members[i].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ens.encode(wav, lengths)
        t_ens.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fusion()
        t_fuse.append(time.perf_counter() - t0)
    med_members = [statistics.median(t) for t in t_members]
    sum_members = sum(med_members)
    med_ens, med_fuse = statistics.median(t_ens), statistics.median(t_fuse)
    print(json.dumps({
        "members": names, "parameters": sum(p.numel() for p in ens.parameters()), "seconds": a.seconds,
        "batch": a.batch, "threads": a.threads, "align": a.align, "repeats": a.repeats,
        "member_s": [round(t, 4) for t in med_members], "sum_members_s": round(sum_members, 4),
        "ensemble_s": round(med_ens, 4), "fusion_s": round(med_fuse, 5),
        "overhead_pct": round(100 * (med_ens / sum_members - 1), 2),
        "fusion_overhead_pct": round(100 * med_fuse / sum_members, 3),
        "ensemble_audio_s_per_s": round(a.batch * a.seconds / med_ens, 3),
        "frames": list(ens.encode(wav[:1]).frames.shape[1:]),
    }))


def make(a: argparse.Namespace) -> None:
    """Write config.json + model.safetensors without ever holding the weights in memory."""
    from harmonia.hub import FORMAT_VERSION, HARMONIA_FORMAT

    names = a.members.split(",")
    meta = _meta_ensemble(names)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in meta.export_state().items()}
    header, offset = {}, 0
    for k, (shape, dtype) in shapes.items():
        nbytes = dtype.itemsize * (int(torch.Size(shape).numel()))
        header[k] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": HARMONIA_FORMAT}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensors start 8-byte aligned
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    with open(out / "model.safetensors.tmp", "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for k, (shape, dtype) in shapes.items():
            f.write(_random_tensor(k, shape, dtype, g).contiguous().numpy().tobytes()
                    if dtype != torch.bfloat16 else _random_tensor(k, shape, dtype, g).view(torch.int16).numpy().tobytes())
    os.replace(out / "model.safetensors.tmp", out / "model.safetensors")
    config = {"format": HARMONIA_FORMAT, "version": FORMAT_VERSION, **meta.export_config()}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    params = sum(p.numel() for p in meta.parameters())
    print(json.dumps({"out": str(out), "members": names, "parameters": params, "bytes": offset,
                      "write_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}))


def load(a: argparse.Namespace) -> None:
    if not a.child:  # measure in a fresh process: nothing else in its address space
        cmd = [sys.executable, __file__, "load", "--checkpoint", a.checkpoint, "--child", "--threads", str(a.threads)]
        if a.dtype:
            cmd += ["--dtype", a.dtype]
        sys.exit(subprocess.call(cmd))
    import harmonia

    torch.set_num_threads(a.threads)
    baseline = current_rss_mb()
    weight_bytes = (Path(a.checkpoint) / "model.safetensors").stat().st_size
    options = {"dtype": getattr(torch, a.dtype)} if a.dtype else {}
    t0 = time.perf_counter()
    enc = harmonia.load_encoder(a.checkpoint, **options)
    load_s = time.perf_counter() - t0
    peak_load = peak_rss_mb()
    params = sum(p.numel() for p in enc.parameters())
    fp32_mb = params * 4 / 2**20
    t0 = time.perf_counter()
    frames = enc(torch.randn(1, SR) * 0.1)
    encode_s = time.perf_counter() - t0
    peak_all = peak_rss_mb()
    print(json.dumps({
        "checkpoint": a.checkpoint, "dtype": a.dtype or "stored", "parameters": params,
        "file_mb": round(weight_bytes / 2**20, 1), "fp32_weights_mb": round(fp32_mb, 1),
        "rss_before_load_mb": round(baseline, 1), "load_s": round(load_s, 2),
        "peak_rss_after_load_mb": round(peak_load, 1), "peak_rss_after_encode_1s_mb": round(peak_all, 1),
        "ratio_load_peak_to_fp32": round(peak_load / fp32_mb, 3),
        "ratio_peak_to_fp32": round(peak_all / fp32_mb, 3),
        "ratio_peak_minus_baseline_to_fp32": round((peak_all - baseline) / fp32_mb, 3),
        "encode_1s_s": round(encode_s, 2), "frames": list(frames.shape[1:]),
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--members", default="openbeats-base-i3,openbeats-base-i3,dasheng-base")
    t.add_argument("--seconds", type=float, default=10.0)
    t.add_argument("--batch", type=int, default=1)
    t.add_argument("--repeats", type=int, default=5)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--align", default="nearest")
    t.set_defaults(func=throughput)
    m = sub.add_parser("make")
    m.add_argument("--members", default="openbeats-icme,openbeats-icme-sound,dasheng-1.2b")
    m.add_argument("--out", required=True)
    m.set_defaults(func=make)
    ld = sub.add_parser("load")
    ld.add_argument("--checkpoint", required=True)
    ld.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    ld.add_argument("--threads", type=int, default=2)
    ld.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ld.set_defaults(func=load)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
