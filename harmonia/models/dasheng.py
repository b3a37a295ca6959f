"""Dasheng: a ViT masked-autoencoder audio encoder over 64-bin log-mel patches (inference only).

Paper: H. Dinkel et al., "Scaling up masked audio encoder learning for general audio
classification" (Interspeech 2024, arXiv 2406.06992). Reference code: PyPI `dasheng` 0.0.9
(`dasheng.pretrained.pretrained.Dasheng`, subclass of `dasheng.train.models.AudioTransformerMAE_Encoder`),
identical to github RicherMans/Dasheng @ db73093. Released weights: Zenodo record 11511780
(`{'model', 'config'}` .pt files) and Hugging Face `mispeech/dasheng-{base,0.6B,1.2B}`
(`model.safetensors` with `encoder.`-prefixed keys, remote code jimbozhang/hf_transformers_custom_model_dasheng
@ 31f5d6d). Details: `docs/dasheng.md`.

Pipeline (B = batch, M = 64 mel bins, T = mel frames, T' = T // 4 tokens, D = embed_dim):
  wav (B, N) -> log-mel dB (B, M, T) -> per-mel BatchNorm (eval) -> 64x4 patches -> tokens (B, T', D)
  -> per chunk of `target_length // 4` tokens: + time/freq positions (restarting at 0 in every
  chunk), ViT blocks, final LayerNorm -> (B, T', D), one frame per 40 ms.

Chunking, masking and batching live in `harmonia.encoders.dasheng.DashengEncoder`; this module is
the network, its configuration and the checkpoint conversion.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harmonia.io import CheckpointError, check_fields, check_layer_count, check_state_dict, check_type
from harmonia.layers.frontend import htk_mel_filterbank, power_mel, power_to_db

# -------------------------------------------------------------------------------------------------
# configuration


@dataclass
class DashengConfig:
    """Architecture of a Dasheng encoder. Defaults are dasheng-base."""

    embed_dim: int = 768  # D, channels per token (base 768, 0.6B 1280, 1.2B 1536)
    depth: int = 12  # transformer blocks (base 12, 0.6B 32, 1.2B 40)
    num_heads: int = 12  # attention heads (base 12, 0.6B 16, 1.2B 24); NOT recoverable from weights
    mlp_ratio: float = 4.0  # MLP hidden width = int(D * mlp_ratio) (4.0 in every release)
    qkv_bias: bool = True  # bias on the fused qkv projection (True in every release)
    layer_scale: bool = False  # LayerScale gammas after attention and MLP (none in the releases)
    target_length: int = 1008  # mel frames per chunk (1008 = 10.08 s = 252 tokens)
    patch_size: tuple[int, int] = (64, 4)  # (mel bins, frames) per token; stride = size (no overlap)
    n_mels: int = 64  # mel bins of the front end
    sample_rate: int = 16000  # Hz; waveforms must already be at this rate
    n_fft: int = 512  # samples per STFT window (periodic Hann of the same length), 32 ms
    hop_size: int = 160  # samples between mel frames, 10 ms
    f_min: float = 0.0  # Hz, lowest mel filter edge
    f_max: float = 8000.0  # Hz, highest mel filter edge
    top_db: float = 120.0  # dB below the maximum where the log-mel is floored
    norm_eps: float = 1e-6  # LayerNorm epsilon
    bn_eps: float = 1e-5  # epsilon of the input BatchNorm over mel bins

    def __post_init__(self) -> None:
        check_fields(self)
        self.patch_size = tuple(self.patch_size)  # JSON gives lists
        positive = ("embed_dim", "depth", "num_heads", "target_length", "n_mels", "sample_rate", "n_fft",
                    "hop_size")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DashengConfig.{name} must be a positive integer, found {getattr(self, name)}")
        if len(self.patch_size) != 2 or min(self.patch_size) < 1:
            raise ValueError(f"DashengConfig.patch_size must be two positive integers (n_mels, 4), found "
                             f"{self.patch_size}")
        for name in ("mlp_ratio", "top_db", "norm_eps", "bn_eps"):  # NaN and inf included
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"DashengConfig.{name} must be a finite number > 0, found {getattr(self, name)} "
                                 f"(released value: {getattr(DashengConfig, name)})")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"DashengConfig.embed_dim ({self.embed_dim}) must be divisible by num_heads "
                             f"({self.num_heads}); pick num_heads from the released preset "
                             f"({', '.join(f'{k}: {v.num_heads}' for k, v in PRESETS.items())})")
        if len(self.patch_size) != 2 or self.patch_size[0] != self.n_mels:
            raise ValueError(f"DashengConfig.patch_size must be (n_mels, frames) = ({self.n_mels}, 4): one "
                             f"patch spans every mel bin; found {self.patch_size}")
        if self.target_length % self.patch_size[1]:
            raise ValueError(f"DashengConfig.target_length ({self.target_length} frames) must be a multiple of "
                             f"the patch width {self.patch_size[1]} (1008 in the releases)")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"DashengConfig.f_min/f_max must satisfy 0 <= f_min < f_max <= sample_rate/2, "
                             f"found {self.f_min}/{self.f_max} at {self.sample_rate} Hz (use 0/8000)")

    @property
    def chunk_tokens(self) -> int:
        """Tokens per independently encoded chunk (252 for the releases)."""
        return self.target_length // self.patch_size[1]

    @property
    def samples_per_token(self) -> int:
        """Hop of the output frames in samples (640 = 40 ms)."""
        return self.hop_size * self.patch_size[1]

    def num_tokens(self, num_samples: int) -> int:
        """Output frames for a clip of N samples: (1 + N // hop) // 4, i.e. 25 per second."""
        return (1 + num_samples // self.hop_size) // self.patch_size[1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> DashengConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DashengConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)


# -------------------------------------------------------------------------------------------------
# blocks


class MelNorm(nn.Module):
    """The reference's `init_bn`: BatchNorm over the 64 mel bins, always with running statistics
    (an affine map per mel bin). Kept in float32 whatever the model dtype."""

    def __init__(self, n_mels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_mels))
        self.bias = nn.Parameter(torch.zeros(n_mels))
        self.register_buffer("running_mean", torch.zeros(n_mels))
        self.register_buffer("running_var", torch.ones(n_mels))

    def forward(self, mel_BMT: Tensor) -> Tensor:
        return F.batch_norm(mel_BMT.float(), self.running_mean.float(), self.running_var.float(),
                            self.weight.float(), self.bias.float(), training=False, eps=self.eps)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and a key-padding mask."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BND: Tensor, keep_B11N: Tensor | None) -> Tensor:
        """x (B, N, D); keep (B, 1, 1, N) bool, True for keys that may be attended, or None."""
        B, N, D = x_BND.shape
        H = self.num_heads
        qkv_3BHNd = self.qkv(x_BND).view(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
        # masked keys get -inf (the reference uses finfo.min: the same softmax up to rounding,
        # since every query keeps at least one valid key)
        y_BHNd = F.scaled_dot_product_attention(qkv_3BHNd[0], qkv_3BHNd[1], qkv_3BHNd[2], attn_mask=keep_B11N)
        return self.proj(y_BHNd.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm ViT block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, cfg: DashengConfig):
        super().__init__()
        D = cfg.embed_dim
        self.norm1 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.attn = Attention(D, cfg.num_heads, cfg.qkv_bias)
        self.ls1 = LayerScale(D) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.mlp = Mlp(D, int(D * cfg.mlp_ratio))
        self.ls2 = LayerScale(D) if cfg.layer_scale else nn.Identity()

    def forward(self, x_BND: Tensor, keep_B11N: Tensor | None) -> Tensor:
        x_BND = x_BND + self.ls1(self.attn(self.norm1(x_BND), keep_B11N))
        return x_BND + self.ls2(self.mlp(self.norm2(x_BND)))


# -------------------------------------------------------------------------------------------------
# model


class Dasheng(nn.Module):
    """The Dasheng encoder network. The front end (STFT, mel filterbank) is computed, not stored."""

    def __init__(self, cfg: DashengConfig):
        super().__init__()
        self.cfg = cfg
        D, (pm, pt) = cfg.embed_dim, cfg.patch_size
        self.mel_norm = MelNorm(cfg.n_mels, cfg.bn_eps)
        # the reference's Conv2d(1, D, (64, 4), stride (64, 4)) as a Linear over flattened patches
        self.patch_embed = nn.Linear(pm * pt, D)
        self.time_pos = nn.Parameter(torch.zeros(1, cfg.chunk_tokens, D))  # (1, C, D)
        self.freq_pos = nn.Parameter(torch.zeros(1, 1, D))  # one frequency patch
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)

    def log_mel(self, wav_BN: Tensor, batch_topdb: bool = False) -> Tensor:
        """(B, N) float waveform -> un-normalised log-mel in dB (B, M, 1 + N // hop), float32."""
        c = self.cfg
        power = power_mel(wav_BN, n_fft=c.n_fft, hop=c.hop_size, n_mels=c.n_mels, f_min=c.f_min,
                          f_max=c.f_max, sample_rate=c.sample_rate)
        return power_to_db(power, top_db=c.top_db, batch_topdb=batch_topdb)

    def tokens(self, mel_BMT: Tensor) -> Tensor:
        """dB log-mel (B, M, T) -> normalised, patch-embedded tokens (B, T // 4, D), no positions.
        Trailing T mod 4 frames are dropped, as by the reference's strided convolution."""
        x_BMT = self.mel_norm(mel_BMT)
        B, M, T = x_BMT.shape
        pt = self.cfg.patch_size[1]
        Tp = T // pt
        # (B, M, T'*4) -> (B, T', M*4) with mel-major order inside a patch, as the conv weight
        patches_BTP = x_BMT[..., : Tp * pt].reshape(B, M, Tp, pt).permute(0, 2, 1, 3).reshape(B, Tp, M * pt)
        return self.patch_embed(patches_BTP.to(self.patch_embed.weight.dtype))

    def forward_chunk(self, x_BND: Tensor, keep_BN: Tensor | None = None, num_layers: int | None = None,
                      output_hidden_states: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Encode one chunk of at most `chunk_tokens` tokens independently of the others.

        x (B, N, D) patch tokens; keep (B, N) bool key mask (True = valid) or None. Runs the first
        `num_layers` blocks (all when None); the final LayerNorm is applied only after the last
        block. Returns (output (B, N, D), hidden states [input of block 0, output of each block])."""
        N = x_BND.shape[1]
        if N > self.cfg.chunk_tokens:
            raise ValueError(f"a chunk holds at most {self.cfg.chunk_tokens} tokens, found {N}")
        # positions restart at 0 in every chunk; same summation order as the reference
        x_BND = x_BND + self.time_pos[:, :N] + self.freq_pos
        keep_B11N = None if keep_BN is None else keep_BN[:, None, None, :]
        hidden = [x_BND] if output_hidden_states else []
        depth = len(self.blocks) if num_layers is None else num_layers
        for blk in self.blocks[:depth]:
            x_BND = blk(x_BND, keep_B11N)
            if output_hidden_states:
                hidden.append(x_BND)
        if depth == len(self.blocks):
            x_BND = self.norm(x_BND)
        return x_BND, hidden


# -------------------------------------------------------------------------------------------------
# checkpoint conversion: reference (`dasheng` 0.0.9 / Zenodo / HF without the `encoder.` prefix)
# state dict -> ours. Each row: reference key pattern, our key template, shape surgery (or None).


def _conv_to_linear(w_D1MP: Tensor) -> Tensor:
    """Conv2d patch weight (D, 1, 64, 4) -> Linear weight (D, 256), mel-major like our patches."""
    return w_D1MP.reshape(w_D1MP.shape[0], -1)


def _pos_to_1TD(p_1D1T: Tensor) -> Tensor:
    """Positional embedding (1, D, 1, T) -> (1, T, D)."""
    return p_1D1T.flatten(2).transpose(1, 2).contiguous()


KEY_TABLE: list[tuple[str, str, Callable[[Tensor], Tensor] | None]] = [
    (r"time_pos_embed", "time_pos", _pos_to_1TD),
    (r"freq_pos_embed", "freq_pos", _pos_to_1TD),
    (r"init_bn\.1\.(weight|bias|running_mean|running_var)", r"mel_norm.\1", None),
    (r"patch_embed\.proj\.weight", "patch_embed.weight", _conv_to_linear),
    (r"patch_embed\.proj\.bias", "patch_embed.bias", None),
    (r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)", r"blocks.\1.\2.\3", None),
    (r"blocks\.(\d+)\.(ls1|ls2)\.gamma", r"blocks.\1.\2.gamma", None),
    (r"norm\.(weight|bias)", r"norm.\1", None),
]
#: Reference keys with no counterpart: the BatchNorm step counter (unused at inference) and the
#: front-end buffers, which we compute (and compare, see `check_frontend_buffers`).
DROPPED_KEYS = (r"init_bn\.1\.num_batches_tracked", r"front_end\.0\.spectrogram\.window",
                r"front_end\.0\.mel_scale\.fb")
FRONTEND_KEYS = {"window": "front_end.0.spectrogram.window", "fb": "front_end.0.mel_scale.fb"}


def convert_reference_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename and reshape a reference state dict into ours. Pure: returns (converted, unexpected
    reference keys). Tensors are views of the inputs where no reshaping is needed (mmap-friendly)."""
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        if any(re.fullmatch(p, key) for p in DROPPED_KEYS):
            continue
        for pattern, template, surgery in KEY_TABLE:
            m = re.fullmatch(pattern, key)
            if m:
                out[m.expand(template)] = surgery(value) if surgery else value
                break
        else:
            unexpected.append(key)
    return out, unexpected


def check_frontend_buffers(state: Mapping[str, Tensor], cfg: DashengConfig) -> None:
    """The Zenodo files store the Hann window and mel filterbank; ours are computed. Refuse a
    checkpoint whose stored front end differs (it would silently change the features)."""
    fb = state.get(FRONTEND_KEYS["fb"])
    if fb is not None:
        ours = htk_mel_filterbank(cfg.n_fft // 2 + 1, cfg.n_mels, cfg.sample_rate, cfg.f_min, cfg.f_max)
        if fb.shape != ours.shape or not torch.allclose(fb.float(), ours, atol=1e-6):
            raise ValueError(f"{FRONTEND_KEYS['fb']} differs from the HTK mel filterbank harmonia computes "
                             f"(shape {tuple(fb.shape)} vs {tuple(ours.shape)}); this checkpoint uses a "
                             "different front end, which harmonia does not support")
    win = state.get(FRONTEND_KEYS["window"])
    if win is not None:
        ours = torch.hann_window(cfg.n_fft, periodic=True)
        if win.shape != ours.shape or not torch.allclose(win.float(), ours, atol=1e-6):
            raise ValueError(f"{FRONTEND_KEYS['window']} is not a periodic Hann window of {cfg.n_fft}; "
                             "this checkpoint uses a different front end, which harmonia does not support")


def infer_config(state: Mapping[str, Tensor], stored: Mapping | None = None,
                 num_heads: int | None = None) -> DashengConfig:
    """Architecture of a reference state dict (reference key names).

    embed_dim, depth, MLP ratio, qkv bias, LayerScale and the chunk length come from the tensor
    shapes. The head count cannot be read from weights; it comes, in this order, from the
    `num_heads` argument, the released preset of the same (embed_dim, depth) (what the official
    factories `dasheng_base/06B/12B` force), or the stored constructor config."""
    stored = dict(stored or {})
    for key in ("embed_dim", "depth", "num_heads", "target_length"):
        if key in stored:
            check_type(f"config {key}", stored[key], int)
    try:
        w = state["patch_embed.proj.weight"]
        pos = state["time_pos_embed"]
    except KeyError as e:
        raise ValueError(f"not a Dasheng state dict: missing {e.args[0]!r} (found keys "
                         f"{sorted(state)[:6]}...)") from None
    D, _, pm, pt = w.shape
    depth = len({k.split(".")[1] for k in state if re.fullmatch(r"blocks\.\d+\.norm1\.weight", k)})
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * D
    target_length = pos.shape[-1] * pt
    stored_tl = stored.get("target_length")
    if stored_tl is not None and int(stored_tl) // pt != pos.shape[-1]:
        raise ValueError(f"stored config target_length={stored_tl} disagrees with time_pos_embed of "
                         f"{pos.shape[-1]} tokens (= {target_length} frames); the reference would "
                         "interpolate the positions, which harmonia does not do. Fix the checkpoint config.")
    preset = next((p for p in PRESETS.values() if (p.embed_dim, p.depth) == (D, depth)), None)
    heads = num_heads
    if heads is None and preset is not None:
        heads = preset.num_heads
        if "num_heads" in stored and int(stored["num_heads"]) != heads:
            warnings.warn(f"checkpoint config says num_heads={stored['num_heads']} but the released "
                          f"{D}/{depth} model has {heads} heads (as the official factory forces); using "
                          f"{heads}. Pass num_heads= to override.", stacklevel=3)
    if heads is None:
        heads = stored.get("num_heads")
    if heads is None:
        raise ValueError(f"cannot tell the number of attention heads of this {D}-dim, {depth}-block Dasheng "
                         "(not a released size and the checkpoint stores no num_heads): pass num_heads=...")
    return DashengConfig(
        embed_dim=D, depth=depth, num_heads=int(heads), mlp_ratio=hidden / D,
        qkv_bias="blocks.0.attn.qkv.bias" in state or depth == 0,
        layer_scale="blocks.0.ls1.gamma" in state, target_length=target_length, patch_size=(pm, pt),
        n_mels=pm,
    )


def build_model(cfg: DashengConfig, state: Mapping[str, Tensor], dtype: torch.dtype | None = None,
                source: str = "checkpoint") -> Dasheng:
    """Build on the meta device and adopt the (possibly memory-mapped) tensors of `state` (our key
    names) with `assign=True`: no second copy of the weights is ever allocated. Strict: one error
    lists every missing and unexpected key. `dtype` casts the weights (the mel BatchNorm stays fp32)."""
    check_layer_count(state, "blocks.", cfg.depth, source, "depth")
    try:
        with torch.device("meta"):
            model = Dasheng(cfg)
    except RuntimeError as e:  # sizes beyond what torch can address (e.g. embed_dim=10**9)
        raise CheckpointError(f"{source}: cannot build Dasheng embed_dim={cfg.embed_dim}, depth={cfg.depth} "
                              f"({e}); fix the config") from None
    check_state_dict(model.state_dict(), state, source, f"Dasheng embed_dim={cfg.embed_dim}, depth={cfg.depth}")
    typed = {}
    for k, v in state.items():
        target = torch.float32 if k.startswith("mel_norm.") else (dtype or v.dtype)
        typed[k] = v if v.dtype == target else v.to(target)
    model.load_state_dict(typed, strict=True, assign=True)
    return model.eval()


# -------------------------------------------------------------------------------------------------
# presets: the released sizes (docs/dasheng.md §3); head counts from the official factories


PRESETS: dict[str, DashengConfig] = {
    "dasheng-base": DashengConfig(embed_dim=768, depth=12, num_heads=12),  # 85.4M parameters
    "dasheng-0.6B": DashengConfig(embed_dim=1280, depth=32, num_heads=16),  # 630M
    "dasheng-1.2B": DashengConfig(embed_dim=1536, depth=40, num_heads=24),  # 1.13B
}


def preset(name: str, **overrides) -> DashengConfig:
    """The DashengConfig of a released size, with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown Dasheng preset {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def num_parameters(cfg: DashengConfig) -> int:
    """Parameter count of the encoder (the formula of docs/dasheng.md §3, generalised to any MLP ratio)."""
    D = cfg.embed_dim
    H = int(D * cfg.mlp_ratio)
    per_block = 4 * D + (3 * D * D + (3 * D if cfg.qkv_bias else 0)) + (D * D + D) + (2 * D * H + H + D)
    per_block += 2 * D if cfg.layer_scale else 0
    patch = math.prod(cfg.patch_size)
    return cfg.chunk_tokens * D + D + 2 * cfg.n_mels + patch * D + D + cfg.depth * per_block + 2 * D
