"""Front ends in pure torch (no torchaudio).

`kaldi_fbank` reproduces `torchaudio.compliance.kaldi.fbank` as called by BEATs (spec beats.md §1)
bit-exactly in float32: every step follows torchaudio's float32 order of operations, including the
mel matrix and the povey window, which are built in float32 exactly as torchaudio builds them.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

# -------------------------------------------------------------------------------------------------
# Kaldi fbank (BEATs)

KALDI_WINDOW = 400  # 25 ms at 16 kHz
KALDI_SHIFT = 160  # 10 ms at 16 kHz
KALDI_NFFT = 512  # next power of two above the window
BEATS_FBANK_MEAN = 15.41663  # BEATs.preprocess default
BEATS_FBANK_STD = 6.55582


def _kaldi_mel(freq):
    # Kaldi/HTK-style mel with natural log: 1127 ln(1 + f/700)
    if isinstance(freq, Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


@lru_cache(maxsize=8)
def kaldi_mel_banks(num_bins: int = 128, n_fft: int = KALDI_NFFT, sample_rate: float = 16000.0,
                    low_freq: float = 20.0, high_freq: float = 0.0) -> Tensor:
    """Triangular mel filters (num_bins, n_fft//2 + 1) as Kaldi builds them: triangles in the mel
    domain, not area-normalised, last (Nyquist) column zero. Computed in float32 in the same order as
    torchaudio's `get_mel_banks` so that the fbank is bit-exact."""
    num_fft_bins = n_fft // 2
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    fft_bin_width = sample_rate / n_fft
    mel_low, mel_high = _kaldi_mel(low_freq), _kaldi_mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    m = torch.arange(num_bins).unsqueeze(1)  # int64, promoted to float32 below as in torchaudio
    left = mel_low + m * delta
    center = mel_low + (m + 1.0) * delta
    right = mel_low + (m + 2.0) * delta
    mel = _kaldi_mel(fft_bin_width * torch.arange(float(num_fft_bins))).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(up, down))
    return torch.nn.functional.pad(banks, (0, 1))


@lru_cache(maxsize=4)
def povey_window(size: int = KALDI_WINDOW) -> Tensor:
    """Kaldi's 'povey' window: the symmetric Hann window raised to 0.85 (float32)."""
    return torch.hann_window(size, periodic=False, dtype=torch.float32).pow(0.85)


def kaldi_num_frames(num_samples: int) -> int:
    """Frames of the snip-edges framing: 1 + (N - 400) // 160, or 0 when N < 400."""
    return 0 if num_samples < KALDI_WINDOW else 1 + (num_samples - KALDI_WINDOW) // KALDI_SHIFT


def kaldi_fbank(wav_BN: Tensor, num_mel_bins: int = 128) -> Tensor:
    """Raw (unnormalised) log-mel Kaldi fbank of waveforms already scaled to int16 range.

    wav_BN: (B, N) float32, N >= 400. Returns (B, T, num_mel_bins), T = 1 + (N - 400) // 160.
    Options fixed to those of BEATs: dither 0, DC removal, pre-emphasis 0.97, povey window, snip
    edges, 512-point FFT, power spectrum, 20 Hz to Nyquist, log floor = float32 eps.
    """
    B, N = wav_BN.shape
    T = kaldi_num_frames(N)
    if T < 1:
        raise ValueError(f"kaldi_fbank needs at least {KALDI_WINDOW} samples per clip, found {N}")
    wav_BN = wav_BN.contiguous()
    s0, s1 = wav_BN.stride()
    frames_BTW = wav_BN.as_strided((B, T, KALDI_WINDOW), (s0, KALDI_SHIFT * s1, s1))
    frames_BTW = frames_BTW - frames_BTW.mean(dim=-1, keepdim=True)  # DC removal
    # pre-emphasis y[j] = x[j] - 0.97 x[j-1] with x[-1] := x[0]
    prev = torch.cat([frames_BTW[..., :1], frames_BTW[..., :-1]], dim=-1)
    frames_BTW = frames_BTW - 0.97 * prev
    frames_BTW = frames_BTW * povey_window().to(wav_BN.device)
    frames_BTW = torch.nn.functional.pad(frames_BTW, (0, KALDI_NFFT - KALDI_WINDOW))
    power_BTF = torch.fft.rfft(frames_BTW).abs().pow(2.0)
    banks = kaldi_mel_banks(num_mel_bins).to(wav_BN.device)
    mel_BTM = torch.matmul(power_BTF, banks.T)
    eps = torch.tensor(torch.finfo(torch.float32).eps, device=wav_BN.device)
    return torch.max(mel_BTM, eps).log()


def beats_fbank(wav_BN: Tensor, mean: float = BEATS_FBANK_MEAN, std: float = BEATS_FBANK_STD) -> Tensor:
    """BEATs preprocessing: waveform in [-1, 1] (B, N) -> normalised fbank (B, T, 128).

    Scales by 2^15 (no rounding or clipping), takes the Kaldi fbank, then (x - mean) / (2 std).
    """
    fbank = kaldi_fbank(wav_BN.float() * 2**15)
    return (fbank - mean) / (2 * std)
