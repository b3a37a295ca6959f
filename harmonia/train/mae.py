"""Dasheng's own pre-training objective: a masked autoencoder over log-mel patches (Dinkel et al.,
Interspeech 2024, after MAE, He et al. 2022), in a compact form.

Per clip, `mask_ratio` of the valid 64×4 time patches are dropped; the encoder (the very `Dasheng`
network that `DashengEncoder` runs, positions included) sees the kept ones; a light transformer
decoder puts learned mask tokens at the dropped positions (with its own positional table) and
predicts each dropped patch's normalised log-mel values; the loss is the MSE on dropped valid
patches, targets normalised per patch ("norm_pix_loss").

The input BatchNorm (`mel_norm`) is fixed to the mean and variance per mel bin of the first batches,
which is what the released models' running statistics are.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harmonia.models.dasheng import Block, Dasheng, DashengConfig
from harmonia.train.masking import gather_patches, sample_kept


class DashengMAE(nn.Module):
    """Encoder (`Dasheng`) + MAE decoder. `forward(wav, lengths)` -> (loss, {"masked": n})."""

    def __init__(self, cfg: DashengConfig, decoder_dim: int = 128, decoder_depth: int = 2,
                 decoder_heads: int = 4, mask_ratio: float = 0.75) -> None:
        super().__init__()
        self.encoder = Dasheng(cfg)
        C, P = cfg.chunk_tokens, cfg.patch_size[0] * cfg.patch_size[1]
        nn.init.trunc_normal_(self.encoder.time_pos, std=0.02)
        nn.init.trunc_normal_(self.encoder.freq_pos, std=0.02)
        self.encoder.mel_norm.weight.requires_grad_(False)
        self.encoder.mel_norm.bias.requires_grad_(False)
        dec_cfg = DashengConfig(embed_dim=decoder_dim, depth=decoder_depth, num_heads=decoder_heads,
                                target_length=cfg.target_length, n_mels=cfg.n_mels, patch_size=cfg.patch_size)
        self.decoder_embed = nn.Linear(cfg.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.randn(1, C, decoder_dim) * 0.02)
        self.decoder_blocks = nn.ModuleList(Block(dec_cfg) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, P)
        self.mask_ratio = mask_ratio
        self.apply(_init_weights)

    @torch.no_grad()
    def set_mel_statistics(self, wav_BN: Tensor) -> None:
        """Fix the input BatchNorm to the per-mel-bin mean/variance of these clips' dB log-mels."""
        mel = self.encoder.log_mel(wav_BN)  # (B, M, T)
        self.encoder.mel_norm.running_mean.copy_(mel.mean(dim=(0, 2)))
        self.encoder.mel_norm.running_var.copy_(mel.var(dim=(0, 2)))

    def patches(self, wav_BN: Tensor) -> Tensor:
        """Normalised log-mel patches (B, T', 64·4), mel-major inside a patch (as the embedding)."""
        enc = self.encoder
        x_BMT = enc.mel_norm(enc.log_mel(wav_BN))
        B, M, T = x_BMT.shape
        pt = enc.cfg.patch_size[1]
        Tp = min(T // pt, enc.cfg.chunk_tokens)
        return x_BMT[..., : Tp * pt].reshape(B, M, Tp, pt).permute(0, 2, 1, 3).reshape(B, Tp, M * pt)

    def forward(self, wav_BN: Tensor, lengths_B: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        enc = self.encoder
        target_BTP = self.patches(wav_BN)
        B, T, _ = target_BTP.shape
        valid_T_B = ((1 + lengths_B // enc.cfg.hop_size) // enc.cfg.patch_size[1]).clamp(max=T)
        pad_BT = torch.arange(T)[None] >= valid_T_B[:, None]
        x_BTD = enc.patch_embed(target_BTP) + enc.time_pos[:, :T] + enc.freq_pos
        keep = sample_kept(pad_BT, self.mask_ratio, generator)
        x_BKD = gather_patches(x_BTD, keep.ids_BK)
        key_keep = None if not keep.pad_BK.any() else (~keep.pad_BK)[:, None, None, :]
        for blk in enc.blocks:
            x_BKD = blk(x_BKD, key_keep)
        x_BKD = enc.norm(x_BKD)
        # decoder: kept tokens back at their positions, mask tokens elsewhere
        y_BKd = self.decoder_embed(x_BKD)
        y_BTd = self.mask_token.expand(B, T, -1).clone()
        y_BTd[keep.kept_BP] = y_BKd[~keep.pad_BK]
        y_BTd = y_BTd + self.decoder_pos[:, :T]
        dec_keep = None if not pad_BT.any() else (~pad_BT)[:, None, None, :]
        for blk in self.decoder_blocks:
            y_BTd = blk(y_BTd, dec_keep)
        pred_MP = self.decoder_pred(self.decoder_norm(y_BTd[keep.masked_BP]))
        t = target_BTP[keep.masked_BP]
        t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()  # norm_pix_loss
        n = keep.masked_BP.sum()
        loss = F.mse_loss(pred_MP, t, reduction="sum") / (n.clamp(min=1) * t.shape[-1])
        return loss, {"masked": n}


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def train_dasheng_mae(shards: str | Path, ratio: str, cfg: DashengConfig, steps: int, batch_size: int = 8,
                      lr: float = 1e-3, warmup: int = 20, seed: int = 0, log: str | Path | None = None,
                      max_seconds: float = 10.0):
    """Pre-train a Dasheng encoder with the MAE objective on a shard folder (`harmonia data shard`)
    mixed at `ratio`. Returns the trained `DashengEncoder`. Single process; logs JSONL if `log`."""
    from harmonia.data.loader import build_loader
    from harmonia.encoder import tune_allocator
    from harmonia.encoders.dasheng import DashengEncoder
    from harmonia.train.optim import warmup_decay

    tune_allocator()
    torch.manual_seed(seed)
    model = DashengMAE(cfg)
    loader = build_loader(shards, ratio, batch_size, seed=seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.95),
                            weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_decay(s, warmup, steps))
    g = torch.Generator().manual_seed(seed)
    max_n = int(max_seconds * cfg.sample_rate)
    out = open(log, "w") if log else None
    t0 = time.perf_counter()
    model.train()
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        wav, lengths = batch["wav"][:, :max_n], batch["lengths"].clamp(max=max_n)
        if step == 0:
            model.set_mel_statistics(wav)
        loss, stats = model(wav, lengths, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if out and (step % 10 == 0 or step == steps - 1):
            out.write(json.dumps({"step": step, "loss": round(loss.item(), 5), "lr": sched.get_last_lr()[0],
                                  "elapsed_s": round(time.perf_counter() - t0, 2)}) + "\n")
            out.flush()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"Dasheng MAE loss became {loss.item()} at step {step}; lower the lr")
    if out:
        out.close()
    return DashengEncoder(model.encoder.eval())
