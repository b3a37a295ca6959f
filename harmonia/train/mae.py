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

import contextlib
import copy
import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harmonia.models.dasheng import Block, Dasheng, DashengConfig
from harmonia.train.config import (
    ConfigError,
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    build_architecture,
)
from harmonia.train.distributed import all_reduce_mean, unwrap
from harmonia.train.masking import gather_patches, sample_kept
from harmonia.train.trainer import Task, Trainer


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
        pad_BT = torch.arange(T, device=lengths_B.device)[None] >= valid_T_B[:, None]
        x_BTD = enc.patch_embed(target_BTP) + enc.time_pos[:, :T] + enc.freq_pos
        keep = sample_kept(pad_BT, self.mask_ratio, generator)
        x_BKD = gather_patches(x_BTD, keep.ids_BK)
        key_keep = None if not keep.pad_BK.any() else (~keep.pad_BK)[:, None, None, :]
        for blk in enc.blocks:
            x_BKD = blk(x_BKD, key_keep)
        x_BKD = enc.norm(x_BKD)
        # decoder: kept tokens back at their positions, mask tokens elsewhere
        y_BKd = self.decoder_embed(x_BKD)
        y_BTd = self.mask_token.to(y_BKd.dtype).expand(B, T, -1).clone()  # bf16 under autocast
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


@dataclass
class MAEModelConfig:
    encoder: dict[str, Any] = field(default_factory=dict)  # DashengConfig fields (architecture)
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    mask_ratio: float = 0.75  # share of valid patches dropped (MAE's 75 %)
    max_seconds: float = 10.0  # clips are cut to their first max_seconds (one Dasheng chunk)


def _mae_optim() -> OptimConfig:
    # betas (0.9, 0.95) and weight decay 0.05: the MAE pre-training recipe (He et al. 2022, Table 8
    # of the appendix), which Dasheng's pre-training follows.
    return OptimConfig(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05, warmup_steps=20)


@dataclass
class MAEConfig(TrainConfig):
    name: str = "dasheng_mae"
    optim: OptimConfig = field(default_factory=_mae_optim)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/dasheng_mae", log_every=10))
    model: MAEModelConfig = field(default_factory=MAEModelConfig)

    def validate(self, check_data: bool = True) -> None:
        m = self.model
        if not 0.0 < m.mask_ratio < 1.0:
            raise ConfigError(f"model.mask_ratio={m.mask_ratio!r}: expected a fraction in (0, 1), e.g. 0.75")
        if not m.max_seconds > 0:
            raise ConfigError(f"model.max_seconds={m.max_seconds!r}: expected a positive duration, e.g. 10.0")
        build_architecture(DashengConfig, m.encoder, "model.encoder")
        super().validate(check_data)


class DashengMAETask(Task):
    """Dasheng MAE pre-training for the Trainer. The input BatchNorm is fixed from the first batch
    (averaged over ranks); whether that happened is this task's checkpointed extra state."""

    name = "dasheng-mae"
    frozen = ("model.encoder", "model.decoder_dim", "model.decoder_depth", "model.decoder_heads",
              "data.batch_size", "data.seed", "data.num_workers", "run.seed")
    fsdp_units = (Block,)

    def __init__(self, cfg: MAEConfig) -> None:
        self.cfg = cfg
        self.calibrated = False
        self.mask_gen: torch.Generator | None = None

    def build_model(self, device: torch.device) -> DashengMAE:
        m = self.cfg.model
        return DashengMAE(DashengConfig(**m.encoder), m.decoder_dim, m.decoder_depth, m.decoder_heads, m.mask_ratio)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        o = self.cfg.optim  # one group: MAE decays every trainable parameter
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr, betas=tuple(o.betas),
                                 eps=o.eps, weight_decay=o.weight_decay)

    def make_generators(self, rank: int) -> dict[str, torch.Generator]:
        self.mask_gen = torch.Generator().manual_seed(self.cfg.run.seed + 7919 * rank)  # 7919: as BeatsTask
        return {"mask": self.mask_gen}

    def forward(self, model: nn.Module, batch: dict, device: torch.device, autocast) -> tuple[Tensor, dict]:
        max_n = int(self.cfg.model.max_seconds * DashengConfig(**self.cfg.model.encoder).sample_rate)
        wav = batch["wav"][:, :max_n].to(device)
        lengths = batch["lengths"].clamp(max=max_n).to(device)
        if not self.calibrated:
            inner = unwrap(model)
            inner.set_mel_statistics(wav)
            for buf in (inner.encoder.mel_norm.running_mean, inner.encoder.mel_norm.running_var):
                all_reduce_mean(buf)
            self.calibrated = True
        with autocast:
            loss, stats = model(wav, lengths, self.mask_gen)
        return loss, {"masked": stats["masked"]}

    def export(self, model: nn.Module, out: Path) -> Path:
        from harmonia.encoders.dasheng import DashengEncoder
        from harmonia.hub import save_harmonia

        encoder = copy.deepcopy(model.encoder).cpu().float().eval()
        return save_harmonia(DashengEncoder(encoder), out)

    def state_dict(self) -> dict:
        return {"calibrated": self.calibrated}

    def load_state_dict(self, state: dict) -> None:
        self.calibrated = bool(state["calibrated"])


def pretrain_mae(cfg: MAEConfig, export: str | Path | None = None, override_resume_config: bool = False
                 ) -> tuple[dict, DashengMAE]:
    """Train (or resume) a Dasheng MAE per `cfg` on the shared Trainer; returns the last log record
    and the trained model (unwrapped)."""
    cfg.validate()
    trainer = Trainer(DashengMAETask(cfg), cfg, override_resume_config)
    record = trainer.fit(export)
    return record, unwrap(trainer.model)


def train_dasheng_mae(shards: str | Path, ratio: str, cfg: DashengConfig, steps: int, batch_size: int = 8,
                      lr: float = 1e-3, warmup: int = 20, seed: int = 0, log: str | Path | None = None,
                      max_seconds: float = 10.0, out_dir: str | Path | None = None):
    """Pre-train a Dasheng encoder with the MAE objective on a shard folder (`harmonia data shard`)
    mixed at `ratio`; returns the trained `DashengEncoder`. The run (config, `log.jsonl`, checkpoints,
    resumable) lives in `out_dir`, by default the folder of `log` (which must then be named
    log.jsonl), else a temporary folder."""
    from harmonia.encoders.dasheng import DashengEncoder

    if out_dir is None and log is not None:
        if Path(log).name != "log.jsonl":
            raise ValueError(f"log={log}: the run writes <out_dir>/log.jsonl; pass out_dir= instead")
        out_dir = Path(log).parent
    with contextlib.ExitStack() as stack:
        if out_dir is None:
            out_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="dasheng-mae-"))
        optim = _mae_optim()
        optim.lr, optim.warmup_steps = lr, warmup
        mcfg = MAEConfig(model=MAEModelConfig(encoder=dataclasses.asdict(cfg), max_seconds=max_seconds),
                         data=DataConfig(shards=str(shards), ratio=ratio, batch_size=batch_size, seed=seed),
                         optim=optim,
                         run=RunConfig(out_dir=str(out_dir), max_steps=steps, log_every=10, ckpt_every=steps,
                                       keep_last=1, seed=seed, progress=False))
        _, model = pretrain_mae(mcfg)
    return DashengEncoder(model.encoder.eval())
