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
5. Every member, the ensemble and a random-init BEATs of the same architecture are evaluated with
   the linear-probe and kNN tracks on seven synthetic tasks in the X-ARES layout, including a frame-
   level event-detection task; a Table-I-style table, results files and a PNG chart are written.
   The ensemble is also evaluated with learned fusion over its members' hidden states
   (layer-weighted and gated, `harmonia.fusion`); the ensemble runs use several probe seeds so
   that fusion and concatenation can be compared against the seed spread.
6. The effects the paper reports are checked and stated plainly, whether or not they appear, and so
   is whether learned fusion beats concatenation.
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
                 beats_steps=150, dasheng_steps=150, batch_size=8, seeds=1)
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


# -- 5-6. evaluation and verdict ------------------------------------------------------------------------------


def _score(run: dict, task: str, track: str = "mlp") -> float | None:
    e = run["tasks"].get(task, {})
    return e[track]["mean"] if e.get("status") == "ok" and e.get(track) else None


def verdict(runs: dict[str, dict], tasks) -> list[str]:
    """Check the paper's effects on these results; each line says whether it holds."""
    lines = []
    by_domain = {d: [t.name for t in tasks if t.domain == d] for d in DOMAINS}
    pre = ["beats-speech-heavy", "beats-balanced", "dasheng-mae"]
    wins = sum(1 for m in pre for t in tasks
               if (_score(runs[m], t.name) or 0) > (_score(runs["random-init"], t.name) or 0))
    total = len(pre) * len(tasks)
    lines.append(f"{'HOLDS' if wins > total / 2 else 'DOES NOT HOLD'}: pre-trained members beat the random-init "
                 f"encoder on {wins}/{total} (member, task) pairs")

    def mean(model: str, names: list[str]) -> float:
        vals = [_score(runs[model], n) for n in names]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else float("nan")

    sh, bal = mean("beats-speech-heavy", by_domain["speech"]), mean("beats-balanced", by_domain["speech"])
    lines.append(f"{'HOLDS' if sh > bal else 'DOES NOT HOLD'}: speech-heavy BEATs leads on speech-like tasks "
                 f"({sh:.3f} vs balanced {bal:.3f})")
    others = by_domain["music"] + by_domain["sound"]
    sh_o, bal_o = mean("beats-speech-heavy", others), mean("beats-balanced", others)
    lines.append(f"{'HOLDS' if bal_o > sh_o else 'DOES NOT HOLD'}: balanced BEATs leads on music and sound tasks "
                 f"({bal_o:.3f} vs speech-heavy {sh_o:.3f})")
    avg = {m: runs[m]["summary"].get("mlp_all") for m in runs}
    best_member = max(pre, key=lambda m: avg[m] or 0)
    ens = avg["ensemble"] or 0
    lines.append(f"{'HOLDS' if ens >= (avg[best_member] or 0) - 1e-9 else 'DOES NOT HOLD'}: the ensemble matches or "
                 f"beats its best member on average ({ens:.3f} vs {best_member} {avg[best_member]:.3f})")
    return lines


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


def _evaluate_fusions(models: dict, members: list[str], tasks, out: Path, seeds: int) -> dict[str, dict]:
    """The ensemble with learned fusion over its members' hidden states, one run per fusion; the
    runs share one cache of stacked states (encoded once)."""
    return {f"ensemble-{f}": _evaluate_one("ensemble", models, members, tasks, out, seeds, fusion=f,
                                           run_name=f"ensemble-{f}") for f in LEARNED_FUSIONS}


def fusion_verdict(runs: dict[str, dict]) -> list[str]:
    """Does learned fusion beat concatenation (the ensemble row) beyond the seed spread?"""
    from harmonia.fusion import compare, seed_scores

    concat = seed_scores(runs["ensemble"])
    caveat = {"gated": "; gated fusion also trains a projection per member, a larger probe than concatenation's: "
                       "`benchmarks/fusion.py --ablation` measures how much of the difference that is"}
    return [": ".join(compare(f, seed_scores(runs[f"ensemble-{f}"]), concat)) + caveat.get(f, "")
            for f in LEARNED_FUSIONS if f"ensemble-{f}" in runs]


def _evaluate_one(name: str, models: dict, members: list[str], tasks, out: Path, seeds: int,
                  fusion: str = "concat", run_name: str | None = None) -> dict:
    from harmonia import load_encoder
    from harmonia.ensemble import EnsembleEncoder
    from harmonia.eval.runner import evaluate

    if name == "ensemble":  # the paper's system: BEATs (flat) as reference, Dasheng resampled to it
        enc = EnsembleEncoder([load_encoder(models[m]) for m in members], align="linear", reference=0,
                              fuse="concat", names=members)
    else:
        enc = load_encoder(models[name])
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

    members = ["beats-speech-heavy", "beats-balanced", "dasheng-mae"]
    names = members + ["ensemble", "random-init"]
    _log(f"4/5 evaluating {len(names)} encoders on {len(tasks)} tasks (linear probe + kNN, {size.seeds} seed(s)), "
         f"and the ensemble with learned fusion ({', '.join(LEARNED_FUSIONS)}; ensemble runs: "
         f"{max(size.seeds, size.fusion_seeds)} seeds)")
    # learned fusion (both kinds in one job: they share one cache of stacked hidden states) first,
    # as the longest job
    fusion_seeds = max(size.seeds, size.fusion_seeds)
    eval_jobs = {"learned-fusion": (_evaluate_fusions, (models, members, tasks, out, fusion_seeds))}
    eval_jobs |= {name: (_evaluate_one, (name, models, members, tasks, out,
                                         fusion_seeds if name == "ensemble" else size.seeds)) for name in names}
    done = _parallel(eval_jobs, workers)
    fused = done.pop("learned-fusion")
    runs = {name: done[name] for name in names} | fused
    names += list(fused)
    run_dirs = [out / "results" / name for name in names]
    for name in names:
        _log(f"  {name:>20}: weighted MLP {runs[name]['summary']['mlp_all']:.3f}, "
             f"kNN {runs[name]['summary']['knn_all'] or float('nan'):.3f}")

    _log("5/5 report")
    table = write_combined(run_dirs, out / "report")
    lines = verdict(runs, tasks) + fusion_verdict(runs)
    text = "\n".join(["# harmonia demo — the CMU-AIST ICME 2025 system in miniature", "",
                      f"{'Quick' if quick else 'Full'} run, seed {seed}, "
                      f"{time.perf_counter() - t0:.0f} s on {torch.get_num_threads()} threads.", "",
                      table, "## Do the paper's effects appear?", ""] + [f"- {x}" for x in lines]) + "\n"
    (out / "report" / "report.md").write_text(text)
    print("\n" + text)
    print(f"results: {out / 'results'}/*/results.json; table: {out / 'report' / 'report.md'}; "
          f"chart: {out / 'report' / 'report.png'}")
    summary = {"seconds": round(time.perf_counter() - t0, 1), "verdict": lines,
               "weighted_mlp": {m: r["summary"]["mlp_all"] for m, r in runs.items()},
               "weighted_knn": {m: r["summary"]["knn_all"] for m, r in runs.items()}}
    (out / "report" / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
