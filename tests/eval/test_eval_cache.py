"""Readers, the embedding cache (fingerprints, resume, xares vs clean encoding) and error paths."""

import io
import json
import math
import pathlib
import tarfile

import pytest
import torch
from conftest import TONE_TASK, tone, write_shard

from harmonia.eval.embed import CacheWarning, EmbeddingCache, encoder_fingerprint
from harmonia.eval.readers import DatasetMissingError, ShardError, iter_tar_members, split_member_name
from harmonia.eval.tasks import BUILTIN_TASKS, Task

CROP_TASK = Task("crops", "Crops", "sound", label_key="label", train_split="c_train", valid_split="c_train",
                 test_split="c_train", crop_length=0.1, encode_batch_size=4)


def test_member_names_split_at_the_first_dot():
    assert split_member_name("a/b/clip.v2.flac") == ("a/b/clip", "v2.flac")
    assert split_member_name("clip.json") == ("clip", "json")


def test_duplicate_members_are_skipped_like_webdataset(tmp_path):
    path = tmp_path / "d.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("k.json", b"1"), ("k.json", b"2"), ("k.wav", b"w"), ("j.json", b"3")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    samples = list(iter_tar_members(path))
    assert samples == [("k", {"json": b"1", "wav": b"w"}), ("j", {"json": b"3"})]


def test_missing_data_names_files_and_zenodo(tmp_path):
    with pytest.raises(DatasetMissingError) as e:
        EmbeddingCache(tmp_path / "c", _enc(), progress=False).embed_task(BUILTIN_TASKS["gtzan_genre"], tmp_path)
    msg = str(e.value)
    assert "gtzan_fold_0_0000000.tar" in msg and "https://zenodo.org/records/14722472" in msg


def _enc():
    from eval_test_encoder import BandEnergyEncoder

    return BandEnergyEncoder()


def test_fingerprint_changes_with_weights_not_with_class_name(data_root, tmp_path):
    a, b = _enc(), _enc()
    assert encoder_fingerprint(a) == encoder_fingerprint(b)
    cache = EmbeddingCache(tmp_path / "c", a, progress=False)
    first = cache.embed_task(TONE_TASK, data_root)
    calls = a.calls
    again = EmbeddingCache(tmp_path / "c", a, progress=False).embed_task(TONE_TASK, data_root)
    assert a.calls == calls  # served from cache: no batch encoded
    assert torch.equal(first["tones_test"].pooled, again["tones_test"].pooled)
    with torch.no_grad():
        b.scale.mul_(2.0)  # same class, new weights: a new cache entry, recomputed embeddings
    changed = EmbeddingCache(tmp_path / "c", b, progress=False)
    assert changed.task_dir(TONE_TASK) != cache.task_dir(TONE_TASK)
    out = changed.embed_task(TONE_TASK, data_root)
    assert b.calls > 0
    assert torch.allclose(out["tones_test"].pooled, 2 * first["tones_test"].pooled)
    assert EmbeddingCache(tmp_path / "c", a, mode="xares").task_dir(TONE_TASK) != cache.task_dir(TONE_TASK)


def test_xares_mode_bakes_in_batch_padding_clean_mode_masks_it(tmp_path):
    # Two clips in one encode batch: 0.1 s (5 frames) and 0.2 s (10 frames) at a 20 ms hop.
    task = Task("pad", "Pad", "sound", label_key="label", train_split="p", valid_split="p", test_split="p")
    short, long_ = tone(300, 0.1), tone(300, 0.2)
    write_shard(tmp_path / "env" / "pad" / "p_0.tar", [("a", short, 16000, {"label": "x"}),
                                                       ("b", long_, 16000, {"label": "x"})], "wav", "FLOAT")
    enc = _enc()
    alone = enc.encode(torch.from_numpy(short)[None]).frames[0]  # (5, 16)
    x = EmbeddingCache(tmp_path / "cx", enc, mode="xares", progress=False).embed_task(task, tmp_path / "env")["p"]
    c = EmbeddingCache(tmp_path / "cc", enc, mode="clean", progress=False).embed_task(task, tmp_path / "env")["p"]
    # clean: mean of the clip's own 5 frames; xares: those 5 frames plus 5 frames of encoded
    # silence (log(0 + 1e-6) in every band for this encoder), over 10
    assert torch.allclose(c.pooled[0], alone.mean(0), atol=1e-5)
    silence = torch.full((16,), math.log(1e-6))
    assert torch.allclose(x.pooled[0], (alone.sum(0) + 5 * silence) / 10, atol=1e-4)
    assert x.keys == ["a0", "b0"] and c.keys == ["a#0", "b#0"]


