"""The encoder contract shared by every model family and by ensembles.

An `AudioEncoder` is an inference wrapper (always in eval mode) that turns 16 kHz mono waveforms
(B, N) into frame sequences (B, T', D). It satisfies the X-ARES contract (`sampling_rate`,
`output_dim`, `hop_size_in_ms`, class name ending in `Encoder`, `forward(wav) -> [B, T', D]`) and
adds `encode(wav, lengths=...)`, which masks padding exactly so that a clip's frames do not depend
on its batch-mates.

Long inputs are chunked by each family in units of its own output frames, so that the chunked
output has exactly the frame count of the unchunked model (see `frame_chunks`).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor, nn

from harmonia.audio import AudioError


@dataclass
class EncoderOutput:
    """frames (B, T', D) float32; lengths (B,) valid frames per item; hidden_states: one
    (B, T', D_l) tensor per layer boundary (input of the first layer, then each layer's output)."""

    frames: Tensor
    lengths: Tensor
    hidden_states: tuple[Tensor, ...] | None = None


class AudioEncoder(nn.Module):
    """Base class. Subclasses set `output_dim`, `hop_size_in_ms`, `min_samples` and implement
    `num_frames(num_samples)` and `_encode(wav_BN, lengths_B, output_hidden_states)`."""

    sampling_rate: int = 16000
    output_dim: int
    hop_size_in_ms: float
    #: Inputs shorter than this are right-padded with zeros up to it (documented per family).
    min_samples: int = 1

    # ----------------------------------------------------------------------------------------------
    def num_frames(self, num_samples: int) -> int:
        """Number of output frames `encode` returns for a clip of `num_samples` samples."""
        raise NotImplementedError

    def _encode(self, wav_BN: Tensor, lengths_B: Tensor, output_hidden_states: bool) -> EncoderOutput:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> AudioEncoder:
        """Encoders are inference wrappers: they stay in eval mode whatever the caller asks
        (X-ARES never calls `.eval()`; Dasheng's BatchNorm would otherwise update its statistics)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def forward(self, wav: Tensor) -> Tensor:
        """(B, N) or (N,) waveform -> (B, T', D) float32 frames. Every item is taken as full length."""
        return self.encode(wav).frames

    @torch.no_grad()
    def encode(self, wav: Tensor, lengths: Tensor | None = None,
               output_hidden_states: bool = False) -> EncoderOutput:
        """Encode a batch. `wav` (B, N) or (N,), float, 16 kHz; `lengths` (B,) valid samples per
        item (right padding). Returns float32 frames with padded frames set to zero."""
        tune_allocator()
        wav_BN, lengths_B = self._validate(wav, lengths)
        wav_BN = wav_BN.to(device=self.device)
        if wav_BN.shape[1] < self.min_samples:  # documented short-input behaviour: zero-pad
            wav_BN = nn.functional.pad(wav_BN, (0, self.min_samples - wav_BN.shape[1]))
        lengths_B = lengths_B.clamp(min=self.min_samples).to(wav_BN.device)
        out = self._encode(wav_BN, lengths_B, output_hidden_states)
        out.frames = _zero_padding(out.frames.float(), out.lengths)
        if out.hidden_states is not None:
            out.hidden_states = tuple(_zero_padding(h.float(), out.lengths) for h in out.hidden_states)
        return out

    def _validate(self, wav: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        if not isinstance(wav, Tensor):
            raise TypeError(f"expected a torch.Tensor waveform (B, N), found {type(wav).__name__}; "
                            "use harmonia.load_audio(path) or torch.as_tensor(array)")
        if wav.ndim == 1:
            wav = wav[None]
        if wav.ndim != 2:
            raise AudioError(f"expected a waveform of shape (B, N) or (N,), found shape {tuple(wav.shape)}; "
                             "mix channels to mono first (harmonia.audio.to_mono)")
        if not wav.is_floating_point():
            raise AudioError(f"expected a float waveform in [-1, 1], found dtype {wav.dtype}; "
                             "divide int16 PCM by 32768")
        if wav.shape[1] == 0:
            raise AudioError("the waveform is empty (0 samples); expected at least one sample")
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long)
        lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
        if lengths.shape != (wav.shape[0],):
            raise ValueError(f"lengths must have shape ({wav.shape[0]},), found {tuple(lengths.shape)}")
        if (lengths < 1).any() or (lengths > wav.shape[1]).any():
            raise ValueError(f"lengths must lie in [1, {wav.shape[1]}] (the padded length), found "
                             f"{lengths.tolist()}")
        if not torch.isfinite(wav).all():
            raise AudioError("the waveform contains NaN or infinite samples; expected finite values")
        return wav.float(), lengths


@cache
def tune_allocator() -> bool:
    """Keep freed memory in the heap instead of returning it to the OS (glibc malloc, CPU).

    Inference allocates the same large activations layer after layer; with glibc's defaults each of
    them is a fresh mmap whose pages fault in again on every call, which costs 20-30 % of BEATs-base
    throughput at batch 8 on a 2-core CPU. Raising the trim and mmap thresholds (mallopt) removes
    that. Runs once per process; set HARMONIA_TUNE_MALLOC=0 to leave the allocator alone.
    """
    if os.environ.get("HARMONIA_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    ok = libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(1 << 30))
    ok &= libc.mallopt(M_TOP_PAD, ctypes.c_int(1 << 28))
    ok &= libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(32 << 20))  # glibc's maximum on 64-bit
    return bool(ok)


def _zero_padding(x_BTD: Tensor, lengths_B: Tensor) -> Tensor:
    """Set frames at or beyond each item's length to zero (no meaningless values leak out)."""
    T = x_BTD.shape[1]
    valid_BT = torch.arange(T, device=x_BTD.device)[None] < lengths_B.to(x_BTD.device)[:, None]
    return x_BTD * valid_BT[..., None]


def frame_chunks(total: int, chunk: int | None) -> Iterator[tuple[int, int]]:
    """Split `total` units (frames, patches, tokens) into [start, end) pieces of at most `chunk`."""
    if not chunk or total <= chunk:
        yield 0, total
        return
    for start in range(0, total, chunk):
        yield start, min(start + chunk, total)


def encode_in_chunks(
    units_B: Tensor,
    chunk_units: int | None,
    run: Callable[[int, int, Tensor], tuple[Tensor, tuple[Tensor, ...] | None]],
    output_hidden_states: bool,
) -> tuple[Tensor, tuple[Tensor, ...] | None]:
    """Run `run(start, end, items)` on each chunk [start, end) of the unit axis and concatenate along
    time. `units_B` holds each item's valid unit count; a chunk only runs on the items that reach
    into it, so no item is ever encoded over a chunk made only of padding. `run` returns
    (frames (b, t, D), hidden states or None) for the selected items.
    """
    total = int(units_B.max())
    pieces: list[Tensor] = []
    hidden_pieces: list[list[Tensor]] = []
    B = units_B.shape[0]
    for start, end in frame_chunks(total, chunk_units):
        items = torch.nonzero(units_B > start).flatten()
        frames, hidden = run(start, end, items)
        full = frames.new_zeros(B, *frames.shape[1:])
        full[items] = frames
        pieces.append(full)
        if output_hidden_states and hidden is not None:
            hs = []
            for h in hidden:
                hf = h.new_zeros(B, *h.shape[1:])
                hf[items] = h
                hs.append(hf)
            hidden_pieces.append(hs)
    frames = torch.cat(pieces, dim=1)
    if not output_hidden_states:
        return frames, None
    hidden = tuple(torch.cat([hp[i] for hp in hidden_pieces], dim=1) for i in range(len(hidden_pieces[0])))
    return frames, hidden
