"""Acoustic tokenizers for pre-training (docs/beats.md §6.2–6.5). All map a normalised fbank (B, T, 128) and
a patch padding mask (B, P) to code labels (B, P) through `labels(fbank_BTF, padding_mask_BP)`.

- `RandomProjectionTokenizer` (iteration 1, BEST-RQ style as ESPnet's `BeatsRandomTokenizer`):
  frozen seeded patch embedding → LayerNorm → random projection → LayerNorm → nearest row (L2) of
  a seeded Gaussian codebook. Microsoft released no iteration-1 code.
- `load_checkpoint_tokenizer`: a released Microsoft `Tokenizer_iter*.pt` or a harmonia export —
  the paper bootstrapped its 300M models from a BEATs-base iter3 tokenizer.
- `VQKDTokenizer`: tokenizer training that distils a frozen teacher encoder (VQ-KD à la BEiT v2):
  tokenizer encoder → quantize_layer → l2-normalised EMA codebook (k-means init) → connector →
  3-layer estimator → cosine loss against the teacher's last layer, plus the VQ commitment loss.
  `to_tokenizer_model()` turns it into a Microsoft-layout `BeatsTokenizerModel` for the next
  iteration.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from harmonia.models.beats import BeatsConfig, BeatsModel, TransformerStack
from harmonia.models.beats_tokenizer import BeatsTokenizerModel, TokenizerConfig
from harmonia.train.objective import deepnorm_init_, predictor_config


class RandomProjectionTokenizer(nn.Module):
    """Frozen random-projection tokenizer. All weights are buffers drawn from `seed`."""

    def __init__(self, patch: int = 16, embed_dim: int = 512, quant_n: int = 1024, quant_dim: int = 256,
                 seed: int = 42) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.empty(embed_dim, 1, patch, patch)
        fan_in, fan_out = patch * patch, embed_dim * patch * patch
        w.normal_(0.0, (2.0 / (fan_in + fan_out)) ** 0.5, generator=g)  # xavier-normal
        bound = (6.0 / (embed_dim + quant_dim)) ** 0.5
        proj = torch.empty(quant_dim, embed_dim).uniform_(-bound, bound, generator=g)  # xavier-uniform
        self.register_buffer("patch_weight", w)
        self.register_buffer("projection", proj)
        self.register_buffer("codebook", torch.randn(quant_n, quant_dim, generator=g))
        self.patch = patch

    @torch.no_grad()
    def labels(self, fbank_BTF: Tensor, padding_mask_BP: Tensor | None = None) -> Tensor:
        x = F.conv2d(fbank_BTF.unsqueeze(1).float(), self.patch_weight, stride=self.patch)
        x = x.flatten(2).transpose(1, 2)  # (B, P, E), time-major like the encoder
        x = F.layer_norm(x, x.shape[-1:])
        z = F.layer_norm(x @ self.projection.T, (self.projection.shape[0],))
        d = z.pow(2).sum(-1, keepdim=True) - 2 * z @ self.codebook.T + self.codebook.pow(2).sum(-1)
        return d.argmin(-1)


def load_checkpoint_tokenizer(path: str) -> BeatsTokenizerModel:
    """A Microsoft `Tokenizer_iter*.pt` or a harmonia tokenizer export, frozen in eval mode."""
    from harmonia.hub import load_tokenizer

    model = load_tokenizer(path).model
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_teacher(path: str) -> BeatsModel:
    """A frozen BEATs encoder (any format `harmonia.load_encoder` reads) for VQ-KD."""
    from harmonia.hub import load_encoder

    enc = load_encoder(path)
    model = getattr(enc, "model", None)
    if not isinstance(model, BeatsModel):
        raise ValueError(f"{path}: the VQ-KD teacher must be a BEATs encoder, found {type(enc).__name__}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class TeacherTargets(nn.Module):
    """Wraps a frozen teacher so that it offers `labels()`: the last-layer features (B, P, D_t)."""

    def __init__(self, teacher: BeatsModel) -> None:
        super().__init__()
        self.teacher = teacher

    @torch.no_grad()
    def labels(self, fbank_BTF: Tensor, padding_mask_BP: Tensor | None = None) -> Tensor:
        x, _ = self.teacher(fbank_BTF, padding_mask_BP)
        return x


# -------------------------------------------------------------------------------------------------
# VQ-KD


def _l2(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1)


def kmeans_cosine(samples_ND: Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """Spherical k-means (cosine assignment, renormalised means; empty clusters keep their mean).
    Initial means: random samples (with replacement when N < k). Returns (k, D), unit rows."""
    N = samples_ND.shape[0]
    idx = (torch.randperm(N, generator=generator) if N >= k else torch.randint(0, N, (k,), generator=generator))[:k]
    means = samples_ND[idx.to(samples_ND.device)].clone()
    for _ in range(iters):
        assign = (samples_ND @ means.T).argmax(-1)
        sums = torch.zeros_like(means).index_add_(0, assign, samples_ND)
        counts = torch.bincount(assign, minlength=k)
        means = torch.where(counts[:, None] > 0, _l2(sums), means)
    return means


class NormEMAVectorQuantizer(nn.Module):
    """l2-normalised codebook updated by EMA (docs/beats.md §6.2); k-means init on the first training batch.
    Buffers use the Microsoft names: `embedding.weight`, `cluster_size`, `embedding.initted`."""

    def __init__(self, n: int, dim: int, beta: float = 1.0, decay: float = 0.99) -> None:
        super().__init__()
        self.n, self.beta, self.decay = n, beta, decay
        self.register_buffer("weight", torch.zeros(n, dim))
        self.register_buffer("initted", torch.zeros(1))
        self.register_buffer("cluster_size", torch.zeros(n))

    def forward(self, z_ND: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """z (N, dim) -> (straight-through z_q (N, dim), codes (N,), commitment loss)."""
        z = _l2(z_ND.float())
        if self.training and self.initted.item() == 0:
            means = kmeans_cosine(z.detach(), self.n, generator=generator)
            if dist.is_initialized():
                dist.broadcast(means, 0)  # every rank starts from rank 0's codebook
            self.weight.copy_(means)
            self.initted.fill_(1.0)
        codes = (z @ self.weight.T).argmax(-1)  # nearest by cosine = min L2 on the unit sphere
        zq = self.weight[codes]
        if self.training:
            with torch.no_grad():
                bins = torch.bincount(codes, minlength=self.n).float()
                sums = torch.zeros_like(self.weight).index_add_(0, codes, z.detach())
                if dist.is_initialized():
                    dist.all_reduce(bins)
                    dist.all_reduce(sums)
                self.cluster_size.mul_(self.decay).add_(bins, alpha=1 - self.decay)
                new = torch.where(bins[:, None] > 0, _l2(sums / bins.clamp(min=1)[:, None]), self.weight)
                self.weight.copy_(_l2(self.decay * self.weight + (1 - self.decay) * new))
        loss = self.beta * F.mse_loss(zq.detach(), z)
        return z + (zq - z).detach(), codes, loss


class VQKDTokenizer(nn.Module):
    """Tokenizer training model. forward(fbank, padding_mask, teacher_BPD) -> (loss, metrics)."""

    def __init__(self, cfg: BeatsConfig, teacher_dim: int, quant_n: int = 1024, quant_dim: int = 256,
                 decoder_layers: int = 3, beta: float = 1.0, decay: float = 0.99) -> None:
        super().__init__()
        self.cfg, self.quant_n, self.quant_dim = cfg, quant_n, quant_dim
        D = cfg.encoder_embed_dim
        self.backbone = BeatsModel(cfg)
        deepnorm_init_(self.backbone.encoder, cfg.encoder_layers)
        self.quantize_layer = nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Linear(D, quant_dim))
        self.quantize = NormEMAVectorQuantizer(quant_n, quant_dim, beta, decay)
        self.connector = nn.Linear(quant_dim, teacher_dim)
        self.estimator = TransformerStack(predictor_config(cfg, teacher_dim), decoder_layers)
        deepnorm_init_(self.estimator, decoder_layers)
        self.estimator_norm = nn.LayerNorm(teacher_dim)

    def forward(self, fbank_BTF: Tensor, padding_mask_BP: Tensor, teacher_BPD: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        x, _ = self.backbone(fbank_BTF, padding_mask_BP if padding_mask_BP.any() else None)
        B, P, _ = x.shape
        valid_BP = ~padding_mask_BP[:, :P]
        zq, codes, vq_loss = self.quantize(self.quantize_layer(x).reshape(B * P, -1), generator)
        y, _ = self.estimator(self.connector(zq.view(B, P, -1).to(x.dtype)),
                              padding_mask_BP if padding_mask_BP.any() else None)
        y = self.estimator_norm(y)
        cos = F.cosine_similarity(y.float(), teacher_BPD[:, :P].float(), dim=-1)
        n = valid_BP.sum()
        loss = (1 - cos)[valid_BP].sum() / n.clamp(min=1) + vq_loss
        used = torch.bincount(codes.view(B, P)[valid_BP], minlength=self.quant_n)
        return loss, {"cosine": cos[valid_BP].sum().detach(), "valid": n, "codes_used": (used > 0).sum()}

    def to_tokenizer_model(self) -> BeatsTokenizerModel:
        """The trained tokenizer in the Microsoft layout (loads like `Tokenizer_iter*.pt`)."""
        tcfg = TokenizerConfig.from_dict({**self.cfg.to_dict(), "quant_n": self.quant_n, "quant_dim": self.quant_dim})
        model = BeatsTokenizerModel(tcfg)
        state = {k: v for k, v in model.state_dict().items()}
        state.update({k: v for k, v in self.backbone.state_dict().items()})
        state.update({f"quantize_layer.{k}": v for k, v in self.quantize_layer.state_dict().items()})
        w = self.quantize.weight.detach().clone()
        state["quantize.embedding.weight"] = w
        state["quantize.embedding.embed_avg"] = w.clone()
        state["quantize.embedding.cluster_size"] = self.quantize.cluster_size.detach().clone()
        state["quantize.embedding.initted"] = torch.ones_like(model.quantize.embedding.initted)
        state["quantize.cluster_size"] = self.quantize.cluster_size.detach().clone()
        model.load_state_dict(state)
        return model.eval()
