"""One evaluation run: encode (cached), score both tracks per task, aggregate, write reports.

`evaluate(encoder, tasks, data_root, out_dir, mode=..., seeds=...)` returns the results dict that
`harmonia.eval.report` writes as results.json / .md / .csv and charts. A task that fails for bad or
missing data (`EvalDataError`: missing or corrupt shards, bad labels, a bad task file, a missing
vocabulary) is recorded with its error and the run goes on; any other exception is a bug and
raises. Results are rewritten after every task, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

from harmonia import fusion as fusionlib
from harmonia.encoder import AudioEncoder
from harmonia.eval import metrics as M
from harmonia.eval.embed import EmbeddingCache, Embeddings
from harmonia.eval.knn import DEFAULT_K, DEFAULT_TEMPERATURE, knn_scores
from harmonia.eval.labels import LabelCoder
from harmonia.eval.linear_probe import ClipSet, FrameSet, PairSet, train_probe
from harmonia.eval.tasks import EvalDataError, Task, TaskError, resolve_tasks
from harmonia.eval.text import VocabMissingError, WordPieceTokenizer, find_bert_vocab
from harmonia.io import remove_stale_temps

MODE_NOTES = {
    "xares": "X-ARES 0.1.3 protocol: batch-of-N zero padding baked into embeddings (lengths discarded), "
             "first crop per clip and encode batch, per-dimension-normalised kNN, model seed 42 with "
             "unseeded training order, frame loss/metric over padding. Resampling: soxr (X-ARES: torchaudio sinc).",
    "clean": "clean protocol: padding masked (encode with lengths), every crop kept, cosine kNN, model "
             "init and data order seeded, padded frames masked; probe scores are mean ± std over seeds.",
}


MAX_SEEDS = 100  # probe seeds per task in clean mode; each is a full probe training per fold


def check_seeds(seeds: object) -> int:
    """The number of probe seeds, a whole number in 1..MAX_SEEDS (checked before any work)."""
    if not (isinstance(seeds, int) and not isinstance(seeds, bool) and 1 <= seeds <= MAX_SEEDS):
        raise ValueError(f"seeds: expected a whole number in 1..{MAX_SEEDS} (probe trainings per task in clean "
                         f"mode; 3 is the default), found {seeds!r}")
    return seeds


def load_encoder_source(source: str | os.PathLike, device: str | None = None) -> AudioEncoder:
    """`harmonia.load_encoder(source)`, or an X-ARES style encoder file `path.py[:ClassName]` whose
    class (the one attribute ending in "Encoder" when no name is given) is built with no arguments."""
    s = str(source)
    if ".py:" in s or s.endswith(".py"):
        path, _, attr = s.partition(".py:") if ".py:" in s else (s[:-3], "", "")
        file = Path(path + ".py")
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such encoder file; expected a .py file defining an Encoder class")
        spec = importlib.util.spec_from_file_location(f"harmonia_user_encoder_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:  # the file's own code (even sys.exit): a bad encoder file
            raise ValueError(f"{file}: the encoder file failed to run ({type(e).__name__}: {e}); --debug shows "
                             "where") from e
        names = [attr] if attr else [n for n in vars(module) if n.endswith("Encoder") and isinstance(getattr(module, n), type)
                                      and getattr(module, n).__module__ == module.__name__]
        if len(names) != 1 or not hasattr(module, names[0]):
            raise ValueError(f"{file}: expected exactly one class whose name ends in 'Encoder' (or name it: "
                             f"{file}:ClassName), found {names}")
        try:
            encoder = getattr(module, names[0])()
        except (Exception, SystemExit) as e:
            raise ValueError(f"{file}: {names[0]}() failed ({type(e).__name__}: {e}); the class must build with no "
                             "arguments, as X-ARES builds it; --debug shows where") from e
        if not isinstance(encoder, nn.Module):
            raise ValueError(f"{file}: {names[0]}() is a {type(encoder).__name__}; expected a torch.nn.Module with "
                             "sampling_rate, output_dim and hop_size_in_ms (the X-ARES encoder contract)")
    else:
        from harmonia.hub import load_encoder

        encoder = load_encoder(s)
    if device:
        encoder = encoder.to(device)
    return encoder.eval()


# --------------------------------------------------------------------------------------------------


def evaluate(encoder: AudioEncoder, tasks: list[str | Task], data_root: str | os.PathLike,
             out_dir: str | os.PathLike, *, mode: str = "clean", seeds: int = 3,
             cache_dir: str | os.PathLike | None = None, model_name: str | None = None,
             progress: bool = True, write_reports: bool = True, fusion: str = "concat",
             fusion_states: str = "all") -> dict:
    """Evaluate `encoder` on `tasks` (names, groups, task files or Task objects); see module doc.

    fusion: "concat" (the encoder's own output, for an ensemble its members' concatenated final
    frames) or a learned fusion over every member's hidden states, "layer-weighted" | "gated"
    (`harmonia.fusion`), trained inside each probe on the training split; the kNN track always
    uses the encoder's own output. fusion_states: which hidden states learned fusion sees and the
    cache stores, "all" | "last:K" | "every:K" (`harmonia.fusion.select_states`)."""
    from harmonia.eval import report

    if mode not in MODE_NOTES:
        raise ValueError(f"mode must be one of {sorted(MODE_NOTES)}, found {mode!r}")
    check_seeds(seeds)
    names = [t for t in tasks if not isinstance(t, Task)]
    task_list = [t for t in tasks if isinstance(t, Task)] + (resolve_tasks(names, encoder) if names else [])
    model_name = model_name or type(encoder).__name__
    layout = None
    if fusionlib.check_fusion(fusion) != "concat":
        # caches the selected hidden states (its own cache key)
        encoder = fusionlib.StackedStatesEncoder(encoder, states=fusion_states)
        layout = encoder.layout
    elif fusion_states != "all":
        raise ValueError(f"fusion_states={fusion_states!r} selects the hidden states of a learned fusion; "
                         "--fusion concat reads the final frames only")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)
    cache_root = Path(cache_dir) if cache_dir else Path(data_root) / ".harmonia_cache"
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise type(e)(f"cannot create the embedding cache in {cache_root} ({e.strerror}); "
                      f"pass --cache-dir (cache_dir=) a writable directory") from e
    cache = EmbeddingCache(cache_root, encoder, mode=mode, progress=progress)
    seed_list = [42] if mode == "xares" else list(range(seeds))
    results = {
        "model": model_name,
        "mode": mode,
        "mode_notes": MODE_NOTES[mode],
        "fusion": fusion,
        "fusion_layout": layout.to_dict() if layout else None,
        "seeds": seed_list,
        "knn": {"k": DEFAULT_K, "temperature": DEFAULT_TEMPERATURE,
                "similarity": "per-dimension train normalisation (X-ARES)" if mode == "xares" else "cosine"},
        "encoder": cache.enc_fp,
        "data_root": str(data_root),
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "environment": {"python": platform.python_version(), "torch": torch.__version__},
        "tasks": {},
    }
    for task in task_list:
        t0 = time.perf_counter()
        try:
            if task.extra.get("disabled"):
                entry = {"status": "disabled", "error": "disabled in its task file (X-ARES `disabled=True`)"}
            else:
                entry = _evaluate_task(task, cache, data_root, mode, seed_list, fusion, layout)
        except EvalDataError as e:
            status = "skipped" if isinstance(e, VocabMissingError) else "failed"
            entry = {"status": status, "error": str(e)}
            print(f"[harmonia evaluate] {task.name}: {status}: {e}")
        entry = {**_task_header(task), **entry}
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        results["tasks"][task.name] = entry
        results["summary"] = summarise(results["tasks"])
        if write_reports:
            report.write_run(results, out_dir, charts=False)
    results["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    results["summary"] = summarise(results["tasks"])
    if write_reports:
        report.write_run(results, out_dir, charts=True)
        if layout:
            fusionlib.weights_chart(results, out_dir / "charts" / "fusion_weights.png")
    return results


def _task_header(task: Task) -> dict:
    return {"name": task.name, "formal_name": task.formal_name, "domain": task.domain, "type": task.type,
            "metric": task.metric, "weight": task.weight, "table1": task.table1,
            "folds": len(task.folds) if task.folds else None, "task": task.to_dict()}


def task_weight(task: Task, embs: dict[str, Embeddings]) -> tuple[int, str]:
    """The task's weight in the averages and where it came from: the task's own `weight`, else the
    X-ARES rule (clips in the test split, for k-fold tasks the mean over folds, capped at 2000)."""
    if task.weight is not None:
        return task.weight, "task"
    tests = sorted({test for _, _, test in task.rounds()})
    clips = sum(len(set(embs[p].clips)) for p in tests) / len(tests)
    return min(2000, round(clips)), "default: test-split clips (mean over folds), capped at 2000"


def summarise(tasks: dict) -> dict:
    """Weighted averages per track (X-ARES: sum w s / sum w over tasks that have a score), over all
    scored tasks and over the Table I tasks."""
    out = {}
    for subset, keep in (("all", lambda e: True), ("table1", lambda e: e.get("table1"))):
        for track in ("mlp", "knn"):
            pairs = [(e[track]["mean"], e["weight"]) for e in tasks.values()
                     if keep(e) and e.get("status") == "ok" and e.get(track)]
            out[f"{track}_{subset}"] = M.weighted_average(pairs)
            out[f"{track}_{subset}_tasks"] = len(pairs)
    return out


def _evaluate_task(task: Task, cache: EmbeddingCache, data_root, mode: str, seeds: list[int],
                   fusion: str = "concat", layout: fusionlib.StateLayout | None = None) -> dict:
    if layout and task.type == "contrastive":
        raise TaskError(f"task {task.name!r}: learned fusion ({fusion}) is not available for contrastive "
                        "(retrieval) tasks; evaluate them with --fusion concat")
    tokenizer = WordPieceTokenizer(find_bert_vocab(data_root)) if task.type == "contrastive" else None
    embs = cache.embed_task(task, data_root)
    hop = float(cache.encoder.hop_size_in_ms)
    all_jsons = [j for e in embs.values() for j in e.jsons]
    coder = LabelCoder.fit(task, all_jsons)
    sets = {p: _probe_set(task, coder, e, hop, tokenizer, p) for p, e in embs.items()}
    weight, weight_source = task_weight(task, embs)
    entry: dict = {"status": "ok", "partitions": {p: {"items": len(e), "clips": len(set(e.clips)),
                                                     "failed_items": e.errors} for p, e in embs.items()},
                   "num_classes": coder.num_classes, "weight": weight, "weight_source": weight_source,
                   "notes": [f"corrupt cache file encoded again: {r}" for e in embs.values() for r in e.repaired]}
    # ---- linear probe
    per_seed, folds, curves, learned = [], [], [], []
    for seed in seeds:
        fold_scores = []
        for train_parts, valid, test in task.rounds():
            train = _concat([sets[p] for p in train_parts])
            front = fusionlib.make_fusion(fusion, layout, seed=seed) if layout else None
            r = train_probe(task, train, sets[valid], sets[test], mode=mode, seed=seed, hop_size_in_ms=hop,
                            vocab_size=len(tokenizer) if tokenizer else None,
                            pad_id=tokenizer.pad_id if tokenizer else 0, front=front)
            if front is not None:  # the best epoch's weights, learned on the training split
                learned.append(fusionlib.describe(front, fusionlib.training_sample(train)))
            fold_scores.append(r.score)
            curves.append({"seed": seed, "test": test, "valid_curve": r.valid_curve, "loss_curve": r.loss_curve,
                           "best_epoch": r.best_epoch, "score": r.score})
        per_seed.append(sum(fold_scores) / len(fold_scores))  # k-fold: unweighted mean over folds
        folds.append(fold_scores)
    mean, std = M.mean_std(per_seed)
    entry["mlp"] = {"mean": mean, "std": std, "per_seed": per_seed, "per_fold": folds, "curves": curves}
    if learned:
        entry["fusion"] = {**fusionlib.mean_description(learned), "per_run": learned}
    # ---- kNN (deterministic given the embeddings: one run)
    if task.knn:
        fold_scores = []
        for train_parts, _, test in task.rounds():
            train = _concat([sets[p] for p in train_parts])
            if len(train) < DEFAULT_K:
                entry["notes"].append(f"kNN: only {len(train)} training items, k capped (X-ARES would crash)")
            own = layout.final if layout else (lambda x: x)  # kNN: the encoder's own output
            scores = knn_scores(own(train.x), train.y, own(sets[test].x), coder.num_classes, mode=mode)
            fold_scores.append(M.accuracy(scores, sets[test].y))  # kNN is always scored by accuracy
        entry["knn"] = {"mean": sum(fold_scores) / len(fold_scores), "std": 0.0, "per_fold": fold_scores}
    return entry


def _probe_set(task: Task, coder: LabelCoder, e: Embeddings, hop: float, tokenizer, part: str):
    where = lambda i: f" ({part}, item {e.keys[i]!r})"
    if len(e) == 0:
        raise TaskError(f"task {task.name!r}: partition {part!r} has no usable item "
                        f"({len(e.errors)} failed: {e.errors[:3]}); fix or re-download its shards")
    if task.type == "frame":
        return FrameSet(e.frames, [coder.frame_target(j, hop, where(i)) for i, j in enumerate(e.jsons)])
    if task.type == "contrastive":
        audio, tokens = [], []
        for i, j in enumerate(e.jsons):
            for caption in coder.clip_target(j, where(i)):  # one item per caption, consecutive
                audio.append(e.pooled[i])
                tokens.append(tokenizer.encode(caption))
        counts = {len(coder.clip_target(j)) for j in e.jsons}
        if len(counts) != 1:
            raise TaskError(f"task {task.name!r}: every clip needs the same number of captions, found {sorted(counts)}")
        return PairSet(torch.stack(audio), tokens, counts.pop())
    targets = [coder.clip_target(j, where(i)) for i, j in enumerate(e.jsons)]
    many_hot = task.label == "multilabel" or isinstance(targets[0], list)  # label functions may give either
    y = torch.tensor(targets, dtype=torch.float32 if many_hot else torch.long)
    return ClipSet(e.pooled, y)


def _concat(sets: list):
    if len(sets) == 1:
        return sets[0]
    first = sets[0]
    if isinstance(first, ClipSet):
        return ClipSet(torch.cat([s.x for s in sets]), torch.cat([s.y for s in sets]))
    if isinstance(first, PairSet):
        return PairSet(torch.cat([s.audio for s in sets]), [t for s in sets for t in s.tokens], first.captions_per_audio)
    offsets, targets = [], []
    for s in sets:
        offsets += [(s, i) for i in range(len(s))]
        targets += s.targets
    return FrameSet(lambda i: offsets[i][0].frames(offsets[i][1]), targets)
