"""Speed options on the CPU: int8 linear layers (`quantize="int8"`), `compile=True`, reduced-precision
weights with float32 front ends, the benchmark helper, and the attention path (SDPA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import harmonia
from harmonia.bench import bench_encoder
from harmonia.encoders.accel import Int8Linear

FIX = Path(__file__).parent / "fixtures"
BEATS = FIX / "beats" / "beats_ms_iter3_small.pt"
DASHENG = FIX / "dasheng" / "model_a.pt"
SOURCES = {"beats": BEATS, "dasheng": DASHENG, "dasheng_hf": FIX / "dasheng" / "model_a_hf"}


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    """A real 16 kHz recording (mono) tiled to 6 s, plus a second, shorter item: (2, N), lengths."""
    wav = harmonia.load_audio(FIX / "audio" / "example.wav")
    wav = wav.repeat(1 + 96000 // wav.numel())[:96000]
    return torch.stack([wav, 0.5 * wav.roll(8000)])


def min_frame_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double(), b.double(), dim=-1).min())


# -------------------------------------------------------------------------------------------------
# int8


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_int8_close_to_fp32_on_fixture_models(name, clip):
    lengths = torch.tensor([clip.shape[1], clip.shape[1] // 2])
    fp32 = harmonia.load_encoder(SOURCES[name])
    int8 = harmonia.load_encoder(SOURCES[name], quantize="int8")
    n_int8 = sum(isinstance(m, Int8Linear) for m in int8.modules())
    # BEATs: q, k, v, out, fc1, fc2 per layer; Dasheng: qkv, proj, fc1, fc2 per block
    expected = 6 * fp32.model.cfg.encoder_layers if name == "beats" else 4 * fp32.model.cfg.depth
    assert n_int8 == expected
    a = fp32.encode(clip, lengths)
    b = int8.encode(clip, lengths)
    assert torch.equal(a.lengths, b.lengths)
    assert not torch.equal(a.frames, b.frames)  # the int8 path really ran
    valid = torch.arange(a.frames.shape[1])[None] < a.lengths[:, None]
    assert min_frame_cosine(a.frames[valid], b.frames[valid]) >= 0.99
    # padding stays exact: item 1 batched equals item 1 alone, also in int8
    alone = int8.encode(clip[1:, : clip.shape[1] // 2]).frames[0]
    torch.testing.assert_close(b.frames[1, : alone.shape[0]], alone, atol=1e-5, rtol=1e-5)


def test_int8_keeps_gate_and_patch_embedding_float():
    beats = harmonia.load_encoder(BEATS, quantize="int8")
    layer = beats.model.encoder.layers[0]
    assert type(layer.self_attn.grep_linear) is torch.nn.Linear  # its weight is read directly
    assert isinstance(layer.fc1, Int8Linear) and isinstance(layer.self_attn.q_proj, Int8Linear)
    dasheng = harmonia.load_encoder(DASHENG, quantize="int8")
    assert type(dasheng.model.patch_embed) is torch.nn.Linear


def test_int8_ensemble_quantizes_every_member(clip):
    spec = f"{BEATS}+{DASHENG}"
    ens = harmonia.load_encoder(spec, quantize="int8")
    for member in ens.members:
        assert any(isinstance(m, Int8Linear) for m in member.modules())
    a = harmonia.load_encoder(spec)(clip)
    assert min_frame_cosine(a, ens(clip)) >= 0.99


def test_int8_state_is_plain_tensors_and_changes_the_cache_fingerprint():
    from harmonia.eval.embed import encoder_fingerprint

    fp32 = harmonia.load_encoder(DASHENG)
    int8 = harmonia.load_encoder(DASHENG, quantize="int8")
    state = int8.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert state["model.blocks.0.mlp.fc1.weight_int8"].dtype == torch.int8
    assert encoder_fingerprint(int8)["weights_sha256"] != encoder_fingerprint(fp32)["weights_sha256"]


def test_int8_linear_reloads_its_packed_weight_after_load_state_dict():
    torch.manual_seed(0)
    a, b = Int8Linear.from_linear(torch.nn.Linear(32, 16)), Int8Linear.from_linear(torch.nn.Linear(32, 16))
    x = torch.randn(3, 32)
    before = b(x)  # packs b's own weights
    b.load_state_dict(a.state_dict())
    assert not torch.equal(before, b(x))
    torch.testing.assert_close(b(x), a(x), atol=0, rtol=0)


def test_int8_linear_matches_float_linear():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(2, 5, 64)
    y = Int8Linear.from_linear(lin)(x)
    assert y.shape == (2, 5, 48) and y.dtype == torch.float32
    assert min_frame_cosine(y, lin(x).detach()) > 0.995


@pytest.mark.parametrize("bad", ["int4", "INT8", "int-8", "fp8", 8])
def test_quantize_unknown_mode_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"quantize=.*expected None .* \('int8',\)"):
        harmonia.load_encoder(BEATS, quantize=bad)


def test_quantize_refuses_cuda_and_reduced_precision_before_loading():
    # the source does not exist: the option check must fail first, with the option's own message
    with pytest.raises(ValueError, match="CPU only.*device='cuda'.*float16"):
        harmonia.load_encoder("no/such-model", quantize="int8", device="cuda")
    with pytest.raises(ValueError, match="float32 weights, found dtype=torch.bfloat16"):
        harmonia.load_encoder(DASHENG, quantize="int8", dtype="bf16")


def test_compile_flag_must_be_a_bool_and_not_combined_with_int8():
    with pytest.raises(TypeError, match="compile must be True or False"):
        harmonia.load_encoder(DASHENG, compile="yes")
    with pytest.raises(ValueError, match="cannot be combined"):
        harmonia.load_encoder(DASHENG, quantize="int8", compile=True)


# -------------------------------------------------------------------------------------------------
# reduced precision: the front end stays float32


@pytest.mark.parametrize("name", ["beats", "dasheng"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_weights_keep_front_end_float32(name, dtype, clip, monkeypatch):
    seen: list[torch.dtype] = []
    rfft, stft = torch.fft.rfft, torch.stft

    def spy_rfft(x, *a, **k):
        seen.append(x.dtype)
        return rfft(x, *a, **k)

    def spy_stft(x, *a, **k):
        seen.append(x.dtype)
        return stft(x, *a, **k)

    monkeypatch.setattr(torch.fft, "rfft", spy_rfft)
    monkeypatch.setattr(torch, "stft", spy_stft)
    low = harmonia.load_encoder(SOURCES[name], dtype=dtype)
    assert low.dtype == dtype
    out = low(clip)
    assert seen and set(seen) == {torch.float32}  # the STFT / fbank ran in float32
    assert out.dtype == torch.float32
    monkeypatch.undo()
    ref = harmonia.load_encoder(SOURCES[name])(clip)
    assert min_frame_cosine(ref, out) >= 0.99


# -------------------------------------------------------------------------------------------------
# compile (inductor on the CPU needs a C++ compiler and tens of seconds)


@pytest.mark.slow
def test_compile_matches_eager(clip):
    eager = harmonia.load_encoder(DASHENG)
    compiled = harmonia.load_encoder(DASHENG, compile=True)
    lengths = torch.tensor([clip.shape[1], clip.shape[1] // 3])
    a, b = eager.encode(clip, lengths), compiled.encode(clip, lengths)
    torch.testing.assert_close(b.frames, a.frames, atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------------------------------------------
# benchmark helper


def test_bench_reports_throughput_memory_and_options():
    r = bench_encoder(str(DASHENG), seconds=1.0, batch=2, repeats=1, warmup=0, quantize="int8")
    assert r["quantize"] == "int8" and r["compile"] is False and r["device"] == "cpu"
    assert r["audio_s_per_s"] > 0 and r["real_time_factor"] == pytest.approx(1 / r["audio_s_per_s"], rel=1e-2)
    assert r["peak_rss_mb"] >= r["rss_after_load_mb"] > 0
    assert "peak_gpu_mb" not in r


def test_bench_cli_takes_the_speed_options(capsys):
    import json

    from harmonia.cli import main

    assert main(["bench", "--model", str(DASHENG), "--seconds", "1", "--repeats", "1", "--quantize", "int8"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["quantize"] == "int8" and r["compile"] is False and r["real_time_factor"] > 0


def test_bench_rejects_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        bench_encoder(str(DASHENG), device="cuda", repeats=1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs procfs (Linux)")
def test_peak_rss_of_a_child_is_its_own_not_its_parents():
    """ru_maxrss survives fork + exec on Linux: a child of a parent that once held 1.5 GB reported
    at least 1.5 GB (gpu_bench's infer children reported 7.0 GB for a 3.8 GB run)."""
    import subprocess
    import sys

    from harmonia.bench import peak_rss_mb

    ballast = bytearray(1500 * 2**20)
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # touch every page: resident
    assert peak_rss_mb() > 1500
    child = subprocess.run([sys.executable, "-c", "from harmonia.bench import peak_rss_mb; print(peak_rss_mb())"],
                           capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    del ballast
    assert float(child.stdout) < 1000  # python + torch + harmonia: a few hundred MB


def test_float16_on_the_cpu_warns_and_nothing_else_does():
    import warnings

    from harmonia.encoders.accel import check_options

    with pytest.warns(UserWarning, match="float16 on the CPU is very slow"):
        check_options(dtype=torch.float16)
    with pytest.warns(UserWarning, match="device='cuda'"):
        check_options(dtype="fp16", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_options(dtype=torch.bfloat16)
        check_options(dtype=torch.float16, device="cuda")
        check_options(quantize="int8")


def test_bench_pretrain_reports_tokens_flops_and_mfu(capsys):
    """`harmonia bench --pretrain`: the FLOPs are counted (they double with the batch), the MFU is
    achieved / peak, and float32 is the CPU default."""
    from harmonia.bench import bench_pretrain
    from harmonia.cli import main

    one = bench_pretrain("beats_tiny_debug", batch=1, seconds=1.0, steps=1, peak=0.5)
    two = bench_pretrain("beats_tiny_debug", batch=2, seconds=1.0, steps=1, peak=0.5)
    assert one["precision"] == "float32" and one["parameters"] > 0 and one["step_s"] > 0
    assert two["tflop_per_step"] == pytest.approx(2 * one["tflop_per_step"], rel=0.02)
    assert two["mfu"] == pytest.approx(two["achieved_tflops"] / 0.5, rel=1e-2)  # both rounded to 4 digits
    assert two["achieved_tflops"] == pytest.approx(two["tflop_per_step"] / two["step_s"], rel=1e-2)
    # 1 s: 98 fbank rows -> 6 patch rows x 8 = 48 patches per clip, 12 of them encoded (25 %)
    assert two["patch_tokens_per_s"] == pytest.approx(2 * 48 / two["step_s"], rel=1e-2)
    assert two["encoder_tokens_per_s"] == pytest.approx(2 * 12 / two["step_s"], rel=1e-2)
    assert bench_pretrain("beats_tiny_debug", batch=1, seconds=1.0, steps=1)["mfu"] is None  # no guessed CPU peak

    assert main(["bench", "--pretrain", "beats_tiny_debug", "--seconds", "1", "--repeats", "1", "--dtype", "bfloat16",
                 "--set", "model.encoder.encoder_layers=1"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["precision"] == "bf16 autocast" and r["parameters"] < one["parameters"]


@pytest.mark.parametrize("argv, message", [
    (["--pretrain", "beats_tiny_debug", "--quantize", "int8"], "--quantize applies to --model"),
    (["--pretrain", "beats_tiny_debug", "--dtype", "float16"], "float16 needs loss scaling"),
    (["--pretrain", "beats_tiny_debug", "--set", "model.task=vqkd"], "masked-patch objective"),
    (["--pretrain", "no_such_recipe"], "unknown recipe"),
    (["--pretrain", "beats_tiny_debug", "--seconds", "0.1"], "at least one patch row"),  # was a conv traceback
    (["--model", "x", "--peak-tflops", "100"], "apply to --pretrain"),
])
def test_bench_refuses_mixed_flags(argv, message, capsys):
    from harmonia.cli import main

    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------
# attention: every layer goes through SDPA, with masks the fused GPU kernels accept


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_goes_through_sdpa_with_kernel_friendly_masks(dtype, clip, monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append((q.shape, q.dtype, attn_mask))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    lengths = torch.tensor([clip.shape[1], clip.shape[1] // 2])
    beats = harmonia.load_encoder(BEATS, dtype=dtype)
    beats.encode(clip, lengths)
    assert len(calls) == beats.model.cfg.encoder_layers
    for (B, H, N, _), q_dtype, mask in calls:
        # the gated relative-position bias + key padding as ONE additive mask: (B, H, N, N), the query
        # dtype, dense rows whose length is a multiple of 8 (16-byte aligned in half precision)
        assert mask.shape == (B, H, N, N) and mask.dtype == q_dtype == dtype
        assert mask.is_contiguous() and N % 8 == 0
        assert torch.isinf(mask[1, :, :, -1]).all() and not torch.isinf(mask[0]).any()
    calls.clear()
    dasheng = harmonia.load_encoder(DASHENG, dtype=dtype)
    dasheng.encode(clip, lengths)
    assert len(calls) == dasheng.model.cfg.depth
    for (B, _H, N, _), _, mask in calls:
        assert mask.dtype == torch.bool and mask.shape == (B, 1, 1, N)  # key padding, broadcast over heads
    calls.clear()
    dasheng.encode(clip)  # no padding: no mask at all, so flash attention can apply on a GPU
    assert calls and all(mask is None for *_, mask in calls)
