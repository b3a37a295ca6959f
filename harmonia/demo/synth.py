"""Seeded synthetic audio in three domains, for the offline demo (the paper in miniature).

- speech-like: a glottal pulse train (pitch with jitter and vibrato) through formant resonators of
  five vowels, scaled by a vocal-tract-length factor; syllables add fricative or plosive noise.
- music: harmonic notes with instrument-like spectra (flute, clarinet, string, brass, bell) and
  ADSR envelopes; chords (major, minor, diminished, augmented triads) and short melodies.
- sound: impacts (decaying modal resonances), noise bursts, rising and falling chirps, rain-like
  click textures and wind-like modulated noise.

Every generator takes a `numpy.random.Generator` and returns float32 mono audio at 16 kHz with a
peak around 0.5. The same seed gives the same audio on every machine.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

SR = 16000

# formant frequencies (Hz) and bandwidths of an adult vocal tract (Peterson & Barney-like averages)
VOWELS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "a": ((730, 1090, 2440), (90, 110, 170)),
    "e": ((530, 1840, 2480), (70, 100, 160)),
    "i": ((270, 2290, 3010), (60, 90, 150)),
    "o": ((570, 840, 2410), (70, 90, 160)),
    "u": ((300, 870, 2240), (60, 80, 150)),
}
#: synthetic "speakers": (mean f0 Hz, vocal-tract length factor; >1 = shorter tract, higher formants)
SPEAKERS: dict[str, tuple[float, float]] = {
    "s0": (95, 0.92), "s1": (120, 0.97), "s2": (150, 1.05), "s3": (210, 1.12),
    "s4": (240, 1.18), "s5": (110, 1.08), "s6": (180, 0.95), "s7": (260, 1.02),
}
#: relative amplitudes of harmonics 1..12 (bell: inharmonic partial ratios instead)
INSTRUMENTS: dict[str, np.ndarray] = {
    "flute": np.array([1.0, 0.35, 0.12, 0.05, 0.02] + [0.0] * 7),
    "clarinet": np.array([1.0, 0.02, 0.6, 0.02, 0.4, 0.02, 0.25, 0.02, 0.12, 0.01, 0.06, 0.01]),
    "string": 1.0 / np.arange(1, 13),
    "brass": np.array([0.5, 0.8, 1.0, 0.9, 0.7, 0.55, 0.4, 0.3, 0.2, 0.15, 0.1, 0.07]),
    "bell": np.array([1.0, 0.7, 0.5, 0.4, 0.3, 0.2]),
}
BELL_RATIOS = np.array([1.0, 2.76, 5.40, 8.93, 13.34, 18.64])
CHORDS: dict[str, tuple[int, ...]] = {"major": (0, 4, 7), "minor": (0, 3, 7), "diminished": (0, 3, 6),
                                      "augmented": (0, 4, 8)}
SOUND_EVENTS = ("impact", "noise_burst", "chirp_up", "chirp_down", "rain", "wind")


def _normalise(x: np.ndarray, peak: float = 0.5) -> np.ndarray:
    m = np.abs(x).max()
    return (x * (peak / m) if m > 0 else x).astype(np.float32)


def _resonator(x: np.ndarray, freq: float, bw: float) -> np.ndarray:
    """Second-order all-pole resonance at `freq` Hz with bandwidth `bw` Hz (a formant)."""
    r = np.exp(-np.pi * bw / SR)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / SR), r * r]
    return lfilter([1 - r], a, x)


def _envelope(n: int, attack: float, release: float) -> np.ndarray:
    env = np.ones(n)
    a, r = max(1, int(attack * SR)), max(1, int(release * SR))
    env[:a] = np.linspace(0, 1, a)[: n]
    env[max(0, n - r):] *= np.linspace(1, 0, min(r, n))
    return env


def _noise_band(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    sos = butter(4, [lo, min(hi, SR / 2 - 100)], btype="band", fs=SR, output="sos")
    return sosfilt(sos, rng.standard_normal(n))


# -- speech-like ------------------------------------------------------------------------------------------


def vowel(rng: np.random.Generator, v: str, f0: float, vtl: float, seconds: float) -> np.ndarray:
    """A sustained vowel: glottal pulses at f0 (jitter, vibrato, slight declination) through formants."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0_t = f0 * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(4, 6) * t)) * np.linspace(1.05, 0.95, n)
    f0_t *= 1 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(np.arange(1, n + 1))
    phase = np.cumsum(f0_t / SR)
    source = np.diff(np.floor(phase), prepend=0.0)  # one impulse per period
    source = lfilter([1.0], [1.0, -0.97], source)  # glottal roll-off
    freqs, bws = VOWELS[v]
    y = sum(_resonator(source, f * vtl, b) * g for f, b, g in zip(freqs, bws, (1.0, 0.6, 0.3)))
    y += 0.002 * rng.standard_normal(n)  # breath
    return y * _envelope(n, 0.03, 0.05)


