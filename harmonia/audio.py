"""Audio input: the one place where files become 16 kHz mono float32 waveforms.

Decoding uses libsndfile (through `soundfile`): wav, flac, ogg/vorbis, opus and mp3 (libsndfile
>= 1.1). Resampling uses soxr (VHQ). No torchaudio anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """A file could not be turned into a usable waveform. The message names the file and the fix."""


def to_mono(audio_NC: np.ndarray) -> np.ndarray:
    """(N,) or (N, C) -> (N,) by averaging channels (X-ARES does the same)."""
    if audio_NC.ndim == 1:
        return audio_NC
    return audio_NC.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(wav_N: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float32 waveform with soxr (very high quality)."""
    if orig_sr == target_sr:
        return wav_N.astype(np.float32, copy=False)
    return soxr.resample(wav_N.astype(np.float32, copy=False), orig_sr, target_sr, quality="VHQ").astype(
        np.float32, copy=False
    )


def check_waveform(wav: np.ndarray | torch.Tensor, name: str = "waveform") -> None:
    """Raise AudioError if `wav` is empty or holds NaN/inf."""
    size = wav.numel() if isinstance(wav, torch.Tensor) else wav.size
    if size == 0:
        raise AudioError(f"{name}: the audio is empty (0 samples); expected at least one sample. "
                         "Check that the file is not truncated or silent-by-construction.")
    finite = torch.isfinite(wav).all().item() if isinstance(wav, torch.Tensor) else np.isfinite(wav).all()
    if not finite:
        raise AudioError(f"{name}: the audio contains NaN or infinite samples; expected finite values. "
                         "Re-export the file or clean it (e.g. np.nan_to_num) before encoding.")


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Read any file libsndfile can decode, mix to mono, resample to `sample_rate`.

    Returns a float32 tensor of shape (N,). Raises AudioError naming the file when it is missing,
    unreadable, truncated, empty or non-finite.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file. Expected an audio file (wav, flac, ogg, mp3).")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, expected an audio file (wav, flac, ogg, mp3).")
    try:
        info = sf.info(str(path))
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(
            f"{path}: could not decode audio ({e}). Expected a format libsndfile reads "
            "(wav, flac, ogg, mp3); convert it, e.g. `ffmpeg -i IN -ar 16000 OUT.flac`."
        ) from e
    # A cut-short file decodes to fewer frames than its header announces. libsndfile trusts the file
    # size for WAV, so the RIFF `data` chunk size is read directly; compressed formats report their
    # header length in `info.frames` (mp3 decoders may differ by an encoder delay, hence the 1%).
    declared = _riff_declared_frames(path, info) if info.format in ("WAV", "WAVEX") else info.frames
    if declared and audio.shape[0] < declared - max(2, declared // 100):
        raise AudioError(
            f"{path}: truncated file: the header announces {declared} frames but only "
            f"{audio.shape[0]} could be read. Re-download or re-export the file."
        )
    wav = to_mono(audio)
    check_waveform(wav, str(path))
    wav = resample(wav, sr, sample_rate)
    return torch.from_numpy(np.ascontiguousarray(wav))


# `data` sizes that writers put in a WAV header when they cannot know the length (the output is a
# pipe and cannot be rewound): ffmpeg and most tools write 0xFFFFFFFF, SoX 0x7FFFF000. Such a header
# announces nothing; libsndfile reads up to the end of the file, which is then the whole stream.
STREAMED_WAV_SIZES = (0xFFFFFFFF, 0x7FFFF000)


def _riff_declared_frames(path: Path, info) -> int | None:
    """Frames announced by the `data` chunk of a RIFF/WAVE header (None if it cannot be read or the
    header is a streaming placeholder that announces no length)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        if int.from_bytes(head[4:8], "little") == 0xFFFFFFFF:  # RIFF size of a streamed file
            return None
        block_align = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"fmt ":
                fmt = f.read(size + (size & 1))
                block_align = int.from_bytes(fmt[12:14], "little")
            elif cid == b"data":
                if size in STREAMED_WAV_SIZES:
                    return None
                return size // block_align if block_align else None
            else:
                f.seek(size + (size & 1), 1)


def crop_or_pad(wav_N: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Cut to `num_samples` or right-pad with zeros."""
    if wav_N.shape[-1] >= num_samples:
        return wav_N[..., :num_samples]
    pad = torch.zeros(*wav_N.shape[:-1], num_samples - wav_N.shape[-1], dtype=wav_N.dtype)
    return torch.cat([wav_N, pad], dim=-1)


def pad_batch(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D waveforms into (B, Nmax) and return it with their lengths (B,)."""
    lengths = torch.tensor([w.shape[-1] for w in wavs], dtype=torch.long)
    out = torch.zeros(len(wavs), int(lengths.max()), dtype=torch.float32)
    for i, w in enumerate(wavs):
        out[i, : w.shape[-1]] = w
    return out, lengths
