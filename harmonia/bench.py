"""Throughput and memory measurement of any encoder (used by `harmonia bench` and benchmarks/)."""

from __future__ import annotations

import resource
import time

import torch

from harmonia.io import parse_dtype


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def encode_times(encoder, wav, lengths=None, repeats: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls of `encoder.encode(wav, lengths)`, the GPU (if the
    encoder is on one) synchronised around each call."""
    cuda = encoder.device.type == "cuda"
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        encoder.encode(wav, lengths)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def bench_encoder(source, seconds: float = 10.0, batch: int = 1, repeats: int = 5, dtype: str = "float32",
                  device: str = "cpu", threads: int | None = None, warmup: int = 1, seed: int = 0,
                  quantize: str | None = None, compile: bool = False) -> dict:
    """Encode `repeats` batches of `batch` random clips of `seconds` s; report audio-seconds per
    wall-second (median over repeats) and its inverse, the real-time factor, peak host RSS and, on
    CUDA, peak GPU memory (allocated: tensors; reserved: what the caching allocator holds).
    `quantize`/`compile` are `load_encoder`'s speed options; `warmup` calls (compilation included)
    are not timed."""
    from harmonia import load_encoder

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but torch sees no CUDA device (torch {torch.__version__}); "
                           "run on a GPU machine with a CUDA build of torch, or use --device cpu")
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    encoder = source if isinstance(source, torch.nn.Module) else load_encoder(
        source, dtype=parse_dtype(dtype), device=device, quantize=quantize, compile=compile)
    load_s = time.perf_counter() - t0
    rss_after_load = peak_rss_mb()
    g = torch.Generator().manual_seed(seed)
    wav = (torch.rand(batch, int(seconds * 16000), generator=g) * 2 - 1) * 0.5
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    encode_times(encoder, wav, repeats=warmup)
    times = sorted(encode_times(encoder, wav, repeats=repeats))
    median = times[len(times) // 2]
    result = {
        "model": str(source) if not isinstance(source, torch.nn.Module) else type(source).__name__,
        "class": type(encoder).__name__,
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "seconds": seconds, "batch": batch, "dtype": dtype, "device": device,
        "threads": torch.get_num_threads(),
        "quantize": quantize, "compile": compile,
        "audio_s_per_s": round(batch * seconds / median, 3),
        "real_time_factor": round(median / (batch * seconds), 5),
        "batch_time_s": {"median": round(median, 4), "min": round(times[0], 4), "max": round(times[-1], 4)},
        "load_s": round(load_s, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_load_mb": round(rss_after_load, 1),
    }
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["peak_gpu_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
        result["gpu"] = torch.cuda.get_device_name()
    return result


def random_encoder(name: str, seed: int = 0):
    """The architecture of a registry entry (e.g. "dasheng-base", "openbeats-large-i1",
    "cmu-aist-icme2025") with random float32 weights on the CPU, built without any download: the
    workload of benchmarks, never a model to use."""
    from harmonia.registry import get_entry

    meta = get_entry(name).build_meta()  # the entry's encoder(s) on the meta device: configs and options
    torch.manual_seed(seed)
    return _materialize(meta)


def _materialize(encoder):
    """Rebuild a (meta-device) encoder from its config with each module's own random init."""
    from harmonia.ensemble import EnsembleEncoder

    if isinstance(encoder, EnsembleEncoder):
        return EnsembleEncoder([_materialize(m) for m in encoder.members], align=encoder.align,
                               reference=encoder.reference, fuse=encoder.fuse, names=encoder.names)
    model = type(encoder.model)(encoder.model.cfg)
    return type(encoder)(model, **encoder.export_config()["options"])
