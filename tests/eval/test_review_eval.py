"""Hostile-user checks of the evaluation: concurrent runs on one cache, crafted task files and X-ARES
task modules, corrupt run directories."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from conftest import EVENT_TASK, TONE_TASK
from eval_test_encoder import BandEnergyEncoder

from harmonia.eval.embed import CacheWarning, EmbeddingCache
from harmonia.eval.labels import LabelCoder
from harmonia.eval.report import write_combined, write_run
from harmonia.eval.runner import evaluate, load_encoder_source
from harmonia.eval.tasks import TaskError, load_task_file, resolve_tasks


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


# --------------------------------------------------------------------------------------------------
# crafted task files


def _task_module(tmp_path, name: str, body: str):
    path = tmp_path / f"{name}_task.py"
    path.write_text("from xares.task import TaskConfig\n\n\n" + body)
    return path


@pytest.mark.parametrize("body, complaint", [
    ("raise SystemExit(0)\n", "SystemExit"),  # before: the whole evaluation exited 0, silently
    ("import sys\n\ndef x_config(encoder):\n    sys.exit(3)\n", "SystemExit"),
])
def test_a_task_module_that_exits_is_a_bad_task_file_not_the_end_of_the_run(tmp_path, body, complaint):
    path = _task_module(tmp_path, "x", body)
    with pytest.raises(TaskError, match=complaint) as e:
        load_task_file(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("setup, field", [
    ("metric_args=None", "metric_args"),  # before: AttributeError without the file
    ("task_type=['clip']", "task_type"),  # before: TypeError (unhashable list) without the file
])
def test_a_task_config_field_of_the_wrong_type_names_the_file(tmp_path, setup, field):
    path = _task_module(tmp_path, "x", f"def x_config(encoder):\n    return TaskConfig(name='x', output_dim=2, "
                                       f"label_processor=lambda j: 0, {setup})\n")
    with pytest.raises(TaskError, match="wrong type") as e:
        load_task_file(path)
    assert str(path) in str(e.value)


def test_a_tar_name_mapping_of_the_wrong_type_names_the_file(tmp_path):
    path = _task_module(tmp_path, "x", "def x_config(encoder):\n    c = TaskConfig(name='x', output_dim=2, "
                                       "label_processor=lambda j: 0)\n    c.audio_tar_name_of_split = ['a', 'b']\n"
                                       "    return c\n")
    with pytest.raises(TaskError, match="wrong type") as e:
        load_task_file(path)
    assert str(path) in str(e.value)


def test_a_task_file_whose_name_contains_a_comma_is_one_task_file(tmp_path):
    path = tmp_path / "birds,v2.json"
    path.write_text(json.dumps({"name": "birds", "label_key": "species", "weight": 10}))
    assert [t.name for t in resolve_tasks([str(path)])] == ["birds"]
    assert [t.name for t in resolve_tasks(["esc50,cremad"])] == ["esc50", "cremad"]  # lists still split


@pytest.mark.parametrize("field, value", [
    ("crop_length", 1e300), ("segment_length_s", 1e9), ("label_duration_s", 86400 * 365),
    ("num_classes", 10**12), ("epochs", 10**12), ("encode_batch_size", 10**9), ("batch_size", 10**9),
    ("learning_rate", 1e300), ("pos_weight", 1e300),
])
def test_absurdly_large_task_values_are_refused_naming_the_field(tmp_path, field, value):
    spec = {"name": "big", "label_key": "l", field: value}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(TaskError, match=f"`{field}` must be") as e:
        load_task_file(path)
    assert str(path) in str(e.value)


# --------------------------------------------------------------------------------------------------
# harmonia report on damaged run directories


@pytest.mark.parametrize("content", ["", "{", "[]", "null", '{"model": "m"}', '{"model": "m", "mode": "clean", "tasks": []}',
                                     '{"model": "m", "mode": "clean", "tasks": {"t": null}}',
                                     '{"model": "m", "mode": "clean", "tasks": {"t": {"status": "ok"}}}',
                                     '{"model": "m", "mode": "clean", "tasks": {"t": {"status": "ok", "formal_name": "T", '
                                     '"domain": "d", "metric": "accuracy", "mlp": {"mean": "high"}}}}'])
def test_report_on_a_corrupt_results_json_names_the_file(tmp_path, content):
    # before: raw JSONDecodeError / TypeError / KeyError without the file
    good, bad = tmp_path / "good", tmp_path / "bad"
    write_run({"model": "m", "mode": "clean", "mode_notes": "", "seeds": [0], "knn": {"k": 10, "temperature": 0.07,
               "similarity": "cosine"}, "tasks": {}, "summary": {}}, good, charts=False)
    bad.mkdir()
    (bad / "results.json").write_text(content)
    write_combined([good])  # the good run alone works
    with pytest.raises(ValueError, match="not a results.json") as e:
        write_combined([good, bad])
    assert str(bad / "results.json") in str(e.value)


@pytest.mark.parametrize("seeds", [0, -1, 10**9, True, 2.5])
def test_nonsensical_seed_counts_are_refused_before_any_work(data_root, tmp_path, encoder, seeds):
    # before: 10**9 built a billion-entry seed list (minutes, then out of memory); True and 2.5 slipped through
    with pytest.raises(ValueError, match="seeds: expected a whole number in 1..100"):
        evaluate(encoder, [TONE_TASK], data_root, tmp_path / "o", seeds=seeds, progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("link", ["task", "key", "partition"])
def test_a_symlink_planted_in_the_cache_is_never_followed(data_root, tmp_path, link):
    # before: a planted link made "empty this partition" delete files outside the cache
    victim = tmp_path / "victim"
    for part in ("tones_train", "tones_valid", "tones_test", ""):
        (victim / part).mkdir(parents=True, exist_ok=True)
        (victim / part / "precious.txt").write_text("keep me")
    (victim / "tones_train" / "state.json").write_text("{}")  # "corrupt": the partition is emptied
    fresh = EmbeddingCache(tmp_path / "fresh", BandEnergyEncoder(), progress=False).embed_task(TONE_TASK, data_root)
    cache = EmbeddingCache(tmp_path / "cache", BandEnergyEncoder(), progress=False)
    tdir = cache.task_dir(TONE_TASK)
    planted = {"task": tdir.parent, "key": tdir, "partition": tdir / "tones_train"}[link]
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.symlink_to(victim / "tones_train" if link == "partition" else victim, target_is_directory=True)
    with pytest.warns(CacheWarning, match="symbolic link"):
        got = cache.embed_task(TONE_TASK, data_root)
    assert sorted(p.relative_to(victim).as_posix() for p in victim.rglob("*")) == [
        "precious.txt", "tones_test", "tones_test/precious.txt", "tones_train", "tones_train/precious.txt",
        "tones_train/state.json", "tones_valid", "tones_valid/precious.txt"]
    assert not planted.is_symlink()
    for part, emb in fresh.items():
        assert emb.keys == got[part].keys and torch.equal(emb.pooled, got[part].pooled)


DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON nesting that makes the json module raise RecursionError


def test_a_json_nesting_bomb_in_a_task_file_is_a_task_error(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(DEEP)
    with pytest.raises(TaskError, match="not valid JSON") as e:  # before: RecursionError
        load_task_file(path)
    assert str(path) in str(e.value)


def test_a_json_nesting_bomb_in_results_json_is_named(tmp_path):
    (tmp_path / "results.json").write_text(DEEP)
    with pytest.raises(ValueError, match="not a results.json"):  # before: RecursionError
        write_combined([tmp_path])


def test_a_json_nesting_bomb_planted_as_cache_state_is_repaired(data_root, tmp_path):
    cache = EmbeddingCache(tmp_path / "c", BandEnergyEncoder(), progress=False)
    first = cache.embed_task(TONE_TASK, data_root)
    (cache.task_dir(TONE_TASK) / "tones_test" / "state.json").write_text(DEEP)
    with pytest.warns(CacheWarning, match="state.json"):  # before: RecursionError aborted the run
        again = cache.embed_task(TONE_TASK, data_root)
    assert torch.equal(again["tones_test"].pooled, first["tones_test"].pooled)


@pytest.mark.parametrize("pattern", ["f{k}{j}.tar", "f{k:d}.tar", "f{k.real}.tar", "f{k!z}.tar", "f{k}{}.tar",
                                     "f{k:>100000}.tar"])
def test_a_fold_pattern_that_cannot_be_formatted_is_refused_when_the_task_file_is_read(tmp_path, pattern):
    # before: accepted, then a raw KeyError/ValueError/IndexError in the middle of the evaluation
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"name": "x", "label_key": "l", "folds": ["a", "b"], "fold_pattern": pattern}))
    with pytest.raises(TaskError, match="fold_pattern|1024 characters") as e:
        load_task_file(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("body, complaint", [
    ("import sys\nsys.exit(0)\n", "failed to run \\(SystemExit"),  # before: the CLI exited 0, silently
    ("raise RuntimeError('boom')\n", "failed to run \\(RuntimeError: boom"),
    ("class MyEncoder:\n    def __init__(self):\n        raise SystemExit(1)\n", "MyEncoder\\(\\) failed \\(SystemExit"),
    ("class MyEncoder:\n    pass\n", "expected a torch.nn.Module"),  # before: AttributeError 'eval'
])
def test_an_encoder_file_that_fails_is_one_value_error_naming_it(tmp_path, body, complaint):
    path = tmp_path / "my_encoder.py"
    path.write_text(body)
    with pytest.raises(ValueError, match=complaint) as e:
        load_encoder_source(str(path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("glob", ["/etc/*.tar", "", "  "])
def test_an_absolute_or_empty_shard_glob_is_refused_when_the_task_file_is_read(tmp_path, glob):
    # before: accepted, then NotImplementedError / ValueError from Path.glob in the middle of the evaluation
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"name": "x", "label_key": "l", "shard_globs": {"train": glob, "valid": "v*.tar",
                                                                              "test": "t*.tar"}}))
    with pytest.raises(TaskError, match="must be a non-empty pattern relative to") as e:
        load_task_file(path)
    assert str(path) in str(e.value)


# --------------------------------------------------------------------------------------------------
# hostile values in a shard's JSON


@pytest.mark.parametrize("event", [
    {"onset": 0.0, "offset": 1e12, "label": "low"},  # before: tried to allocate 5e13 frames
    {"onset": 0.0, "offset": float("nan"), "label": "low"},  # before: raw ValueError from math.ceil
    {"onset": 0.0, "offset": float("inf"), "label": "low"},  # before: raw OverflowError
    {"onset": -5.0, "offset": 0.5, "label": "low"},  # before: silently marked frames at the end
    {"onset": 0.6, "offset": 0.2, "label": "low"},  # offset before onset
    "low",  # not an event object (already refused; kept as a guard)
    {"onset": 0.0, "label": "low"},  # no offset (already refused; kept as a guard)
])
def test_hostile_event_times_are_a_task_error_naming_the_item(event):
    coder = LabelCoder.fit(EVENT_TASK, [[{"onset": 0.1, "offset": 0.2, "label": "low"}]])
    with pytest.raises(TaskError, match="item 'x'"):
        coder.frame_target([event], 20.0, " (item 'x')")


def test_valid_events_give_the_same_frame_targets_as_before():
    coder = LabelCoder.fit(EVENT_TASK, [])
    target = coder.frame_target([{"onset": 0.2, "offset": 0.6, "label": "low"},
                                 {"onset": 0.5, "offset": 0.9, "label": "high"}], 100.0)
    # label_duration_s = 1 s on a 100 ms grid; frames [ceil(on/hop), ceil(off/hop))
    expected = torch.zeros(10, 2)
    expected[2:6, EVENT_TASK.classes.index("low")] = 1
    expected[5:9, EVENT_TASK.classes.index("high")] = 1
    assert torch.equal(target, expected)


@pytest.mark.parametrize("name", ["a\x00b", "x" * 300, "ü" * 150])
def test_a_task_name_no_file_system_accepts_is_refused_when_the_task_file_is_read(tmp_path, name):
    # before: accepted, then "embedded null byte" / "File name too long" when the cache or charts are written
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"name": name, "label_key": "l"}))
    with pytest.raises(TaskError, match="`name` must be a directory name") as e:
        load_task_file(path)
    assert str(path) in str(e.value)


def test_task_files_saved_with_a_byte_order_mark_load(tmp_path):
    # before: "Unexpected UTF-8 BOM" (JSON) and "invalid non-printable character U+FEFF" (Python)
    js = tmp_path / "birds.json"
    js.write_bytes(b"\xef\xbb\xbf" + json.dumps({"name": "birds", "label_key": "species"}).encode())
    assert load_task_file(js).name == "birds"
    py = tmp_path / "birds_task.py"
    py.write_bytes(b"\xef\xbb\xbf" + b"from xares.task import TaskConfig\n\n\ndef birds_config(encoder):\n"
                   b"    return TaskConfig(name='birds', output_dim=3, label_processor=lambda j: 0)\n")
    assert load_task_file(py).name == "birds"
