"""Hostile inputs to `harmonia data manifest|mix|shard` (review of the hardening pass)."""

from __future__ import annotations

import concurrent.futures
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from harmonia.audio import load_audio
from harmonia.cli import main
from harmonia.data import shards as shards_module
from harmonia.data.loader import _read_tar
from harmonia.data.manifest import Entry, ManifestError, read_manifest
from harmonia.data.mixture import plan_mixture
from harmonia.data.shards import plan_shards, read_index, write_shards


def _entry(file: Path, seconds: float = 1.5, **fields) -> dict:
    base = dict(id=f"c/{file.stem}", path=str(file), duration=seconds, sample_rate=16000, channels=1,
                num_frames=round(seconds * 16000), domain="speech", corpus="c")
    return {**base, **fields}


def _wav(path: Path, seconds: float = 1.5) -> Path:
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(round(seconds * 16000))).astype(np.float32),
             16000)
    return path


@pytest.mark.parametrize("field, value", [
    ("domain", ".."), ("corpus", "../../escaped"), ("domain", "/tmp/abs"), ("corpus", "a/b"),
    ("duration", "10"), ("duration", float("nan")), ("duration", -5.0), ("duration", 0),
    ("sample_rate", 0), ("channels", True), ("num_frames", 1.5), ("id", ""), ("path", None),
])
def test_crafted_manifest_fields_are_refused_naming_the_line_and_field(tmp_path, field, value):
    good = _entry(_wav(tmp_path / "a.wav"))
    bad = _entry(tmp_path / "b.wav", **{field: value})
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ManifestError, match=rf"m\.jsonl:2: {field} "):
        read_manifest(path)


def test_shard_of_a_manifest_with_a_traversing_domain_writes_nothing_outside_its_folder(tmp_path, capsys):
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    entry = _entry(_wav(work / "a.wav"), domain="..", corpus="..")
    (work / "m.jsonl").write_text(json.dumps({**entry, "corpus": "escaped"}) + "\n")
    rc = main(["data", "shard", "--quiet", str(work / "m.jsonl"), "-o", str(work / "shards")])
    err = capsys.readouterr().err
    assert rc == 2 and "m.jsonl:1: domain '..'" in err
    assert not list(tmp_path.rglob("*.tar")) and not list(tmp_path.rglob("*.tar.json"))


def test_entries_built_in_code_are_checked_too(tmp_path):
    with pytest.raises(ManifestError, match="corpus '../x'"):
        Entry(**_entry(tmp_path / "a.wav", corpus="../x"))


def test_ids_that_read_the_same_once_sanitised_get_their_own_tar_members(tmp_path):
    # 'a b', 'a_b' and 'a.b' all sanitise to 'a_b'; two CJK names sanitise to the same underscores.
    names = ["a b", "a_b", "a.b", "日本", "中国", "plain"]
    entries = [Entry(**_entry(_wav(tmp_path / f"f{i}.wav"), id=f"c/{n}")) for i, n in enumerate(names)]
    out = tmp_path / "shards"
    index = write_shards(entries, out, progress=False)
    (shard,) = index["streams"]["speech/c"]["shards"]
    samples = _read_tar(out / shard["path"], shard["segments"])  # raised "holds 3 samples but ... 6" before
    metas = [json.loads(meta) for _key, _flac, meta in samples]
    assert sorted(m["id"] for m in metas) == sorted(f"c/{n}" for n in names)
    keys = [key for key, _flac, _meta in samples]
    assert "c_plain_0000" in keys and len(set(keys)) == len(names)
    assert all("." not in k and "/" not in k for k in keys)


class _RecordingPool(concurrent.futures.ThreadPoolExecutor):
    sizes: list[int] = []

    def __init__(self, max_workers, initializer=None, initargs=()):  # threads: no exit-with-parent watchdog
        type(self).sizes.append(max_workers)
        super().__init__(max_workers)


def test_shard_workers_are_never_more_than_the_shards_to_write(tmp_path, monkeypatch):
    # A fork-based process pool starts all its workers at once: --workers 10000 forked 10000 processes.
    entries = [Entry(**_entry(_wav(tmp_path / f"f{i}.wav"))) for i in range(3)]
    monkeypatch.setattr(shards_module, "ProcessPoolExecutor", _RecordingPool)
    _RecordingPool.sizes = []
    index = write_shards(entries, tmp_path / "shards", shard_seconds=1.0, workers=10000, progress=False)
    assert len(index["streams"]["speech/c"]["shards"]) == 3
    assert _RecordingPool.sizes == [3]


