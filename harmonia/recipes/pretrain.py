"""Pre-training recipes as Python functions returning a `PretrainConfig`.

Sources for each value are noted inline:
  [OB-base]  Shikhar-S/OpenBEATs `src/openbeats/conf/pretrain_base.yaml` (docs/beats.md §4, §6.4)
  [OB-large] Shikhar-S/OpenBEATs `openbeats/conf/pretrain_large.yaml` / ESPnet audioverse ICME recipe
  [paper]    CMU-AIST ICME 2025 report (section III-B)
  [spec]     docs/beats.md §6.4 (ESPnet BeatsPretrainModel)
Override anything with `--set section.key=value`.
"""

from __future__ import annotations

from harmonia.models.beats import PRESETS
from harmonia.train.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
    TokenizerConfig,
)

# the released architectures (models/beats.py presets, docs/beats.md §4), with the pre-training
# dropout 0.1 [OB-base] [OB-large]
BASE_ENCODER = {**PRESETS["beats-base"], "dropout": 0.1}
LARGE_ENCODER = {**PRESETS["beats-large"], "dropout": 0.1}  # ≈311M parameters


def beats_tiny_debug() -> PretrainConfig:
    """A 2-layer, 64-dim BEATs that trains in seconds on a CPU (tests, smoke runs)."""
    return PretrainConfig(
        name="beats_tiny_debug",
        model=ModelConfig(encoder=dict(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                                       encoder_attention_heads=4, embed_dim=64, conv_pos=16, conv_pos_groups=4),
                          decoder_embed_dim=64, decoder_layers=3, codebook_size=64, quant_dim=32),
        tokenizer=TokenizerConfig(kind="random", seed=42, quant_dim=16),
        data=DataConfig(ratio="balanced", batch_size=8, num_workers=0, crop_seconds=2.0),
        optim=OptimConfig(lr=2e-3, warmup_steps=10, clip_norm=1.0),
        run=RunConfig(out_dir="runs/beats_tiny_debug", max_steps=120, log_every=10, ckpt_every=40, keep_last=2),
    )


def beats_base() -> PretrainConfig:
    """BEATs/OpenBEATs base (90M), iteration 1 with the random-projection tokenizer."""
    return PretrainConfig(
        name="beats_base",
        model=ModelConfig(encoder=dict(BASE_ENCODER),
                          decoder_embed_dim=768, decoder_layers=3,  # [OB-base]
                          codebook_size=1024, mask_ratio=0.75, label_smoothing=0.1),  # [OB-base] [spec]
        tokenizer=TokenizerConfig(kind="random", seed=42, quant_dim=256),  # ESPnet random tokenizer defaults
        data=DataConfig(ratio="balanced", batch_size=24, num_workers=4),  # ~4M samples/step over 16 ranks ≈ batch_bins
        optim=OptimConfig(lr=5e-4, betas=(0.9, 0.98), eps=1e-12, weight_decay=0.01,  # [OB-base]
                          warmup_steps=40_000, decay_steps=400_000, clip_norm=1.0),  # [OB-base] WarmupDecayLR
        run=RunConfig(out_dir="runs/beats_base", max_steps=400_000, log_every=50, ckpt_every=5_000,  # 400k [spec]
                      keep_last=3, precision="auto", parallel="ddp"),
    )


def _large(name: str, ratio: str) -> PretrainConfig:
    return PretrainConfig(
        name=name,
        model=ModelConfig(encoder=dict(LARGE_ENCODER),
                          decoder_embed_dim=1024, decoder_layers=3,  # [OB-large]
                          codebook_size=1024, mask_ratio=0.75, label_smoothing=0.1),  # [OB-large] [spec]
        # [paper] bootstrapped from a BEATs-base iteration-3 tokenizer trained on AudioSet:
        # --set tokenizer.path=Tokenizer_iter3.pt (Microsoft release) or a harmonia tokenizer export
        tokenizer=TokenizerConfig(kind="checkpoint", path=""),
        data=DataConfig(ratio=ratio, batch_size=16, num_workers=6),
        optim=OptimConfig(lr=2.5e-4, betas=(0.9, 0.98), eps=1e-12, weight_decay=0.01,  # [OB-large]
                          warmup_steps=40_000, decay_steps=800_000, clip_norm=1.0),  # [OB-large]
        run=RunConfig(out_dir=f"runs/{name}", max_steps=800_000, log_every=50, ckpt_every=5_000,  # [OB-large]
                      keep_last=3, precision="auto", parallel="fsdp"),
    )


def beats_large_speech_heavy() -> PretrainConfig:
    """The paper's speech-heavy 300M model: 70:15:15 speech:music:sound in hours [paper]."""
    return _large("beats_large_speech_heavy", "speech-heavy")


def beats_large_balanced() -> PretrainConfig:
    """The paper's balanced 300M model: 40:30:30 speech:music:sound in hours [paper]."""
    return _large("beats_large_balanced", "balanced")


RECIPES = {f.__name__: f for f in (beats_tiny_debug, beats_base, beats_large_speech_heavy, beats_large_balanced)}
