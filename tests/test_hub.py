"""Loading every family from every format the same way: dtype spellings, torch.inference_mode(),
a named `.safetensors` file, config type validation, and the offline advice for Hugging Face ids."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import harmonia
from harmonia import EnsembleEncoder, load_encoder
from harmonia.hub import CheckpointError, DownloadError, save_harmonia, write_linked_ensemble
from harmonia.io import read_safetensors, torch_load, write_safetensors

FIX = Path(__file__).parent / "fixtures"
MS = FIX / "beats" / "beats_ms_iter3_small.pt"
DASHENG_PT = FIX / "dasheng" / "model_a.pt"
DASHENG_HF = FIX / "dasheng" / "model_a_hf"
WAV = torch.randn(2, 12000, generator=torch.Generator().manual_seed(0)) * 0.1
LENGTHS = torch.tensor([12000, 7000])


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """One source per (family, format): torch files, Hugging Face folder, harmonia's format, ensembles."""
    tmp = tmp_path_factory.mktemp("formats")
    beats, dasheng = load_encoder(MS), load_encoder(DASHENG_PT)
    return {
        "beats-pt": MS,
        "beats-harmonia": save_harmonia(beats, tmp / "beats"),
        "dasheng-pt": DASHENG_PT,
        "dasheng-hf": DASHENG_HF,
        "dasheng-harmonia": save_harmonia(dasheng, tmp / "dasheng"),
        "ensemble-harmonia": save_harmonia(EnsembleEncoder([beats, dasheng], align="linear"), tmp / "ens"),
        "ensemble-linked": write_linked_ensemble(tmp / "linked", [str(MS), str(DASHENG_HF)], align="linear"),
    }


FORMATS = ["beats-pt", "beats-harmonia", "dasheng-pt", "dasheng-hf", "dasheng-harmonia", "ensemble-harmonia",
           "ensemble-linked"]


def encode(enc) -> torch.Tensor:
    return enc.encode(WAV, LENGTHS).frames


# -------------------------------------------------------------------------------------------------
# dtype: one parser for every loader


@pytest.mark.parametrize("dtype", ["bf16", "bfloat16", "torch.bfloat16", torch.bfloat16])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_dtype_spelling_for_every_family_and_format(sources, fmt, dtype):
    enc = load_encoder(sources[fmt], dtype=dtype)
    matrices = {p.dtype for p in enc.parameters() if p.ndim >= 2}
    assert matrices == {torch.bfloat16}


def test_unknown_dtype_is_one_clear_error(sources):
    for fmt in ("beats-pt", "dasheng-hf", "ensemble-harmonia"):
        with pytest.raises(ValueError, match=r"unknown dtype 'bf17': expected one of .*'bf16'"):
            load_encoder(sources[fmt], dtype="bf17")


# -------------------------------------------------------------------------------------------------
# torch.inference_mode()


@pytest.mark.parametrize("fmt", FORMATS)
def test_inference_mode_load_and_encode_in_any_order(sources, fmt):
    expected = encode(load_encoder(sources[fmt]))
    with torch.inference_mode():  # the usual idiom: load and encode inside
        inside = load_encoder(sources[fmt])
        assert torch.equal(encode(inside), expected)
        assert torch.equal(encode(inside), expected)  # twice: nothing cached goes stale
    assert torch.equal(encode(inside), expected)  # loaded inside, encoded outside
    outside = load_encoder(sources[fmt])
    with torch.inference_mode():  # loaded outside, encoded inside
        assert torch.equal(encode(outside), expected)
    assert torch.equal(encode(outside), expected)  # and outside again after that
    assert torch.equal(inside(WAV), outside(WAV))  # the X-ARES forward too


def test_folded_weight_cache_follows_in_place_updates():
    """The folded weight-norm cache (normal tensors) still notices a changed parameter."""
    enc = load_encoder(MS)
    before = encode(enc)
    with torch.no_grad():
        enc.model.encoder.pos_conv[0].weight_g.mul_(2.0)
    after = encode(enc)
    fresh = load_encoder(MS)
    with torch.no_grad():
        fresh.model.encoder.pos_conv[0].weight_g.mul_(2.0)
    assert not torch.equal(before, after) and torch.equal(after, encode(fresh))


