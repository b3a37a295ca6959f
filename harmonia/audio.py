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
    # size for uncompressed containers (WAV, RF64, W64, AIFF), so their header is read directly;
    # compressed formats report their header length in `info.frames` (mp3 decoders may differ by an
    # encoder delay, hence the 1%).
    declared = _header_frames(path) if info.format in HEADER_FORMATS else info.frames
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


# Uncompressed containers whose frame count libsndfile derives from the file size.
HEADER_FORMATS = ("WAV", "WAVEX", "RF64", "W64", "AIFF")
_W64_RIFF = b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00"


def _header_frames(path: Path) -> int | None:
    """Frames announced by the header of a WAV/RF64, Sony Wave64 or AIFF file (None if it cannot be
    read or is a streaming placeholder that announces no length)."""
    with open(path, "rb") as f:
        head = f.read(16)
        if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
            if head[:4] == b"RIFF" and int.from_bytes(head[4:8], "little") == 0xFFFFFFFF:  # streamed
                return None
            f.seek(12)
            return _wave_frames(f, rf64=head[:4] == b"RF64")
        if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            f.seek(12)
            return _aiff_frames(f)
        if head == _W64_RIFF:
            f.seek(40)  # riff GUID, 64-bit size, wave GUID
            return _w64_frames(f)
    return None


def _wave_frames(f, rf64: bool) -> int | None:
    """RIFF/RF64 chunks: the `data` size (RF64: from the `ds64` chunk) over the block alignment."""
    block_align = ds64_data = None
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            return None
        cid, size = chunk[:4], int.from_bytes(chunk[4:], "little")
        if cid == b"ds64":
            body = f.read(size + (size & 1))
            ds64_data = int.from_bytes(body[8:16], "little")
        elif cid == b"fmt ":
            fmt = f.read(size + (size & 1))
            block_align = int.from_bytes(fmt[12:14], "little")
        elif cid == b"data":
            if rf64 and size == 0xFFFFFFFF:
                size = ds64_data
            elif size in STREAMED_WAV_SIZES:
                return None
            return size // block_align if size and block_align else None
        else:
            f.seek(size + (size & 1), 1)


def _aiff_frames(f) -> int | None:
    """AIFF/AIFC chunks (big-endian): numSampleFrames of the `COMM` chunk."""
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            return None
        cid, size = chunk[:4], int.from_bytes(chunk[4:], "big")
        if cid == b"COMM":
            return int.from_bytes(f.read(6)[2:6], "big")
        f.seek(size + (size & 1), 1)


def _w64_frames(f) -> int | None:
    """Sony Wave64 chunks: 16-byte GUIDs (the first 4 bytes name them), 64-bit sizes that include
    the 24-byte chunk header, bodies padded to 8 bytes."""
    block_align = None
    while True:
        head = f.read(24)
        if len(head) < 24:
            return None
        cid, size = head[:4], int.from_bytes(head[16:24], "little")
        if size < 24:
            return None
        if cid == b"fmt ":
            fmt = f.read(size - 24)
            block_align = int.from_bytes(fmt[12:14], "little")
            f.seek(-size % 8, 1)
        elif cid == b"data":
            return (size - 24) // block_align if block_align else None
        else:
            f.seek(size - 24 + (-size % 8), 1)


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