def test_crops_first_per_batch_in_xares_mode_all_in_clean_mode(tmp_path):
    # 0.35 s clips, 0.1 s crops -> 3 crops each (remainder dropped); encode batches of 4 crops:
    # batch 0 = a0 a1 a2 b0, batch 1 = b1 b2 c0 c1, batch 2 = c2
    write_shard(tmp_path / "env" / "crops" / "c_train_0.tar",
                [(k, tone(300, 0.35), 16000, {"label": "x"}) for k in "abc"])
    enc = _enc()
    x = EmbeddingCache(tmp_path / "cx", enc, mode="xares", progress=False).embed_task(CROP_TASK, tmp_path / "env")
    c = EmbeddingCache(tmp_path / "cc", enc, mode="clean", progress=False).embed_task(CROP_TASK, tmp_path / "env")
    assert x["c_train"].keys == ["a0", "b0", "b1", "c1", "c2"]
    assert len(c["c_train"]) == 9 and c["c_train"].keys[:3] == ["a#0", "a#1", "a#2"]


def test_interrupted_encoding_resumes_after_the_last_chunk(data_root, tmp_path):
    enc = _enc()
    original = enc._encode
    budget = {"left": 3}

    def flaky(*a, **k):
        if budget["left"] == 0:
            raise KeyboardInterrupt
        budget["left"] -= 1
        return original(*a, **k)

    enc._encode = flaky
    task = Task("tones", "Tones", "sound", label_key="label", train_split="tones_train", valid_split="tones_valid",
                test_split="tones_test", encode_batch_size=2)
    cache = EmbeddingCache(tmp_path / "c", enc, chunk_items=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        cache.embed_task(task, data_root)
    pdir = cache.task_dir(task) / "tones_train"
    assert len(list(pdir.glob("chunk-*.safetensors"))) == 3
    assert not json.loads((pdir / "state.json").read_text())["finished"]
    enc._encode = original
    enc.calls = 0
    resumed = cache.embed_task(task, data_root)
    train = resumed["tones_train"]
    # 12 + 6 train clips in 9 batches of 2: 3 were finished before the interruption
    assert enc.calls == 6 + 3 + 5  # 6 remaining train batches, valid 3, test 5
    fresh = EmbeddingCache(tmp_path / "c2", _enc(), chunk_items=2, progress=False).embed_task(task, data_root)
    assert train.keys == fresh["tones_train"].keys
    assert torch.allclose(train.pooled, fresh["tones_train"].pooled)


def test_corrupt_shard_is_named_and_finished_partitions_are_kept(data_root, tmp_path):
    bad = data_root / "tones" / "tones_test_000000.tar"
    bad.write_bytes(bad.read_bytes()[:700])  # truncated mid-member
    cache = EmbeddingCache(tmp_path / "c", _enc(), progress=False)
    with pytest.raises(ShardError, match="tones_test_000000.tar"):
        cache.embed_task(TONE_TASK, data_root)
    assert _finished(cache.task_dir(TONE_TASK) / "tones_train")
    assert _finished(cache.task_dir(TONE_TASK) / "tones_valid")


def test_undecodable_items_are_reported_and_skipped(tmp_path):
    path = write_shard(tmp_path / "env" / "crops" / "c_train_0.tar", [("a", tone(300, 0.2), 16000, {"label": "x"})])
    with tarfile.open(path, "a") as tar:
        for name, data in (("b.json", b'{"label": "x"}'), ("b.flac", b"not audio at all")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = EmbeddingCache(tmp_path / "c", _enc(), progress=False).embed_task(CROP_TASK, tmp_path / "env")
    assert out["c_train"].clips == ["a", "a"]  # two 0.1 s crops of a; b failed
    assert len(out["c_train"].errors) == 1 and "c_train_0.tar:b" in out["c_train"].errors[0]


def _finished(pdir) -> bool:
    return json.loads((pdir / "state.json").read_text())["finished"] is True


class _Payload:
    """Unpickling this touches a marker file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _encoded(tmp_path, data_root, name="c"):
    cache = EmbeddingCache(tmp_path / name, _enc(), chunk_items=4, progress=False)
    return cache, cache.embed_task(TONE_TASK, data_root)


CORRUPTIONS = {
    "truncated": lambda p, tmp: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "random": lambda p, tmp: p.write_bytes(bytes(range(256)) * 8),
    "empty": lambda p, tmp: p.write_bytes(b""),
    "missing": lambda p, tmp: p.unlink(),
    "pickle": lambda p, tmp: torch.save({"pooled": _Payload(tmp / "PWNED")}, p),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_chunk_is_named_and_its_partition_encoded_again(data_root, tmp_path, kind):
    cache, first = _encoded(tmp_path, data_root)
    pdir = cache.task_dir(TONE_TASK) / "tones_train"
    bad = pdir / "chunk-00001.safetensors"
    CORRUPTIONS[kind](bad, tmp_path)
    enc = _enc()
    with pytest.warns(CacheWarning, match="chunk-00001.safetensors"):
        again = EmbeddingCache(tmp_path / "c", enc, chunk_items=4, progress=False).embed_task(TONE_TASK, data_root)
    assert not (tmp_path / "PWNED").exists()  # the pickle was never executed
    assert enc.calls == 2  # only tones_train (18 clips: 2 batches of up to 16) was encoded again
    assert again["tones_train"].keys == first["tones_train"].keys
    assert torch.equal(again["tones_train"].pooled, first["tones_train"].pooled)
    assert "chunk-00001.safetensors" in again["tones_train"].repaired[0]
    assert again["tones_test"].repaired == []


BAD_STATES = [b"", b"{not json", b"\xff\xfe", b'{"shards": 3}', b'{"shards": [], "errors": [1]}',
              b'{"shards": [], "chunks": [{"size": "x"}]}']


@pytest.mark.parametrize("content", BAD_STATES)
def test_corrupt_state_file_is_named_and_its_partition_encoded_again(data_root, tmp_path, content):
    cache, first = _encoded(tmp_path, data_root)
    state = cache.task_dir(TONE_TASK) / "tones_valid" / "state.json"
    state.write_bytes(content)
    with pytest.warns(CacheWarning, match="tones_valid/state.json"):
        again = cache.embed_task(TONE_TASK, data_root)
    assert torch.equal(again["tones_valid"].pooled, first["tones_valid"].pooled)
    assert _finished(state.parent)


def test_a_pickle_planted_in_an_unfinished_partition_is_never_executed(data_root, tmp_path):
    cache, _ = _encoded(tmp_path, data_root)
    pdir = cache.task_dir(TONE_TASK) / "tones_train"
    state = json.loads((pdir / "state.json").read_text())
    state["finished"] = False
    (pdir / "state.json").write_text(json.dumps(state))
    torch.save({"x": _Payload(tmp_path / "PWNED")}, pdir / "chunk-00000.safetensors")
    with pytest.warns(CacheWarning, match="chunk-00000.safetensors"):
        cache.embed_task(TONE_TASK, data_root)
    assert not (tmp_path / "PWNED").exists()


def test_the_package_never_unpickles_with_weights_only_false():
    root = pathlib.Path(__file__).resolve().parents[2] / "harmonia"
    offenders = [str(p) for p in root.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


def test_temp_files_of_a_killed_writer_are_removed_on_resume(data_root, tmp_path):
    cache, _ = _encoded(tmp_path, data_root)
    pdir = cache.task_dir(TONE_TASK) / "tones_train"
    stale = pdir / ".chunk-00002.safetensors.harmonia-tmp-999999999-abcd"  # pid 999999999 does not run
    stale.write_bytes(b"half a chunk")
    cache.embed_task(TONE_TASK, data_root)
    assert not stale.exists()
