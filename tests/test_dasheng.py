"""Dasheng parity with the reference (`dasheng` 0.0.9) through the golden fixtures, plus the encoder
contract (batch invariance, short inputs, options) and loading errors.

Tolerances follow tests/fixtures/dasheng/README.md; the mel dB tolerance is the issue's 1e-3 dB.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import harmonia
from harmonia.encoders.dasheng import DashengEncoder, hf_architecture
from harmonia.hub import CheckpointError, read_safetensors, save_harmonia
from harmonia.layers.frontend import hann_window, htk_mel_filterbank, log_mel_db, power_mel
from harmonia.models.dasheng import PRESETS, Dasheng, DashengConfig, infer_config, num_parameters

FIX = Path(__file__).parent / "fixtures" / "dasheng"
EMB_TOL = dict(atol=1e-4, rtol=1e-4)
DB_TOL = dict(atol=1e-3, rtol=0)
NAMES = ("1p5s", "4s", "12p5s")


@pytest.fixture(scope="module")
def wavs() -> dict[str, torch.Tensor]:
    inp = load_file(str(FIX / "inputs.safetensors"))
    w = {k[4:]: inp[k].float() / 32768.0 for k in inp if k.startswith("wav_")}
    xb = torch.zeros(3, 200000)
    for i, k in enumerate(NAMES):
        xb[i, : w[k].shape[0]] = w[k]
    w["batch"] = xb
    w["lengths"] = inp["batch_lengths"]
    return w


@pytest.fixture(scope="module")
def frontend() -> dict[str, torch.Tensor]:
    return load_file(str(FIX / "frontend.safetensors"))


@pytest.fixture(scope="module")
def out_a() -> dict[str, torch.Tensor]:
    return load_file(str(FIX / "outputs_model_a.safetensors"))


@pytest.fixture(scope="module")
def out_b() -> dict[str, torch.Tensor]:
    return load_file(str(FIX / "outputs_model_b.safetensors"))


@pytest.fixture(scope="module")
def enc_a() -> DashengEncoder:
    return harmonia.load_encoder(FIX / "model_a.pt")


@pytest.fixture(scope="module")
def enc_b() -> DashengEncoder:
    return harmonia.load_encoder(FIX / "model_b.pt")


# -------------------------------------------------------------------------------------------------
# front end


def test_filterbank_and_window_bit_exact(frontend):
    assert torch.equal(htk_mel_filterbank(), frontend["mel_fb"])
    assert torch.equal(hann_window(512), frontend["window"])


def test_power_mel(wavs, frontend):
    ref = frontend["power_mel_1p5s"]
    got = power_mel(wavs["1p5s"][None])[0]
    torch.testing.assert_close(got, ref, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", [*NAMES, "min"])
def test_mel_db_single(wavs, frontend, name):
    torch.testing.assert_close(log_mel_db(wavs[name][None])[0], frontend[f"mel_db_{name}"], **DB_TOL)


def test_mel_db_top_db_floor_active(wavs, frontend):
    # the silent span of wav_4s is floored at (item max - 120 dB): hand-checkable from the fixture
    ref = frontend["mel_db_4s"]
    assert ref.min().item() == pytest.approx(ref.max().item() - 120.0, abs=1e-4)
    got = log_mel_db(wavs["4s"][None])[0]
    assert got.min().item() == pytest.approx(ref.max().item() - 120.0, abs=1e-3)


def test_mel_db_batch_topdb_reproduces_reference(wavs, frontend):
    torch.testing.assert_close(log_mel_db(wavs["batch"], batch_topdb=True), frontend["batch_mel_db"], **DB_TOL)


def test_mel_db_per_item_floor_is_independent_of_batch(wavs, frontend):
    per_item = log_mel_db(wavs["batch"])  # default: each row floored at its own max - 120
    ref = frontend["batch_mel_db"]
    # row 2 (the loudest, full length) is unaffected by the batch either way
    torch.testing.assert_close(per_item[2], ref[2], **DB_TOL)
    # row 1 has silence + padding: its floor is its own max - 120, below the batch-wide floor
    assert per_item[1].min().item() == pytest.approx(per_item[1].max().item() - 120.0, abs=1e-3)
    assert per_item[1].min() < ref[1].min() - 1.0


# -------------------------------------------------------------------------------------------------
# model A (released family), every tensor


def test_model_a_config_read_from_checkpoint(enc_a):
    c = enc_a.config
    assert (c.embed_dim, c.depth, c.num_heads, c.mlp_ratio, c.layer_scale, c.target_length) == (64, 3, 4, 4.0, False, 1008)
    assert (enc_a.output_dim, enc_a.hop_size_in_ms, enc_a.sampling_rate) == (64, 40.0, 16000)
    assert type(enc_a).__name__.endswith("Encoder")


def _bn_out(enc, wav):
    return enc.model.mel_norm(enc.model.log_mel(wav[None]))[0]


@pytest.mark.parametrize("model", ["a", "b"])
def test_bn_out(model, wavs, enc_a, enc_b, out_a, out_b):
    enc, out = (enc_a, out_a) if model == "a" else (enc_b, out_b)
    torch.testing.assert_close(_bn_out(enc, wavs["1p5s"]), out["bn_out_1p5s"], atol=2e-4, rtol=0)


@pytest.mark.parametrize("name", [*NAMES, "min"])
@pytest.mark.parametrize("model", ["a", "b"])
def test_embeddings(model, name, wavs, enc_a, enc_b, out_a, out_b):
    enc, out = (enc_a, out_a) if model == "a" else (enc_b, out_b)
    frames = enc(wavs[name])
    assert frames.dtype == torch.float32
    torch.testing.assert_close(frames[0], out[f"emb_{name}"], **EMB_TOL)


@pytest.mark.parametrize("name", ["1p5s", "12p5s"])
def test_hidden_states(name, wavs, enc_a, out_a):
    o = enc_a.encode(wavs[name], output_hidden_states=True)
    ref = out_a[f"layers_{name}"]
    assert len(o.hidden_states) == ref.shape[0] == enc_a.config.depth + 1
    torch.testing.assert_close(torch.stack(o.hidden_states)[:, 0], ref, **EMB_TOL)
    torch.testing.assert_close(o.frames[0], out_a[f"emb_{name}"], **EMB_TOL)


@pytest.mark.parametrize("layer", [0, 2, 3, -1, -3])
def test_layer_option(layer, wavs, out_a):
    """A negative layer counts from the end as for BEATs: -1 is the state after the last block."""
    enc = harmonia.load_encoder(FIX / "model_a.pt", layer=layer)
    torch.testing.assert_close(enc(wavs["12p5s"])[0], out_a["layers_12p5s"][layer % 4], **EMB_TOL)


# -------------------------------------------------------------------------------------------------
# model B: options read from the checkpoint, not assumed


def test_model_b_config_read_from_checkpoint(enc_b):
    c = enc_b.config
    assert (c.num_heads, c.mlp_ratio, c.layer_scale, c.target_length, c.chunk_tokens) == (2, 2.0, True, 400, 100)
    assert {"blocks.0.ls1.gamma", "blocks.1.ls2.gamma"} <= set(enc_b.model.state_dict())


# -------------------------------------------------------------------------------------------------
# HF layout and the documented difference with the HF remote code


def test_hf_layout(wavs, out_a):
    enc = harmonia.load_encoder(FIX / "model_a_hf")
    assert enc.config.num_heads == 4
    o = enc.encode(wavs["12p5s"], output_hidden_states=True)
    torch.testing.assert_close(o.frames[0], out_a["emb_12p5s"], **EMB_TOL)
    torch.testing.assert_close(torch.stack(o.hidden_states)[:, 0], out_a["layers_12p5s"], **EMB_TOL)
    # the HF remote code zero-pads the last chunk: first chunk equal, second chunk different
    hf = load_file(str(FIX / "outputs_model_a_hf_code.safetensors"))["hf_emb_12p5s"]
    torch.testing.assert_close(o.frames[0, :252], hf[:252], **EMB_TOL)
    assert (o.frames[0, 252:] - hf[252:]).abs().max() > 0.1


def test_hf_architecture_precedence():
    cfg = json.loads((FIX / "model_a_hf" / "config.json").read_text())
    assert hf_architecture(cfg) == {"embed_dim": 64, "depth": 3, "num_heads": 4, "target_length": 1008}
    assert hf_architecture({"name": "dasheng-1.2B"}) == {"embed_dim": 1536, "depth": 40, "num_heads": 24}


def test_safetensors_mmap_reader_matches_safetensors():
    path = FIX / "model_a_hf" / "model.safetensors"
    ours, ref = read_safetensors(path), load_file(str(path))
    assert ours.keys() == ref.keys()
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and torch.equal(ours[k], ref[k]), k
    # streamed conversion: matrices converted to the requested dtype, vectors kept as stored
    half = read_safetensors(path, torch.bfloat16)
    for k in ref:
        if ref[k].ndim >= 2:
            assert half[k].dtype == torch.bfloat16 and torch.equal(half[k], ref[k].to(torch.bfloat16)), k
        else:
            assert half[k].dtype == ref[k].dtype and torch.equal(half[k], ref[k]), k


# -------------------------------------------------------------------------------------------------
# batches, lengths and chunking


@pytest.mark.parametrize("model", ["a", "b"])
def test_batch_topdb_reproduces_reference_batch(model, wavs, enc_a, enc_b, out_a, out_b):
    enc, out = (enc_a, out_a) if model == "a" else (enc_b, out_b)
    ref_mode = DashengEncoder(enc.model, batch_topdb=True)
    o = ref_mode.encode(wavs["batch"], wavs["lengths"])
    assert o.lengths.tolist() == [37, 100, 312]
    for i, n in enumerate(o.lengths.tolist()):
        torch.testing.assert_close(o.frames[i, :n], out["batch_emb_masked"][i, :n], **EMB_TOL)
    if "batch_emb_nomask" in out:
        torch.testing.assert_close(ref_mode(wavs["batch"]), out["batch_emb_nomask"], **EMB_TOL)


@pytest.mark.parametrize("model", ["a", "b"])
def test_batch_invariance(model, wavs, enc_a, enc_b):
    enc = enc_a if model == "a" else enc_b
    # 23540 % 640 >= 480: the reference's floor(N / 640) mask would drop this clip's last token
    lengths = torch.tensor([24000, 64000, 200000, 23540, 300])
    xb = torch.zeros(5, 200000)
    for i, n in enumerate(lengths.tolist()):
        xb[i, :n] = wavs["batch"][i % 3, :n]
    o = enc.encode(xb, lengths)
    assert o.lengths.tolist() == [37, 100, 312, 37, 1]
    for i, n in enumerate(lengths.tolist()):
        alone = enc.encode(xb[i, :n])
        assert alone.frames.shape[1] == o.lengths[i]
        torch.testing.assert_close(o.frames[i, : o.lengths[i]], alone.frames[0], atol=1e-5, rtol=0)
        assert not o.frames[i, o.lengths[i]:].any()  # padding zeroed


def test_frame_counts_and_exact_multiple_chunks(enc_a, enc_b):
    # docs/dasheng.md §2.6 examples: (1 + N // 160) // 4
    for n, t in [(480, 1), (1119, 1), (16000, 25), (161120, 252), (161280, 252), (200000, 312), (322400, 504)]:
        assert enc_a.num_frames(n) == t
    # exactly two full chunks (A) / four full chunks (B): nothing dropped (the HF code drops one)
    x = torch.randn(1, 322400, generator=torch.Generator().manual_seed(0)) * 0.1
    assert enc_a(x).shape == (1, 504, 64)
    assert enc_b(x[:, :256000]).shape == (1, 400, 64)


def test_short_input_is_zero_padded_to_one_frame(enc_a, out_a, wavs):
    assert enc_a.min_samples == 480
    short = wavs["min"][:100]
    padded = torch.cat([short, torch.zeros(380)])
    got = enc_a(short)
    assert got.shape == (1, 1, 64)
    torch.testing.assert_close(got, enc_a(padded), atol=0, rtol=0)
    # the 30 ms fixture itself is the shortest input that needs no padding
    torch.testing.assert_close(enc_a(wavs["min"])[0], out_a["emb_min"], **EMB_TOL)


# -------------------------------------------------------------------------------------------------
# formats, options, presets


def test_harmonia_format_round_trip(tmp_path, enc_b, out_b, wavs):
    save_harmonia(enc_b, tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["family"] == "dasheng" and cfg["model"]["target_length"] == 400
    enc = harmonia.load_encoder(tmp_path / "b")
    torch.testing.assert_close(enc(wavs["12p5s"])[0], out_b["emb_12p5s"], **EMB_TOL)


def test_dtype_option(wavs, out_a):
    enc = harmonia.load_encoder(FIX / "model_a.pt", dtype="bfloat16")
    assert enc.model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert enc.model.mel_norm.running_var.dtype == torch.float32  # front end stays fp32
    frames = enc(wavs["1p5s"])
    assert frames.dtype == torch.float32
    ref = out_a["emb_1p5s"]
    cos = torch.nn.functional.cosine_similarity(frames[0], ref, dim=-1)
    assert cos.min() > 0.99


def test_presets_match_published_parameter_counts():
    # docs/dasheng.md §3 (mteb model metadata): encoder parameters of the released sizes
    expected = {"dasheng-base": 85_447_808, "dasheng-0.6B": 630_333_568, "dasheng-1.2B": 1_134_047_360}
    heads = {"dasheng-base": 12, "dasheng-0.6B": 16, "dasheng-1.2B": 24}
    for name, n in expected.items():
        assert num_parameters(PRESETS[name]) == n
        assert PRESETS[name].num_heads == heads[name]
    with torch.device("meta"):
        model = Dasheng(PRESETS["dasheng-base"])
    assert sum(p.numel() for p in model.parameters()) == expected["dasheng-base"]


def _meta_reference_state(D: int, depth: int) -> dict[str, torch.Tensor]:
    e = lambda *s: torch.empty(*s, device="meta")
    state = {"time_pos_embed": e(1, D, 1, 252), "patch_embed.proj.weight": e(D, 1, 64, 4)}
    for i in range(depth):
        state[f"blocks.{i}.norm1.weight"] = e(D)
        state[f"blocks.{i}.attn.qkv.bias"] = e(3 * D)
        state[f"blocks.{i}.mlp.fc1.weight"] = e(4 * D, D)
    return state


def test_heads_come_from_the_preset_for_released_sizes():
    state = _meta_reference_state(768, 12)
    with pytest.warns(UserWarning, match="num_heads=8"):
        cfg = infer_config(state, {"num_heads": 8})  # the class default the factories override
    assert cfg.num_heads == 12
    assert infer_config(_meta_reference_state(1536, 40)).num_heads == 24
    assert infer_config(state, num_heads=6).num_heads == 6


# -------------------------------------------------------------------------------------------------
# errors


def _resave(tmp_path, edit) -> Path:
    ckpt = torch.load(FIX / "model_a.pt", weights_only=True)
    edit(ckpt)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    return path


def test_error_lists_missing_and_unexpected_keys(tmp_path):
    def edit(ckpt):
        del ckpt["model"]["blocks.1.mlp.fc2.bias"]
        ckpt["model"]["blocks.1.attn.extra.weight"] = torch.zeros(1)

    with pytest.raises(CheckpointError, match="blocks.1.attn.extra.weight"):
        harmonia.load_encoder(_resave(tmp_path, edit))

    def edit2(ckpt):
        del ckpt["model"]["blocks.1.mlp.fc2.bias"]

    with pytest.raises(CheckpointError, match=r"missing keys \(1\): \['blocks.1.mlp.fc2.bias'\]"):
        harmonia.load_encoder(_resave(tmp_path, edit2))


def test_error_unknown_heads(tmp_path):
    def edit(ckpt):
        ckpt["config"] = {}

    path = _resave(tmp_path, edit)
    with pytest.raises(CheckpointError, match="num_heads"):
        harmonia.load_encoder(path)
    assert harmonia.load_encoder(path, num_heads=4).config.num_heads == 4


def test_error_foreign_front_end(tmp_path):
    def edit(ckpt):
        ckpt["model"]["front_end.0.mel_scale.fb"] = ckpt["model"]["front_end.0.mel_scale.fb"] * 2

    with pytest.raises(CheckpointError, match="filterbank"):
        harmonia.load_encoder(_resave(tmp_path, edit))


def test_error_hf_config_disagrees_with_weights(tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(FIX / "model_a_hf", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["encoder_kwargs"]["depth"] = 5
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="depth=5"):
        harmonia.load_encoder(d)


def test_error_hf_classifier_head(tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(FIX / "model_a_hf", d)
    state = load_file(str(d / "model.safetensors"))
    state["outputlayer.1.weight"] = torch.zeros(527, 64)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="outputlayer.1.weight"):
        harmonia.load_encoder(d)


def test_error_bad_options(enc_a):
    with pytest.raises(ValueError, match=r"layer must be .* \[0, 3\]"):
        DashengEncoder(enc_a.model, layer=4)
    with pytest.raises(ValueError, match=r"\[-3, -1\]"):
        DashengEncoder(enc_a.model, layer=-4)
    with pytest.raises(ValueError, match="unknown dtype .int8.: expected one of"):
        harmonia.load_encoder(FIX / "model_a.pt", dtype="int8")


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="embed_dim .* divisible by num_heads"):
        DashengConfig(embed_dim=768, num_heads=7)
    with pytest.raises(ValueError, match="target_length"):
        DashengConfig(target_length=1001)
    with pytest.raises(ValueError, match="patch_size"):
        DashengConfig(patch_size=(16, 16))
