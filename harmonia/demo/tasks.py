"""Synthetic evaluation tasks in the exact X-ARES layout (`<root>/<task>/<split>-000000.tar` holding
`<key>.flac` + `<key>.json` pairs), described as custom `harmonia.eval` tasks.

Seven tasks span the three domains, one of them frame-level:

| task | domain | what varies | label |
|---|---|---|---|
| synth_vowel | speech | which of 5 vowels a random speaker says | clip, accuracy |
| synth_speaker | speech | which of 8 synthetic speakers (pitch, vocal tract) talks | clip, accuracy |
| synth_syllables | speech | how many syllables (1-5) an utterance has | clip, accuracy |
| synth_instrument | music | which of 5 timbres plays a melody or chord | clip, accuracy |
| synth_chord | music | chord quality (major, minor, diminished, augmented), any root and timbre | clip, accuracy |
| synth_sound_event | sound | which of 6 sound events occurs | clip, accuracy |
| synth_sed | sound | when each of 4 event types is active in 4 s | frame, segment-F1 |
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from harmonia.demo import synth
from harmonia.eval.tasks import Task

SED_EVENTS = ("impact", "noise_burst", "chirp_up", "chirp_down")
SED_SECONDS = 4.0


def _with_noise(rng: np.random.Generator, y: np.ndarray, snr_db: tuple[float, float] = (15, 30)) -> np.ndarray:
    """Scale to a random level and add white noise at a random SNR."""
    y = synth._normalise(y, peak=rng.uniform(0.2, 0.8))
    p = float(np.mean(y**2)) + 1e-12
    noise = rng.standard_normal(len(y)) * np.sqrt(p / 10 ** (rng.uniform(*snr_db) / 10))
    return np.clip(y + noise, -1, 1).astype(np.float32)


# -- one sample per task: (audio, json) --------------------------------------------------------------------


def _vowel(rng):
    v = str(rng.choice(list(synth.VOWELS)))
    f0, vtl = synth.SPEAKERS[str(rng.choice(list(synth.SPEAKERS)))]
    y = synth.syllable(rng, v, f0 * rng.uniform(0.85, 1.15), vtl * rng.uniform(0.95, 1.05), rng.uniform(0.6, 1.0))
    return y, {"vowel": v}


def _speaker(rng):
    s = str(rng.choice(list(synth.SPEAKERS)))
    y, _ = synth.utterance(rng, s, 2.0)
    return y, {"speaker": s}


def _syllables(rng):
    k = int(rng.integers(1, 6))
    y, _ = synth.utterance(rng, str(rng.choice(list(synth.SPEAKERS))), 2.5, syllables=k)
    return y, {"count": str(k)}


def _instrument(rng):
    inst = str(rng.choice(list(synth.INSTRUMENTS)))
    if rng.random() < 0.5:
        y = synth.melody(rng, inst, 1.5)
    else:
        y = synth.chord(rng, inst, str(rng.choice(list(synth.CHORDS))), int(rng.integers(48, 72)), 1.5)
    return y, {"instrument": inst}


def _chord(rng):
    q = str(rng.choice(list(synth.CHORDS)))
    inst = str(rng.choice(["flute", "clarinet", "string", "brass"]))
    return synth.chord(rng, inst, q, int(rng.integers(50, 70)), 1.5), {"chord": q}


def _sound_event(rng):
    kind = str(rng.choice(synth.SOUND_EVENTS))
    y = np.zeros(int(1.5 * synth.SR))
    dur = rng.uniform(0.4, 1.2)
    e = synth.sound_event(rng, kind, dur)
    start = int(rng.uniform(0, 1.5 - dur) * synth.SR)
    y[start: start + len(e)] = synth._normalise(e)
    return y, {"event": kind}


def _sed(rng):
    n = int(SED_SECONDS * synth.SR)
    y = 0.02 * rng.standard_normal(n)
    events = []
    for _ in range(int(rng.integers(1, 4))):
        kind = str(rng.choice(SED_EVENTS))
        dur = rng.uniform(0.3, 1.2)
        onset = rng.uniform(0, SED_SECONDS - dur)
        e = synth._normalise(synth.sound_event(rng, kind, dur), peak=rng.uniform(0.3, 0.6))
        start = int(onset * synth.SR)
        y[start: start + len(e)] += e
        events.append({"onset": round(onset, 3), "offset": round(onset + dur, 3), "label": kind})
    return y, sorted(events, key=lambda e: e["onset"])


MAKERS: dict[str, Callable] = {
    "synth_vowel": _vowel, "synth_speaker": _speaker, "synth_syllables": _syllables,
    "synth_instrument": _instrument, "synth_chord": _chord, "synth_sound_event": _sound_event, "synth_sed": _sed,
}


def demo_tasks(test_size: int) -> list[Task]:
    """The task descriptions (weights = test-set size, as X-ARES weights by test size)."""
    common = dict(train_split="train", valid_split="valid", test_split="test", weight=test_size, epochs=60,
                  batch_size=16, encode_batch_size=16)
    return [
        Task("synth_vowel", "Vowel", "speech", label_key="vowel", **common),
        Task("synth_speaker", "Speaker ID", "speech", label_key="speaker", **common),
        Task("synth_syllables", "Syllable count", "speech", label_key="count", **common),
        Task("synth_instrument", "Instrument", "music", label_key="instrument", **common),
        Task("synth_chord", "Chord quality", "music", label_key="chord", **common),
        Task("synth_sound_event", "Sound event", "sound", label_key="event", **common),
        Task("synth_sed", "Event detection", "sound", type="frame", label="events", classes=SED_EVENTS,
             num_classes=len(SED_EVENTS), metric="segmentf1_macro", segment_length_s=0.5,
             label_duration_s=SED_SECONDS, knn=False, **common),
    ]


def _flac_bytes(y: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y, synth.SR, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0  # fixed mtime: identical bytes for a seed
    tar.addfile(info, io.BytesIO(data))


def write_task_data(root: str | os.PathLike, sizes: dict[str, int], seed: int = 0) -> list[Task]:
    """Generate every task's train/valid/test shards under `root` and a `<task>.json` task file per
    task (usable with `harmonia evaluate --tasks root/tasks/<task>.json`). Deterministic for a seed;
    each shard is written to a temp name and renamed, so an interrupted run leaves no half shard."""
    root = Path(root)
    tasks = demo_tasks(sizes["test"])
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    for t_index, task in enumerate(tasks):
        tdir = root / task.name
        tdir.mkdir(parents=True, exist_ok=True)
        for s_index, split in enumerate(("train", "valid", "test")):
            path = tdir / f"{split}-000000.tar"
            if path.exists():
                continue  # resumable: finished shards are kept
            rng = np.random.default_rng([seed, t_index, s_index])
            tmp = path.with_name(path.name + ".tmp")
            with tarfile.open(tmp, "w") as tar:
                for i in range(sizes[split]):
                    y, meta = MAKERS[task.name](rng)
                    key = f"{task.name}_{split}_{i:05d}"
                    _add(tar, f"{key}.flac", _flac_bytes(_with_noise(rng, y)))
                    _add(tar, f"{key}.json", json.dumps(meta).encode())
            os.replace(tmp, path)
        spec = {k: v for k, v in task.to_dict().items() if k not in ("extra",)}
        (root / "tasks" / f"{task.name}.json").write_text(json.dumps(spec, indent=1))
    return tasks
