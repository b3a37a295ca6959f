"""tools/make_fixtures.py: the parts that need no reference code re-create the stored fixtures
byte for byte (the rest runs in the side environment of tools/make_reference_env.sh)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "tools" / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hugging_face_folder_is_a_pure_conversion_of_model_a(gen, tmp_path):
    gen.dasheng_hf_folder(FIX / "dasheng" / "model_a.pt", tmp_path)
    for name in ("model.safetensors", "config.json", "preprocessor_config.json"):
        assert (tmp_path / name).read_bytes() == (FIX / "dasheng" / "model_a_hf" / name).read_bytes(), name
    assert json.loads((tmp_path / "config.json").read_text())["encoder_kwargs"]["num_heads"] == 4


def test_example_wav_is_the_beats_input_as_pcm16(gen):
    assert gen.audio_example(FIX / "beats") == (FIX / "audio" / "example.wav").read_bytes()


def test_beats_inputs_follow_the_documented_recipe(gen):
    from safetensors.torch import load_file

    stored = load_file(str(FIX / "beats" / "inputs.safetensors"))
    made = gen.beats_inputs(20230101)
    assert made.keys() == stored.keys() and torch.equal(made["lengths_batch"], stored["lengths_batch"])
    for k in ("wav_a", "wav_b"):  # one float32 ulp on a handful of samples at most (np.sin rounding)
        torch.testing.assert_close(made[k], stored[k], rtol=0, atol=2e-8)
        assert (made[k] != stored[k]).sum() < 50


def test_documented_tolerances(gen):
    assert gen.tolerance("fbank_a", None) == 2e-4
    assert gen.tolerance("mel_db_4s", None) == 2e-3 and gen.tolerance("batch_mel_db", None) == 2e-3
    assert gen.tolerance("ms_iter3_out_a", None) == 1e-4 and gen.tolerance("emb_12p5s", None) == 1e-4
    assert gen.tolerance("fbank_a", 0.0) == 0.0  # --atol 0: byte for byte
