"""Task registry: the 18 tasks of the CMU-AIST paper's Table I (plus ASV2015, VoxCeleb1 and MAESTRO),
each described exactly as xares 0.1.3 configures it (specs/xares.md §2.1), and custom tasks read from
a small JSON or Python file in the same vocabulary.

A task says where its shards are (`partitions()`: partition name -> shard glob under
`<data_root>/<name>/`), how the JSON label of a sample becomes a target (`label`, `label_key`,
`classes`), how it is scored (`metric`, `weight`, `knn`) and how the probe is trained (`epochs`,
`batch_size`). Label vocabularies that X-ARES hard-codes as long dicts (FSC's 248 transcriptions,
FSD50k's 200 events, ...) are built from the data instead: the sorted union of the values found in
all partitions (`harmonia.eval.labels`); the class index order only permutes the probe's output rows.

Task files: JSON (`Task`'s fields; every field's type and range is checked and an error names the
file and the field), a Python file defining `TASK`, or an X-ARES 0.1.3 task module used as it is
(`<name>_config(encoder) -> TaskConfig`, executed with stand-ins for `xares.task` and `loguru`, see
`harmonia.eval.xares_compat`; its `label_processor` becomes the task's `label_fn`). Python task
files are code and run as such, as in X-ARES: only pass files you trust. A task without `weight`
gets the X-ARES rule applied to its data (test-split clips, capped at 2000).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

from harmonia.eval.xares_compat import TaskConfig, config_functions, exec_task_module

TaskType = Literal["clip", "frame", "contrastive"]
LabelKind = Literal["class", "int", "multilabel", "events", "notes", "captions", "function"]
Metric = Literal["accuracy", "mAP", "segmentf1_macro", "segmentf1_micro", "recallatk_r1"]

_METRICS = ("accuracy", "mAP", "segmentf1_macro", "segmentf1_micro", "recallatk_r1")
_LABEL_KINDS = ("class", "int", "multilabel", "events", "notes", "captions", "function")
_TYPES = ("clip", "frame", "contrastive")


class EvalDataError(Exception):
    """Bad or missing data for one task (its shards, labels, task file, vocabulary or cache): the
    task is recorded as failed and the evaluation goes on. Any other exception is a bug and raises."""


class TaskError(EvalDataError, ValueError):
    """A task name or task file is unknown or inconsistent; the message says what to fix."""


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_STR = ("a string", lambda v: isinstance(v, str))
_BOOL = ("true or false", lambda v: isinstance(v, bool))
_POS_INT = ("a whole number >= 1", lambda v: _whole(v) and v >= 1)
_NONNEG_INT = ("a whole number >= 0", lambda v: _whole(v) and v >= 0)
_POS_NUM = ("a number > 0", lambda v: _number(v) and v > 0)
_SECONDS = ("a number of seconds > 0", lambda v: _number(v) and v > 0)
_STRS = ("a list of strings", lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v))
_GLOBS = ("an object of partition: shard glob strings",
          lambda v: isinstance(v, tuple) and all(isinstance(p, tuple) and len(p) == 2
                                                 and all(isinstance(x, str) for x in p) for p in v))
# field -> ((what it must be, check), None allowed)
_FIELD_RULES = {
    "name": (_STR, False), "formal_name": (_STR, False), "domain": (_STR, False), "type": (_STR, False),
    "label": (_STR, False), "label_key": (_STR, True), "num_classes": (_POS_INT, True),
    "classes": (_STRS, True), "metric": (_STR, False), "weight": (_NONNEG_INT, True),
    "train_split": (_STR, True), "valid_split": (_STR, True), "test_split": (_STR, True),
    "folds": (_STRS, True), "fold_pattern": (_STR, False), "knn": (_BOOL, False),
    "crop_length": (_SECONDS, True), "encode_batch_size": (_POS_INT, False), "epochs": (_POS_INT, False),
    "batch_size": (_POS_INT, False), "learning_rate": (_POS_NUM, False), "segment_length_s": (_SECONDS, True),
    "label_duration_s": (_SECONDS, True), "pos_weight": (_POS_NUM, True), "zenodo_id": (_STR, True),
    "table1": (_BOOL, False), "shard_globs": (_GLOBS, True),
    "label_fn": (("a function", callable), True), "extra": (("an object", lambda v: isinstance(v, dict)), False),
}


@dataclass(frozen=True)
class Task:
    """One evaluation task (an X-ARES `TaskConfig` restricted to what scoring needs)."""

    name: str  # directory under the data root, X-ARES `name` (e.g. "esc50")
    formal_name: str  # the name in result tables (X-ARES `formal_name`)
    domain: str  # "sound" | "speech" | "music" | anything for custom tasks
    type: TaskType = "clip"  # clip: mean-pooled embedding; frame: every frame; contrastive: Clotho
    label: LabelKind = "class"  # how the JSON becomes a target (see harmonia.eval.labels)
    label_key: str | None = None  # JSON field read by class/int/multilabel labels
    num_classes: int | None = None  # output size; None = size of the vocabulary found in the data
    classes: tuple[str, ...] | None = None  # explicit class order; None = sorted values from the data
    metric: Metric = "accuracy"
    # X-ARES eval_weight (test-set size capped at 2000, see §0 point 6); None: that rule applied to
    # the data (clips in the test split, for k-fold the mean clips per fold, capped at 2000)
    weight: int | None = None
    # Either three split names (shards `<split>*.tar`) ...
    train_split: str | None = "train"
    valid_split: str | None = "valid"
    test_split: str | None = "test"
    # ... or k folds (each fold is valid+test once, trained on the others), shards `fold_pattern`.
    folds: tuple[str, ...] | None = None
    fold_pattern: str = "wds-audio-fold-{k}-*.tar"  # formatted with k=<fold>
    knn: bool = True  # scored in the kNN track
    crop_length: float | None = None  # seconds; clips are cut into crops of this length
    encode_batch_size: int = 16  # X-ARES batch_size_encode (its padding matters in xares mode)
    epochs: int = 10
    batch_size: int = 32  # train and valid batch size of the probe
    learning_rate: float = 1e-3
    segment_length_s: float | None = None  # segment-F1 segment (DESED 1.0 s, MAESTRO 0.1 s)
    label_duration_s: float | None = None  # frame targets span this many seconds (DESED: 10)
    pos_weight: float | None = None  # BCE positive weight (MAESTRO: 10)
    zenodo_id: str | None = None
    table1: bool = False  # one of the 18 tasks of the paper's Table I
    # explicit partition -> shard glob (X-ARES `audio_tar_name_of_split`), overriding the defaults
    shard_globs: tuple[tuple[str, str], ...] | None = None
    # label "function": the target of a sample's JSON (an X-ARES task module's `label_processor`)
    label_fn: Callable | None = field(default=None, compare=False, repr=False)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        def bad(what: str) -> TaskError:
            return TaskError(f"task {self.name!r}: {what}")

        for f in fields(self):
            (expected, ok), optional = _FIELD_RULES[f.name]
            value = getattr(self, f.name)
            if not (ok(value) or (optional and value is None)):
                raise bad(f"field `{f.name}` must be {expected}{' or null' if optional else ''}, "
                          f"found {value!r} ({type(value).__name__})")
        if not self.name or "/" in self.name or "\\" in self.name or self.name in (".", ".."):
            raise bad("`name` must be a non-empty directory name without '/'")
        if self.type not in _TYPES:
            raise bad(f"`type` must be one of {_TYPES}, found {self.type!r}")
        if self.label not in _LABEL_KINDS:
            raise bad(f"`label` must be one of {_LABEL_KINDS}, found {self.label!r}")
        if self.metric not in _METRICS:
            raise bad(f"`metric` must be one of {_METRICS}, found {self.metric!r}")
        if (self.label == "function") != (self.label_fn is not None):
            raise bad("label 'function' (and only it) takes a `label_fn`: it comes from X-ARES task modules")
        if self.label in ("class", "int", "multilabel") and not self.label_key:
            raise bad(f"label {self.label!r} reads one JSON field: set `label_key` (e.g. \"label\")")
        if self.label in ("int", "function") and not self.num_classes:
            raise bad(f"label {self.label!r} needs `num_classes` (targets must lie in 0..num_classes-1)")
        if self.type == "frame" and self.label not in ("events", "notes", "function"):
            raise bad(f"frame tasks need label 'events' or 'notes', found {self.label!r}")
        if self.type == "contrastive" and (self.label != "captions" or self.metric != "recallatk_r1"):
            raise bad("contrastive tasks need label 'captions' and metric 'recallatk_r1'")
        if self.metric.startswith("segmentf1") and not self.segment_length_s:
            raise bad("segment-F1 metrics need `segment_length_s` (DESED uses 1.0)")
        if self.knn and self.type != "clip":
            raise bad("the kNN track exists only for clip tasks: set `knn` to false")
        if self.folds is None:
            if not (self.train_split and self.valid_split and self.test_split):
                raise bad("set `train_split`, `valid_split` and `test_split`, or `folds`")
        else:
            if len(self.folds) < 2:
                raise bad(f"k-fold needs at least 2 folds, found {list(self.folds)}")
            if self.shard_globs is None and "{k" not in self.fold_pattern:
                raise bad(f"`fold_pattern` must contain {{k}} (e.g. 'fold_{{k}}_*.tar'), found {self.fold_pattern!r}")
        if self.shard_globs is not None:
            missing = sorted(set(self._partition_names()) - {p for p, _ in self.shard_globs})
            if missing:
                raise bad(f"`shard_globs` has no shard pattern for partitions {missing}")

    # ----------------------------------------------------------------------------------------------
    def partitions(self) -> dict[str, str]:
        """Partition name -> shard glob (relative to `<data_root>/<name>/`), in a stable order.
        A split used twice (DESED's valid = test) is one partition."""
        if self.shard_globs is not None:
            globs = dict(self.shard_globs)
            return {p: globs[p] for p in self._partition_names()}
        if self.folds is not None:
            return {str(k): self.fold_pattern.format(k=_fold_value(k)) for k in self.folds}
        out: dict[str, str] = {}
        for split in (self.train_split, self.valid_split, self.test_split):
            out.setdefault(split, f"{split}*.tar")
        return out

    def _partition_names(self) -> list[str]:
        if self.folds is not None:
            return list(self.folds)
        return list(dict.fromkeys((self.train_split, self.valid_split, self.test_split)))

    def rounds(self) -> list[tuple[list[str], str, str]]:
        """The (train partitions, valid partition, test partition) of each scoring round: one for
        split tasks, one per held-out fold for k-fold tasks (where valid = test, as in X-ARES)."""
        if self.folds is None:
            return [([self.train_split], self.valid_split, self.test_split)]
        folds = [str(k) for k in self.folds]
        return [([f for f in folds if f != k], k, k) for k in folds]

    @property
    def zenodo_url(self) -> str | None:
        return f"https://zenodo.org/records/{self.zenodo_id}" if self.zenodo_id else None

    def to_dict(self) -> dict:
        """The task's fields as plain JSON values (a `label_fn` is not JSON: it is left out)."""
        d = asdict(self)
        d.pop("label_fn")
        for k in ("folds", "classes"):
            if d[k] is not None:
                d[k] = list(d[k])
        if d["shard_globs"] is not None:
            d["shard_globs"] = dict(d["shard_globs"])
        return d


def _fold_value(k: str):
    """Folds are formatted as ints when they look like ints (so `{k:02d}` patterns work)."""
    try:
        return int(k)
    except ValueError:
        return k


def _folds(ks) -> tuple[str, ...]:
    return tuple(str(k) for k in ks)


# --------------------------------------------------------------------------------------------------
# The registry (values: specs/xares.md §2.1, read from xares 0.1.3 tasks/*.py)

_SPLITS = dict(train_split="wds-audio-train", valid_split="wds-audio-valid", test_split="wds-audio-test")

BUILTIN_TASKS: dict[str, Task] = {t.name: t for t in [
    # ---- the 18 tasks of Table I, in the paper's row order
    Task("fsd50k", "FSD50k", "sound", label="multilabel", label_key="soundevent", num_classes=200,
         metric="mAP", weight=2000, train_split="fsd50k_train", valid_split="fsd50k_validation",
         test_split="fsd50k_eval", knn=False, crop_length=10, batch_size=64, zenodo_id="14868441", table1=True),
    Task("vocalimitations", "Vocal Imitation", "sound", label_key="imitation", num_classes=302, weight=1867,
         folds=_folds(range(3)), fold_pattern="vocal_imitations_fold{k:02}_0000000.tar",
         encode_batch_size=1, epochs=20, zenodo_id="14862060", table1=True),
    # X-ARES quirk: FSD18 selects its best epoch on the test split (valid = test).
    Task("fsdkaggle2018", "FSD18-Kaggle", "sound", label_key="sound", num_classes=41, weight=1600,
         train_split="fsd18_train", valid_split="fsd18_test", test_split="fsd18_test", knn=False,
         epochs=3, batch_size=64, zenodo_id="14725117", table1=True),
    # X-ARES quirk: DESED selects its best epoch on the eval split, which is also the test split.
    Task("desed", "DESED", "sound", type="frame", label="events", num_classes=10,
         classes=("Cat", "Speech", "Running_water", "Dishes", "Electric_shaver_toothbrush", "Vacuum_cleaner",
                  "Blender", "Alarm_bell_ringing", "Dog", "Frying"),
         metric="segmentf1_macro", segment_length_s=1.0, label_duration_s=10.0, weight=1153,
         train_split="wds-audio-train", valid_split="wds-audio-eval", test_split="wds-audio-eval", knn=False,
         zenodo_id="14808180", table1=True),
    Task("esc50", "ESC-50", "sound", label="int", label_key="label", num_classes=50, weight=400,
         folds=_folds(range(1, 6)), fold_pattern="wds-audio-fold-{k}-*.tar", zenodo_id="14614287", table1=True),
    Task("clotho", "Clotho", "sound", type="contrastive", label="captions", metric="recallatk_r1", weight=1045,
         train_split="clotho_development", valid_split="clotho_evaluation", test_split="clotho_validation",
         knn=False, crop_length=30, epochs=20, batch_size=128, zenodo_id="14856454", table1=True),
    Task("urbansound8k", "UrbanSound 8k", "sound", label_key="soundevent", num_classes=10, weight=873,
         folds=_folds(range(1, 11)), fold_pattern="urbansound_fold{k}_0000000.tar", zenodo_id="14722683",
         table1=True),
    Task("nsynthinstument", "NSynth-Instruments", "music", label_key="instrument_family_str", num_classes=11,
         weight=2000, train_split="nsynth_train", valid_split="nsynth_valid", test_split="nsynth_test",
         zenodo_id="14725174", table1=True),
    Task("gtzan_genre", "GTZAN Genre", "music", label_key="genre", num_classes=10, weight=100,
         folds=_folds(range(10)), fold_pattern="gtzan_fold_{k}_0000000.tar", zenodo_id="14722472", table1=True),
    Task("freemusicarchive", "Free Music Archive Small", "music", label_key="genre", num_classes=8, weight=800,
         train_split="fma_small_train", valid_split="fma_small_valid", test_split="fma_small_test",
         crop_length=10, epochs=3, zenodo_id="14725056", table1=True),
    Task("libricount", "LibriCount", "speech", label="int", label_key="num_speakers", num_classes=11,
         weight=1144, folds=_folds(range(5)), fold_pattern="libricount_fold{k:02d}.tar", batch_size=64,
         zenodo_id="14722478", table1=True),
    Task("cremad", "CREMA-D", "speech", label_key="label", num_classes=6, classes=("H", "S", "A", "F", "D", "N"),
         weight=1116, **_SPLITS, zenodo_id="14646870", table1=True),
    Task("ravdess", "RAVDESS", "speech", label_key="emotion", num_classes=8, weight=360,
         folds=_folds(range(4)), fold_pattern="ravdess_fold_{k}_0000000.tar", zenodo_id="14722524", table1=True),
    Task("fluentspeechcommands", "Fluent Speech Commands", "speech", label_key="transcription", num_classes=248,
         weight=2000, train_split="fluentspeechcommands_train", valid_split="fluentspeechcommands_valid",
         test_split="fluentspeechcommands_test", encode_batch_size=1, zenodo_id="14722453", table1=True),
    # X-ARES maps gender "M" to 0 and anything else to 1.
    Task("librispeechmalefemale", "LibriSpeech-MF", "speech", label_key="gender", num_classes=2,
         classes=("M", "F"), weight=2620, train_split="train-clean-100", valid_split="dev-clean",
         test_split="test-clean", crop_length=5, zenodo_id="14716252", table1=True),
    Task("speechcommandsv1", "Speech Commands V1", "speech", label_key="labels", num_classes=30, weight=2000,
         **_SPLITS, batch_size=64, zenodo_id="14722647", table1=True),
    # X-ARES quirk: VoxLingua33 selects its best epoch on dev, which is also the test split.
    Task("voxlingua33", "VoxLingua33", "speech", label_key="labels", num_classes=33, weight=1609,
         train_split="train_subset", valid_split="dev", test_split="dev", crop_length=10, batch_size=64,
         zenodo_id="14812245", table1=True),
    Task("vocalsound", "VocalSound", "speech", label_key="label", num_classes=6,
         classes=("laughter", "sigh", "throatclearing", "cough", "sneeze", "sniff"), weight=2000,
         zenodo_id="14722710", table1=True),
    # ---- public X-ARES tasks outside Table I (cheap ones; LibriSpeech ASR needs an LLM and is left out)
    Task("asvspoof2015", "ASV2015", "speech", label_key="binary_spoof", num_classes=2, weight=2000,
         train_split="asvspoof_train", valid_split="asvspoof_valid", test_split="asvspoof_eval", epochs=5,
         batch_size=64, zenodo_id="14718430"),
    Task("voxceleb1", "VoxCeleb1", "speech", label_key="speakerid", num_classes=1251, weight=2000,
         train_split="voxceleb1_train", valid_split="voxceleb1_valid", test_split="voxceleb1_test",
         crop_length=6, zenodo_id="14811963"),
    Task("maestro", "MAESTRO", "music", type="frame", label="notes", num_classes=87,
         metric="segmentf1_micro", segment_length_s=0.1, pos_weight=10.0, weight=65,
         train_split="maestro_train", valid_split="maestro_valid", test_split="maestro_test", knn=False,
         encode_batch_size=1, epochs=50, batch_size=1, zenodo_id="14858022"),
]}

TABLE1_TASKS: tuple[str, ...] = tuple(n for n, t in BUILTIN_TASKS.items() if t.table1)
_ALIASES = {"table1": TABLE1_TASKS, "all": tuple(BUILTIN_TASKS)}


# --------------------------------------------------------------------------------------------------
# Custom tasks


def load_task_file(path: str | os.PathLike, encoder=None) -> Task:
    """Read a custom task from a JSON file (an object with `Task`'s fields), a Python file that
    defines `TASK` (a `Task` or such a dict), or an X-ARES 0.1.3 task module (a `<name>_config(encoder)
    -> TaskConfig` function; run without xares installed, see `harmonia.eval.xares_compat`).
    `encoder` is what X-ARES passes to the config function (frame tasks read its `hop_size_in_ms`).

    Example JSON (`weight` defaults to the X-ARES rule: test-split clips, capped at 2000)::

        {"name": "mybirds", "formal_name": "My Birds", "domain": "sound", "label_key": "species",
         "metric": "accuracy", "weight": 500, "folds": [0, 1, 2], "fold_pattern": "fold{k}.tar",
         "epochs": 10}
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: no such task file; expected a .json or .py file describing a task")
    if path.suffix == ".json":
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TaskError(f"{path}: not valid JSON ({e}); expected an object with the task's fields") from e
        return task_from_dict(spec, source=str(path))
    if path.suffix != ".py":
        raise TaskError(f"{path}: expected a .json or .py task file, found suffix {path.suffix!r}")
    try:
        module = exec_task_module(path)
    except Exception as e:  # the file's own code: any failure means a bad task file
        raise TaskError(f"{path}: the task file failed to run ({type(e).__name__}: {e})") from e
    if hasattr(module, "TASK"):
        return module.TASK if isinstance(module.TASK, Task) else task_from_dict(module.TASK, source=str(path))
    functions = config_functions(module)
    if len(functions) != 1:
        raise TaskError(f"{path}: expected TASK (a harmonia task) or exactly one X-ARES `<name>_config(encoder)` "
                        f"function, found {sorted(functions) or 'neither'}")
    (fname, fn), = functions.items()
    try:
        config = fn(encoder)
    except Exception as e:  # the file's own code
        raise TaskError(f"{path}: {fname}(encoder) failed ({type(e).__name__}: {e})") from e
    return task_from_xares_config(config, source=f"{path}:{fname}")


_XARES_CRITERIA = {"clip": ("CrossEntropyLoss", "BCEWithLogitsLoss"), "frame": ("BCEWithLogitsLoss",),
                   "contrastive": ("AudioTextContrastiveLoss",)}


def task_from_xares_config(cfg: TaskConfig, source: str = "<TaskConfig>") -> Task:
    """The `Task` an X-ARES `TaskConfig` describes: splits or folds with their shard globs, crop
    length, `label_processor` (label "function"), `eval_weight`, epochs, batch sizes, lr, metric."""
    def bad(what: str) -> TaskError:
        return TaskError(f"{source}: {what}")

    if not isinstance(cfg, TaskConfig):
        raise bad(f"the config function must return a TaskConfig, found {type(cfg).__name__}")
    if cfg.task_type not in _XARES_CRITERIA:
        raise bad(f"task_type {cfg.task_type!r} is not supported (harmonia scores clip, frame and contrastive "
                  "tasks; X-ARES's ASR task needs a language-model decoder)")
    criterion = cfg.criterion if isinstance(cfg.criterion, str) else type(cfg.criterion).__name__
    if criterion not in _XARES_CRITERIA[cfg.task_type]:
        raise bad(f"criterion {criterion!r} is not supported for {cfg.task_type} tasks "
                  f"(supported: {_XARES_CRITERIA[cfg.task_type]})")
    pos_weight = getattr(cfg.criterion, "pos_weight", None)
    if cfg.task_type == "contrastive":
        label, label_fn = "captions", None  # Clotho: one item per caption of the sample's JSON
    elif cfg.label_processor is None:
        raise bad("`label_processor` is not set: it turns a sample's JSON into the target")
    else:
        label, label_fn = "function", cfg.label_processor
    names = dict(cfg.audio_tar_name_of_split)
    if cfg.k_fold_splits is not None:
        parts = {"folds": tuple(str(k) for k in cfg.k_fold_splits),
                 "shard_globs": tuple((str(k), names.get(k)) for k in cfg.k_fold_splits)}
    else:
        splits = dict.fromkeys((cfg.train_split, cfg.valid_split, cfg.test_split))
        parts = {"train_split": cfg.train_split, "valid_split": cfg.valid_split, "test_split": cfg.test_split,
                 "shard_globs": tuple((s, names.get(s)) for s in splits)}
    builtin = BUILTIN_TASKS.get(cfg.name)
    try:
        return Task(
            cfg.name, cfg.formal_name, builtin.domain if builtin else "custom", type=cfg.task_type, label=label,
            label_fn=label_fn, num_classes=cfg.output_dim, metric=cfg.metric, weight=cfg.eval_weight,
            knn=bool(cfg.do_knn) and cfg.task_type == "clip", crop_length=cfg.crop_length,
            encode_batch_size=cfg.batch_size_encode, epochs=cfg.epochs, batch_size=cfg.batch_size_train,
            learning_rate=cfg.learning_rate, segment_length_s=cfg.metric_args.get("segment_length_in_s"),
            pos_weight=float(pos_weight) if pos_weight is not None else None, zenodo_id=cfg.zenodo_id,
            table1=builtin.table1 if builtin else False, **parts,
            extra={"source": source, "format": "X-ARES 0.1.3 task module", "disabled": bool(cfg.disabled),
                   "private": bool(cfg.private), "batch_size_valid": cfg.batch_size_valid, "seed": cfg.seed})
    except TaskError as e:
        raise bad(str(e)) from None


def task_from_dict(spec: dict, source: str = "<dict>") -> Task:
    """Build a `Task` from a plain dict (a JSON task file): every field is checked, and an error
    names the file, the field, what it must be and what was found (close matches for typos)."""
    if not isinstance(spec, dict):
        raise TaskError(f"{source}: expected an object of task fields, found {type(spec).__name__}")
    known = {f.name for f in fields(Task)} - {"label_fn"}
    unknown = sorted(set(spec) - known)
    if unknown:
        hints = [f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, known, 1)) else u
                 for u in unknown]
        raise TaskError(f"{source}: unknown task fields {hints}; known fields: {sorted(known)}")
    if "name" not in spec:
        raise TaskError(f"{source}: the task has no `name` (the directory of its shards under the data root)")
    spec = dict(spec)
    spec.setdefault("formal_name", spec["name"])
    spec.setdefault("domain", "custom")
    for k, kinds in (("folds", (str, int)), ("classes", (str,))):
        v = spec.get(k)
        if v is not None:
            if not isinstance(v, list) or not all(isinstance(x, kinds) and not isinstance(x, bool) for x in v):
                what = "strings or whole numbers" if k == "folds" else "strings"
                raise TaskError(f"{source}: field `{k}` must be a list of {what}, found {v!r}")
            spec[k] = tuple(str(x) for x in v)
    globs = spec.get("shard_globs")
    if globs is not None:
        if not isinstance(globs, dict):
            raise TaskError(f"{source}: field `shard_globs` must be an object of partition: shard glob, found {globs!r}")
        spec["shard_globs"] = tuple((str(p), g) for p, g in globs.items())
    try:
        return Task(**spec)
    except TaskError as e:
        raise TaskError(f"{source}: {e}") from None


def get_task(name_or_path: str | os.PathLike | Task, encoder=None) -> Task:
    """A built-in task by `name` or formal name (case-insensitive), or a custom task file
    (`encoder` is passed to X-ARES task modules)."""
    if isinstance(name_or_path, Task):
        return name_or_path
    s = str(name_or_path)
    if s.endswith((".json", ".py")) or Path(s).is_file():
        return load_task_file(s, encoder)
    by_lower = {n.lower(): t for n, t in BUILTIN_TASKS.items()}
    by_lower.update({t.formal_name.lower(): t for t in BUILTIN_TASKS.values()})
    if s.lower() in by_lower:
        return by_lower[s.lower()]
    close = difflib.get_close_matches(s.lower(), list(by_lower), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise TaskError(f"unknown task {s!r}.{hint} Known: {', '.join(BUILTIN_TASKS)}; groups: table1, all; "
                    "or pass a custom task file (.json/.py).")


def resolve_tasks(items: list[str] | tuple[str, ...], encoder=None) -> list[Task]:
    """Expand names, groups (`table1`, `all`), comma lists and task files into unique tasks
    (`encoder` is passed to X-ARES task modules)."""
    out: dict[str, Task] = {}
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            for name in _ALIASES.get(part.lower(), (part,)):
                task = get_task(name, encoder)
                if task.name in out and out[task.name] != task:
                    raise TaskError(f"two different tasks are named {task.name!r}; rename the custom one")
                out[task.name] = task
    if not out:
        raise TaskError("no task given; pass task names (e.g. esc50), `table1`, `all` or task files")
    return list(out.values())
