"""Tiny datasets in the exact X-ARES layout (`<root>/<task>/<split>*.tar` of `<key>.<ext>` +
`<key>.json` pairs) and the test encoder. Classes are pure tones, so the tasks are learnable."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from eval_test_encoder import BandEnergyEncoder

from harmonia.eval.tasks import Task

TONES = {"low": 300.0, "mid": 1500.0, "high": 5000.0}


def tone(freq: float, seconds: float, sr: int = 16000, phase: float = 0.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def write_shard(path: Path, samples: list[tuple[str, np.ndarray, int, object]], ext: str = "flac",
                subtype: str | None = None) -> Path:
    """samples: (key, audio (N,) or (N, C), sample rate, json object) -> tar of `key.ext` + `key.json`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, audio, sr, meta in samples:
            buf = io.BytesIO()
            sf.write(buf, audio, sr, format=ext.upper(), subtype=subtype)
            for name, data in ((f"{key}.json", json.dumps(meta).encode()), (f"{key}.{ext}", buf.getvalue())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def tone_samples(prefix: str, n_per_class: int, seconds: float = 0.5, seed: int = 0, sr: int = 16000,
                 channels: int = 1, key_field: str = "label") -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_per_class):
        for name, f in TONES.items():
            freq = f * (1 + 0.05 * rng.standard_normal())
            out.append((f"{prefix}_{name}_{i}", tone(freq, seconds, sr, rng.uniform(0, 6), channels), sr,
                        {key_field: name}))
    return out


TONE_TASK = Task("tones", "Tones", "sound", label_key="label", weight=300, train_split="tones_train",
                 valid_split="tones_valid", test_split="tones_test", epochs=4, batch_size=8)
FOLD_TASK = Task("tonefolds", "Tone folds", "sound", label_key="label", weight=100, folds=("0", "1", "2"),
                 fold_pattern="tonefolds_fold{k:02d}.tar", epochs=3, batch_size=8)
EVENT_TASK = Task("toneevents", "Tone events", "sound", type="frame", label="events", classes=("low", "high"),
                  num_classes=2, metric="segmentf1_macro", segment_length_s=0.1, label_duration_s=1.0,
                  weight=50, train_split="ev_train", valid_split="ev_test", test_split="ev_test", knn=False,
                  epochs=3, batch_size=4)


def event_samples(prefix: str, n: int, seed: int) -> list:
    """1 s clips: a low tone on [0.2, 0.6) s, a high tone on [0.5, 0.9) s in every other clip."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = 0.01 * rng.standard_normal(16000).astype(np.float32)
        x[3200:9600] += tone(TONES["low"], 0.4)
        events = [{"onset": 0.2, "offset": 0.6, "label": "low"}]
        if i % 2:
            x[8000:14400] += tone(TONES["high"], 0.4)
            events.append({"onset": 0.5, "offset": 0.9, "label": "high"})
        out.append((f"{prefix}_{i}", x, 16000, events))
    return out


@pytest.fixture
def encoder() -> BandEnergyEncoder:
    return BandEnergyEncoder()


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """Three tasks on disk: a split task (one 8 kHz stereo shard among 16 kHz mono ones), a 3-fold
    task and a frame-level event task."""
    root = tmp_path / "env"
    write_shard(root / "tones" / "tones_train_000000.tar", tone_samples("tr", 4, seed=1))
    write_shard(root / "tones" / "tones_train_000001.tar", tone_samples("tr2", 2, seed=2, sr=8000, channels=2), "wav")
    write_shard(root / "tones" / "tones_valid_000000.tar", tone_samples("va", 2, seed=3))
    write_shard(root / "tones" / "tones_test_000000.tar", tone_samples("te", 3, seed=4, seconds=0.3))
    for k in range(3):
        write_shard(root / "tonefolds" / f"tonefolds_fold{k:02d}.tar", tone_samples(f"f{k}", 4, seed=10 + k))
    write_shard(root / "toneevents" / "ev_train_000000.tar", event_samples("tr", 8, 20))
    write_shard(root / "toneevents" / "ev_test_000000.tar", event_samples("te", 4, 21))
    return root


def knn_accuracy_numpy(train_x, train_y, test_x, test_y, mode: str, k: int = 10, temperature: float = 0.07) -> float:
    """kNN accuracy computed independently of harmonia (float64 numpy, one test item at a time):
    xares: X-ARES 0.1.3's KNN (training matrix L2-normalised per feature dimension over the
    training set, test rows per item); clean: cosine similarity. Top-k, softmax(sim / T) vote."""
    train = np.asarray(train_x, dtype=np.float64)
    test = np.asarray(test_x, dtype=np.float64)
    if mode == "xares":
        train = train / np.linalg.norm(train, axis=0, keepdims=True)
    else:
        train = train / np.linalg.norm(train, axis=1, keepdims=True)
    labels = np.asarray(train_y)
    correct = 0
    for x, y in zip(test, np.asarray(test_y)):
        sims = train @ (x / np.linalg.norm(x))
        top = np.argsort(-sims, kind="stable")[: min(k, len(sims))]
        w = np.exp((sims[top] - sims[top].max()) / temperature)
        votes = np.zeros(labels.max() + 1)
        np.add.at(votes, labels[top], w / w.sum())
        correct += int(votes.argmax() == y)
    return correct / len(test)
