"""BEATs: Audio Pre-Training with Acoustic Tokenizers (Chen et al., ICML 2023), and OpenBEATs
(Bharadwaj et al., 2025), which trains the same architecture with ESPnet.

Reference code: microsoft/unilm `beats/` (BEATs.py, backbone.py, modules.py; code unchanged since
5bdcf477, last touched in 158b8115) and ESPnet `espnet2/asr/encoder/beats_encoder.py` as vendored by
PyPI `openbeats` 0.1.1. Details: docs/beats.md. The state-dict keys of `BeatsModel` are the
Microsoft ones, except that the relative-position table (tied across layers in the reference) lives
once at `encoder.relative_attention_bias`.

Order: config → pure helpers (buckets, masks) → blocks → model → checkpoint conversion → presets.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harmonia.io import CheckpointError, check_fields, check_state_dict
from harmonia.layers.frontend import BEATS_FBANK_MEAN, BEATS_FBANK_STD, KALDI_SHIFT, KALDI_WINDOW

# -------------------------------------------------------------------------------------------------
# Config


@dataclass
class BeatsConfig:
    """Every key of the Microsoft `BEATsConfig` / ESPnet `BeatsConfig` that shapes inference.

    Defaults are the *released* values (BEATs iter3 / OpenBEATs base), not the reference code's
    defaults; `from_reference_cfg` fills keys a checkpoint's cfg omits the way the reference does.
    """

    input_patch_size: int = 16  # patch side in frames × mel bins (MS code default -1, ESPnet 16)
    embed_dim: int = 512  # patch-embedding channels E
    conv_bias: bool = False  # bias in the patch-embedding Conv2d
    encoder_layers: int = 12  # L
    encoder_embed_dim: int = 768  # D
    encoder_ffn_embed_dim: int = 3072  # FFN hidden size
    encoder_attention_heads: int = 12  # H
    activation_fn: str = "gelu"  # gelu | gelu_accurate | relu | tanh | linear | glu
    layer_norm_first: bool = False  # pre-LN (True) or post-LN (False, released)
    deep_norm: bool = True  # DeepNorm residual scale α = (2L)^(1/4) (code default False)
    conv_pos: int = 128  # positional-convolution kernel size
    conv_pos_groups: int = 16  # positional-convolution groups
    relative_position_embedding: bool = True  # T5 buckets (code default False)
    num_buckets: int = 320  # relative-position buckets (both directions)
    max_distance: int = 800  # bucket saturation distance in patches (code default 1280)
    gru_rel_pos: bool = True  # gated relative position bias (code default False)
    fbank_mean: float = BEATS_FBANK_MEAN  # fbank normalisation: (x - mean) / (2 std)
    fbank_std: float = BEATS_FBANK_STD
    # training-only (no effect in eval mode)
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    layer_wise_gradient_decay_ratio: float = 1.0
    # fine-tuned AudioSet classifiers
    finetuned_model: bool = False
    predictor_dropout: float = 0.1
    predictor_class: int = 527
    # keys of the checkpoint cfg that do not shape the encoder (kept for round trips)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)

        def need(cond: bool, name: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"BeatsConfig.{name}={getattr(self, name)!r}: {msg}")

        need(self.input_patch_size > 0, "input_patch_size", "must be a positive patch size (16 in every release)")
        for name in ("embed_dim", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads", "conv_pos",
                     "conv_pos_groups"):
            need(getattr(self, name) >= 1, name, "must be a positive integer")
        need(math.isfinite(self.fbank_mean), "fbank_mean", "must be a finite number")
        need(0 < self.fbank_std < math.inf, "fbank_std", "must be a finite number > 0")
        for name in ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "dropout_input",
                     "predictor_dropout"):
            need(0 <= getattr(self, name) <= 1, name, "must be a probability in [0, 1]")
        need(128 % self.input_patch_size == 0, "input_patch_size", "must divide the 128 mel bins")
        need(self.encoder_embed_dim % self.encoder_attention_heads == 0, "encoder_attention_heads",
             f"must divide encoder_embed_dim={self.encoder_embed_dim}")
        need(self.encoder_embed_dim % self.conv_pos_groups == 0, "conv_pos_groups",
             f"must divide encoder_embed_dim={self.encoder_embed_dim}")
        need(self.encoder_layers >= 1, "encoder_layers", "must be at least 1")
        need(self.activation_fn in _ACTIVATIONS or self.activation_fn == "glu", "activation_fn",
             f"must be one of {sorted(_ACTIVATIONS) + ['glu']}")
        need(self.num_buckets >= 4 and self.num_buckets % 2 == 0, "num_buckets", "must be an even number >= 4")
        need(self.max_distance > self.num_buckets // 4, "max_distance",
             f"must exceed num_buckets//4={self.num_buckets // 4}")

    @property
    def head_dim(self) -> int:
        return self.encoder_embed_dim // self.encoder_attention_heads

    @property
    def freq_patches(self) -> int:
        return 128 // self.input_patch_size

    @property
    def deep_norm_alpha(self) -> float:
        return math.pow(2 * self.encoder_layers, 0.25) if self.deep_norm else 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BeatsConfig:
        """Build from a complete dict (our own format); unknown keys go to `extra`."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra={**d.get("extra", {}), **extra} if "extra" in d else extra)


