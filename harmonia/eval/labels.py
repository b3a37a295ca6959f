"""From a sample's JSON to a training target, as each X-ARES task's `label_processor` does.

`LabelCoder.fit(task, jsons)` builds the class vocabulary (the task's explicit `classes`, or the
sorted union of the values found in all partitions) and then turns JSON objects into targets:

- class       one JSON field mapped through the vocabulary -> int in [0, C)
- int         one JSON field that already is the class index (ESC-50, LibriCount)
- multilabel  a `;`-separated list -> many-hot float (C,) (FSD50k)
- events      a list of {"onset", "offset", "label": "A,B"} -> float (T, C) frames (DESED)
- notes       a list of {"start", "end", "note"} with MIDI notes 21..107 -> float (T, C) (MAESTRO)
- captions    a dict of captions -> list[str] (Clotho; each caption becomes one item)
- function    the task's `label_fn` (an X-ARES task module's `label_processor`) gives the target:
              a class index, a many-hot vector (C,) for clip tasks, or a (C, T) tensor for frame
              tasks, as X-ARES expects from it
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harmonia.eval.tasks import Task, TaskError

MIDI_LOWEST = 21  # MAESTRO note 21 is class 0 (87 classes: 21..107)


@dataclass
class LabelCoder:
    task: Task
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, task: Task, jsons: list) -> LabelCoder:
        """Build the vocabulary of `task` from every JSON of every partition."""
        if task.label == "captions":
            return cls(task, [])
        if task.label in ("int", "function"):
            return cls(task, [str(i) for i in range(task.num_classes)])
        if task.label == "notes":
            return cls(task, [str(MIDI_LOWEST + i) for i in range(task.num_classes or 87)])
        if task.classes is not None:
            classes = list(task.classes)
        else:
            found: set[str] = set()
            for j in jsons:
                found.update(_raw_names(task, j))
            classes = sorted(found)
        if task.num_classes is not None and len(classes) > task.num_classes:
            raise TaskError(
                f"task {task.name!r}: the data holds {len(classes)} distinct labels in "
                f"{task.label_key!r} but the task declares num_classes={task.num_classes} "
                f"(first labels: {classes[:8]}). Check the data or raise num_classes.")
        # Pad the vocabulary to the declared size so the probe has X-ARES's output dimension.
        n = task.num_classes or len(classes)
        classes += [f"<unseen {i}>" for i in range(len(classes), n)]
        return cls(task, classes)

    # ----------------------------------------------------------------------------------------------
    def clip_target(self, j, where: str = "") -> int | list[float] | list[str]:
        """Target of a clip/contrastive sample: class index, many-hot list, or captions."""
        t = self.task
        if t.label == "captions":
            if not isinstance(j, dict) or not j:
                raise _bad(t, where, "a JSON object of captions", j)
            return [str(v) for v in j.values()]
        if t.label == "function":
            return self._function_clip_target(j, where)
        value = _field(t, j, where)
        if t.label == "int":
            try:
                k = int(value)
            except (TypeError, ValueError):
                raise _bad(t, where, f"an integer class index in {t.label_key!r}", value) from None
            if not 0 <= k < self.num_classes:
                raise _bad(t, where, f"a class index in [0, {self.num_classes})", k)
            return k
        index = self._index()
        if t.label == "class":
            key = str(value)
            if key not in index:
                if t.name == "librispeechmalefemale":  # X-ARES: 0 if gender == "M" else 1
                    return 1
                raise _bad(t, where, f"one of the classes {self.classes[:10]}...", value)
            return index[key]
        # multilabel
        hot = [0.0] * self.num_classes
        for name in _raw_names(t, j):
            if name not in index:
                raise _bad(t, where, f"labels among {self.classes[:10]}...", name)
            hot[index[name]] = 1.0
        return hot

    def frame_target(self, j, hop_ms: float, where: str = "") -> torch.Tensor:
        """Frame target (T, C) float on the encoder's hop grid: frame i covers [i*hop, (i+1)*hop);
        an event [onset, offset) sets frames [ceil(onset/hop), ceil(offset/hop)) as X-ARES does.
        DESED targets always span `label_duration_s` (10 s); MAESTRO's span up to the last note end."""
        t = self.task
        if not isinstance(j, list):
            raise _bad(t, where, "a JSON list of events", j)

        def to_frames(sec: float) -> int:
            return math.ceil(float(sec) / (hop_ms / 1000.0))

        if t.label == "function":
            target = self._call(j, where)
            if not (isinstance(target, torch.Tensor) and target.ndim == 2 and target.shape[0] == self.num_classes):
                raise _bad(t, where, f"the label function to return a ({self.num_classes}, T) tensor", target)
            return target.float().T.contiguous()
        index = self._index()
        if t.label == "events":
            n_frames = to_frames(t.label_duration_s or max([e["offset"] for e in j] + [0.0]))
        else:
            n_frames = to_frames(max([e["end"] for e in j] + [0.0]))
        target = torch.zeros(n_frames, self.num_classes)
        for e in j:
            try:
                if t.label == "events":
                    start, end, names = e["onset"], e["offset"], str(e["label"]).split(",")
                else:
                    start, end, names = e["start"], e["end"], [str(int(e["note"]))]
            except (KeyError, TypeError, ValueError):
                want = "{onset, offset, label}" if t.label == "events" else "{start, end, note}"
                raise _bad(t, where, f"events of the form {want}", e) from None
            for name in names:
                if name not in index:
                    raise _bad(t, where, f"event labels among {self.classes}", name)
                target[to_frames(start):to_frames(end), index[name]] = 1.0
        return target

    def _call(self, j, where: str):
        try:
            return self.task.label_fn(j)
        except Exception as e:  # the task file's own code: any failure is a bad label for this item
            raise TaskError(f"task {self.task.name!r}{where}: the task file's label function failed on "
                            f"{str(j)[:200]} ({type(e).__name__}: {e}). Fix the shard's .json or the task "
                            "file.") from e

    def _function_clip_target(self, j, where: str) -> int | list[float]:
        """A class index in [0, C), or a many-hot vector of C values (X-ARES's BCE clip tasks)."""
        target = self._call(j, where)
        if isinstance(target, torch.Tensor):
            target = target.item() if target.ndim == 0 else target.tolist()
        if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < self.num_classes:
            return target
        if (isinstance(target, list) and len(target) == self.num_classes
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in target)):
            return [float(v) for v in target]
        raise _bad(self.task, where, f"the label function to return a class index in [0, {self.num_classes}) "
                   f"or {self.num_classes} many-hot values", target)

    def _index(self) -> dict[str, int]:
        if not hasattr(self, "_cached_index"):
            self._cached_index = {c: i for i, c in enumerate(self.classes)}
        return self._cached_index


def _field(task: Task, j, where: str):
    if not isinstance(j, dict) or task.label_key not in j:
        keys = list(j)[:8] if isinstance(j, dict) else type(j).__name__
        raise TaskError(f"task {task.name!r}{where}: expected JSON field {task.label_key!r}, found {keys}. "
                        "Fix the shard's .json or the task's `label_key`.")
    return j[task.label_key]


def _raw_names(task: Task, j) -> list[str]:
    """The label names a JSON carries (for building vocabularies)."""
    if task.label == "class":
        return [str(_field(task, j, ""))]
    if task.label == "multilabel":
        return [s for s in str(_field(task, j, "")).split(";") if s]
    if task.label == "events" and isinstance(j, list):
        return [n for e in j if isinstance(e, dict) for n in str(e.get("label", "")).split(",") if n]
    return []


def _bad(task: Task, where: str, expected: str, found) -> TaskError:
    return TaskError(f"task {task.name!r}{where}: expected {expected}, found {found!r}. "
                     "Fix the shard's .json or the task description.")
