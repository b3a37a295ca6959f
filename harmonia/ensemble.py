"""Ensembles of encoders with different frame rates: the CMU-AIST ICME 2025 system, generalised.

The paper (arXiv 2601.16273, §III-A) upsamples Dasheng's 40 ms frames to the frame count of two
BEATs-300M models (flat token layout, 496 tokens per 10 s) and concatenates the three sequences
along the feature axis. `EnsembleEncoder` does this for N members with any hop sizes:

1. every member encodes the batch with the same `lengths` (each masks its padding exactly);
2. `align_frames` resamples each member's valid frames of item i to the reference member's valid
   frame count for item i (so a batched clip equals the clip encoded alone);
3. the aligned sequences are concatenated (`fuse="concat"`, output_dim = sum of the members') or
   averaged (`fuse="mean"`, all members must have one output_dim).

The paper does not say how Dasheng was upsampled (docs/xares.md §6, open question 1); we offer
`nearest` (repetition, the default) and `linear` interpolation, both centre-aligned.

Our checkpoint format for an ensemble is the usual `config.json` + `model.safetensors`
(`harmonia convert`): the config lists every member's own config and the weights carry the
prefix `members.{i}.`. A directory whose `config.json` has `"format": "harmonia-ensemble"` and
lists member sources (sub-directories, files, registry names) is read too
(`harmonia.hub.write_linked_ensemble`). Both are read by `harmonia.hub`, which loads the members.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from harmonia.encoder import AudioEncoder, EncoderOutput
from harmonia.io import check_type

ALIGN_MODES = ("nearest", "linear")
FUSE_MODES = ("concat", "mean")
FAMILY = "ensemble"
ENSEMBLE_OPTIONS = ("align", "reference", "fuse")


# -------------------------------------------------------------------------------------------------
# alignment (pure)


def align_frames(frames_BTD: Tensor, num_frames: int, mode: str = "nearest", lengths: Tensor | None = None,
                 target_lengths: Tensor | None = None) -> Tensor:
    """Resample frame sequences along time.

    frames_BTD (B, T, D); item i has `lengths[i]` valid frames (default T) and is resampled to
    `target_lengths[i]` frames (default `num_frames`; at most `num_frames`). Returns
    (B, num_frames, D) with frames at or beyond `target_lengths[i]` set to zero.

    Centre-aligned grids: output frame j of item i (valid length b, input valid length a) sits at
    the input position p = (j + 0.5)·a/b − 0.5 (the `align_corners=False` convention).
      nearest: x[clamp(floor((j + 0.5)·a/b), 0, a−1)]        (= floor(p + 0.5): rounds half up)
      linear:  (1 − w)·x[i0] + w·x[i1],  p' = clamp(p, 0, a−1), i0 = floor(p'), i1 = min(i0+1, a−1),
               w = p' − i0
    With a == b both are the identity, exactly. Only each item's valid frames are read, so the
    result for item i does not depend on the padding or on the other items.
    """
    if frames_BTD.ndim != 3:
        raise ValueError(f"align_frames: expected frames of shape (B, T, D), found {tuple(frames_BTD.shape)}")
    if mode not in ALIGN_MODES:
        raise ValueError(f"align_frames: mode={mode!r}; expected one of {ALIGN_MODES}")
    B, T, D = frames_BTD.shape
    num_frames = int(num_frames)
    if num_frames < 1 or T < 1:
        raise ValueError(f"align_frames: need at least one input and one output frame, found T={T}, "
                         f"num_frames={num_frames}")
    a_B = _lengths(lengths, B, T, "lengths")
    b_B = _lengths(target_lengths, B, num_frames, "target_lengths")
    # index arithmetic in float64 on the CPU: identical for an item batched or alone
    a, b = a_B.double()[:, None], b_B.double()[:, None]
    j = torch.arange(num_frames, dtype=torch.float64)[None]
    last = (a_B - 1)[:, None]
    if mode == "nearest":
        idx0 = torch.minimum(torch.floor((j + 0.5) * a / b).long(), last)
        w = None
    else:
        pos = ((j + 0.5) * a / b - 0.5).clamp(min=0.0)
        pos = torch.minimum(pos, (a - 1))
        idx0 = torch.floor(pos).long()
        w = pos - idx0.double()
        idx1 = torch.minimum(idx0 + 1, last)
    valid_BJ = j < b  # frames beyond an item's target length are padding
    idx0 = torch.where(valid_BJ, idx0, 0).to(frames_BTD.device)
    out = frames_BTD.gather(1, idx0[..., None].expand(B, num_frames, D))
    if w is not None:
        idx1 = torch.where(valid_BJ, idx1, 0).to(frames_BTD.device)
        nxt = frames_BTD.gather(1, idx1[..., None].expand(B, num_frames, D))
        w_BJ1 = w.to(device=frames_BTD.device, dtype=frames_BTD.dtype)[..., None]
        out = out * (1 - w_BJ1) + nxt * w_BJ1
    return out * valid_BJ.to(frames_BTD.device)[..., None]


def _lengths(lengths: Tensor | None, B: int, maximum: int, name: str) -> Tensor:
    if lengths is None:
        return torch.full((B,), maximum, dtype=torch.long)
    lengths = torch.as_tensor(lengths).long().cpu()
    if lengths.shape != (B,):
        raise ValueError(f"align_frames: {name} must have shape ({B},), found {tuple(lengths.shape)}")
    if (lengths < 1).any() or (lengths > maximum).any():
        raise ValueError(f"align_frames: {name} must lie in [1, {maximum}], found {lengths.tolist()}")
    return lengths


# -------------------------------------------------------------------------------------------------
# the ensemble encoder


class EnsembleEncoder(AudioEncoder):
    """N encoders behind one encoder contract.

    members: built encoders (each may use its own `layer`, `layout`, dtype or device);
    align: "nearest" | "linear" (see `align_frames`); reference: index of the member whose frame
    grid (count, valid lengths, `hop_size_in_ms`) the output uses; fuse: "concat" | "mean";
    names: optional labels of the members (kept in the exported config).

    forward/encode: (B, N) -> (B, T'_ref, output_dim). Inputs shorter than the largest member
    `min_samples` are zero-padded to it. With `output_hidden_states=True` the hidden states are
    every member's, aligned to the reference grid, member after member.
    """

    def __init__(self, members: Sequence[AudioEncoder], align: str = "nearest", reference: int = 0,
                 fuse: str = "concat", names: Sequence[str] | None = None) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("EnsembleEncoder needs at least one member encoder, found none")
        for i, m in enumerate(members):
            if not isinstance(m, AudioEncoder):
                raise TypeError(f"ensemble member {i} is a {type(m).__name__}; expected a harmonia AudioEncoder "
                                "(build it with harmonia.load_encoder)")
        for name, value, hint in (("align", align, str), ("reference", reference, int), ("fuse", fuse, str),
                                  ("names", names, list[str] | tuple[str, ...] | None)):
            check_type(f"EnsembleEncoder option {name}", value, hint)
        if align not in ALIGN_MODES:
            raise ValueError(f"align={align!r}: expected one of {ALIGN_MODES}")
        if fuse not in FUSE_MODES:
            raise ValueError(f"fuse={fuse!r}: expected one of {FUSE_MODES}")
        if not -len(members) <= reference < len(members):
            raise ValueError(f"reference={reference}: the ensemble has {len(members)} members; expected an index "
                             f"in 0..{len(members) - 1}")
        rates = {m.sampling_rate for m in members}
        if len(rates) > 1:
            raise ValueError(f"ensemble members expect different sampling rates {sorted(rates)}; every member must "
                             "take the same input rate")
        dims = [m.output_dim for m in members]
        if fuse == "mean" and len(set(dims)) > 1:
            raise ValueError(f"fuse='mean' needs members of one output_dim, found {dims}; use fuse='concat' "
                             "(output_dim = their sum) or pick members (or layers) of equal width")
        if names is not None and len(names) != len(members):
            raise ValueError(f"names: {len(names)} given for {len(members)} members")
        self.members = nn.ModuleList(members)
        self.names = list(names) if names is not None else [type(m).__name__ for m in members]
        self.align, self.fuse = align, fuse
        self.reference = reference % len(members)
        self.sampling_rate = members[0].sampling_rate
        self.output_dim = sum(dims) if fuse == "concat" else dims[0]
        self.hop_size_in_ms = float(members[self.reference].hop_size_in_ms)
        self.min_samples = max(m.min_samples for m in members)

    @property
    def device(self) -> torch.device:
        return self.members[self.reference].device

    @property
    def dtype(self) -> torch.dtype:
        return self.members[self.reference].dtype

    @property
    def member_slices(self) -> list[slice]:
        """Feature slice of each member in the concatenated output (fuse="concat")."""
        out, start = [], 0
        for m in self.members:
            out.append(slice(start, start + m.output_dim))
            start += m.output_dim
        return out

    def num_frames(self, num_samples: int) -> int:
        return self.members[self.reference].num_frames(max(num_samples, self.min_samples))

    def _encode(self, wav_BN: Tensor, lengths_B: Tensor, output_hidden_states: bool) -> EncoderOutput:
        outs = [m.encode(wav_BN, lengths_B, output_hidden_states) for m in self.members]
        ref = outs[self.reference]
        device = ref.frames.device
        T, ref_len = ref.frames.shape[1], ref.lengths.cpu()

        def to_grid(x_BTD: Tensor, lens_B: Tensor) -> Tensor:
            x_BTD = x_BTD.to(device)
            if x_BTD.shape[1] == T and torch.equal(lens_B.cpu(), ref_len):
                return x_BTD  # already on the reference grid (align_frames would be the identity)
            return align_frames(x_BTD, T, self.align, lens_B, ref_len)

        aligned = [to_grid(o.frames, o.lengths) for o in outs]
        frames = torch.cat(aligned, dim=-1) if self.fuse == "concat" else torch.stack(aligned).mean(0)
        hidden = None
        if output_hidden_states:
            hidden = tuple(to_grid(h, o.lengths) for o in outs for h in (o.hidden_states or ()))
        return EncoderOutput(frames=frames, lengths=ref.lengths.to(device), hidden_states=hidden)

    # -- our format ------------------------------------------------------------------------------------
    def export_config(self) -> dict[str, Any]:
        for i, m in enumerate(self.members):
            if not hasattr(m, "export_config"):
                raise TypeError(f"ensemble member {i} ({type(m).__name__}) cannot be exported to harmonia's format")
        return {"family": FAMILY, "names": self.names,
                "members": [m.export_config() for m in self.members],
                "options": {"align": self.align, "reference": self.reference, "fuse": self.fuse}}

    def export_state(self) -> dict[str, Tensor]:
        return {f"members.{i}.{k}": v for i, m in enumerate(self.members) for k, v in m.export_state().items()}


# -------------------------------------------------------------------------------------------------
# options shared by every way of building an ensemble


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(ensemble options, build options for every member (dtype/device), encoder options such as
    layer/layout that go to the members that accept them)."""
    ens = {k: options[k] for k in ENSEMBLE_OPTIONS if k in options}
    build = {k: options[k] for k in ("dtype", "device") if k in options}
    rest = {k: v for k, v in options.items() if k not in ens and k not in build}
    return ens, build, rest


def accepted_options(encoder: AudioEncoder) -> set[str]:
    """Encoder options a member can be rebuilt with: the keys of its exported `options`."""
    if not hasattr(encoder, "export_config"):
        return set()
    return set(encoder.export_config().get("options", {}))


def with_options(encoder: AudioEncoder, **options: Any) -> AudioEncoder:
    """The same weights behind a new encoder with some options changed (e.g. `layer`, `layout`);
    no copy of the weights. Options the encoder does not take raise a TypeError."""
    if not options:
        return encoder
    current = encoder.export_config().get("options", {}) if hasattr(encoder, "export_config") else {}
    unknown = set(options) - set(current)
    if unknown:
        raise TypeError(f"{type(encoder).__name__} takes no option(s) {sorted(unknown)}; it takes {sorted(current)}")
    return type(encoder)(encoder.model, **{**current, **options})


def configure_members(members: Sequence[AudioEncoder], shared: Mapping[str, Any]) -> list[AudioEncoder]:
    """Apply options given for the whole ensemble (e.g. `layout="flat"`) to the members that take
    them; an option no member takes is an error (a typo should not pass silently)."""
    if not shared:
        return list(members)
    accepted = [accepted_options(m) for m in members]
    unused = set(shared) - set().union(*accepted)
    if unused:
        raise TypeError(f"no ensemble member takes option(s) {sorted(unused)}; the members take "
                        f"{sorted(set().union(*accepted))} and the ensemble takes {list(ENSEMBLE_OPTIONS)} + dtype, device")
    return [with_options(m, **{k: v for k, v in shared.items() if k in acc}) for m, acc in zip(members, accepted)]
