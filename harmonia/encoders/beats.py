"""`BeatsEncoder`: BEATs / OpenBEATs checkpoints behind the harmonia encoder contract, and the
family functions the loader (`harmonia.hub`) dispatches to.

Output layouts (docs/beats.md §5.1): "flat" — the reference's time-major patch sequence, token 8·t + f,
hop 20 ms (a token's time is exact to within one 160 ms patch row); "mean" — the 8 frequency patches
of a row averaged, hop 160 ms; "concat" — concatenated, 8·D dims, hop 160 ms.

Padding: by default the exact mask (ESPnet's `forward_padding_mask_conv`, docs/beats.md §5.3): time row t of a
clip is valid iff all its frames lie inside the clip, so a batched clip equals the clip alone.
`mask="microsoft"` reproduces Microsoft's chunked 'all padded' mask (§5.2) for bit-parity with
Microsoft batches; it is not batch-invariant.

Long inputs are chunked in whole patch rows: chunk k covers rows [kR, (k+1)R) and therefore the
samples [2560·kR, 2560·(k+1)R + 240), R = rows of `chunk_seconds` of audio. The chunked output has
exactly the frame count of the unchunked model, floor(T/16) rows, T = 1 + (N − 400) // 160.

Short inputs: a clip shorter than one patch row (2800 samples = 175 ms) is zero-padded to 2800
samples and yields one row (8 tokens in flat layout). The Microsoft code raises on it; ESPnet tiles
clips shorter than 3200 samples instead.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harmonia.encoder import AudioEncoder, EncoderOutput, encode_in_chunks
from harmonia.io import CheckpointError, check_layer_count, check_tensors, check_type, parse_dtype
from harmonia.layers.frontend import KALDI_SHIFT, KALDI_WINDOW, beats_fbank
from harmonia.models.beats import (
    BeatsConfig,
    BeatsModel,
    config_from_reference,
    convert_reference_state,
    exact_patch_mask,
    load_state_strict,
    microsoft_patch_mask,
    patch_rows,
)
from harmonia.models.beats_tokenizer import (
    BeatsTokenizerModel,
    TokenizerConfig,
    is_tokenizer_state,
    tokenizer_config_from,
)

LAYOUTS = ("flat", "mean", "concat")
MASKS = ("exact", "microsoft")
FAMILY = "beats"
_ESPNET_ONLY_KEYS = {"decoder_embed_dim", "decoder_layers", "codebook_vocab_size", "mask_ratio", "use_flash_attn",
                     "decoder_attention_heads", "decoder_mlp_ratio", "decoder_pos_trainable"}


class BeatsEncoder(AudioEncoder):
    """BEATs / OpenBEATs encoder. Options: `layout` (flat | mean | concat), `layer` (k = the state
    after k transformer layers, like ESPnet's `max_layer=k`; Microsoft's `tgt_layer=k` is `layer=k+1`;
    None = final output), `chunk_seconds` (long-input chunk, default 10 s; None = never chunk),
    `mask` (exact | microsoft)."""

    def __init__(self, model: BeatsModel, layout: str = "flat", layer: int | None = None,
                 chunk_seconds: float | None = 10.0, mask: str = "exact") -> None:
        super().__init__()
        for name, value, hint in (("layout", layout, str), ("layer", layer, int | None),
                                  ("chunk_seconds", chunk_seconds, float | None), ("mask", mask, str)):
            check_type(f"BeatsEncoder option {name}", value, hint)
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
        if mask not in MASKS:
            raise ValueError(f"mask={mask!r}: expected one of {MASKS}")
        if model.cfg.input_patch_size != 16:  # frame/row accounting below assumes the released 16x16 patches
            raise ValueError(f"input_patch_size={model.cfg.input_patch_size}: BeatsEncoder supports the released "
                             "16x16 patches only (every BEATs/OpenBEATs release); use BeatsModel directly")
        L = model.cfg.encoder_layers
        if layer is not None and not (0 <= layer <= L or -L <= layer < 0):
            raise ValueError(f"layer={layer}: this model has {L} layers; expected 0..{L} (state after k "
                             f"layers) or a negative index")
        if chunk_seconds is not None and not (math.isfinite(chunk_seconds)
                                              and patch_rows(int(chunk_seconds * self.sampling_rate)) >= 1):
            raise ValueError(f"chunk_seconds={chunk_seconds}: must be a finite number of seconds covering at least "
                             "one patch row (0.175 s), or None (never chunk)")
        self.model = model.eval()
        self.cfg: BeatsConfig = model.cfg
        self.layout, self.mask, self.chunk_seconds = layout, mask, chunk_seconds
        self.layer = layer if layer is None or layer >= 0 else L + 1 + layer
        self.freq = self.cfg.freq_patches
        D = self.cfg.encoder_embed_dim
        self.output_dim = D * self.freq if layout == "concat" else D
        row_ms = 1000.0 * 16 * KALDI_SHIFT / self.sampling_rate  # 160 ms per patch row
        self.hop_size_in_ms = row_ms / self.freq if layout == "flat" else row_ms
        self.min_samples = KALDI_WINDOW + 15 * KALDI_SHIFT  # one patch row: 2800 samples

    # -- contract ------------------------------------------------------------------------------------
    def num_frames(self, num_samples: int) -> int:
        rows = patch_rows(max(num_samples, self.min_samples))
        return rows * self.freq if self.layout == "flat" else rows

    def _rows_to_frames(self, x_BPD: Tensor) -> Tensor:
        if self.layout == "flat":
            return x_BPD
        B, P, D = x_BPD.shape
        x = x_BPD.view(B, P // self.freq, self.freq, D)
        return x.mean(2) if self.layout == "mean" else x.reshape(B, P // self.freq, self.freq * D)

    def _encode(self, wav_BN: Tensor, lengths_B: Tensor, output_hidden_states: bool) -> EncoderOutput:
        N = wav_BN.shape[1]
        rows_B = torch.tensor([patch_rows(int(n)) for n in lengths_B.tolist()])
        chunk_rows = patch_rows(int(self.chunk_seconds * self.sampling_rate)) if self.chunk_seconds else None
        row_samples = 16 * KALDI_SHIFT  # 2560
        tail = KALDI_WINDOW - KALDI_SHIFT  # 240: the last frame of a row reaches 240 samples further
        def run(start: int, end: int, items: Tensor) -> tuple[Tensor, tuple[Tensor, ...] | None]:
            s0, s1 = row_samples * start, min(row_samples * end + tail, N)
            wav = wav_BN[items, s0:s1]
            lens = (lengths_B[items] - s0).clamp(max=s1 - s0)
            fbank = beats_fbank(wav, self.cfg.fbank_mean, self.cfg.fbank_std)
            rows = fbank.shape[1] // 16
            padded = bool((lens < wav.shape[1]).any())
            if not padded:
                pad_mask = None
            elif self.mask == "exact":
                pad_mask = exact_patch_mask(lens, rows, self.freq)
            else:
                sample_mask = torch.arange(wav.shape[1], device=wav.device)[None] >= lens[:, None].to(wav.device)
                pad_mask = microsoft_patch_mask(sample_mask, fbank.shape[1], rows * self.freq)
            x, hidden = self.model(fbank.to(self.dtype), pad_mask, self.layer, output_hidden_states)
            return self._rows_to_frames(x), tuple(self._rows_to_frames(h) for h in hidden) or None

        frames, hidden = encode_in_chunks(rows_B, chunk_rows, run, output_hidden_states)
        per_row = self.freq if self.layout == "flat" else 1
        lengths = rows_B * per_row
        if self.mask == "microsoft":  # Microsoft's mask can keep a boundary row of padding valid
            lengths = self._microsoft_lengths(wav_BN, lengths_B, per_row, lengths)
        return EncoderOutput(frames=frames, lengths=lengths, hidden_states=hidden)

    def _microsoft_lengths(self, wav_BN: Tensor, lengths_B: Tensor, per_row: int, exact: Tensor) -> Tensor:
        """Valid-frame counts under Microsoft's mask: up to the last valid patch (unchunked input)."""
        N = wav_BN.shape[1]
        T = 1 + (N - KALDI_WINDOW) // KALDI_SHIFT
        rows = T // 16
        if self.chunk_seconds and rows > patch_rows(int(self.chunk_seconds * self.sampling_rate)):
            return exact
        sample_mask = torch.arange(N)[None] >= lengths_B.cpu()[:, None]
        valid_BP = ~microsoft_patch_mask(sample_mask, T, rows * self.freq)
        last = torch.where(valid_BP, torch.arange(valid_BP.shape[1]) + 1, 0).amax(1)
        return last if per_row == self.freq else (last + self.freq - 1) // self.freq

    # -- tokenizer -------------------------------------------------------------------------------------
    @torch.no_grad()
    def labels(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Acoustic-token labels (B, P) of a tokenizer checkpoint, with Microsoft's padding mask (as
        `Tokenizers.extract_labels`; padded patches get labels too). Unchunked."""
        if not isinstance(self.model, BeatsTokenizerModel):
            raise TypeError("labels() needs a BEATs tokenizer checkpoint (with quantize.* weights); "
                            "this encoder holds a plain BEATs model")
        wav_BN, lengths_B = self._validate(wav, lengths)
        fbank = beats_fbank(wav_BN.to(self.device), self.cfg.fbank_mean, self.cfg.fbank_std)
        pad_mask = None
        if (lengths_B < wav_BN.shape[1]).any():
            sample_mask = torch.arange(wav_BN.shape[1])[None] >= lengths_B[:, None]
            pad_mask = microsoft_patch_mask(sample_mask, fbank.shape[1], (fbank.shape[1] // 16) * self.freq)
            pad_mask = pad_mask.to(self.device)
        return self.model.labels(fbank.to(self.dtype), pad_mask)

    # -- our format ------------------------------------------------------------------------------------
    def export_config(self) -> dict[str, Any]:
        return {"family": FAMILY, "tokenizer": isinstance(self.model, BeatsTokenizerModel),
                "config": self.cfg.to_dict(),
                "options": {"layout": self.layout, "layer": self.layer, "chunk_seconds": self.chunk_seconds,
                            "mask": self.mask}}

    def export_state(self) -> dict[str, Tensor]:
        return self.model.state_dict()


# -------------------------------------------------------------------------------------------------
# Building


def build_model(cfg: BeatsConfig, state: dict[str, Tensor], source: str, dtype: torch.dtype | None = None,
                device: str | torch.device | None = None) -> BeatsModel:
    """Build on the meta device and adopt the (possibly memory-mapped) tensors: no second copy."""
    cls = BeatsTokenizerModel if isinstance(cfg, TokenizerConfig) else BeatsModel
    check_layer_count(state, "encoder.layers.", cfg.encoder_layers, source, "encoder_layers")
    try:
        with torch.device("meta"):
            model = cls(cfg)
    except RuntimeError as e:  # sizes beyond what torch can address (e.g. encoder_embed_dim=10**9)
        raise CheckpointError(f"{source}: cannot build {cls.__name__} with this config ({e}); fix the config") from None
    load_state_strict(model, state, source, assign=True)
    # buffers the checkpoint does not hold are rebuilt on the CPU
    model = model.to(device=device or "cpu", dtype=dtype) if (dtype or device) else model
    return model.eval()


def _encoder(model: BeatsModel, options: dict[str, Any]) -> BeatsEncoder:
    known = {"layout", "layer", "chunk_seconds", "mask"}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown BEATs encoder options {sorted(unknown)}; expected some of "
                        f"{sorted(known | {'dtype', 'device', 'beats_config'})}")
    return BeatsEncoder(model, **options)


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    build = {k: options.pop(k) for k in ("dtype", "device") if k in options}
    if "dtype" in build:
        build["dtype"] = parse_dtype(build["dtype"])
    return build, options


def encoder_from_reference(cfg: dict[str, Any], state: dict[str, Tensor], source: str, flavour: str,
                           **options: Any) -> BeatsEncoder:
    """A Microsoft / OpenBEATs / ESPnet state dict (reference key names) + its cfg dict."""
    build, options = _split_options(options)
    check_tensors(state, source)
    config = config_from_reference(cfg, state, flavour, source)
    if is_tokenizer_state(state):
        config = tokenizer_config_from(config, state, cfg)
        initted = state.get("quantize.embedding.initted")
        if initted is not None and float(initted.flatten()[0]) == 0.0:
            warnings.warn(f"{source}: the tokenizer codebook is not initialised (initted=0); the Microsoft "
                          "code would run k-means on the first batch. Labels will use the stored codebook.",
                          stacklevel=2)
    model = build_model(config, convert_reference_state(state), source, **build)
    return _encoder(model, options)


def _flavour(cfg: dict[str, Any], state: dict[str, Tensor]) -> str:
    espnet = any(k.endswith("_pad.weight") for k in state) or bool(_ESPNET_ONLY_KEYS & set(cfg))
    return "espnet" if espnet else "microsoft"


def _strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """ESPnet / DeepSpeed full-model state dicts: keep the encoder's keys, prefixes removed."""
    for prefix in ("module.encoder.", "encoder."):
        if f"{prefix}patch_embedding.weight" in state:
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def find_espnet_yaml(checkpoint: Path, root: Path | None = None) -> Path | None:
    """The ESPnet `config.yaml` of a bare state dict: beside it, one folder up, or (when `root`, a
    snapshot folder, is given) the first one anywhere below `root`."""
    for cand in (checkpoint.parent / "config.yaml", checkpoint.parent.parent / "config.yaml"):
        if cand.is_file():
            return cand
    found = sorted(root.rglob("config.yaml")) if root is not None else []
    return found[0] if found else None


