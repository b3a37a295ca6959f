"""`DashengEncoder`: the Dasheng family behind the encoder contract, and its checkpoint formats.

Behaviour, and where it departs from the reference (`dasheng` 0.0.9, `docs/dasheng.md`):

* Long inputs are cut into independent chunks of `target_length // 4` tokens (252 = 10.08 s), the
  last one shorter, no padding, no overlap, positions restarting at 0 in each chunk — exactly as
  `dasheng` 0.0.9. The Hugging Face remote code (`mispeech/dasheng-*`) differs beyond 10.08 s: it
  zero-pads the last chunk to full length and attends over the padding, drops a last chunk when the
  frame count is an exact multiple of 1008, and mixes batch items; we do not reproduce that.
* `top_db`: each clip is floored at (its own maximum - 120 dB), so a clip's features never depend on
  its batch-mates. `batch_topdb=True` takes one maximum over the whole batch, like the reference.
* With `lengths`, each clip's front end runs on its own samples (reflect padding at its true end)
  and attention masks padded keys over the true token count (1 + N // 160) // 4; the reference
  masks from N // 640, one token short when N mod 640 >= 480. Hence `frames[i, :lengths[i]]` equals
  the clip encoded alone. With `batch_topdb=True` the front end runs over the padded batch instead,
  as the reference's does.
* Inputs shorter than 480 samples (30 ms, one output frame; the reference raises) are right-padded
  with zeros to 480 samples and give one frame.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from harmonia.encoder import AudioEncoder, EncoderOutput, encode_in_chunks
from harmonia.io import CheckpointError, check_tensors, check_type, parse_dtype, read_safetensors
from harmonia.models.dasheng import (
    PRESETS,
    Dasheng,
    DashengConfig,
    build_model,
    check_frontend_buffers,
    convert_reference_state,
    infer_config,
)

FAMILY = "dasheng"
HF_PREFIX = "encoder."


class DashengEncoder(AudioEncoder):
    """Dasheng frames at 25 Hz (hop 40 ms).

    Options: `layer` (None: the final, LayerNorm-ed output; k in 0..depth: hidden state k, i.e. the
    input of block 0 for k = 0 and the output of block k otherwise, without the final LayerNorm;
    only the first k blocks run), `batch_topdb` (reproduce the reference's batch-wide top_db floor).
    """

    hop_size_in_ms = 40.0
    min_samples = 480  # 3 x 160 hop: 4 mel frames, one 64x4 patch

    def __init__(self, model: Dasheng, layer: int | None = None, batch_topdb: bool = False):
        super().__init__()
        check_type("DashengEncoder option layer", layer, int | None)
        check_type("DashengEncoder option batch_topdb", batch_topdb, bool)
        depth = model.cfg.depth
        if layer is not None and not -depth <= layer <= depth:
            raise ValueError(f"layer must be None (final output), in [0, {depth}] (the state after k blocks) or "
                             f"a negative index in [-{depth}, -1] for this {depth}-block Dasheng, found {layer}")
        self.model = model.eval()
        # a negative index counts from the end as in BeatsEncoder: -1 is the state after the last block
        self.layer = layer if layer is None or layer >= 0 else depth + 1 + layer
        self.batch_topdb = batch_topdb
        self.output_dim = model.cfg.embed_dim
        self.sampling_rate = model.cfg.sample_rate

    @property
    def config(self) -> DashengConfig:
        return self.model.cfg

    def num_frames(self, num_samples: int) -> int:
        return self.config.num_tokens(max(num_samples, self.min_samples))

    # ----------------------------------------------------------------------------------------------
    def _log_mel(self, wav_BN: Tensor, lengths_B: Tensor) -> Tensor:
        """(B, N) -> (B, M, 1 + N // hop) dB log-mel, each item computed on its own samples unless
        `batch_topdb` (reference mode: one STFT over the padded batch, one batch-wide floor)."""
        N = wav_BN.shape[1]
        if self.batch_topdb or bool((lengths_B == N).all()):
            return self.model.log_mel(wav_BN, batch_topdb=self.batch_topdb)
        T = 1 + N // self.config.hop_size
        mel_BMT = wav_BN.new_zeros(wav_BN.shape[0], self.config.n_mels, T)
        for i, n in enumerate(lengths_B.tolist()):
            mel_i = self.model.log_mel(wav_BN[i : i + 1, :n])
            mel_BMT[i, :, : mel_i.shape[-1]] = mel_i[0]
        return mel_BMT

    def _encode(self, wav_BN: Tensor, lengths_B: Tensor, output_hidden_states: bool) -> EncoderOutput:
        cfg = self.config
        tokens_BTD = self.model.tokens(self._log_mel(wav_BN, lengths_B))
        ntok_B = torch.tensor([cfg.num_tokens(int(n)) for n in lengths_B], device=tokens_BTD.device)
        want_hidden = output_hidden_states or self.layer is not None

        def run(start: int, end: int, items: Tensor) -> tuple[Tensor, tuple[Tensor, ...] | None]:
            x_bND = tokens_BTD[items, start:end]
            valid_b = (ntok_B[items] - start).clamp(max=end - start)
            keep_bN = None
            if bool((valid_b < end - start).any()):
                keep_bN = torch.arange(end - start, device=x_bND.device)[None] < valid_b[:, None]
            out, hidden = self.model.forward_chunk(x_bND, keep_bN, num_layers=self.layer,
                                                   output_hidden_states=want_hidden)
            if self.layer is not None:
                out = hidden[self.layer]
            return out, tuple(hidden) if output_hidden_states else None

        frames, hidden = encode_in_chunks(ntok_B, cfg.chunk_tokens, run, output_hidden_states)
        return EncoderOutput(frames, ntok_B, hidden)

    # ----------------------------------------------------------------------------------------------
    def export_config(self) -> dict:
        return {"family": FAMILY, "model": self.config.to_dict(),
                "options": {"layer": self.layer, "batch_topdb": self.batch_topdb}}

    def export_state(self) -> dict[str, Tensor]:
        return dict(self.model.state_dict())


# -------------------------------------------------------------------------------------------------
# construction from the supported formats (called by harmonia.hub)


def _make(cfg: DashengConfig, state: Mapping[str, Tensor], source: str, layer: int | None = None,
          batch_topdb: bool = False, dtype: torch.dtype | str | None = None,
          device: torch.device | str | None = None) -> DashengEncoder:
    model = build_model(cfg, state, dtype=parse_dtype(dtype), source=source)
    enc = DashengEncoder(model, layer=layer, batch_topdb=batch_topdb)
    return enc.to(device) if device is not None else enc


def _from_reference_state(state: Mapping[str, Tensor], stored: Mapping | None, source: str,
                          num_heads: int | None = None, **options) -> DashengEncoder:
    check_tensors(state, source)
    try:
        cfg = infer_config(state, stored, num_heads=num_heads)
        check_frontend_buffers(state, cfg)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e
    converted, unexpected = convert_reference_state(state)
    if unexpected:
        raise CheckpointError(f"{source}: unexpected keys for a Dasheng encoder {unexpected} (a classifier "
                              "head such as outputlayer.* is not part of the encoder: remove it first)")
    return _make(cfg, converted, source, **options)


def _is_dasheng_state(state: object) -> bool:
    return isinstance(state, Mapping) and "time_pos_embed" in state and "patch_embed.proj.weight" in state


def sniff_file(ckpt: dict, path: str | os.PathLike | None = None) -> bool:
    """The `dasheng` package / Zenodo format {'model': state_dict, 'config': dict}, or a bare
    reference state dict."""
    return _is_dasheng_state(ckpt.get("model")) or _is_dasheng_state(ckpt)


def from_file(ckpt: dict, path: str | os.PathLike | None = None, **options) -> DashengEncoder:
    if _is_dasheng_state(ckpt.get("model")):
        stored = ckpt.get("config")
        return _from_reference_state(ckpt["model"], stored if isinstance(stored, Mapping) else None,
                                     str(path), **options)
    return _from_reference_state(ckpt, None, str(path), **options)


def sniff_dir(path: str | os.PathLike) -> bool:
    """The Hugging Face `mispeech/dasheng-*` layout: config.json (model_type dasheng) + model.safetensors
    (or another `.safetensors` file named when loading)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        return False
    try:
        cfg = json.loads((path / "config.json").read_text())
        return cfg.get("model_type") == "dasheng" or "DashengModel" in (cfg.get("architectures") or [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, AttributeError, TypeError):
        return False


def hf_architecture(hf_config: Mapping) -> dict:
    """embed_dim/depth/num_heads/target_length of an HF config.json: `encoder_kwargs` first (what
    `save_pretrained` wrote), then top-level overrides, then the name table of `DashengConfig`."""
    arch: dict = {}
    check_type("config.json encoder_kwargs", hf_config.get("encoder_kwargs"), dict | None)
    name = hf_config.get("name")
    if name in PRESETS:
        p = PRESETS[name]
        arch.update(embed_dim=p.embed_dim, depth=p.depth, num_heads=p.num_heads)
    arch.update({k: hf_config[k] for k in ("embed_dim", "depth", "num_heads") if k in hf_config})
    arch.update({k: v for k, v in (hf_config.get("encoder_kwargs") or {}).items()
                 if k in ("embed_dim", "depth", "num_heads", "target_length")})
    return arch


def from_dir(path: str | os.PathLike, num_heads: int | None = None, weights: str | os.PathLike | None = None,
             **options) -> DashengEncoder:
    """Hugging Face layout: `encoder.`-prefixed keys, no front-end buffers (computed here),
    architecture from config.json (see `hf_architecture`); num_heads= overrides it. `weights`: the
    safetensors file (default `model.safetensors` in `path`)."""
    path = Path(path)
    weights = Path(weights) if weights is not None else path / "model.safetensors"
    try:
        arch = hf_architecture(json.loads((path / "config.json").read_text()))
    except (ValueError, RecursionError) as e:  # not JSON (or nested too deep), or a field of the wrong type
        raise CheckpointError(f"{path / 'config.json'}: {e}") from None
    # with a dtype, matrices are converted while read (no fp32 copy stays resident)
    raw = read_safetensors(weights, options.get("dtype"))
    foreign = sorted(k for k in raw if not k.startswith(HF_PREFIX))
    if foreign:
        raise CheckpointError(f"{weights}: unexpected keys outside the encoder {foreign} (expected only "
                              f"'{HF_PREFIX}*' keys; load the model without its classifier head)")
    state = {k[len(HF_PREFIX):]: v for k, v in raw.items()}
    heads = num_heads if num_heads is not None else arch.get("num_heads")
    enc = _from_reference_state(state, arch, str(weights), num_heads=heads, **options)
    for k in ("embed_dim", "depth"):
        if k in arch and int(arch[k]) != getattr(enc.config, k):
            raise CheckpointError(f"{path}: config.json says {k}={arch[k]} but the weights have "
                                  f"{getattr(enc.config, k)}; fix config.json")
    return enc


def from_harmonia(config: dict, state: Mapping[str, Tensor], source: str = "harmonia checkpoint",
                  **options) -> DashengEncoder:
    """harmonia's own format: config.json {'family', 'model', 'options'} + our state dict."""
    cfg = DashengConfig.from_dict(config["model"])
    opts = {**config.get("options", {}), **options}
    return _make(cfg, state, source, **opts)
