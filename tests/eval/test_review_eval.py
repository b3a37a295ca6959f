"""Hostile-user checks of the evaluation: concurrent runs on one cache, crafted task files and X-ARES
task modules, corrupt run directories."""

from __future__ import annotations

import threading

import torch
from conftest import TONE_TASK
from eval_test_encoder import BandEnergyEncoder

from harmonia.eval.embed import EmbeddingCache


class _GatedEncoder(BandEnergyEncoder):
    """Signals when it starts its first batch and waits there until released."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()

    def _encode(self, *args):
        self.started.set()
        assert self.release.wait(60)
        return super()._encode(*args)


def test_two_evaluations_sharing_a_cache_do_not_encode_the_same_partition_at_once(data_root, tmp_path):
    # Before: the second run found no state.json, emptied the partition the first was writing
    # (`FileNotFoundError` on its rename) or encoded it a second time alongside it.
    first, second = _GatedEncoder(), _GatedEncoder()  # one class: one fingerprint, one cache entry
    second.release.set()
    results = {}

    def run(name, enc):
        results[name] = EmbeddingCache(tmp_path / "cache", enc, chunk_items=4, progress=False).embed_task(
            TONE_TASK, data_root)

    a = threading.Thread(target=run, args=("first", first))
    a.start()
    assert first.started.wait(60)
    b = threading.Thread(target=run, args=("second", second))
    b.start()
    try:
        b.join(1.0)
        assert b.is_alive() and second.calls == 0  # waiting for the first, not encoding alongside it
    finally:
        first.release.set()
    a.join(60)
    b.join(60)
    alone = BandEnergyEncoder()
    EmbeddingCache(tmp_path / "alone", alone, chunk_items=4, progress=False).embed_task(TONE_TASK, data_root)
    # every partition encoded once, by one of them (whichever took its lock first); the other read it
    assert first.calls + second.calls == alone.calls
    assert set(results["first"]) == set(results["second"]) == {"tones_train", "tones_valid", "tones_test"}
    for part, emb in results["first"].items():
        assert emb.keys == results["second"][part].keys
        assert torch.equal(emb.pooled, results["second"][part].pooled)
