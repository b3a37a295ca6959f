"""A small synthetic audio pool on disk: three domains whose files have different lengths, sample
rates and channel counts, plus one corrupt file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# corpus -> (domain, number of files, seconds per file, sample rate, channels)
POOL = {
    "talk": ("speech", 12, 1.5, 16000, 1),
    "chat": ("speech", 6, 3.0, 22050, 2),
    "songs": ("music", 5, 12.0, 44100, 1),
    "noise": ("sound", 8, 2.5, 16000, 1),
}


def make_pool(root: Path, pool: dict = POOL) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    dirs = {}
    for corpus, (_domain, n, sec, sr, ch) in pool.items():
        d = root / corpus
        (d / "sub").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            x = (0.1 * rng.standard_normal((round(sec * sr), ch))).astype(np.float32)
            sub = "sub/" if i % 2 else ""
            sf.write(d / f"{sub}{corpus}{i:03d}.{'flac' if i % 3 else 'wav'}", x, sr)
        dirs[corpus] = d
    return dirs


@pytest.fixture(scope="session")
def pool_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pool")
    make_pool(root)
    (root / "noise" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00not really a wav file")
    return root


def sources(root: Path) -> list[str]:
    return [f"{dom}/{corpus}={root / corpus}" for corpus, (dom, *_) in POOL.items()]
