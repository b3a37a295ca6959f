"""Front ends in pure torch (no torchaudio).

`kaldi_fbank` reproduces `torchaudio.compliance.kaldi.fbank` as called by BEATs (docs/beats.md §1)
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


# -------------------------------------------------------------------------------------------------
# Log-mel spectrogram in dB (Dasheng)
#
# Reproduces torchaudio's `MelSpectrogram(f_min=0, f_max=8000, n_fft=512, win_length=512,
# hop_length=160, n_mels=64, center=True, pad_mode="reflect", power=2, norm=None, mel_scale="htk")`
# followed by `AmplitudeToDB(stype="power", top_db=120)` (docs/dasheng.md §1), always in float32.

MEL_N_FFT = 512
MEL_HOP = 160  # 10 ms at 16 kHz
MEL_BINS = 64
MEL_AMIN = 1e-10  # power floor before the log
MEL_TOP_DB = 120.0


def _htk_hz_to_mel(freq: float) -> float:
    return 2595.0 * math.log10(1.0 + freq / 700.0)


@lru_cache(maxsize=8)
def htk_mel_filterbank(n_freqs: int = MEL_N_FFT // 2 + 1, n_mels: int = MEL_BINS, sample_rate: int = 16000,
                       f_min: float = 0.0, f_max: float = 8000.0) -> Tensor:
    """Triangular HTK-mel filters (n_freqs, n_mels), peak 1, no area normalisation.

    Built in float32 in torchaudio's order of operations (`melscale_fbanks`), which makes it
    bit-exact: float64 construction moves the dB features by up to 7e-3 dB."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    mel_pts = torch.linspace(_htk_hz_to_mel(f_min), _htk_hz_to_mel(f_max), n_mels + 2)
    f_pts = 700.0 * (10.0 ** (mel_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]  # (n_mels + 1,) width of each rising/falling edge
    slopes = f_pts[None, :] - all_freqs[:, None]  # (n_freqs, n_mels + 2)
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1), torch.min(down, up))


@lru_cache(maxsize=4)
def hann_window(size: int = MEL_N_FFT) -> Tensor:
    """Periodic Hann window (float32): w[n] = 0.5 - 0.5 cos(2 pi n / size)."""
    return torch.hann_window(size, periodic=True, dtype=torch.float32)


def power_mel(wav_BN: Tensor, n_fft: int = MEL_N_FFT, hop: int = MEL_HOP, n_mels: int = MEL_BINS,
              f_min: float = 0.0, f_max: float = 8000.0, sample_rate: int = 16000) -> Tensor:
    """Mel power spectrogram of (B, N) float waveforms -> (B, n_mels, T), T = 1 + N // hop.

    Centred frames with reflect padding of n_fft // 2 each side (needs N > n_fft // 2), periodic
    Hann window of n_fft, power computed as |X|^2 via `abs().pow(2)` like torchaudio."""
    N = wav_BN.shape[-1]
    if N <= n_fft // 2:
        raise ValueError(f"the centred STFT needs more than {n_fft // 2} samples (reflect padding), found {N}")
    wav_BN = wav_BN.float()
    spec_BFT = torch.stft(wav_BN, n_fft, hop_length=hop, win_length=n_fft,
                          window=hann_window(n_fft).to(wav_BN.device), center=True, pad_mode="reflect",
                          normalized=False, onesided=True, return_complex=True)
    power_BFT = spec_BFT.abs().pow(2.0)
    fb_FM = htk_mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max).to(wav_BN.device)
    return torch.matmul(power_BFT.transpose(-1, -2), fb_FM).transpose(-1, -2)


def power_to_db(power_BMT: Tensor, top_db: float | None = MEL_TOP_DB, batch_topdb: bool = False) -> Tensor:
    """10 log10(max(P, 1e-10)) floored at (max - top_db) -> same shape (B, M, T).

    The maximum is taken per item by default. `batch_topdb=True` takes ONE maximum over the whole
    batch, as torchaudio's `AmplitudeToDB` does for a 3-D input (and so the Dasheng reference): an
    item's features then depend on its batch-mates."""
    db_BMT = 10.0 * torch.log10(torch.clamp(power_BMT, min=MEL_AMIN))
    if top_db is None:
        return db_BMT
    if batch_topdb:
        peak = db_BMT.amax()
    else:
        peak = db_BMT.amax(dim=(-2, -1), keepdim=True)
    return torch.max(db_BMT, peak - top_db)


def log_mel_db(wav_BN: Tensor, batch_topdb: bool = False, top_db: float | None = MEL_TOP_DB) -> Tensor:
    """Dasheng's front end: (B, N) waveform at 16 kHz -> (B, 64, 1 + N // 160) log-mel in dB."""
    return power_to_db(power_mel(wav_BN), top_db=top_db, batch_topdb=batch_topdb)
