"""Distillation recipes as Python functions returning a `DistillConfig`.

Sources for each value are noted inline:
  [paper]  CMU-AIST ICME 2025 report (the ensemble: two OpenBEATs-300M ICME models + Dasheng-1.2B)
  [OB-base] Shikhar-S/OpenBEATs `pretrain_base.yaml`: the BEATs-base architecture (as recipes/pretrain.py)
  [DH]     DistilHuBERT (Chang, Yang, Lee; ICASSP 2022): L1 − log σ(cos) loss, lr 2e-4, linear warmup over
           the first 7 % of 200k updates, one linear head per predicted target
  [USAD]   USAD (Chang et al., 2025): the DistilHuBERT loss on frame-level targets of several audio teachers,
           one head per teacher
  [ours]   our choice, no published value for this setting (say so when you report results)
Override anything with `--set section.key=value`.
"""

from __future__ import annotations

from harmonia.recipes.pretrain import BASE_ENCODER
from harmonia.train.config import DataConfig, OptimConfig, RunConfig
from harmonia.train.distill import DistillConfig, LossConfig, StudentConfig, TeacherConfig

TINY_BEATS = dict(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=4,
                  embed_dim=64, conv_pos=16, conv_pos_groups=4)  # the beats_tiny_debug architecture


def distill_tiny_debug() -> DistillConfig:
    """A 2-layer, 64-dim BEATs student that trains in seconds on a CPU (tests, smoke runs); set
    teacher.source to any encoder, e.g. a tiny ensemble 'a.pt+b.pt'."""
    return DistillConfig(
        name="distill_tiny_debug",
        student=StudentConfig(family="beats", arch=dict(TINY_BEATS)),
        teacher=TeacherConfig(source="", options={}, cache="", cache_batch_size=8),
        distill=LossConfig(head_layer=-1, align="linear", l1_weight=1.0, cos_weight=1.0),  # [DH] loss
        data=DataConfig(ratio="balanced", batch_size=8, num_workers=0, crop_seconds=2.0),
        optim=OptimConfig(lr=2e-3, warmup_steps=10, clip_norm=1.0, weight_decay=0.01),
        run=RunConfig(out_dir="runs/distill_tiny_debug", max_steps=120, log_every=10, ckpt_every=40, keep_last=2),
    )


def distill_cmu_ensemble_base() -> DistillConfig:
    """The paper's ensemble (≈1.76B parameters, 3584 dims, three forward passes) into one BEATs-base
    student (≈90M, 768 dims, one pass), 8 GPUs: `torchrun --nproc_per_node 8 -m harmonia distill
    distill_cmu_ensemble_base --set data.shards=DIR --set teacher.cache=DIR`."""
    return DistillConfig(
        name="distill_cmu_ensemble_base",
        student=StudentConfig(family="beats", preset="", arch=dict(BASE_ENCODER)),  # [OB-base] 12 x 768
        teacher=TeacherConfig(source="cmu-aist-icme2025",  # [paper]
                              options={"dtype": "bfloat16"},  # [ours] teacher in bf16: half the memory and time
                              cache="",  # [ours] set a folder to run the teacher once for every student
                              cache_batch_size=16),  # [ours]
        # per-member heads on the last layer [USAD]; linear alignment of Dasheng's 40 ms frames to the
        # student's 20 ms grid, as the ensemble's linear option [ours: the paper does not say how]
        distill=LossConfig(head_layer=-1, align="linear", l1_weight=1.0, cos_weight=1.0),  # [DH] weights 1, 1
        data=DataConfig(ratio="balanced", batch_size=12, num_workers=6,  # [ours] 12 x 8 GPUs = 96 segments/step
                        crop_seconds=0.0),  # whole <= 10 s segments (the cache covers whole segments)
        optim=OptimConfig(lr=2e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01,  # lr [DH]; betas [OB-base]
                          warmup_steps=14_000, decay_steps=200_000, clip_norm=1.0),  # 7 % of 200k [DH]
        run=RunConfig(out_dir="runs/distill_cmu_ensemble_base", max_steps=200_000,  # 200k updates [DH]
                      log_every=50, ckpt_every=5_000, keep_last=3,  # as recipes/pretrain.py beats_base
                      precision="auto", parallel="ddp"),  # bf16 autocast on GPU; a 90M student fits DDP
    )


RECIPES = {f.__name__: f for f in (distill_tiny_debug, distill_cmu_ensemble_base)}