def syllable(rng: np.random.Generator, v: str, f0: float, vtl: float, seconds: float) -> np.ndarray:
    """Consonant (fricative or plosive noise) followed by a vowel."""
    kind = rng.integers(3)
    cons_n = int(rng.uniform(0.04, 0.1) * SR)
    if kind == 0:  # fricative "s/sh"
        cons = _noise_band(rng, cons_n, 3000 * vtl, 7500) * 0.3
    elif kind == 1:  # plosive burst
        cons = _noise_band(rng, cons_n, 800, 4000) * np.exp(-np.arange(cons_n) / (0.01 * SR)) * 0.6
    else:  # nasal-ish murmur: low resonance
        cons = _resonator(rng.standard_normal(cons_n) * 0.05, 250 * vtl, 100)
    return np.concatenate([cons, vowel(rng, v, f0, vtl, max(0.08, seconds - cons_n / SR))])


def utterance(rng: np.random.Generator, speaker: str, seconds: float, syllables: int | None = None
              ) -> tuple[np.ndarray, list[str]]:
    """A sequence of syllables with pauses; returns audio and the vowel sequence."""
    f0, vtl = SPEAKERS[speaker]
    n = int(seconds * SR)
    count = syllables or max(1, int(seconds / rng.uniform(0.25, 0.4)))
    out = np.zeros(n)
    slot = n // count
    vowels = []
    for k in range(count):
        v = str(rng.choice(list(VOWELS)))
        vowels.append(v)
        dur = rng.uniform(0.5, 0.85) * slot / SR
        s = syllable(rng, v, f0 * rng.uniform(0.9, 1.1), vtl, dur)
        start = k * slot + int(rng.uniform(0, 0.1) * slot)
        out[start: start + len(s)] += s[: n - start]
    return out, vowels


# -- music --------------------------------------------------------------------------------------------------


def note(rng: np.random.Generator, instrument: str, freq: float, seconds: float) -> np.ndarray:
    n = int(seconds * SR)
    t = np.arange(n) / SR
    amps = INSTRUMENTS[instrument]
    if instrument == "bell":
        ratios, decay = BELL_RATIOS, np.exp(-t[None] * (2 + 3 * np.arange(len(amps)))[:, None])
    else:
        ratios, decay = np.arange(1, len(amps) + 1), 1.0
    keep = ratios * freq < SR / 2 - 200
    phases = rng.uniform(0, 2 * np.pi, len(amps))
    partials = amps[:, None] * np.sin(2 * np.pi * (ratios * freq)[:, None] * t[None] + phases[:, None]) * decay
    y = partials[keep].sum(0)
    if instrument == "brass":
        y *= np.clip(t / 0.08, 0, 1)  # slow attack
    if instrument in ("flute", "string"):
        y *= 1 + 0.05 * np.sin(2 * np.pi * 5.5 * t)  # vibrato-ish tremolo
    attack = {"bell": 0.002, "brass": 0.05}.get(instrument, 0.02)
    return y * _envelope(n, attack, 0.1)


def midi_hz(m: float) -> float:
    return 440.0 * 2 ** ((m - 69) / 12)


