"""X-ARES 0.1.3 task modules (`<name>_config(encoder) -> TaskConfig`) read as they are, without
xares: a hand-written module in that format, and xares' own task files from site-packages."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EVENT_TASK, FOLD_TASK, event_samples, knn_accuracy_numpy, tone_samples, write_shard

from harmonia.eval.embed import EmbeddingCache
from harmonia.eval.labels import LabelCoder
from harmonia.eval.runner import evaluate
from harmonia.eval.tasks import BUILTIN_TASKS, TaskError, load_task_file

TONE_FOLDS_MODULE = '''
from loguru import logger

from xares.task import TaskConfig


def tonefolds_config(encoder) -> TaskConfig:
    classes = {"low": 0, "mid": 1, "high": 2}
    config = TaskConfig(
        batch_size_train=8,
        encoder=encoder,
        epochs=3,
        eval_weight=100,
        formal_name="Tone folds",
        k_fold_splits=list(range(0, 3)),
        label_processor=lambda x: classes[x["label"]],
        name="tonefolds",
        output_dim=len(classes),
    )
    config.audio_tar_name_of_split = {k: f"tonefolds_fold{k:02d}.tar" for k in config.k_fold_splits}
    if config.use_mini_dataset:
        logger.warning("never")
    return config
'''

EVENTS_MODULE = '''
from math import ceil

import torch

from xares.task import TaskConfig


def toneevents_config(encoder) -> TaskConfig:
    classes = {"low": 0, "high": 1}

    def frames(sec):
        return ceil(sec / (encoder.hop_size_in_ms / 1000))

    def label_transform(events):
        target = torch.zeros(len(classes), frames(1.0))
        for e in events:
            for name in e["label"].split(","):
                target[classes[name], frames(e["onset"]):frames(e["offset"])] = 1.0
        return target

    return TaskConfig(
        criterion="BCEWithLogitsLoss", do_knn=False, encoder=encoder, eval_weight=50, label_processor=label_transform,
        metric="segmentf1_macro", metric_args=dict(hop_size_in_ms=encoder.hop_size_in_ms, segment_length_in_s=0.1),
        name="toneevents", output_dim=2, task_type="frame", train_split="ev_train", valid_split="ev_test",
        test_split="ev_test", epochs=3, batch_size_train=4,
    )
'''


def _module(tmp_path, text, name="my_task.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_hand_written_xares_module_becomes_the_equivalent_task(tmp_path, encoder):
    task = load_task_file(_module(tmp_path, TONE_FOLDS_MODULE), encoder)
    assert task.partitions() == FOLD_TASK.partitions()
    assert (task.folds, task.weight, task.epochs, task.batch_size, task.num_classes, task.knn, task.label) == (
        ("0", "1", "2"), 100, 3, 8, 3, True, "function")
    assert task.label_fn({"label": "high"}) == 2


def test_xares_mode_knn_of_a_task_module_equals_the_xares_knn(data_root, tmp_path, encoder):
    path = _module(tmp_path, TONE_FOLDS_MODULE)
    res = evaluate(encoder, [str(path)], data_root, tmp_path / "o", mode="xares", seeds=1,
                   cache_dir=tmp_path / "c", progress=False, write_reports=False)
    entry = res["tasks"]["tonefolds"]
    assert entry["status"] == "ok" and entry["weight"] == 100
    # the same embeddings (a cache hit: nothing encoded again), labels from the module's own mapping
    calls = encoder.calls
    embs = EmbeddingCache(tmp_path / "c", encoder, mode="xares", progress=False).embed_task(FOLD_TASK, data_root)
    assert encoder.calls == calls
    label = {"low": 0, "mid": 1, "high": 2}
    expected = []
    for held in ("0", "1", "2"):
        train = [embs[k] for k in ("0", "1", "2") if k != held]
        tx = torch.cat([e.pooled for e in train]).numpy()
        ty = [label[j["label"]] for e in train for j in e.jsons]
        expected.append(knn_accuracy_numpy(tx, ty, embs[held].pooled.numpy(),
                                           [label[j["label"]] for j in embs[held].jsons], "xares"))
    assert entry["knn"]["per_fold"] == pytest.approx(expected, abs=1e-6)  # float32 accuracy; one item is 1/12
    # and the same scores as harmonia's own description of the task
    own = evaluate(encoder, [FOLD_TASK], data_root, tmp_path / "o2", mode="xares", seeds=1,
                   cache_dir=tmp_path / "c", progress=False, write_reports=False)["tasks"]["tonefolds"]
    assert own["knn"]["per_fold"] == entry["knn"]["per_fold"]


def test_frame_label_function_matches_the_events_coder(tmp_path, encoder):
    task = load_task_file(_module(tmp_path, EVENTS_MODULE), encoder)
    assert (task.type, task.segment_length_s, task.knn, task.label) == ("frame", 0.1, False, "function")
    by_fn = LabelCoder.fit(task, [])
    by_events = LabelCoder.fit(EVENT_TASK, [])
    for _, _, _, events in event_samples("x", 4, 0):
        assert torch.equal(by_fn.frame_target(events, 20.0), by_events.frame_target(events, 20.0))


def test_frame_task_module_evaluates(data_root, tmp_path, encoder):
    path = _module(tmp_path, EVENTS_MODULE)
    res = evaluate(encoder, [str(path)], data_root, tmp_path / "o", mode="xares", seeds=1, progress=False,
                   write_reports=False)
    assert res["tasks"]["toneevents"]["status"] == "ok"


def test_a_failing_label_function_fails_the_task_naming_the_item(data_root, tmp_path, encoder):
    path = _module(tmp_path, TONE_FOLDS_MODULE.replace('"high": 2', '"hi": 2'))
    res = evaluate(encoder, [str(path)], data_root, tmp_path / "o", seeds=1, progress=False, write_reports=False)
    entry = res["tasks"]["tonefolds"]
    assert entry["status"] == "failed"
    assert "label function failed" in entry["error"] and "KeyError" in entry["error"] and "high" in entry["error"]


@pytest.mark.parametrize("text,match", [
    ("def a_config(e):\n    return 3\n", "must return a TaskConfig"),
    ("x = 1\n", "neither"),
    ("from xares.task import TaskConfig\ndef a_config(e):\n    return TaskConfig(name='a', task_type='asr')\n",
     "not supported"),
    ("from xares.task import TaskConfig\ndef a_config(e):\n    return TaskConfig(name='a', label_processor=len)\n",
     "num_classes"),
    ("from xares.task import TaskConfig\ndef a_config(e):\n    return TaskConfig(name='a', colour=3)\n", "colour"),
    ("raise RuntimeError('boom')\n", "boom"),
])
def test_bad_task_modules_are_one_clear_error(tmp_path, text, match):
    path = _module(tmp_path, text, "bad_task.py")
    with pytest.raises(TaskError, match=match) as e:
        load_task_file(path)
    assert str(path) in str(e.value)


# --------------------------------------------------------------------------------------------------
# xares' own task files, read from site-packages (xares 0.1.3 is in the dev extra)


def _xares_task_dir() -> Path | None:
    try:
        import xares
    except ImportError:
        return None
    d = Path(list(xares.__path__)[0]).parent / "tasks"
    return d if d.is_dir() else None


XARES_TASKS = _xares_task_dir()
needs_xares = pytest.mark.skipif(XARES_TASKS is None, reason="xares 0.1.3 task files not installed (dev extra)")
COMPARED = ("formal_name", "weight", "folds", "crop_length", "encode_batch_size", "epochs", "batch_size", "metric",
            "num_classes", "knn", "type", "segment_length_s", "pos_weight", "zenodo_id", "learning_rate")


@needs_xares
def test_every_xares_task_file_reads_as_our_registry_describes_it(encoder):
    seen = set()
    for path in sorted(XARES_TASKS.glob("*_task.py")):
        if path.name == "librispeech_asr_task.py":
            with pytest.raises(TaskError, match="asr"):
                load_task_file(path, encoder)
            continue
        task = load_task_file(path, encoder)
        ours = BUILTIN_TASKS.get(task.name)
        if ours is None:  # the private tasks (no public data) are read, but are not in our registry
            assert task.extra["private"] and task.zenodo_id is None, path.name
            continue
        seen.add(task.name)
        for f in COMPARED:
            assert getattr(task, f) == getattr(ours, f), (path.name, f)
        assert task.partitions() == ours.partitions(), path.name
        assert task.rounds() == ours.rounds(), path.name
    assert seen == set(BUILTIN_TASKS)


@needs_xares
def test_xares_esc50_task_file_runs_unchanged_and_its_knn_equals_the_xares_knn(tmp_path, encoder):
    root = tmp_path / "env"
    names = {"low": 0, "mid": 1, "high": 2}
    for k in range(1, 6):
        samples = [(key, audio, sr, {"label": names[meta["label"]]})
                   for key, audio, sr, meta in tone_samples(f"f{k}", 2, seed=k)]
        write_shard(root / "esc50" / f"wds-audio-fold-{k}-000000.tar", samples)
    res = evaluate(encoder, [str(XARES_TASKS / "esc50_task.py")], root, tmp_path / "o", mode="xares",
                   cache_dir=tmp_path / "c", progress=False, write_reports=False)
    entry = res["tasks"]["esc50"]
    assert entry["status"] == "ok" and entry["weight"] == 400 and entry["num_classes"] == 50
    embs = EmbeddingCache(tmp_path / "c", encoder, mode="xares", progress=False).embed_task(
        BUILTIN_TASKS["esc50"], root)
    folds = [str(k) for k in range(1, 6)]
    expected = []
    for held in folds:
        tx = np.concatenate([embs[k].pooled.numpy() for k in folds if k != held])
        ty = [j["label"] for k in folds if k != held for j in embs[k].jsons]
        expected.append(knn_accuracy_numpy(tx, ty, embs[held].pooled.numpy(), [j["label"] for j in embs[held].jsons],
                                           "xares"))
    assert entry["knn"]["per_fold"] == pytest.approx(expected, abs=1e-6)  # float32 accuracy; one item is 1/12
    assert json.dumps(res["tasks"]["esc50"]["task"])  # the recorded task is plain JSON


def test_a_disabled_task_module_is_skipped_as_xares_does_without_failing_the_run(data_root, tmp_path, capsys):
    from harmonia.cli import main

    path = _module(tmp_path, TONE_FOLDS_MODULE.replace("        epochs=3,", "        epochs=3,\n        disabled=True,"))
    assert main(["evaluate", "--model", "tests/eval/eval_test_encoder.py", "--tasks", str(path), "--data-root",
                 str(data_root), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    entry = json.loads((tmp_path / "o" / "results.json").read_text())["tasks"]["tonefolds"]
    assert entry["status"] == "disabled" and "mlp" not in entry