def test_mix_with_huge_corpus_weights_gives_finite_shares():
    hours = {"speech/a": 10.0, "speech/b": 5.0, "music/m": 1.0}
    plan = plan_mixture(hours, "speech=0.5,music=0.5", {"a": 1e308})
    assert all(math.isfinite(t) for t in plan.target.values())
    assert plan.target["speech/a"] == pytest.approx(0.5) and plan.target["music/m"] == pytest.approx(0.5)
    plan = plan_mixture(hours, "speech=0.5,music=0.5", {"a": 1e308, "b": 1e308})
    assert plan.target["speech/a"] == pytest.approx(2 * plan.target["speech/b"])
    assert sum(plan.target.values()) == pytest.approx(1.0)


def test_mix_cli_with_a_huge_weight_writes_no_nan(tmp_path, capsys):
    lines = [json.dumps(_entry(tmp_path / f"{c}.wav", 36000.0, id=f"{c}/x", corpus=c)) for c in ("a", "b")]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["data", "mix", str(tmp_path / "m.jsonl"), "--ratio", "speech=1", "--weight", "a=1e308",
                 "-o", str(tmp_path / "plan.json")]) == 0
    text = (tmp_path / "plan.json").read_text()
    assert "NaN" not in text and json.loads(text)["target"]["speech/a"] == pytest.approx(1.0)


