"""GPU inference (needs a CUDA device; `pytest -m gpu`, run by benchmarks/gpu_check.sh).

bf16/fp16 weights with float32 front ends against the float32 CPU reference on a 10 s clip, SDPA
kernel selection (flash / memory-efficient must apply to our masks), ensembles, compile, and the
benchmark's GPU memory report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import harmonia
from harmonia.bench import bench_encoder, random_encoder
from harmonia.hub import save_harmonia

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

FIX = Path(__file__).parent / "fixtures"
FIXTURES = {"beats": FIX / "beats" / "beats_ms_iter3_small.pt", "dasheng": FIX / "dasheng" / "model_a.pt"}
BASE = {"beats": "openbeats-base-i1", "dasheng": "dasheng-base"}


@pytest.fixture(scope="module")
def clip10() -> torch.Tensor:
    """A real recording tiled to 10 s, (1, 160000) float32."""
    wav = harmonia.load_audio(FIX / "audio" / "example.wav")
    return wav.repeat(1 + 160000 // wav.numel())[:160000][None]


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory) -> dict[str, Path]:
    """Random base-size BEATs and Dasheng in harmonia's format (float32), loaded back by each test
    through the user's path: load_encoder(dir, dtype=..., device="cuda")."""
    out = {}
    for fam, name in BASE.items():
        out[fam] = save_harmonia(random_encoder(name), tmp_path_factory.mktemp(fam))
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double().cpu(), b.double().cpu(), dim=-1).flatten()


@pytest.mark.parametrize("fam", sorted(BASE))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_parity_on_a_10s_clip(fam, dtype, base_dirs, clip10):
    ref = harmonia.load_encoder(base_dirs[fam])(clip10)  # float32 on the CPU
    enc = harmonia.load_encoder(base_dirs[fam], dtype=dtype, device="cuda")
    assert enc.device.type == "cuda" and enc.dtype == dtype
    out = enc(clip10)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    c = cosine(ref, out)
    assert float(c.mean()) >= 0.999, f"{fam} {dtype}: mean frame cosine {float(c.mean()):.5f}, min {float(c.min()):.5f}"
    assert float(c.min()) >= 0.99


@pytest.mark.parametrize("fam", sorted(FIXTURES))
def test_float32_on_gpu_matches_cpu_on_fixtures(fam, clip10):
    ref = harmonia.load_encoder(FIXTURES[fam])(clip10)
    out = harmonia.load_encoder(FIXTURES[fam], device="cuda")(clip10)
    assert float(cosine(ref, out).min()) >= 0.9999
    torch.testing.assert_close(out.cpu(), ref, atol=2e-3, rtol=2e-3)  # TF32 convolutions allowed


@pytest.mark.parametrize("fam", sorted(FIXTURES))
def test_front_end_runs_on_the_gpu_in_float32(fam, clip10, monkeypatch):
    seen = []
    rfft, stft = torch.fft.rfft, torch.stft
    monkeypatch.setattr(torch.fft, "rfft", lambda x, *a, **k: seen.append((x.device.type, x.dtype)) or rfft(x, *a, **k))
    monkeypatch.setattr(torch, "stft", lambda x, *a, **k: seen.append((x.device.type, x.dtype)) or stft(x, *a, **k))
    enc = harmonia.load_encoder(FIXTURES[fam], dtype=torch.bfloat16, device="cuda")
    wav = torch.cat([clip10, clip10.roll(5000)])
    enc.encode(wav, torch.tensor([160000, 90000]))
    assert seen and set(seen) == {("cuda", torch.float32)}


def test_batched_clip_equals_clip_alone_on_gpu(clip10):
    for path in FIXTURES.values():
        enc = harmonia.load_encoder(path, device="cuda")
        wav = torch.cat([clip10, 0.3 * clip10.roll(7000)])
        batched = enc.encode(wav, torch.tensor([160000, 70000]))
        alone = enc.encode(wav[1:, :70000]).frames[0]
        n = alone.shape[0]
        assert int(batched.lengths[1]) == n
        assert float(cosine(batched.frames[1, :n], alone).min()) >= 0.9999


def _sdpa_only(backend):
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel([backend])  # raises "No available kernel" if the backend cannot take our inputs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_beats_bias_mask_takes_the_memory_efficient_kernel(dtype, clip10):
    from torch.nn.attention import SDPBackend

    enc = random_encoder(BASE["beats"]).to(device="cuda", dtype=dtype)
    wav = torch.cat([clip10, clip10.roll(3000)])
    with _sdpa_only(SDPBackend.EFFICIENT_ATTENTION):
        full = enc.encode(wav)  # gated bias only (B, H, 496, 496)
        padded = enc.encode(wav, torch.tensor([160000, 100000]))  # bias + key padding
        odd = enc.encode(wav[:, :9 * 2560 + 240])  # 72 tokens: not a multiple of 16
    ref = enc.encode(wav)  # default kernel choice
    assert float(cosine(full.frames, ref.frames).min()) >= 0.999
    assert padded.frames.isfinite().all() and odd.frames.isfinite().all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dasheng_takes_flash_without_padding_and_efficient_with_it(dtype, clip10):
    from torch.nn.attention import SDPBackend

    enc = random_encoder(BASE["dasheng"]).to(device="cuda", dtype=dtype)
    enc.model.mel_norm.float()
    wav = torch.cat([clip10, clip10.roll(3000)])
    with _sdpa_only(SDPBackend.FLASH_ATTENTION):
        enc.encode(wav)  # no mask: flash attention
    with _sdpa_only(SDPBackend.EFFICIENT_ATTENTION):
        out = enc.encode(wav, torch.tensor([160000, 100000]))  # boolean key mask
    assert out.frames.isfinite().all()


def test_ensemble_on_gpu_in_float16(clip10):
    spec = "+".join(str(p) for p in FIXTURES.values())
    ref = harmonia.load_encoder(spec)(clip10)
    out = harmonia.load_encoder(spec, dtype=torch.float16, device="cuda")(clip10)
    assert float(cosine(ref, out).mean()) >= 0.999


def test_compile_on_gpu_matches_eager(clip10):
    eager = harmonia.load_encoder(FIXTURES["dasheng"], dtype=torch.bfloat16, device="cuda")
    compiled = harmonia.load_encoder(FIXTURES["dasheng"], dtype=torch.bfloat16, device="cuda", compile=True)
    assert float(cosine(eager(clip10), compiled(clip10)).min()) >= 0.999


def test_bench_reports_gpu_memory():
    r = bench_encoder(str(FIXTURES["beats"]), seconds=2.0, batch=2, repeats=1, dtype="float16", device="cuda")
    assert r["device"] == "cuda" and r["gpu"]
    assert 0 < r["peak_gpu_mb"] <= r["peak_gpu_reserved_mb"]
    assert r["peak_rss_mb"] > 0 and r["audio_s_per_s"] > 0


def test_int8_is_refused_on_gpu():
    with pytest.raises(ValueError, match="CPU only"):
        harmonia.load_encoder(FIXTURES["dasheng"], quantize="int8", device="cuda")
