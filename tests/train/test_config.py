from __future__ import annotations

import pytest
import torch

from harmonia.recipes.pretrain import RECIPES, beats_large_balanced, beats_large_speech_heavy
from harmonia.train.config import ConfigError, apply_overrides
from tests.train.conftest import build_shards, tiny_config


def test_overrides_are_typed_and_unknown_keys_fail(tiny_shards, tmp_path):
    cfg = tiny_config(tiny_shards, tmp_path, **{"optim.lr": "1e-4", "optim.betas": "[0.8, 0.9]",
                                                "model.encoder.encoder_layers": "3"})
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == (0.8, 0.9) and cfg.model.encoder["encoder_layers"] == 3
    with pytest.raises(ConfigError, match="did you mean optim.lr"):
        apply_overrides(cfg, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"data.batch_size.*expected int"):
        apply_overrides(cfg, ["data.batch_size=eight"])
    with pytest.raises(ConfigError, match="expected int, found float"):
        apply_overrides(cfg, ["run.max_steps=1.5"])
    cfg.model.encoder["encoder_layerz"] = 2
    with pytest.raises(ConfigError, match="unknown keys"):
        cfg.validate()


def test_bad_ratio_and_missing_domain_fail_at_start(tiny_shards, tmp_path):
    with pytest.raises(ConfigError, match="sum to 1"):
        tiny_config(tiny_shards, tmp_path, **{"data.ratio": "50:30:30"}).validate()
    # a pool without music cannot serve a 40:30:30 mixture
    shards = build_shards(tmp_path / "pool", {"talk": ("speech", 2, 1.2, 16000, 1), "noise": ("sound", 2, 1.2, 16000, 1)})
    with pytest.raises(ConfigError, match="'music' has share 30% but no data"):
        tiny_config(shards, tmp_path).validate()
    tiny_config(shards, tmp_path, **{"data.ratio": "speech=0.5,sound=0.5"}).validate()
    with pytest.raises(ConfigError, match="data.shards"):
        tiny_config(tmp_path / "nowhere", tmp_path).validate()


def test_recipes_validate_and_large_needs_a_tokenizer():
    for name, fn in RECIPES.items():
        cfg = fn()
        assert cfg.name == name
        if name.startswith("beats_large"):
            with pytest.raises(ConfigError, match="tokenizer.path"):
                cfg.validate(check_data=False)
            cfg.tokenizer.path = "Tokenizer_iter3.pt"
        cfg.validate(check_data=False)
    assert beats_large_speech_heavy().data.ratio == "speech-heavy"
    assert beats_large_balanced().data.ratio == "balanced"


def test_large_recipe_has_311M_encoder_parameters():
    from harmonia.models.beats import BeatsConfig, BeatsModel

    with torch.device("meta"):
        model = BeatsModel(BeatsConfig(**beats_large_balanced().model.encoder))
    n = sum(p.numel() for p in model.parameters())
    # docs/beats.md §4: 311,376,576 for the OpenBEATs-Large cfg (tied tables counted once)
    assert n == 311_376_576