def chord(rng: np.random.Generator, instrument: str, quality: str, root_midi: int, seconds: float) -> np.ndarray:
    return sum(note(rng, instrument, midi_hz(root_midi + i), seconds) for i in CHORDS[quality])


def melody(rng: np.random.Generator, instrument: str, seconds: float) -> np.ndarray:
    n = int(seconds * SR)
    out = np.zeros(n)
    pos = 0
    m = int(rng.integers(55, 75))
    scale = (0, 2, 4, 5, 7, 9, 11, 12)
    while pos < n:
        dur = int(rng.choice([0.15, 0.25, 0.5]) * SR)
        pitch = m + scale[int(rng.integers(len(scale)))]
        s = note(rng, instrument, midi_hz(pitch), dur / SR)
        out[pos: pos + dur] += s[: n - pos]
        pos += dur
    return out


# -- sound ----------------------------------------------------------------------------------------------------


def sound_event(rng: np.random.Generator, kind: str, seconds: float) -> np.ndarray:
    n = int(seconds * SR)
    t = np.arange(n) / SR
    if kind == "impact":
        modes = rng.uniform(150, 3000, 4)
        y = sum(np.sin(2 * np.pi * f * t) * np.exp(-t * rng.uniform(8, 30)) for f in modes)
        y += _noise_band(rng, n, 500, 6000) * np.exp(-t * 60)
    elif kind == "noise_burst":
        lo = rng.uniform(300, 2000)
        y = _noise_band(rng, n, lo, lo * rng.uniform(2, 4)) * _envelope(n, 0.01, 0.05)
    elif kind in ("chirp_up", "chirp_down"):
        f_a, f_b = rng.uniform(300, 800), rng.uniform(2500, 6000)
        if kind == "chirp_down":
            f_a, f_b = f_b, f_a
        freq = f_a * (f_b / f_a) ** (t / seconds)
        y = np.sin(2 * np.pi * np.cumsum(freq) / SR) * _envelope(n, 0.01, 0.05)
    elif kind == "rain":
        clicks = (rng.random(n) < rng.uniform(0.002, 0.006)) * rng.standard_normal(n)
        y = lfilter([1.0], [1.0, -0.6], _noise_band_signal(clicks, 1500, 7000)) + 0.05 * _noise_band(rng, n, 200, 7000)
    elif kind == "wind":
        mod = lfilter([1.0], [1.0, -0.9995], rng.standard_normal(n))
        y = _noise_band(rng, n, 80, 600) * (0.5 + np.abs(mod) / (np.abs(mod).max() + 1e-9))
    else:
        raise ValueError(f"unknown sound event {kind!r}; expected one of {SOUND_EVENTS}")
    return y


def _noise_band_signal(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return sosfilt(butter(4, [lo, hi], btype="band", fs=SR, output="sos"), x)


# -- pre-training pool ------------------------------------------------------------------------------------------


def pool_clip(rng: np.random.Generator, domain: str, seconds: float) -> np.ndarray:
    """One clip of the unlabelled pre-training pool of `domain` (speech | music | sound)."""
    if domain == "speech":
        y, _ = utterance(rng, str(rng.choice(list(SPEAKERS))), seconds)
    elif domain == "music":
        inst = str(rng.choice(list(INSTRUMENTS)))
        if rng.random() < 0.5:
            y = chord(rng, inst, str(rng.choice(list(CHORDS))), int(rng.integers(48, 72)), seconds)
        else:
            y = melody(rng, inst, seconds)
    elif domain == "sound":
        n = int(seconds * SR)
        y = np.zeros(n)
        for _ in range(int(rng.integers(1, 4))):
            kind = str(rng.choice(SOUND_EVENTS))
            dur = rng.uniform(0.2, min(1.5, seconds))
            start = int(rng.uniform(0, seconds - dur) * SR)
            e = _normalise(sound_event(rng, kind, dur))
            y[start: start + len(e)] += e[: n - start]
    else:
        raise ValueError(f"unknown domain {domain!r}; expected speech, music or sound")
    return _normalise(y + 0.003 * rng.standard_normal(len(y)), peak=rng.uniform(0.3, 0.7))
