"""BEATs / OpenBEATs parity with the golden fixtures produced by the reference code
(tests/fixtures/beats/README.md), plus batching, chunking, layouts, loading and errors."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harmonia import load_encoder
from harmonia.encoders.beats import BeatsEncoder
from harmonia.hub import CheckpointError, save_harmonia, torch_load
from harmonia.layers.frontend import beats_fbank, kaldi_mel_banks, povey_window
from harmonia.models.beats import exact_patch_mask, microsoft_patch_mask, relative_position_bucket

FIX = Path(__file__).parent / "fixtures" / "beats"
MS = FIX / "beats_ms_iter3_small.pt"
OB = FIX / "openbeats_small_ssl.pt"
OB_PREFIXED = FIX / "openbeats_small_espnet_prefixed.pth"
TOK = FIX / "beats_ms_tokenizer_small.pt"
END_TO_END = 1e-4  # fixture README: end-to-end tolerance when the fbank is not bit-identical
FROM_FBANK = 1e-5  # from the reference fbank


@pytest.fixture(scope="module")
def inp():
    return load_file(FIX / "inputs.safetensors")


@pytest.fixture(scope="module")
def exp():
    return load_file(FIX / "expected.safetensors")


@pytest.fixture(scope="module")
def batch(inp):
    wav = torch.zeros(2, 80000)
    wav[0, :51200] = inp["wav_a"]
    wav[1] = inp["wav_b"]
    return wav, inp["lengths_batch"]


def close(a, b, atol):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err <= atol, f"max abs diff {err:.3g} > {atol}"


# -- front end -----------------------------------------------------------------------------------------


def test_window_and_mel_banks(exp):
    close(povey_window(), exp["povey_window_400"], 1e-7)
    # float32 log/pow may differ by an ulp between CPU vector units; the banks stay within 2e-5
    close(kaldi_mel_banks(), exp["mel_banks_128x257"], 2e-5)
    assert (kaldi_mel_banks()[:, -1] == 0).all()


def test_fbank_matches_reference(inp, exp, batch):
    close(beats_fbank(inp["wav_a"][None])[0], exp["fbank_a"], 2e-4)
    close(beats_fbank(inp["wav_b"][None])[0], exp["fbank_b"], 2e-4)
    fb = beats_fbank(batch[0])
    close(fb[0], exp["fbank_batch_row0"], 2e-4)
    close(fb[1], exp["fbank_b"], 2e-4)
    # all-zero (padding) frames: (ln eps - 15.41663) / 13.11164
    assert math.isclose(fb[0, -1, 0].item(), (math.log(1.1920929e-07) - 15.41663) / 13.11164, abs_tol=1e-5)


def test_relative_position_buckets(exp):
    r = torch.arange(-1000, 1001)
    assert torch.equal(relative_position_bucket(r, 320, 800), exp["rel_pos_bucket_-1000_1000"])


# -- Microsoft checkpoint ---------------------------------------------------------------------------------


def test_microsoft_single_clips(inp, exp):
    enc = load_encoder(MS)
    assert isinstance(enc, BeatsEncoder) and enc.output_dim == 64 and enc.hop_size_in_ms == 20.0
    close(enc(inp["wav_a"][None]), exp["ms_iter3_out_a"], END_TO_END)
    close(enc(inp["wav_b"][None]), exp["ms_iter3_out_b"], END_TO_END)


def test_microsoft_from_reference_fbank_and_hidden_states(exp):
    model = load_encoder(MS).model
    with torch.no_grad():
        x, hidden = model(exp["fbank_b"][None], output_hidden_states=True)
    close(x, exp["ms_iter3_out_b"], FROM_FBANK)
    close(torch.stack(hidden), exp["ms_iter3_hidden_b"], FROM_FBANK)


def test_hidden_states_end_to_end_and_layer_option(inp, exp):
    out = load_encoder(MS).encode(inp["wav_b"], output_hidden_states=True)
    close(torch.stack(out.hidden_states), exp["ms_iter3_hidden_b"], END_TO_END)
    for k in range(4):  # layer=k is the state after k layers = Microsoft tgt_layer=k-1
        close(load_encoder(MS, layer=k)(inp["wav_b"]), exp["ms_iter3_hidden_b"][k], END_TO_END)
    close(load_encoder(MS, layer=-2)(inp["wav_b"]), exp["ms_iter3_hidden_b"][2], END_TO_END)


def test_exact_mask_batch_equals_espnet_and_single_clips(exp, batch):
    wav, lengths = batch
    out = load_encoder(MS).encode(wav, lengths)
    assert out.lengths.tolist() == exp["espnet_iter3_out_lens_batch"].tolist() == [152, 248]
    valid = ~exp["espnet_patch_padding_mask_batch"]
    assert torch.equal(~exact_patch_mask(lengths, 31), valid.bool())
    close(out.frames[valid], exp["espnet_iter3_out_batch"][valid], END_TO_END)
    close(out.frames[0, :152], exp["ms_iter3_out_a"][0], END_TO_END)
    assert (out.frames[0, 152:] == 0).all()  # padding frames are zeroed, never meaningless values


def test_microsoft_mask_reproduces_microsoft_batches(exp, batch):
    wav, lengths = batch
    sample_mask = torch.arange(80000)[None] >= lengths[:, None]
    ms_mask = microsoft_patch_mask(sample_mask, 498, 248)
    assert torch.equal(ms_mask, exp["ms_iter3_patch_padding_mask_batch"])
    out = load_encoder(MS, mask="microsoft").encode(wav, lengths)
    assert out.lengths.tolist() == [160, 248]  # Microsoft keeps time row 19 of clip a valid
    valid = ~ms_mask
    close(out.frames[valid], exp["ms_iter3_out_batch"][valid], END_TO_END)


def test_tokenizer_labels_exact(inp, exp, batch):
    tok = load_encoder(TOK)
    assert torch.equal(tok.labels(inp["wav_a"]).flatten(), exp["tokenizer_labels_a"])
    assert torch.equal(tok.labels(inp["wav_b"]).flatten(), exp["tokenizer_labels_b"])
    assert torch.equal(tok.labels(*batch).flatten(), exp["tokenizer_labels_batch"])


# -- OpenBEATs / ESPnet ------------------------------------------------------------------------------------


def test_openbeats_ssl_checkpoint(inp, exp, batch):
    enc = load_encoder(OB)  # cfg omits embed_dim / input_patch_size: ESPnet defaults 512 / 16
    assert enc.cfg.embed_dim == 512 and enc.cfg.input_patch_size == 16 and enc.cfg.encoder_attention_heads == 8
    close(enc(inp["wav_a"]), exp["openbeats_out_a"], END_TO_END)
    close(enc(inp["wav_b"]), exp["openbeats_out_b"], END_TO_END)
    out = enc.encode(*batch)
    assert out.lengths.tolist() == exp["openbeats_out_lens_batch"].tolist()
    valid = ~exp["espnet_patch_padding_mask_batch"]
    close(out.frames[valid], exp["openbeats_out_batch"][valid], END_TO_END)
    # ESPnet max_layer=k equals our layer=k
    for k in range(2):
        close(load_encoder(OB, layer=k)(inp["wav_b"]), exp["openbeats_hidden_b"][k], END_TO_END)
    close(enc(inp["wav_b"]), exp["openbeats_hidden_b"][2], END_TO_END)


def test_openbeats_through_microsoft_mask(exp, batch):
    out = load_encoder(OB, mask="microsoft").encode(*batch)
    valid = ~exp["ms_iter3_patch_padding_mask_batch"]
    close(out.frames[valid], exp["ms_on_openbeats_out_batch"][valid], END_TO_END)


def test_espnet_prefixed_state_dict(tmp_path, inp, exp):
    cfg = torch_load(OB)["cfg"]
    with pytest.raises(ValueError, match="config.yaml"):
        load_encoder(OB_PREFIXED)
    close(load_encoder(OB_PREFIXED, beats_config=cfg)(inp["wav_b"]), exp["openbeats_out_b"], END_TO_END)
    # an ESPnet experiment folder: config.yaml (encoder_conf.beats_config) beside the .pth
    import yaml

    d = tmp_path / "exp"
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump({"encoder": "beats", "encoder_conf": {"beats_config": cfg}}))
    (d / "model.pth").write_bytes(OB_PREFIXED.read_bytes())
    close(load_encoder(d / "model.pth")(inp["wav_b"]), exp["openbeats_out_b"], END_TO_END)


def test_parametrized_weight_norm_names(tmp_path, inp, exp):
    ck = torch_load(MS)
    state = dict(ck["model"])
    state["encoder.pos_conv.0.parametrizations.weight.original0"] = state.pop("encoder.pos_conv.0.weight_g")
    state["encoder.pos_conv.0.parametrizations.weight.original1"] = state.pop("encoder.pos_conv.0.weight_v")
    torch.save({"cfg": ck["cfg"], "model": state}, tmp_path / "p.pt")
    close(load_encoder(tmp_path / "p.pt")(inp["wav_a"]), exp["ms_iter3_out_a"], END_TO_END)


# -- invariances, chunking, layouts, short input ----------------------------------------------------------


def test_batch_invariance_random_lengths():
    enc = load_encoder(MS)
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3000, 17000, 40123, 52000])
    wav = torch.zeros(4, 52000)
    clips = [torch.randn(n, generator=g) * 0.1 for n in lengths.tolist()]
    for i, c in enumerate(clips):
        wav[i, : len(c)] = c
    out = enc.encode(wav, lengths)
    for i, c in enumerate(clips):
        alone = enc(c[None])[0]
        assert out.lengths[i] == alone.shape[0] == enc.num_frames(len(c))
        close(out.frames[i, : out.lengths[i]], alone, 1e-5)


def test_chunking_exact_frame_accounting():
    g = torch.Generator().manual_seed(1)
    wav = torch.randn(2, 16000 * 7 + 1234, generator=g) * 0.1
    lengths = torch.tensor([wav.shape[1], 16000 * 3 + 77])
    whole = load_encoder(MS, chunk_seconds=None).encode(wav, lengths)
    chunked = load_encoder(MS, chunk_seconds=2.0).encode(wav, lengths)
    assert chunked.frames.shape == whole.frames.shape
    assert torch.equal(chunked.lengths, whole.lengths)
    # a chunk is encoded exactly as the audio that its rows cover, alone
    rows = (1 + (32000 - 400) // 160) // 16  # rows of 2 s = 12
    first = load_encoder(MS, chunk_seconds=None)(wav[:1, : 2560 * rows + 240])
    close(chunked.frames[0, : rows * 8], first[0], 1e-5)
    second = load_encoder(MS, chunk_seconds=None)(wav[:1, 2560 * rows: 2560 * 2 * rows + 240])
    close(chunked.frames[0, rows * 8: 2 * rows * 8], second[0], 1e-5)
    # the second item ends in the second chunk: masked exactly
    alone = load_encoder(MS, chunk_seconds=2.0)(wav[1:, : lengths[1]])
    close(chunked.frames[1, : chunked.lengths[1]], alone[0], 1e-5)


@pytest.mark.parametrize("seconds", [0.2, 0.5, 1.0, 3.3, 10.0, 61.7])
def test_hop_consistent_with_frame_count(seconds):
    enc = load_encoder(MS)
    n = int(seconds * 16000)
    frames = enc.num_frames(n)
    if seconds <= 10:
        assert enc(torch.zeros(1, n)).shape[1] == frames
    # each token sits within one patch row (160 ms) plus the dropped <16 frames of its true time
    assert abs(frames * enc.hop_size_in_ms - seconds * 1000) <= 160 + 160


@pytest.mark.slow
def test_ten_minutes_in_bounded_memory():
    enc = load_encoder(MS)
    n = 600 * 16000
    out = enc(torch.randn(1, n) * 0.05)
    assert out.shape == (1, enc.num_frames(n), 64)
    assert out.shape[1] == 8 * ((1 + (n - 400) // 160) // 16)  # 29992 tokens
    assert torch.isfinite(out).all()


def test_layouts(inp):
    flat = load_encoder(MS)(inp["wav_b"])
    mean = load_encoder(MS, layout="mean")
    concat = load_encoder(MS, layout="concat")
    assert mean.hop_size_in_ms == concat.hop_size_in_ms == 160.0 and concat.output_dim == 8 * 64
    rows = flat.view(1, 31, 8, 64)
    close(mean(inp["wav_b"]), rows.mean(2), 1e-6)
    close(concat(inp["wav_b"]), rows.reshape(1, 31, 512), 1e-6)


def test_short_inputs_are_padded_to_one_patch_row():
    enc = load_encoder(MS)
    for n in (1, 399, 2799):
        out = enc(torch.full((1, n), 0.1))
        assert out.shape == (1, 8, 64) and torch.isfinite(out).all()
    tone = torch.full((1, 1000), 0.1)
    padded = torch.cat([tone, torch.zeros(1, 1800)], dim=1)
    close(enc(tone), enc(padded), 1e-6)


# -- our format, dtype, contract, errors -------------------------------------------------------------


def test_harmonia_format_round_trip(tmp_path, inp):
    enc = load_encoder(MS, layout="mean")
    save_harmonia(enc, tmp_path / "m")
    back = load_encoder(tmp_path / "m")
    assert back.layout == "mean"
    assert torch.equal(back(inp["wav_a"]), enc(inp["wav_a"]))
    save_harmonia(load_encoder(TOK), tmp_path / "t")
    assert torch.equal(load_encoder(tmp_path / "t").labels(inp["wav_a"]), load_encoder(TOK).labels(inp["wav_a"]))


def test_xares_contract():
    enc = load_encoder(MS)
    assert type(enc).__name__.endswith("Encoder")
    enc.train()  # X-ARES never calls eval(): encoders stay in eval mode
    assert not enc.training and not enc.model.training
    out = enc(torch.randn(2, 50000))
    assert out.shape == (2, enc.num_frames(50000), enc.output_dim) and out.dtype == torch.float32


def test_real_xares_checker_accepts_beats(check_audio_encoder):
    assert check_audio_encoder(load_encoder(MS))


def test_strict_loading_lists_missing_and_unexpected(tmp_path):
    ck = torch_load(MS)
    state = dict(ck["model"])
    del state["encoder.layers.1.fc1.bias"]
    state["encoder.layers.0.bogus"] = torch.zeros(1)
    torch.save({"cfg": ck["cfg"], "model": state}, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as e:
        load_encoder(tmp_path / "bad.pt")
    assert "encoder.layers.1.fc1.bias" in str(e.value) and "encoder.layers.0.bogus" in str(e.value)


def test_cfg_contradicting_weights_and_missing_flags(tmp_path):
    ck = torch_load(MS)
    torch.save({"cfg": {**ck["cfg"], "encoder_embed_dim": 128}, "model": ck["model"]}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="encoder_embed_dim"):
        load_encoder(tmp_path / "c.pt")
    cfg = {k: v for k, v in ck["cfg"].items() if k not in ("deep_norm", "max_distance")}
    torch.save({"cfg": cfg, "model": ck["model"]}, tmp_path / "m.pt")
    with pytest.warns(UserWarning, match="deep_norm"):
        enc = load_encoder(tmp_path / "m.pt")
    assert enc.cfg.deep_norm is False and enc.cfg.max_distance == 1280  # what the reference builds


def test_unreadable_checkpoints(tmp_path):
    (tmp_path / "html.pt").write_text("<html>not a checkpoint</html>")
    with pytest.raises(CheckpointError, match="html.pt"):
        load_encoder(tmp_path / "html.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="unrecognised"):
        load_encoder(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unknown encoder"):
        load_encoder("no-such-model-name")


def test_bad_waveforms():
    enc = load_encoder(MS)
    with pytest.raises(ValueError, match="NaN"):
        enc(torch.tensor([[0.0, float("nan")] * 2000]))
    with pytest.raises(ValueError, match="empty"):
        enc(torch.zeros(1, 0))
    with pytest.raises(ValueError, match="shape"):
        enc(torch.zeros(1, 2, 3000))
    with pytest.raises(ValueError, match="lengths"):
        enc.encode(torch.zeros(2, 3000), torch.tensor([3000, 4000]))
    with pytest.raises(ValueError, match="layout"):
        load_encoder(MS, layout="stacked")
    with pytest.raises(TypeError, match="unknown BEATs encoder options"):
        load_encoder(MS, laout="flat")


def test_dtype_option(inp):
    enc = load_encoder(MS, dtype=torch.bfloat16)
    assert enc.dtype == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = enc(inp["wav_a"][:16000])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = load_encoder(MS)(inp["wav_a"][:16000])  # the same weights in fp32
    assert torch.nn.functional.cosine_similarity(out[0], ref[0], dim=-1).min() > 0.99
