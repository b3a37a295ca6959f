"""harmonia.audio: decoding with libsndfile, mono mix, soxr resampling, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from harmonia.audio import AudioError, crop_or_pad, load_audio, pad_batch, resample


def tone(sr: int, seconds: float, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else x


@pytest.mark.parametrize("fmt,subtype,sr,channels", [
    ("wav", "PCM_16", 16000, 1), ("wav", "FLOAT", 44100, 2), ("flac", "PCM_24", 48000, 2),
    ("flac", "PCM_16", 8000, 1), ("ogg", "VORBIS", 22050, 1), ("mp3", "MPEG_LAYER_III", 44100, 2),
])
def test_formats_rates_channels(tmp_path, fmt, subtype, sr, channels):
    if fmt == "mp3" and "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MP3 support")
    path = tmp_path / f"x.{fmt}"
    sf.write(path, tone(sr, 1.0, channels=channels), sr, subtype=subtype)
    wav = load_audio(path)
    assert wav.dtype == torch.float32 and wav.ndim == 1
    assert abs(len(wav) - 16000) <= (1200 if fmt == "mp3" else 1)  # mp3 adds encoder delay/padding
    # the 440 Hz tone survives: its spectrum peaks at 440 Hz (±2 Hz) after resampling to 16 kHz
    spec = np.abs(np.fft.rfft(wav.numpy()[:16000] if len(wav) >= 16000 else wav.numpy(), n=16000))
    assert abs(int(spec.argmax()) - 440) <= 2


def test_stereo_is_averaged(tmp_path):
    left = np.full(1600, 0.2, np.float32)
    right = np.full(1600, -0.6, np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    assert torch.allclose(load_audio(tmp_path / "s.wav"), torch.full((1600,), -0.2), atol=1e-7)


def test_resample_length_and_identity():
    x = tone(44100, 2.0)
    assert len(resample(x, 44100)) == 32000
    assert resample(x, 16000, 16000) is not None and np.array_equal(resample(x, 16000, 16000), x)


def test_missing_unreadable_empty_nonfinite_truncated(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "nope.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF????WAVEfmt garbage")
    with pytest.raises(AudioError, match="junk.wav.*could not decode"):
        load_audio(tmp_path / "junk.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0,), np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav.*empty"):
        load_audio(tmp_path / "empty.wav")
    bad = tone(16000, 0.1)
    bad[10] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav.*NaN"):
        load_audio(tmp_path / "nan.wav")
    sf.write(tmp_path / "full.wav", tone(16000, 1.0), 16000, subtype="PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="cut.wav.*truncated"):
        load_audio(tmp_path / "cut.wav")
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)


def test_crop_or_pad_and_pad_batch():
    x = torch.arange(5.0)
    assert crop_or_pad(x, 3).tolist() == [0, 1, 2]
    assert crop_or_pad(x, 7).tolist() == [0, 1, 2, 3, 4, 0, 0]
    wav, lengths = pad_batch([torch.ones(2), torch.ones(4)])
    assert wav.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]] and lengths.tolist() == [2, 4]


def _hand_made_wav(path, samples: np.ndarray, riff_size: int | None, data_size: int | None) -> None:
    """A 16 kHz mono PCM_16 WAV written byte by byte; None sizes are the true ones."""
    import struct

    payload = samples.astype("<i2").tobytes()
    data_size = len(payload) if data_size is None else data_size
    riff_size = 4 + 24 + 8 + len(payload) if riff_size is None else riff_size
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    path.write_bytes(b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
                     + b"data" + struct.pack("<I", data_size) + payload)


@pytest.mark.parametrize("riff_size,data_size", [(0xFFFFFFFF, 0xFFFFFFFF), (None, 0xFFFFFFFF),
                                                 (0xFFFFFFFF, None), (None, 0x7FFFF000)])
def test_streamed_wav_with_placeholder_sizes_is_read_whole(tmp_path, riff_size, data_size):
    """Pipes (ffmpeg -f wav -, sox ... -t wav -) cannot rewind to write the sizes: the header holds
    placeholders and every frame up to the end of the file belongs to the stream."""
    samples = (np.sin(np.arange(12345) / 7.0) * 12000).astype(np.int16)
    _hand_made_wav(tmp_path / "stream.wav", samples, riff_size, data_size)
    wav = load_audio(tmp_path / "stream.wav")
    assert len(wav) == len(samples)
    assert torch.allclose(wav, torch.from_numpy(samples / 32768.0).float(), atol=1e-6)


def test_wav_with_a_real_size_that_the_file_does_not_hold_is_truncated(tmp_path):
    samples = np.zeros(16000, np.int16)
    _hand_made_wav(tmp_path / "short.wav", samples[:8000], None, 2 * 16000)  # header: 1 s, file: 0.5 s
    with pytest.raises(AudioError, match="short.wav.*truncated.*16000 frames.*8000"):
        load_audio(tmp_path / "short.wav")


@pytest.mark.parametrize("fmt,ext,subtype", [
    ("RF64", "wav", "PCM_16"), ("W64", "w64", "PCM_16"), ("AIFF", "aiff", "PCM_16"), ("AIFF", "aiff", "PCM_24"),
    ("WAVEX", "wav", "PCM_24"),
])
def test_cut_short_rf64_wave64_and_aiff_are_truncated_not_half_read(tmp_path, fmt, ext, subtype):
    """libsndfile derives their length from the file size, so a file cut in half used to load as
    half the audio without a word; the header's own frame count is what the file should hold."""
    path = tmp_path / f"clip.{ext}"
    sf.write(path, tone(16000, 2.0, channels=2), 16000, format=fmt, subtype=subtype)
    assert len(load_audio(path)) == 32000  # intact: read whole
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"clip\..*truncated.*announces 32000 frames"):
        load_audio(path)