# -------------------------------------------------------------------------------------------------
# a named .safetensors file


def _scaled_copy(src: Path, dst: Path, key_part: str) -> None:
    """`dst`: the weights of `src` with every tensor whose name holds `key_part` doubled."""
    state = {k: (v * 2 if key_part in k else v).clone() for k, v in read_safetensors(src).items()}
    write_safetensors(state, dst)


@pytest.mark.parametrize("fmt, key", [("beats-harmonia", "encoder.layers.0.fc1.weight"),
                                      ("dasheng-harmonia", "blocks.0.mlp.fc1.weight"),
                                      ("dasheng-hf", "blocks.0.mlp.fc1.weight"),
                                      ("ensemble-harmonia", "members.1.blocks.0.mlp.fc1.weight")])
def test_named_safetensors_file_is_the_one_loaded(sources, tmp_path, fmt, key):
    folder = tmp_path / "ckpt"
    shutil.copytree(sources[fmt], folder)
    _scaled_copy(folder / "model.safetensors", folder / "finetuned.safetensors", key)
    base = encode(load_encoder(folder / "model.safetensors"))
    assert torch.equal(base, encode(load_encoder(folder)))
    tuned = encode(load_encoder(folder / "finetuned.safetensors"))
    assert not torch.equal(tuned, base)
    # the same as the modified weights installed as the folder's own model.safetensors
    (folder / "model.safetensors").unlink()
    (folder / "finetuned.safetensors").rename(folder / "model.safetensors")
    assert torch.equal(tuned, encode(load_encoder(folder)))


def test_named_safetensors_without_a_config_is_refused(sources, tmp_path):
    shutil.copyfile(sources["beats-harmonia"] / "model.safetensors", tmp_path / "finetuned.safetensors")
    (tmp_path / "model.safetensors").write_bytes(b"")  # a decoy that must not be read instead
    with pytest.raises(CheckpointError, match=r"finetuned.safetensors: not a known checkpoint layout.*config.json"):
        load_encoder(tmp_path / "finetuned.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors: no such checkpoint file"):
        load_encoder(str(sources["beats-harmonia"] / "missing.safetensors"), layout="flat")


def test_named_safetensors_in_a_linked_ensemble_folder_is_refused(sources, tmp_path):
    folder = tmp_path / "linked"
    shutil.copytree(sources["ensemble-linked"], folder)
    shutil.copyfile(sources["beats-harmonia"] / "model.safetensors", folder / "x.safetensors")
    with pytest.raises(CheckpointError, match="linked ensemble, which has no weights file"):
        load_encoder(folder / "x.safetensors")


# -------------------------------------------------------------------------------------------------
# config types: a string is not a boolean


def _resave_ms(tmp_path: Path, **cfg) -> Path:
    ck = torch_load(MS)
    path = tmp_path / "edited.pt"
    torch.save({"cfg": {**ck["cfg"], **cfg}, "model": dict(ck["model"])}, path)
    return path


@pytest.mark.parametrize("field, value, expected", [
    ("deep_norm", "false", "bool"), ("layer_norm_first", 0, "bool"), ("encoder_layers", 3.0, "int"),
    ("max_distance", "800", "int"), ("activation_fn", None, "str"), ("fbank_std", "6.5", "float"),
])
def test_beats_cfg_wrong_type_names_file_field_type_and_value(tmp_path, field, value, expected):
    with pytest.raises(CheckpointError) as err:
        load_encoder(_resave_ms(tmp_path, **{field: value}))
    msg = str(err.value)
    assert "edited.pt" in msg and f"BeatsConfig.{field}: expected {expected}" in msg and repr(value) in msg


