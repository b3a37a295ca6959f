from __future__ import annotations

import json
from itertools import islice

import pytest
import torch

from harmonia.data.loader import MixtureLoader, build_loader, stream_hours
from harmonia.data.manifest import ManifestError, Source, scan_sources
from harmonia.data.mixture import MixtureError, plan_mixture
from harmonia.data.shards import plan_shards, write_shards
from tests.data.conftest import POOL, sources


@pytest.fixture(scope="module")
def manifest(pool_dir):
    res = scan_sources([Source.parse(s) for s in sources(pool_dir)], progress=False)
    return res.entries


@pytest.fixture(scope="module")
def shard_dir(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_shards(manifest, out, shard_seconds=8.0, progress=False)
    return out


def test_shards_content_and_webdataset_readable(shard_dir, manifest):
    import webdataset as wds

    index = json.loads((shard_dir / "index.json").read_text())
    assert set(index["streams"]) == {f"{d}/{c}" for c, (d, *_) in POOL.items()}
    # songs: 12 s files -> 2 segments of 6 s each; every other corpus is one segment per file
    songs = index["streams"]["music/songs"]
    assert songs["segments"] == 2 * POOL["songs"][1]
    assert songs["seconds"] == pytest.approx(POOL["songs"][1] * 12.0)
    for name, st in index["streams"].items():
        assert all(p["path"].startswith(name.split("/")[0] + "/") for p in st["shards"])
    tars = sorted(str(p) for p in shard_dir.glob("music/*.tar"))
    n = 0
    for sample in wds.WebDataset(tars, shardshuffle=False):
        meta = json.loads(sample["json"])
        import io

        import soundfile as sf

        wav, sr = sf.read(io.BytesIO(sample["flac"]))
        assert sr == 16000 and wav.ndim == 1 and len(wav) <= 10 * 16000
        assert meta["domain"] == "music" and len(wav) == round(meta["seconds"] * 16000)
        n += 1
    assert n == songs["segments"]


def test_shards_deterministic_resumable_and_report_failures(manifest, tmp_path):
    from harmonia.data.manifest import Entry

    bad = Entry(id="noise/gone", path=str(tmp_path / "gone.wav"), duration=1.0, sample_rate=16000, channels=1,
                num_frames=16000, domain="sound", corpus="noise")
    entries = [e for e in manifest if e.corpus in ("noise", "talk")] + [bad]
    a, b = tmp_path / "a", tmp_path / "b"
    idx = write_shards(entries, a, shard_seconds=6.0, progress=False)
    assert [f["id"] for f in idx["failures"]] == ["noise/gone"]
    write_shards(entries, b, shard_seconds=6.0, progress=False)
    tars = sorted(p.relative_to(a) for p in a.rglob("*.tar"))
    assert len(tars) > 3
    assert all((a / t).read_bytes() == (b / t).read_bytes() for t in tars)
    # interruption: one shard missing, a temporary file left behind -> only that shard is rewritten
    victim = a / tars[1]
    victim.unlink()
    (victim.parent / (victim.name + ".tmp999")).write_bytes(b"partial")
    before = {t: (a / t).stat().st_mtime_ns for t in tars if t != tars[1]}
    write_shards(entries, a, shard_seconds=6.0, progress=False)
    assert victim.read_bytes() == (b / tars[1]).read_bytes()
    assert all((a / t).stat().st_mtime_ns == m for t, m in before.items())
    assert (a / "index.json").read_text() == (b / "index.json").read_text()
    jobs = plan_shards(entries, a, shard_seconds=6.0, seed=1)
    assert [j.entries for j in jobs] != [j.entries for j in plan_shards(entries, a, shard_seconds=6.0, seed=0)]


def test_realised_domain_hours_match_target(shard_dir):
    # segment lengths differ per corpus (1.5 / 3 / 6 / 2.5 s): hours, not counts, must match
    target = {"speech": 0.4, "music": 0.3, "sound": 0.3}
    loader = build_loader(shard_dir, target, batch_size=50, seed=3)
    for _ in islice(loader, 60):  # 3000 segments
        pass
    hours = loader.domain_hours()
    total = sum(hours.values())
    for d, t in target.items():
        assert abs(hours[d] / total - t) < 0.02, (d, hours)
    # within speech, corpora in proportion to their hours (talk 12*1.5 = 18 s, chat 18 s -> 50/50)
    talk, chat = loader.seconds["speech/talk"], loader.seconds["speech/chat"]
    assert abs(talk / (talk + chat) - 0.5) < 0.02


def _batches(it, n):
    return [(b["wav"].clone(), b["lengths"].clone(), list(b["streams"])) for b in islice(it, n)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resume_exact(shard_dir, num_workers):
    plan = plan_mixture(stream_hours(shard_dir), "speech-heavy")
    crop = 2.0 if num_workers else 0.0  # seeded random crops must resume exactly too
    ref = MixtureLoader(shard_dir, plan, batch_size=4, seed=7, num_workers=num_workers, crop_seconds=crop)
    it = iter(ref)
    _batches(it, 5)
    state = json.loads(json.dumps(ref.state_dict()))  # survives a JSON / checkpoint round trip
    expected = _batches(it, 6)
    resumed = MixtureLoader(shard_dir, plan, batch_size=4, seed=7, num_workers=num_workers, state=state,
                            crop_seconds=crop)
    got = _batches(iter(resumed), 6)
    if crop:
        assert max(int(b[1].max()) for b in got) == 32000  # the 6 s songs were cropped to 2 s
    for (w0, l0, s0), (w1, l1, s1) in zip(expected, got):
        assert s0 == s1 and torch.equal(l0, l1) and torch.equal(w0, w1)
    assert resumed.seconds == pytest.approx(ref.seconds)
    # a different seed gives a different stream (the comparison above can fail)
    other = _batches(iter(MixtureLoader(shard_dir, plan, batch_size=4, seed=8, num_workers=num_workers,
                                        crop_seconds=crop)), 11)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(expected, other[5:]))
    with pytest.raises(ManifestError, match="batch_size"):
        MixtureLoader(shard_dir, plan, batch_size=5, seed=7, num_workers=num_workers, state=state)


def test_ranks_read_disjoint_segments(shard_dir):
    plan = plan_mixture(stream_hours(shard_dir), {"music": 1.0})
    seen = []
    for rank in range(2):
        loader = MixtureLoader(shard_dir, plan, batch_size=1, seed=0, rank=rank, world_size=2)
        # 5 shards of 2 segments: rank 0 owns 3 shards, rank 1 owns 2 -> 4 distinct segments each at least
        seen.append({b["wav"].numpy().tobytes() for b in islice(loader, 4)})
    assert len(seen[0]) == 4 and len(seen[1]) == 4 and not (seen[0] & seen[1])


def test_domain_without_data_fails(shard_dir):
    with pytest.raises(MixtureError, match="'birds' has share 50% but no data in the pool"):
        build_loader(shard_dir, {"speech": 0.5, "birds": 0.5}, batch_size=2)