_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x.float()).type_as(x),
    "gelu_accurate": lambda x: F.gelu(x.float(), approximate="tanh").type_as(x),
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}

# -------------------------------------------------------------------------------------------------
# Pure helpers: geometry, relative-position buckets, padding masks


def patch_rows(num_samples: int, patch: int = 16) -> int:
    """Time rows of patches for a clip of `num_samples` (docs/beats.md §5.1): floor(T / 16)."""
    if num_samples < KALDI_WINDOW:
        return 0
    return (1 + (num_samples - KALDI_WINDOW) // KALDI_SHIFT) // patch


def relative_position_bucket(rel_pos: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5-style bidirectional buckets of r = key - query (docs/beats.md §2.5). Half the buckets for r > 0,
    exact buckets below num_buckets/4, log-spaced up to `max_distance`, saturating after."""
    half = num_buckets // 2
    buckets = (rel_pos > 0).long() * half
    n = rel_pos.abs()
    exact = half // 2
    # log in float32, as the Microsoft reference computes it
    large = exact + (torch.log(n.float() / exact) / math.log(max_distance / exact) * (half - exact)).long()
    large = large.clamp(max=half - 1)
    return buckets + torch.where(n < exact, n, large)


def microsoft_patch_mask(sample_mask_BN: Tensor, num_frames: int, num_patches: int) -> Tensor:
    """The Microsoft padding mask (docs/beats.md §5.2; `BEATs.forward_padding_mask` applied twice): an
    'all padded' reduction over chunks of floor(N/T) samples per frame, then floor(T/P) frames per
    patch. Not grid-aware: a boundary row can stay valid. True = padding. Returns (B, P)."""

    def reduce(mask_BX: Tensor, n: int) -> Tensor:
        extra = mask_BX.shape[1] % n
        if extra:
            mask_BX = mask_BX[:, :-extra]
        return mask_BX.reshape(mask_BX.shape[0], n, -1).all(-1)

    return reduce(reduce(sample_mask_BN, num_frames), num_patches)


def exact_patch_mask(lengths_B: Tensor, num_rows: int, freq_patches: int = 8, patch: int = 16) -> Tensor:
    """The exact (ESPnet, docs/beats.md §5.3) padding mask: time row t of item b is padded iff any of its
    frames reaches into padding, i.e. t >= floor(T_b / 16). True = padding. Returns (B, rows·F)."""
    rows_B = torch.tensor([patch_rows(int(n), patch) for n in lengths_B.tolist()], device=lengths_B.device)
    pad_BR = torch.arange(num_rows, device=lengths_B.device)[None] >= rows_B[:, None]
    return pad_BR.repeat_interleave(freq_patches, dim=1)


# -------------------------------------------------------------------------------------------------
# Blocks


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is g · v / ‖v‖ with the norm taken over (out, in) channels separately
    for every kernel tap (weight norm with dim=2, as the reference's pos_conv). Parameter names
    `weight_g` (1, 1, K) and `weight_v` (C_out, C_in/groups, K) match the legacy torch weight_norm."""

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.groups, self.padding = groups, kernel // 2
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, mean=0, std=math.sqrt(4 / (kernel * channels)))

    def weight(self) -> Tensor:
        g, v = self.weight_g, self.weight_v
        if (torch.is_grad_enabled() and (g.requires_grad or v.requires_grad)) or g.is_inference() or v.is_inference():
            # training, or weights created under torch.inference_mode(): inference tensors have no
            # version counter to tell a stale cache by, so fold every call (BEATs-base: 80 ms on one
            # CPU thread, 1.5 % of encoding 10 s)
            return self._fold()
        # inference: fold once and reuse until a parameter changes (tracked by tensor versions)
        key = (g._version, v._version, g.data_ptr(), v.data_ptr(), v.dtype, v.device)
        if getattr(self, "_cache_key", None) != key or self._cache.is_inference() != torch.is_inference_mode_enabled():
            self._cache_key, self._cache = key, self._fold().detach()
        return self._cache

    def _fold(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=(0, 1), keepdim=True)

    def forward(self, x_BCN: Tensor) -> Tensor:
        return F.conv1d(x_BCN, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class GatedRelPosAttention(nn.Module):
    """Multi-head self-attention with the gated relative position bias of BEATs (docs/beats.md §2.4).

    logits = q·k/√d + gate · B0, with gate = σ(a)·(σ(b)·grep_a − 1) + 2 per (head, query), where
    a, b are sums of four outputs each of `grep_linear` applied to the unscaled per-head query.
    Computed with `scaled_dot_product_attention` and the bias as an additive float mask.
    """

    def __init__(self, cfg: BeatsConfig) -> None:
        super().__init__()
        D, H = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.num_heads, self.head_dim = H, D // H
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(D, D) for _ in range(4))
        self.gated = cfg.gru_rel_pos and cfg.relative_position_embedding
        if self.gated:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, H, 1, 1))
        self.dropout_p = cfg.attention_dropout

    def forward(self, x_BND: Tensor, bias_HNN: Tensor | None, key_pad_BN: Tensor | None,
                workspace: Tensor | None = None) -> Tensor:
        """`workspace` (B, H, N, N), inference only: where the gated bias is written instead of a
        fresh allocation (a large tensor per layer costs page faults on every call)."""
        B, N, D = x_BND.shape
        H, d = self.num_heads, self.head_dim

        def heads(t: Tensor) -> Tensor:
            return t.view(B, N, H, d).transpose(1, 2)  # (B, H, N, d)

        q, k, v = heads(self.q_proj(x_BND)), heads(self.k_proj(x_BND)), heads(self.v_proj(x_BND))
        mask = None
        if bias_HNN is not None:
            if self.gated:
                # the reference sums grep_linear's 8 outputs in two groups of 4 before the sigmoid;
                # summing the weights first is the same linear map at a quarter of the cost
                w = self.grep_linear.weight.view(2, 4, d).sum(1)
                b = self.grep_linear.bias.view(2, 4).sum(1)
                gate_a, gate_b = torch.sigmoid(F.linear(q, w, b)).chunk(2, dim=-1)
                gate_BHN1 = gate_a * (gate_b * self.grep_a - 1.0) + 2.0
                mask = gate_BHN1 * bias_HNN if workspace is None else torch.mul(gate_BHN1, bias_HNN, out=workspace)
            else:
                mask = bias_HNN.unsqueeze(0).expand(B, -1, -1, -1)
        if key_pad_BN is not None:
            pad = torch.zeros(B, 1, 1, N, dtype=q.dtype, device=q.device).masked_fill(
                key_pad_BN[:, None, None, :], float("-inf"))
            mask = pad if mask is None else (mask + pad if workspace is None else mask.add_(pad))
        if mask is not None:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, D))


