"""The task registry (values of docs/xares.md §2.1-2.2), custom task files, labels."""

import json

import pytest
import torch

from harmonia.eval.labels import LabelCoder
from harmonia.eval.tasks import (
    BUILTIN_TASKS,
    TABLE1_TASKS,
    TaskError,
    get_task,
    load_task_file,
    resolve_tasks,
)


def test_table1_registry_matches_the_spec():
    t1 = [BUILTIN_TASKS[n] for n in TABLE1_TASKS]
    assert len(t1) == 18
    assert sum(t.weight for t in t1) == 24687
    assert sorted(t.formal_name for t in t1 if not t.knn) == ["Clotho", "DESED", "FSD18-Kaggle", "FSD50k"]
    assert sorted(t.name for t in t1 if t.folds) == sorted(
        ["esc50", "urbansound8k", "gtzan_genre", "libricount", "ravdess", "vocalimitations"])
    assert sorted(t.name for t in t1 if not t.folds and t.valid_split == t.test_split) == [
        "desed", "fsdkaggle2018", "voxlingua33"]
    assert {n: BUILTIN_TASKS[n].crop_length for n in ("fsd50k", "freemusicarchive", "voxlingua33",
                                                      "librispeechmalefemale", "clotho", "voxceleb1")} == {
        "fsd50k": 10, "freemusicarchive": 10, "voxlingua33": 10, "librispeechmalefemale": 5, "clotho": 30,
        "voxceleb1": 6}
    assert [BUILTIN_TASKS[n].encode_batch_size for n in ("fluentspeechcommands", "vocalimitations", "maestro")] == [1, 1, 1]


def test_shard_patterns():
    assert BUILTIN_TASKS["libricount"].partitions()["3"] == "libricount_fold03.tar"
    assert BUILTIN_TASKS["vocalimitations"].partitions()["2"] == "vocal_imitations_fold02_0000000.tar"
    assert BUILTIN_TASKS["esc50"].partitions()["1"] == "wds-audio-fold-1-*.tar"
    assert BUILTIN_TASKS["desed"].partitions() == {"wds-audio-train": "wds-audio-train*.tar",
                                                   "wds-audio-eval": "wds-audio-eval*.tar"}
    rounds = BUILTIN_TASKS["ravdess"].rounds()
    assert rounds[1] == (["0", "2", "3"], "1", "1")  # held-out fold is valid and test


def test_lookup_by_formal_name_groups_and_suggestions():
    assert get_task("UrbanSound 8k").name == "urbansound8k"
    assert [t.name for t in resolve_tasks(["esc50,cremad", "esc50"])] == ["esc50", "cremad"]
    assert len(resolve_tasks(["table1"])) == 18
    with pytest.raises(TaskError, match="Did you mean esc50"):
        get_task("esc5")


def test_custom_task_file_json_and_python(tmp_path):
    f = tmp_path / "birds.json"
    f.write_text(json.dumps({"name": "birds", "label_key": "species", "weight": 10, "folds": [0, 1],
                             "fold_pattern": "birds_{k}.tar", "epochs": 2}))
    t = load_task_file(f)
    assert (t.name, t.folds, t.partitions()) == ("birds", ("0", "1"), {"0": "birds_0.tar", "1": "birds_1.tar"})
    py = tmp_path / "calls.py"
    py.write_text("TASK = {'name': 'calls', 'label_key': 'kind', 'metric': 'accuracy'}\n")
    assert get_task(str(py)).label_key == "kind"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "label_key": "y", "epoch": 3}))
    with pytest.raises(TaskError, match="did you mean epochs"):
        load_task_file(bad)
    with pytest.raises(TaskError, match="label_key"):
        load_task_file(_write(tmp_path / "nokey.json", {"name": "x"}))


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_desed_frame_target_hand_computed():
    coder = LabelCoder.fit(BUILTIN_TASKS["desed"], [])
    y = coder.frame_target([{"onset": 0.1, "offset": 0.5, "label": "Dog,Cat"}], hop_ms=40)
    assert y.shape == (250, 10)  # always 10 s: ceil(10 / 0.04)
    dog, cat = 8, 0
    # frames [ceil(0.1/0.04), ceil(0.5/0.04)) = [3, 13)
    assert y[:, dog].nonzero().flatten().tolist() == list(range(3, 13))
    assert torch.equal(y[:, dog], y[:, cat]) and y.sum() == 20


def test_class_vocabulary_from_data_and_bad_labels():
    task = BUILTIN_TASKS["speechcommandsv1"]
    coder = LabelCoder.fit(task, [{"labels": "yes"}, {"labels": "no"}])
    assert coder.classes[:2] == ["no", "yes"] and coder.num_classes == 30
    assert coder.clip_target({"labels": "yes"}) == 1
    with pytest.raises(TaskError, match="expected JSON field 'labels'"):
        coder.clip_target({"label": "yes"})
    fsd = LabelCoder.fit(BUILTIN_TASKS["fsd50k"], [{"soundevent": "Dog;Bark"}])
    assert fsd.clip_target({"soundevent": "Dog;Bark"})[:2] == [1.0, 1.0]