def _edit_config(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("fmt, edit, message", [
    ("beats-harmonia", lambda c: c["config"].update(deep_norm="false"), "BeatsConfig.deep_norm: expected bool"),
    ("beats-harmonia", lambda c: c.update(tokenizer="false"), "tokenizer: expected bool"),
    ("beats-harmonia", lambda c: c["options"].update(layer="2"), "option layer: expected int | None"),
    ("beats-harmonia", lambda c: c["options"].update(chunk_seconds="10"), "chunk_seconds: expected float | None"),
    ("dasheng-harmonia", lambda c: c["model"].update(qkv_bias="true"), "DashengConfig.qkv_bias: expected bool"),
    ("dasheng-harmonia", lambda c: c["model"].update(patch_size=["64", "4"]), "DashengConfig.patch_size"),
    ("dasheng-harmonia", lambda c: c["options"].update(batch_topdb="false"), "batch_topdb: expected bool"),
    ("dasheng-harmonia", lambda c: c.update(version="1"), "version: expected int"),
    ("dasheng-harmonia", lambda c: c.pop("model"), "a dasheng config needs the key 'model'"),
    ("dasheng-harmonia", lambda c: c.update(family="dashing"), "unknown encoder family 'dashing'"),
    ("ensemble-harmonia", lambda c: c["options"].update(reference="0"), "reference: expected int"),
    ("ensemble-harmonia", lambda c: c.update(names="ab"), "names: expected list"),
    ("ensemble-harmonia", lambda c: c["members"][1]["model"].update(depth=3.0), "DashengConfig.depth: expected int"),
    ("ensemble-linked", lambda c: c.update(member_options=[{}, "x"]), "member_options: expected list"),
    ("ensemble-linked", lambda c: c.update(members=[1, 2]), "expected a non-empty list 'members'"),
    ("ensemble-linked", lambda c: c.update(version=2), "written by a newer harmonia (format version 2"),
    ("beats-harmonia", lambda c: c.update(version=2), "written by a newer harmonia (format version 2"),
    ("dasheng-hf", lambda c: c.setdefault("encoder_kwargs", {}).update(depth="3"), "config depth: expected int"),
])
def test_config_json_wrong_type_is_one_clear_error(sources, tmp_path, fmt, edit, message):
    folder = _edit_config(sources[fmt], tmp_path / "edited", edit)
    with pytest.raises(CheckpointError, match=re.escape(message)) as err:
        load_encoder(folder)
    assert "edited" in str(err.value)


def test_encoder_options_are_type_checked():
    with pytest.raises(ValueError, match=r"batch_topdb: expected bool, found str 'false'"):
        load_encoder(DASHENG_PT, batch_topdb="false")
    with pytest.raises(ValueError, match=r"option layer: expected int \| None, found str '2'"):
        load_encoder(MS, layer="2")
    with pytest.raises(ValueError, match=r"option fuse: expected str"):
        EnsembleEncoder([load_encoder(MS)], fuse=None)


# -------------------------------------------------------------------------------------------------
# offline advice for a Hugging Face id that is not in the registry


def test_offline_advice_for_a_repo_id_works_as_printed(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError) as err:
        load_encoder("someone/my-beats", cache_dir=tmp_path / "empty-cache")
    advice = re.search(r"harmonia\.load_encoder\((.+?), path='DIR'\)", str(err.value))
    assert advice is not None, str(err.value)
    # what `hf download someone/my-beats --local-dir DIR` writes: the repository's files, nested
    local = tmp_path / "DIR"
    (local / "exp" / "run").mkdir(parents=True)
    shutil.copyfile(MS, local / "exp" / "run" / "epoch_10.pt")

    def no_network(*args, **kwargs):
        raise AssertionError("the advice must not download")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    enc = harmonia.load_encoder(ast.literal_eval(advice.group(1)), path=str(local))
    assert torch.equal(encode(enc), encode(load_encoder(MS)))
    with pytest.raises(FileNotFoundError, match="someone/my-beats: local copy .*nowhere does not exist"):
        harmonia.load_encoder("someone/my-beats", path=tmp_path / "nowhere")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", ["beats-pt", "dasheng-hf", "ensemble-harmonia"])
def test_cuda_bf16_load_inside_inference_mode(sources, fmt):
    """The usual GPU idiom: load onto the device in bf16 inside inference_mode, then encode inside and
    outside it; close to the fp32 CPU frames."""
    expected = encode(load_encoder(sources[fmt]))
    with torch.inference_mode():
        enc = load_encoder(sources[fmt], dtype="bf16", device="cuda")
        inside = encode(enc).cpu()
    outside = encode(enc).cpu()
    assert torch.equal(inside, outside)
    cos = torch.nn.functional.cosine_similarity(inside.flatten(), expected.flatten(), dim=0)
    assert cos >= 0.99, float(cos)
