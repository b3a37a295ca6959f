"""The BEATs acoustic tokenizer (Microsoft `Tokenizers.py` + `quantizer.py`, docs/beats.md §3.5, §6.1).

A BEATs backbone, then `quantize_layer` (Linear D→D, Tanh, Linear D→quant_dim), l2-normalisation and
the nearest code of an l2-normalised codebook (quant_n × quant_dim). The codebook state keeps the
reference's EMA buffers so that released checkpoints load strictly and tokenizer training
(harmonia.train) can update them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harmonia.models.beats import BeatsConfig, BeatsModel


@dataclass
class TokenizerConfig(BeatsConfig):
    quant_n: int = 1024  # codebook size
    quant_dim: int = 256  # code dimension

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quant_n < 2 or self.quant_dim < 1:
            raise ValueError(f"TokenizerConfig.quant_n={self.quant_n}, quant_dim={self.quant_dim}: "
                             "need at least 2 codes of dimension >= 1")


class CodebookEMA(nn.Module):
    """`quantize.embedding`: the l2-normalised codebook and the reference's (unused) EMA statistics."""

    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(F.normalize(torch.randn(n, dim), dim=-1), requires_grad=False)
        self.cluster_size = nn.Parameter(torch.zeros(n), requires_grad=False)
        self.embed_avg = nn.Parameter(self.weight.data.clone(), requires_grad=False)
        self.register_buffer("initted", torch.tensor([1.0]))


class NormEMAQuantizer(nn.Module):
    """Nearest l2-normalised code. `cluster_size` is the reference's usage statistic buffer."""

    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.embedding = CodebookEMA(n, dim)
        self.register_buffer("cluster_size", torch.zeros(n))

    def distances(self, z_ND: Tensor) -> Tensor:
        """d = ‖z‖² + ‖e‖² − 2 z·e for l2-normalised z (N, dim) -> (N, n), as the reference computes it."""
        e = self.embedding.weight
        return z_ND.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * z_ND @ e.T

    def forward(self, z_ND: Tensor) -> Tensor:
        return self.distances(F.normalize(z_ND, dim=-1)).argmin(dim=-1)  # first index on ties


class BeatsTokenizerModel(BeatsModel):
    """fbank (B, T, 128) -> code indices (B, P)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__(cfg)
        D = cfg.encoder_embed_dim
        self.quantize_layer = nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Linear(D, cfg.quant_dim))
        self.quantize = NormEMAQuantizer(cfg.quant_n, cfg.quant_dim)

    def labels(self, fbank_BTF: Tensor, padding_mask_BP: Tensor | None = None) -> Tensor:
        """Code index per patch (B, P) (padded patches get labels too, as in the reference)."""
        x, _ = self(fbank_BTF, padding_mask_BP)
        z = self.quantize_layer(x)
        B, P, _ = z.shape
        return self.quantize(z.reshape(B * P, -1)).view(B, P)


def is_tokenizer_state(state: dict[str, Tensor]) -> bool:
    return "quantize.embedding.weight" in state


def tokenizer_config_from(cfg: BeatsConfig, state: dict[str, Tensor], quant_cfg: dict) -> TokenizerConfig:
    """Add the codebook geometry (read from the weights; checked against the cfg)."""
    n, dim = state["quantize.embedding.weight"].shape
    for key, value in (("quant_n", n), ("quant_dim", dim)):
        if key in quant_cfg and quant_cfg[key] != value:
            raise ValueError(f"tokenizer cfg {key}={quant_cfg[key]} but the codebook has {key}={value}")
    d = cfg.to_dict()
    d.pop("quant_n", None), d.pop("quant_dim", None)
    return TokenizerConfig.from_dict({**d, "quant_n": n, "quant_dim": dim})