class GLULinear(nn.Module):
    """The reference's GLU_Linear: Linear(D -> 2F), then first half × swish(second half)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, 2 * d_out)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.linear(x).chunk(2, dim=-1)
        return a * F.silu(b)


class TransformerLayer(nn.Module):
    """One BEATs layer. Post-LN (released): x = LN(α·x + MHA(x)); x = LN(α·x + FFN(x)).
    Pre-LN: x = x + MHA(LN(x)); x = x + FFN(LN(x)). Module names follow the reference."""

    def __init__(self, cfg: BeatsConfig, alpha: float) -> None:
        super().__init__()
        D, Fd = cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim
        self.self_attn = GatedRelPosAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(D)
        if cfg.activation_fn == "glu":
            self.fc1, self.act = GLULinear(D, Fd), (lambda x: x)
        else:
            self.fc1, self.act = nn.Linear(D, Fd), _ACTIVATIONS[cfg.activation_fn]
        self.fc2 = nn.Linear(Fd, D)
        self.final_layer_norm = nn.LayerNorm(D)
        self.pre_ln, self.alpha = cfg.layer_norm_first, alpha
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)

    def ffn(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation_dropout(self.act(self.fc1(x))))

    def forward(self, x: Tensor, bias_HNN: Tensor | None, key_pad_BN: Tensor | None,
                workspace: Tensor | None = None) -> Tensor:
        if self.pre_ln:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), bias_HNN, key_pad_BN, workspace))
            return x + self.dropout(self.ffn(self.final_layer_norm(x)))
        # DeepNorm residual α·x + f(x) as one fused op
        attn = self.self_attn(x, bias_HNN, key_pad_BN, workspace)
        x = self.self_attn_layer_norm(torch.add(self.dropout(attn), x, alpha=self.alpha))
        return self.final_layer_norm(torch.add(self.dropout(self.ffn(x)), x, alpha=self.alpha))


class TransformerStack(nn.Module):
    """Layers sharing one relative-position table (computed once, reused by every layer: the
    reference computes B0 in layer 0 and passes it on). Reused by the pre-training predictor."""

    def __init__(self, cfg: BeatsConfig, num_layers: int | None = None) -> None:
        super().__init__()
        L = num_layers or cfg.encoder_layers
        alpha = math.pow(2 * L, 0.25) if cfg.deep_norm else 1.0
        self.cfg = cfg
        self.layers = nn.ModuleList(TransformerLayer(cfg, alpha) for _ in range(L))
        if cfg.relative_position_embedding:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, cfg.encoder_attention_heads)
        self.layerdrop = cfg.encoder_layerdrop

    def position_bias(self, n: int, device: torch.device) -> Tensor | None:
        """B0 (H, N, N): the table entry of bucket(key − query) for every pair."""
        if not self.cfg.relative_position_embedding:
            return None
        pos = torch.arange(n, device=device)
        buckets_NN = relative_position_bucket(pos[None, :] - pos[:, None], self.cfg.num_buckets,
                                              self.cfg.max_distance)
        return self.relative_attention_bias(buckets_NN).permute(2, 0, 1).contiguous()

    def _workspace(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A reusable (B, H, N, N) buffer for the gated bias (inference): one allocation kept across
        layers and calls, grown when a larger batch arrives."""
        numel = math.prod(shape)
        ws = getattr(self, "_ws", None)
        # a buffer made under torch.inference_mode() cannot be written outside it (and vice versa)
        if (ws is None or ws.numel() < numel or ws.dtype != like.dtype or ws.device != like.device
                or ws.is_inference() != torch.is_inference_mode_enabled()):
            ws = self._ws = torch.empty(numel, dtype=like.dtype, device=like.device)
        return ws[:numel].view(shape)

    def forward(self, x_BND: Tensor, key_pad_BN: Tensor | None = None, num_layers: int | None = None,
                output_hidden_states: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Run the first `num_layers` layers (all by default). Returns the output and, if asked, the
        states [input, after layer 1, ..., after layer num_layers]."""
        bias = self.position_bias(x_BND.shape[1], x_BND.device)
        workspace = None
        if bias is not None and self.cfg.gru_rel_pos and not torch.is_grad_enabled():
            B, N = x_BND.shape[:2]
            workspace = self._workspace((B, bias.shape[0], N, N), x_BND)
        hidden = [x_BND] if output_hidden_states else []
        for layer in self.layers[: num_layers if num_layers is not None else len(self.layers)]:
            if not (self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop):
                x_BND = layer(x_BND, bias, key_pad_BN, workspace)
            if output_hidden_states:
                hidden.append(x_BND)
        return x_BND, hidden


class BeatsTransformerEncoder(TransformerStack):
    """`encoder.*`: zero padded positions → positional conv → (post-LN) LayerNorm → layers."""

    def __init__(self, cfg: BeatsConfig) -> None:
        super().__init__(cfg)
        # Sequential so that the keys are `pos_conv.0.*`, as in the reference
        self.pos_conv = nn.Sequential(WeightNormConv1d(cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups))
        self.layer_norm = nn.LayerNorm(cfg.encoder_embed_dim)

    def forward(self, x_BND: Tensor, key_pad_BN: Tensor | None = None, num_layers: int | None = None,
                output_hidden_states: bool = False) -> tuple[Tensor, list[Tensor]]:
        if key_pad_BN is not None:
            x_BND = x_BND.masked_fill(key_pad_BN[..., None], 0.0)
        # positional conv with an even kernel: the extra last output is dropped ("SamePad")
        y_BDN = self.pos_conv(x_BND.transpose(1, 2))
        if self.cfg.conv_pos % 2 == 0:
            y_BDN = y_BDN[..., :-1]
        x_BND = x_BND + F.gelu(y_BDN).transpose(1, 2)
        if not self.cfg.layer_norm_first:
            x_BND = self.layer_norm(x_BND)
        x_BND, hidden = super().forward(x_BND, key_pad_BN, num_layers, output_hidden_states)
        if self.cfg.layer_norm_first and num_layers is None:  # final LN only for the full stack
            x_BND = self.layer_norm(x_BND)
            if output_hidden_states:
                hidden[-1] = x_BND
        return x_BND, hidden


# -------------------------------------------------------------------------------------------------
# Model


class BeatsModel(nn.Module):
    """The BEATs backbone: normalised fbank (B, T, 128) -> patch sequence (B, P, D), P = 8·floor(T/16),
    time-major (index 8·t + f)."""

    def __init__(self, cfg: BeatsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        E, D, p = cfg.embed_dim, cfg.encoder_embed_dim, cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, E, kernel_size=p, stride=p, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(E)
        self.post_extract_proj = nn.Linear(E, D) if E != D else None
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = BeatsTransformerEncoder(cfg)
        if cfg.finetuned_model:
            self.predictor = nn.Linear(D, cfg.predictor_class)

    def patch_embed(self, fbank_BTF: Tensor) -> Tensor:
        """(B, T, 128) -> (B, P, E): 16×16 patches, last T mod 16 frames dropped, flattened time-major."""
        x = self.patch_embedding(fbank_BTF.unsqueeze(1))  # (B, E, T', 8)
        return x.flatten(2).transpose(1, 2)

    def project(self, x_BPE: Tensor) -> Tensor:
        """LayerNorm(E), then the E -> D projection when E != D."""
        x = self.layer_norm(x_BPE)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.dropout_input(x)

    def forward(self, fbank_BTF: Tensor, padding_mask_BP: Tensor | None = None, num_layers: int | None = None,
                output_hidden_states: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Returns (x (B, P, D), hidden states [input of layer 1, after layer 1, ...] if asked).
        `num_layers=k` stops after k layers (ESPnet `max_layer=k`; Microsoft `tgt_layer=k-1`)."""
        x = self.project(self.patch_embed(fbank_BTF))
        return self.encoder(x, padding_mask_BP, num_layers, output_hidden_states)


# -------------------------------------------------------------------------------------------------
# Checkpoint conversion

#: what each reference builds when a cfg omits a key (docs/beats.md §2.1)
MICROSOFT_CODE_DEFAULTS: dict[str, Any] = dict(
    input_patch_size=-1, embed_dim=512, conv_bias=False, encoder_layers=12, encoder_embed_dim=768,
    encoder_ffn_embed_dim=3072, encoder_attention_heads=12, activation_fn="gelu", layer_norm_first=False,
    deep_norm=False, conv_pos=128, conv_pos_groups=16, relative_position_embedding=False, num_buckets=320,
    max_distance=1280, gru_rel_pos=False, finetuned_model=False, predictor_dropout=0.1, predictor_class=527,
)
ESPNET_CODE_DEFAULTS: dict[str, Any] = {**MICROSOFT_CODE_DEFAULTS, "input_patch_size": 16}
#: keys whose value cannot be read from the weights, with the released value
_UNREADABLE_RELEASED = dict(deep_norm=True, max_distance=800, layer_norm_first=False)

#: (our key, reference key). Keys not listed map to themselves.
KEY_TABLE: list[tuple[str, str]] = [
    ("encoder.relative_attention_bias.weight", "encoder.layers.0.self_attn.relative_attention_bias.weight"),
]
_PARAMETRIZED = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
_IGNORED_SUFFIXES = ("patch_embedding_pad.weight", "raw2fbank_pad.weight")


def _rename(key: str) -> str | None:
    """Reference key -> our key (None: a key the encoder does not use)."""
    if key.endswith(_IGNORED_SUFFIXES):
        return None  # ESPnet's frozen all-ones convolutions that only propagate the padding mask
    for new, old in _PARAMETRIZED.items():
        key = key.replace(new, old)
    for ours, theirs in KEY_TABLE:
        if key == theirs:
            return ours
    if key.endswith("self_attn.relative_attention_bias.weight"):
        return None  # tied copies of layer 0's table
    return key


def convert_reference_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Microsoft / ESPnet encoder state dict -> `BeatsModel` state dict (pure). Tied copies of the
    relative-position table must equal layer 0's; ESPnet `*_pad` convolutions are dropped."""
    out: dict[str, Tensor] = {}
    table = state.get("encoder.layers.0.self_attn.relative_attention_bias.weight")
    for k, v in state.items():
        if table is not None and k.endswith("self_attn.relative_attention_bias.weight") and not torch.equal(v, table):
            warnings.warn(f"{k} differs from layer 0's table; the reference only uses layer 0's", stacklevel=3)
        new = _rename(k)
        if new is not None:
            out[new] = v
    return out


def infer_from_state(state: dict[str, Tensor]) -> dict[str, Any]:
    """Architecture values that the weights determine (reference key names)."""
    w = state.get("patch_embedding.weight")
    if w is None:
        return {}
    inferred: dict[str, Any] = {"embed_dim": w.shape[0], "input_patch_size": w.shape[-1],
                                "conv_bias": "patch_embedding.bias" in state}
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")}
    if layers:
        inferred["encoder_layers"] = max(layers) + 1
    if "encoder.layer_norm.weight" in state:
        inferred["encoder_embed_dim"] = state["encoder.layer_norm.weight"].shape[0]
    fc1 = state.get("encoder.layers.0.fc1.weight")
    if fc1 is not None:
        inferred["encoder_ffn_embed_dim"] = fc1.shape[0]
    elif "encoder.layers.0.fc1.linear.weight" in state:
        inferred["activation_fn"] = "glu"
        inferred["encoder_ffn_embed_dim"] = state["encoder.layers.0.fc1.linear.weight"].shape[0] // 2
    v = state.get("encoder.pos_conv.0.weight_v", state.get("encoder.pos_conv.0.parametrizations.weight.original1"))
    if v is not None:
        inferred["conv_pos"] = v.shape[-1]
        inferred["conv_pos_groups"] = v.shape[0] // v.shape[1]
    table = state.get("encoder.layers.0.self_attn.relative_attention_bias.weight")
    inferred["relative_position_embedding"] = table is not None
    if table is not None:
        inferred["num_buckets"], inferred["encoder_attention_heads"] = table.shape
    grep_a = state.get("encoder.layers.0.self_attn.grep_a")
    inferred["gru_rel_pos"] = grep_a is not None
    if grep_a is not None:
        inferred["encoder_attention_heads"] = grep_a.shape[1]
    inferred["finetuned_model"] = "predictor.weight" in state
    if "predictor.weight" in state:
        inferred["predictor_class"] = state["predictor.weight"].shape[0]
    return inferred


def config_from_reference(cfg: dict[str, Any], state: dict[str, Tensor], flavour: str = "microsoft",
                          source: str = "checkpoint") -> BeatsConfig:
    """Resolve a reference cfg dict against the weights.

    Keys the cfg omits take the value the reference code would use (`flavour` "microsoft" or
    "espnet"), except where the weights say otherwise. A cfg value that contradicts the weights is
    an error. Omitted keys that the weights cannot reveal and whose code default differs from every
    release (deep_norm, max_distance, layer_norm_first) trigger a warning: such a checkpoint builds
    a different architecture than the released models, exactly as it does in the reference.
    """
    defaults = MICROSOFT_CODE_DEFAULTS if flavour == "microsoft" else ESPNET_CODE_DEFAULTS
    inferred = infer_from_state(state)
    clash = {k: (cfg[k], v) for k, v in inferred.items() if k in cfg and cfg[k] != v and k != "finetuned_model"}
    if clash:
        detail = ", ".join(f"{k}: cfg {a!r} vs weights {b!r}" for k, (a, b) in clash.items())
        raise CheckpointError(f"{source}: the cfg contradicts the weights ({detail}). Fix the cfg or pass "
                         "beats_config={...} with the right values.")
    odd = {k: v for k, v in _UNREADABLE_RELEASED.items() if k not in cfg and defaults[k] != v}
    if odd:
        warnings.warn(
            f"{source}: cfg omits {sorted(odd)}; using the {flavour} reference defaults "
            f"({ {k: defaults[k] for k in odd} }) as the reference would, which differ from the released "
            f"models ({odd}). Pass beats_config={{...}} to override.", stacklevel=3)
    merged = {**defaults, **inferred, **cfg}
    if "fbank_mean" in merged and merged["fbank_mean"] is None:
        merged.pop("fbank_mean")
    if "fbank_std" in merged and merged["fbank_std"] is None:
        merged.pop("fbank_std")
    try:
        return BeatsConfig.from_dict(merged)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e


def load_state_strict(model: nn.Module, state: dict[str, Tensor], source: str, assign: bool = False) -> None:
    """load_state_dict(strict) with one CheckpointError that lists every missing, unexpected and
    wrong-shape key."""
    check_state_dict(model.state_dict(), state, source, f"BEATs {type(model).__name__}")
    model.load_state_dict(state, strict=True, assign=assign)


# -------------------------------------------------------------------------------------------------
# Presets: the architectures of the releases (docs/beats.md §4), the one place they are written down.
# Fields not listed keep the BeatsConfig defaults (the released values).

PRESETS: dict[str, dict[str, Any]] = {
    # Microsoft BEATs iter1-3 and OpenBEATs Base: 90.3M parameters
    "beats-base": dict(encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=12),
    # OpenBEATs Large and the two ICME 2025 models: 311M parameters
    "beats-large": dict(encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096,
                        encoder_attention_heads=16),
}


def preset(name: str, **overrides: Any) -> BeatsConfig:
    """The BeatsConfig of a released architecture, with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown BEATs preset {name!r}; known: {sorted(PRESETS)}")
    return BeatsConfig(**{**PRESETS[name], **overrides})
