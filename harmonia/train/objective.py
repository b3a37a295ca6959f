"""The BEATs pre-training objective (docs/beats.md §6.4, ESPnet's reconstruction; Microsoft's code is not
public): masked acoustic-token prediction with an MAE-style encoder and a 3-layer predictor.

    fbank (B,T,128) → patch_embed (B,P,E) → keep 25 % → project → encoder (B,K,D)
      → decoder_embed (B,K,Dd) → scatter into mask tokens (B,P,Dd) → 3 DeepNorm layers (own
        relative-position table, no pos-conv) → decoder_norm → decoder_pred (masked patches only)
      → cross-entropy (label smoothing 0.1) vs tokenizer labels, summed / #masked.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harmonia.models.beats import BeatsConfig, BeatsModel, TransformerStack
from harmonia.train.masking import gather_patches, sample_kept


def deepnorm_init_(stack: TransformerStack, num_layers: int) -> None:
    """DeepNorm initialisation: xavier-normal, with gain β = (8L)^(-1/4) on v_proj, out_proj, fc1,
    fc2 (Wang et al. 2022, as BEATs' backbone does when deep_norm is on); biases zero."""
    beta = math.pow(8 * num_layers, -0.25)
    for layer in stack.layers:
        attn = layer.self_attn
        for lin, gain in ((attn.q_proj, 1.0), (attn.k_proj, 1.0), (attn.v_proj, beta), (attn.out_proj, beta),
                          (layer.fc1 if isinstance(layer.fc1, nn.Linear) else layer.fc1.linear, beta),
                          (layer.fc2, beta)):
            nn.init.xavier_normal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)


def predictor_config(cfg: BeatsConfig, dim: int) -> BeatsConfig:
    """The predictor's layers: the encoder's layer type at width `dim` (FFN size and heads of the
    encoder, as ESPnet; `decoder_attention_heads` is unused there)."""
    d = cfg.to_dict()
    d.update(encoder_embed_dim=dim, dropout=cfg.dropout, encoder_layerdrop=0.0)
    return BeatsConfig.from_dict(d)


class Predictor(nn.Module):
    """`decoder.*`: restores the full patch sequence with a learned mask token and predicts codes."""

    def __init__(self, cfg: BeatsConfig, dim: int, num_layers: int, vocab: int) -> None:
        super().__init__()
        self.decoder_embed = nn.Linear(cfg.encoder_embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = TransformerStack(predictor_config(cfg, dim), num_layers)
        deepnorm_init_(self.blocks, num_layers)
        self.decoder_norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, vocab)

    def forward(self, x_BKD: Tensor, kept_BP: Tensor, pad_BK: Tensor, padding_mask_BP: Tensor,
                masked_BP: Tensor) -> Tensor:
        """Logits (M, vocab) for the M masked patches, in row-major (b, p) order."""
        B, P = padding_mask_BP.shape
        y_BKd = self.decoder_embed(x_BKD)
        y_BPd = self.mask_token.to(y_BKd.dtype).expand(B, P, -1).clone()
        # kept ids are sorted, so row-major order of kept_BP matches the non-padded kept slots
        y_BPd[kept_BP] = y_BKd[~pad_BK]
        y_BPd, _ = self.blocks(y_BPd, padding_mask_BP if padding_mask_BP.any() else None)
        return self.decoder_pred(self.decoder_norm(y_BPd[masked_BP]))


class MaskedPatchObjective(nn.Module):
    """Student encoder (`backbone`, a BeatsModel with Microsoft keys) + predictor (`decoder`)."""

    def __init__(self, cfg: BeatsConfig, decoder_dim: int = 768, decoder_layers: int = 3, vocab: int = 1024,
                 mask_ratio: float = 0.75, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.backbone = BeatsModel(cfg)
        deepnorm_init_(self.backbone.encoder, cfg.encoder_layers)
        self.decoder = Predictor(cfg, decoder_dim, decoder_layers, vocab)
        self.mask_ratio, self.label_smoothing, self.vocab = mask_ratio, label_smoothing, vocab

    def forward(self, fbank_BTF: Tensor, padding_mask_BP: Tensor, labels_BP: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns (loss, {"correct", "masked"}): mean smoothed CE over masked valid patches."""
        x_BPE = self.backbone.patch_embed(fbank_BTF)
        P = x_BPE.shape[1]
        padding_mask_BP = padding_mask_BP[:, :P]
        keep = sample_kept(padding_mask_BP, self.mask_ratio, generator)
        x_BKD = self.backbone.project(gather_patches(x_BPE, keep.ids_BK))
        x_BKD, _ = self.backbone.encoder(x_BKD, keep.pad_BK if keep.pad_BK.any() else None)
        logits_MV = self.decoder(x_BKD, keep.kept_BP, keep.pad_BK, padding_mask_BP, keep.masked_BP)
        target_M = labels_BP[:, :P][keep.masked_BP]
        n = keep.masked_BP.sum()
        loss = F.cross_entropy(logits_MV.float(), target_M, label_smoothing=self.label_smoothing,
                               reduction="sum") / n.clamp(min=1)
        correct = (logits_MV.detach().argmax(-1) == target_M).sum()
        return loss, {"correct": correct, "masked": n}