def espnet_beats_config(yaml_file: Path) -> dict[str, Any]:
    """`encoder_conf.beats_config` of an ESPnet experiment's config.yaml."""
    import yaml

    try:
        conf = yaml.safe_load(yaml_file.read_text())
    except yaml.YAMLError as e:
        raise CheckpointError(f"{yaml_file}: not valid YAML ({e})") from None
    cfg = ((conf or {}).get("encoder_conf") or {}).get("beats_config") if isinstance(conf, dict) else None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{yaml_file}: has no mapping encoder_conf.beats_config (found {cfg!r}); pass "
                              "beats_config={...} explicitly")
    return cfg


# -- family functions called by harmonia.hub --------------------------------------------------------------


def sniff_file(ckpt: dict, path: Path) -> bool:
    if isinstance(ckpt.get("model"), dict) and "cfg" in ckpt:
        return "patch_embedding.weight" in ckpt["model"]
    if "module" in ckpt and isinstance(ckpt["module"], dict):
        ckpt = ckpt["module"]
    return any(k in ckpt for k in ("patch_embedding.weight", "encoder.patch_embedding.weight",
                                   "module.encoder.patch_embedding.weight"))


def from_file(ckpt: dict, path: Path, beats_config: dict | None = None, **options: Any) -> BeatsEncoder:
    source = str(path)
    check_type("beats_config", beats_config, dict | None)
    if "cfg" in ckpt and isinstance(ckpt.get("model"), dict):  # Microsoft / OpenBEATs {'cfg','model'}
        check_type(f"{source}: cfg", ckpt["cfg"], dict)
        cfg = {**ckpt["cfg"], **(beats_config or {})}
        state = ckpt["model"]
    else:  # bare state dict: ESPnet `encoder.`-prefixed (cfg beside it) or a raw encoder state dict
        state = _strip_prefix(ckpt.get("module", ckpt))
        cfg = beats_config
        if cfg is None:
            yaml_file = find_espnet_yaml(Path(path))
            cfg = espnet_beats_config(yaml_file) if yaml_file else None
        if cfg is None:
            raise ValueError(
                f"{source}: a bare state dict carries no architecture config. Expected a config.yaml beside "
                "it (key encoder_conf.beats_config, as in ESPnet experiment folders), or pass it: "
                "harmonia.load_encoder(path, beats_config={...}) / --beats-config FILE.")
    return encoder_from_reference(dict(cfg), state, source, _flavour(cfg, state), **options)


def sniff_dir(path: Path) -> bool:
    return False  # BEATs has no directory layout besides harmonia's own format


def from_dir(path: Path, **options: Any) -> BeatsEncoder:
    raise ValueError(f"{path}: not a BEATs checkpoint directory")


def from_harmonia(config: dict[str, Any], state: dict[str, Tensor], source: str = "harmonia checkpoint",
                  **options: Any) -> BeatsEncoder:
    build, options = _split_options(options)
    cls = TokenizerConfig if config.get("tokenizer") else BeatsConfig
    cfg = cls.from_dict(config["config"])
    model = build_model(cfg, state, source, **build)
    return _encoder(model, {**config.get("options", {}), **options})