@pytest.mark.parametrize("argv", [
    ["data", "mix", "{bin}"],
    ["data", "shard", "{bin}", "-o", "{tmp}/shards"],
    ["data", "manifest", "--quiet", "--source", "speech/a={tmp}/src", "--blacklist", "{bin}", "-o", "{tmp}/m.jsonl"],
])
def test_a_binary_manifest_or_blacklist_is_named_in_the_error(tmp_path, capsys, argv):
    (tmp_path / "src").mkdir()
    _wav(tmp_path / "src" / "a.wav")
    binary = tmp_path / "random.bin"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    argv = [a.format(bin=binary, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(binary) in err and "not UTF-8 text" in err, err


@pytest.mark.parametrize("second", ["{src}", "{src}/sub", "{src}/sub/.."])
def test_overlapping_sources_are_refused_before_scanning(tmp_path, capsys, second):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    _wav(src / "sub" / "a.wav")
    argv = ["data", "manifest", "--quiet", "--source", f"speech/a={src}", "--source",
            f"sound/b={second.format(src=src)}", "-o", str(tmp_path / "m.jsonl")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "overlap" in err and "speech/a" in err and "sound/b" in err, err
    assert not (tmp_path / "m.jsonl").exists()


@pytest.mark.parametrize("min_s, max_s", [(1e-9, 1e-9), (1.0, 1e308), (1e-5, 10.0)])
def test_segment_bounds_that_cannot_be_cut_are_a_clear_error(tmp_path, min_s, max_s):
    entries = [Entry(**_entry(tmp_path / "a.wav"))]  # was ZeroDivisionError / OverflowError
    with pytest.raises(ManifestError, match="segment bounds"):
        plan_shards(entries, tmp_path / "s", min_seconds=min_s, max_seconds=max_s)


def test_shard_cli_refuses_segment_bounds_that_cannot_be_cut(tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text(json.dumps(_entry(_wav(tmp_path / "a.wav"))) + "\n")
    rc = main(["data", "shard", "--quiet", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "s"),
               "--min-seconds", "1e-9", "--max-seconds", "1e-9"])
    err = capsys.readouterr().err
    assert rc == 2 and "segment bounds" in err and "Traceback" not in err, err


@pytest.mark.parametrize("flag", ["--max-seconds", "--shard-seconds", "--min-seconds"])
def test_shard_seconds_flags_refuse_values_that_overflow_in_samples(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as e:
        main(["data", "shard", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "s"), flag, "1e308"])
    assert e.value.code == 2 and f"{flag}: expected a number of seconds > 0" in capsys.readouterr().err


def test_an_interrupted_rewrite_leaves_no_stale_index_behind(tmp_path, monkeypatch):
    """A second run with another plan (here: another seed) that stops half-way used to leave the first
    run's index.json, which then described shards that had been rewritten."""
    entries = [Entry(**_entry(_wav(tmp_path / f"f{i}.wav", 1.5 + i))) for i in range(4)]
    out = tmp_path / "shards"
    write_shards(entries, out, shard_seconds=2.0, progress=False)
    assert (out / "index.json").exists()
    calls = []

    def interrupted(path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return load_audio(path)

    monkeypatch.setattr(shards_module, "load_audio", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_shards(entries, out, shard_seconds=2.0, seed=1, progress=False)
    assert not (out / "index.json").exists()
    with pytest.raises(ManifestError, match="no shard index"):
        read_index(out)
    monkeypatch.undo()
    index = write_shards(entries, out, shard_seconds=2.0, seed=1, progress=False)
    assert read_index(out) == json.loads(json.dumps(index))


def test_a_shard_written_with_colliding_keys_is_rewritten_by_the_next_run(tmp_path, monkeypatch):
    """Shards of earlier versions hold two files under one key; their plan hash must not match, or
    re-running `data shard` (as the loader's error says) would keep the broken shard."""
    entries = [Entry(**_entry(_wav(tmp_path / f"f{i}.wav"), id=f"c/{n}")) for i, n in enumerate(["a b", "a_b"])]
    out = tmp_path / "shards"
    monkeypatch.setattr(shards_module, "key_prefixes", lambda ids: {i: shards_module._readable_key(i) for i in ids})
    write_shards(entries, out, progress=False)  # as before the fix: one key for both files
    (shard,) = read_index(out)["streams"]["speech/c"]["shards"]
    with pytest.raises(ManifestError, match="holds 1 samples but the index records 2"):
        _read_tar(out / shard["path"], shard["segments"])
    monkeypatch.undo()
    write_shards(entries, out, progress=False)
    assert len(_read_tar(out / shard["path"], shard["segments"])) == 2


def test_failed_file_names_with_newlines_or_tabs_stay_on_one_line(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    _wav(src / "good.wav")
    (src / "bad\nname\t.wav").write_bytes(b"RIFF junk")
    out = tmp_path / "m.jsonl"
    assert main(["data", "manifest", "--quiet", "--source", f"sound/x={src}", "-o", str(out)]) == 1
    rows = (tmp_path / "m.jsonl.failed.tsv").read_text().splitlines()
    assert len(rows) == 1 and len(rows[0].split("\t")) == 2 and "bad\\nname\\t.wav" in rows[0]
    err = capsys.readouterr().err.splitlines()
    assert any("bad\\nname\\t.wav" in line for line in err) and not any(line == "name" for line in err)


def test_symlinked_folders_are_scanned_once_and_link_cycles_end(tmp_path):
    from harmonia.data.manifest import Source, scan_sources

    root, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    (root / "real").mkdir(parents=True)
    elsewhere.mkdir()
    _wav(root / "real" / "a.wav")
    _wav(elsewhere / "b.wav")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)  # used to be skipped silently
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)  # a cycle
    res = scan_sources([Source("sound", "x", root)], progress=False)
    assert sorted(e.id for e in res.entries) == ["x/linked/b", "x/real/a"] and not res.failures


def test_mix_refuses_two_weights_for_one_corpus(tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text(json.dumps(_entry(tmp_path / "a.wav", id="a/x", corpus="a")) + "\n")
    rc = main(["data", "mix", str(tmp_path / "m.jsonl"), "--ratio", "speech=1", "--weight", "a=1", "--weight", "a=0"])
    assert rc == 2 and "--weight given more than once for ['a']" in capsys.readouterr().err  # the last one won


def test_blacklist_matches_ids_whatever_their_unicode_normal_form(tmp_path):
    import unicodedata

    from harmonia.data.manifest import Source, read_blacklist, scan_sources

    src = tmp_path / "src"
    src.mkdir()
    _wav(src / (unicodedata.normalize("NFD", "café") + ".wav"))  # decomposed, as macOS stores names
    _wav(src / "other.wav")
    (tmp_path / "bl.txt").write_text(unicodedata.normalize("NFC", "café") + "\n", encoding="utf-8")
    res = scan_sources([Source("sound", "x", src)], blacklist=read_blacklist(tmp_path / "bl.txt"), progress=False)
    assert [e.id for e in res.entries] == ["x/other"] and len(res.blacklisted) == 1


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_shard_pool_workers_run_under_every_start_method(tmp_path, monkeypatch, method):
    """The exit-with-parent watchdog must not take a forkserver (Python 3.14's default) for a dead parent."""
    import multiprocessing

    entries = [Entry(**_entry(_wav(tmp_path / f"f{i}.wav"))) for i in range(2)]
    ctx = multiprocessing.get_context(method)
    monkeypatch.setattr(shards_module, "ProcessPoolExecutor",
                        lambda n, **kw: concurrent.futures.ProcessPoolExecutor(n, mp_context=ctx, **kw))
    index = write_shards(entries, tmp_path / "shards", shard_seconds=1.0, workers=2, progress=False)
    assert index["streams"]["speech/c"]["segments"] == 2 and index["failures"] == []
