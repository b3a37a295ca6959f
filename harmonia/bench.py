"""Throughput and memory measurement of any encoder (used by `harmonia bench` and benchmarks/)."""

from __future__ import annotations

import resource
import sys
import time

import torch

from harmonia.io import parse_dtype


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB): VmHWM, the high-water mark of this
    process's own address space. Not getrusage's ru_maxrss where /proc exists: Linux carries that
    across fork and exec, so a benchmark child started by a parent that once held a large model
    would report the parent's peak (seen: 7.0 GB reported for a 3.8 GB child)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024.0 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):  # no procfs (macOS): ru_maxrss, in bytes there
        scale = 2**20 if sys.platform == "darwin" else 1024.0
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


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


#: dense bf16/fp16 tensor-core peak of a GPU in TFLOP/s (vendor datasheets, without sparsity), matched
#: by a fragment of torch.cuda.get_device_name(), most specific first; the denominator of the MFU
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100": 756.0, "A100": 312.0, "L40S": 362.0,
               "L4": 121.0, "A10": 125.0, "T4": 65.0}


def check_device(device: str) -> None:
    """Refuse a CUDA device that torch cannot see (a user error: wrong machine or a CPU build)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA device (torch {torch.__version__}); "
                           "run on a GPU machine with a CUDA build of torch, or use --device cpu")


def peak_tflops(device: str, override: float | None = None) -> float | None:
    """The MFU denominator: `override` when given, else the GPU's bf16 peak from PEAK_TFLOPS (None on
    a CPU or an unlisted GPU: no MFU is reported rather than a guessed one)."""
    if override:
        return override
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def bench_encoder(source, seconds: float = 10.0, batch: int = 1, repeats: int = 5, dtype: str = "float32",
                  device: str = "cpu", threads: int | None = None, warmup: int = 1, seed: int = 0,
                  quantize: str | None = None, compile: bool = False) -> dict:
    """Encode `repeats` batches of `batch` random clips of `seconds` s; report audio-seconds per
    wall-second (median over repeats) and its inverse, the real-time factor, peak host RSS and, on
    CUDA, peak GPU memory (allocated: tensors; reserved: what the caching allocator holds).
    `quantize`/`compile` are `load_encoder`'s speed options; `warmup` calls (compilation included)
    are not timed."""
    from harmonia import load_encoder

    check_device(device)
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


def bench_pretrain(recipe: str, overrides: list[str] | tuple[str, ...] = (), batch: int = 8, seconds: float = 10.0,
                   steps: int = 5, device: str = "cpu", bf16: bool | None = None, peak: float | None = None,
                   threads: int | None = None, seed: int = 0) -> dict:
    """Time the masked-patch pre-training step of a BEATs recipe (`harmonia.recipes.pretrain`, with
    `key=value` overrides) on random audio and codes: float32 fbank, forward and backward (under
    bf16 autocast when `bf16`, the default on CUDA), gradient clipping and the training loop's AdamW
    (fused where possible). One step is counted with torch's FlopCounterMode (the FLOPs of every
    matmul, convolution and attention kernel, forward and backward) and also warms up; a second
    warms up; then `steps` steps are timed. Reports step time, clips, patch tokens and encoder
    tokens (the unmasked 25 %) per second, achieved TFLOP/s, peak memory and the model FLOPs
    utilisation `achieved / peak` against `peak` TFLOP/s (default: the GPU's bf16 peak from
    PEAK_TFLOPS; none on a CPU unless given). The tokenizer is outside the timing."""
    from torch.utils.flop_counter import FlopCounterMode

    from harmonia.layers.frontend import beats_fbank
    from harmonia.models.beats import exact_patch_mask
    from harmonia.recipes.pretrain import RECIPES
    from harmonia.train.config import ConfigError, recipe_config
    from harmonia.train.optim import build_optimizer
    from harmonia.train.pretrain import build_task

    check_device(device)
    if threads:
        torch.set_num_threads(threads)
    cfg = recipe_config(RECIPES, recipe, list(overrides))
    if cfg.model.task != "mlm":
        raise ConfigError(f"recipe {recipe!r} trains a {cfg.model.task!r} tokenizer; bench --pretrain times the "
                          "masked-patch objective of the BEATs encoder recipes")
    n = int(seconds * 16000)
    P = (1 + (n - 400) // 160) // 16 * 8 if n >= 400 else 0  # (fbank rows // 16) x 8 frequency patches
    if P == 0:
        raise ValueError(f"seconds={seconds}: a pre-training clip needs at least one patch row of 16 fbank frames "
                         "(0.175 s), found none; use --seconds 0.175 or more (the recipes train on 10 s)")
    dev = torch.device(device)
    bf16 = dev.type == "cuda" if bf16 is None else bf16
    torch.manual_seed(seed)
    model = build_task(cfg, None).to(dev).train()
    opt = build_optimizer(model, cfg.optim)
    wav = 0.1 * torch.randn(batch, n, device=dev)
    lengths = torch.full((batch,), n, device=dev)
    labels = torch.randint(0, model.vocab, (batch, P), device=dev)
    gen = torch.Generator().manual_seed(seed)  # masks are drawn on the CPU, as in the training loop

    def step() -> torch.Tensor:
        fbank = beats_fbank(wav)  # float32, outside autocast
        pad = exact_patch_mask(lengths, fbank.shape[1] // 16)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(fbank, pad, labels, gen)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with FlopCounterMode(display=False) as counter:
        step()
    step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss_value = float(loss)  # synchronises
    sync()
    step_s = (time.perf_counter() - t) / steps
    flops = counter.get_total_flops()
    achieved = flops / step_s / 1e12
    denominator = peak_tflops(device, peak)
    kept = round(P * (1 - cfg.model.mask_ratio))
    result = {
        "recipe": recipe, "overrides": list(overrides), "parameters": sum(p.numel() for p in model.parameters()),
        "batch": batch, "seconds": seconds, "steps": steps, "device": device,
        "precision": "bf16 autocast" if bf16 else "float32", "threads": torch.get_num_threads(),
        "step_s": round(step_s, 4), "clips_per_s": round(batch / step_s, 3),
        "patch_tokens_per_s": round(batch * P / step_s), "encoder_tokens_per_s": round(batch * kept / step_s),
        "tflop_per_step": float(f"{flops / 1e12:.4g}"), "achieved_tflops": float(f"{achieved:.4g}"),
        "peak_tflops": denominator, "mfu": float(f"{achieved / denominator:.4g}") if denominator else None,
        "loss": round(loss_value, 4), "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if dev.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
        result["gpu"] = torch.cuda.get_device_name(dev)
    return result
