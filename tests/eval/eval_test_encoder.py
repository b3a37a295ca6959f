"""A small deterministic test encoder for the evaluation tests (a legitimate `AudioEncoder`, not a
stand-in for a real model): 20 ms frames of 320 samples, log power in 16 equal FFT bands, times a
learnable per-band `scale` (so the encoder has weights whose change must invalidate caches).
T' = max(1, N // 320)."""

from __future__ import annotations

import torch
from torch import nn

from harmonia.encoder import AudioEncoder, EncoderOutput

HOP = 320


class BandEnergyEncoder(AudioEncoder):
    output_dim = 16
    hop_size_in_ms = 20.0
    min_samples = HOP

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(self.output_dim))
        self.calls = 0  # number of batches encoded (tests count cache hits with it)

    def num_frames(self, num_samples: int) -> int:
        return max(1, num_samples // HOP)

    def _encode(self, wav_BN, lengths_B, output_hidden_states):
        self.calls += 1
        T = wav_BN.shape[1] // HOP
        frames = wav_BN[:, : T * HOP].reshape(wav_BN.shape[0], T, HOP)
        power = torch.fft.rfft(frames, dim=-1).abs().pow(2)[..., :320 // 2]  # (B, T, 160)
        bands = power.reshape(*power.shape[:2], self.output_dim, -1).mean(-1)
        x = torch.log(bands + 1e-6) * self.scale
        lengths = (lengths_B // HOP).clamp(min=1)
        return EncoderOutput(x, lengths)
