"""Reports of evaluation runs: results.json / results.md / results.csv and a PNG chart per task for
one run (`write_run`), and one Table-I-like table and chart over several runs (`combine_runs`).
All files are written atomically (harmonia.io: a unique temp file, renamed when complete). Charts
use matplotlib's Agg backend.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from harmonia.eval.tasks import BUILTIN_TASKS, TABLE1_TASKS
from harmonia.io import atomic_write, write_json_atomic, write_text_atomic


def _fmt(track: dict | None, digits: int = 3) -> str:
    if not track:
        return "–"
    if track.get("std"):
        return f"{track['mean']:.{digits}f} ± {track['std']:.{digits}f}"
    return f"{track['mean']:.{digits}f}"


def _weight(entry: dict) -> str:
    return "–" if entry.get("weight") is None else str(entry["weight"])


def _avg(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _ordered(names) -> list[str]:
    """Table I row order first, then the other built-ins, then custom tasks by name."""
    order = {n: i for i, n in enumerate(list(TABLE1_TASKS) + [n for n in BUILTIN_TASKS if n not in TABLE1_TASKS])}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def run_label(results: dict) -> str:
    """`model (mode)`, naming a learned fusion when the run used one: `model (mode, gated fusion)`."""
    fusion = results.get("fusion") or "concat"
    return f"{results['model']} ({results['mode']}" + ("" if fusion == "concat" else f", {fusion} fusion") + ")"


# --------------------------------------------------------------------------------------------------
# One run


def run_markdown(results: dict) -> str:
    fusion = results.get("fusion") or "concat"
    lines = [f"# {results['model']} — mode `{results['mode']}`, fusion `{fusion}`", "", results["mode_notes"], "",
             f"Seeds: {results['seeds']}; kNN k={results['knn']['k']}, T={results['knn']['temperature']}, "
             f"{results['knn']['similarity']}.", "",
             "| Task | Domain | Metric | Weight | MLP | kNN | Status |", "|---|---|---|---|---|---|---|"]
    for name in _ordered(results["tasks"]):
        e = results["tasks"][name]
        status = e["status"] if e["status"] == "ok" else f"{e['status']}: {e.get('error', '')[:120]}"
        lines.append(f"| {e['formal_name']} | {e['domain']} | {e['metric']} | {_weight(e)} | {_fmt(e.get('mlp'))} "
                     f"| {_fmt(e.get('knn'))} | {status} |")
    s = results.get("summary", {})
    lines += ["", f"**Weighted average, all tasks**: MLP {_avg(s.get('mlp_all'))} ({s.get('mlp_all_tasks', 0)} tasks), "
              f"kNN {_avg(s.get('knn_all'))} ({s.get('knn_all_tasks', 0)} tasks)",
              f"**Weighted average, Table I tasks**: MLP {_avg(s.get('mlp_table1'))}, kNN {_avg(s.get('knn_table1'))}"]
    failed = [(n, f) for n, e in results["tasks"].items() for p in e.get("partitions", {}).values()
              for f in p["failed_items"]]
    if failed:
        lines += ["", "## Items that failed to decode", ""] + [f"- {n}: {f}" for n, f in failed]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["task", "formal_name", "domain", "metric", "weight", "status", "mlp_mean", "mlp_std", "knn",
              "mode", "model", "fusion"]


def run_rows(results: dict) -> list[dict]:
    rows = []
    for name in _ordered(results["tasks"]):
        e = results["tasks"][name]
        rows.append({"task": name, "formal_name": e["formal_name"], "domain": e["domain"], "metric": e["metric"],
                     "weight": e["weight"], "status": e["status"],
                     "mlp_mean": e["mlp"]["mean"] if e.get("mlp") else "",
                     "mlp_std": e["mlp"]["std"] if e.get("mlp") else "",
                     "knn": e["knn"]["mean"] if e.get("knn") else "", "mode": results["mode"],
                     "model": results["model"], "fusion": results.get("fusion") or "concat"})
    return rows


def _csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_run(results: dict, out_dir: str | os.PathLike, charts: bool = True) -> list[Path]:
    """Write results.json, results.md, results.csv (and charts/<task>.png) under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results, indent=2, sort_keys=True, default=str)
    write_text_atomic(out / "results.md", run_markdown(results))
    write_text_atomic(out / "results.csv", _csv(run_rows(results), CSV_FIELDS))
    written = [out / "results.json", out / "results.md", out / "results.csv"]
    if charts:
        (out / "charts").mkdir(exist_ok=True)
        for name, e in results["tasks"].items():
            if e["status"] == "ok":
                written.append(task_chart(e, results, out / "charts" / f"{name}.png"))
    return written


def _savefig(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def task_chart(entry: dict, results: dict, path: Path) -> Path:
    """Left: valid metric per epoch of every probe run (seed x fold), best epochs marked.
    Right: test scores of both tracks (MLP mean ± std over seeds, kNN)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for c in entry["mlp"]["curves"]:
        epochs = range(1, len(c["valid_curve"]) + 1)
        ax1.plot(epochs, c["valid_curve"], alpha=0.6, lw=1)
        ax1.plot(c["best_epoch"], c["valid_curve"][c["best_epoch"] - 1], "k.", ms=5)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel(f"valid {entry['metric']}")
    ax1.set_title(f"{entry['formal_name']}: linear probe", fontsize=9)
    names, vals, errs = ["MLP"], [entry["mlp"]["mean"]], [entry["mlp"]["std"]]
    if entry.get("knn"):
        names.append("kNN")
        vals.append(entry["knn"]["mean"])
        errs.append(0.0)
    ax2.bar(names, vals, yerr=errs, color=["tab:blue", "tab:orange"][:len(names)], capsize=4)
    for i, v in enumerate(vals):
        ax2.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax2.set_ylim(0, 1.05)
    ax2.set_title(f"test ({results['mode']} mode)", fontsize=9)
    fig.suptitle(run_label(results), fontsize=9)
    try:
        return _savefig(fig, path)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Several runs


def load_run(path: str | os.PathLike) -> dict:
    """A run's results.json, checked for what the reports read; a damaged one is a ValueError naming it."""
    p = Path(path)
    p = p / "results.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no results.json; expected the --out directory of `harmonia evaluate`")

    def bad(what: str) -> ValueError:
        return ValueError(f"{p}: not a results.json of `harmonia evaluate` ({what}); run that evaluation again "
                          "(its embedding cache makes this quick) or leave the run out")

    try:
        results = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise bad(f"not JSON: {e}") from None
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict):
        raise bad("expected an object with a `tasks` object")
    for key in ("model", "mode"):
        if not isinstance(results.get(key), str):
            raise bad(f"`{key}` must be a string, found {results.get(key)!r}")
    if not isinstance(results.get("summary", {}), dict):
        raise bad("`summary` must be an object")
    for name, e in results["tasks"].items():
        fields_ok = isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("status", "formal_name", "domain",
                                                                                     "metric"))
        tracks_ok = fields_ok and all(e.get(t) is None or (isinstance(e[t], dict) and isinstance(e[t].get("mean"), (int, float)))
                                      for t in ("mlp", "knn"))
        if not tracks_ok:
            raise bad(f"task {name!r}: expected status, formal_name, domain, metric and mlp/knn scores")
    return results


def combine_runs(runs: list[dict], track: str = "mlp") -> tuple[list[str], list[list[str]]]:
    """A Table-I-like table: one row per task (Table I order), one column per run; weighted averages
    as the last rows. Returns (header, rows) of strings."""
    labels = [run_label(r) for r in runs]
    names = _ordered({n for r in runs for n in r["tasks"]})
    header = ["Task", "Domain", "Weight"] + labels
    rows = []
    for n in names:
        e0 = next(r["tasks"][n] for r in runs if n in r["tasks"])
        rows.append([e0["formal_name"], e0["domain"], _weight(e0)]
                    + [_fmt(r["tasks"].get(n, {}).get(track)) if r["tasks"].get(n, {}).get("status") == "ok" else "–"
                       for r in runs])
    for subset in ("table1", "all"):
        values = [r.get("summary", {}).get(f"{track}_{subset}") for r in runs]
        if subset == "table1" and all(v is None for v in values):
            continue  # no Table I task in these runs (custom tasks only)
        rows.append([f"**Weighted average ({subset})**", "", ""] + [_avg(v) for v in values])
    return header, rows


def write_combined(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike | None = None) -> str:
    """Combine runs into report.md (MLP and kNN tables), report.csv and report.png; returns the markdown."""
    runs = [load_run(d) for d in run_dirs]
    md = []
    for track, title in (("mlp", "MLP track (linear probe)"), ("knn", "kNN track")):
        header, rows = combine_runs(runs, track)
        md += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    text = "\n".join(md)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "report.md", text)
        rows = [row for r in runs for row in run_rows(r)]
        write_text_atomic(out / "report.csv", _csv(rows, CSV_FIELDS))
        combined_chart(runs, out / "report.png")
    return text


def combined_chart(runs: list[dict], path: Path) -> Path:
    """Grouped horizontal bars: MLP score per task (rows) for every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = _ordered({n for r in runs for n in r["tasks"]})
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) * max(1, len(runs) / 2) + 1.5))
    h = 0.8 / len(runs)
    y = np.arange(len(names))
    for i, r in enumerate(runs):
        vals = [r["tasks"][n]["mlp"]["mean"] if r["tasks"].get(n, {}).get("mlp") else 0.0 for n in names]
        ax.barh(y + i * h, vals, height=h, label=run_label(r))
    ax.set_yticks(y + 0.4 - h / 2, [next(r["tasks"][n]["formal_name"] for r in runs if n in r["tasks"]) for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("MLP-track score")
    ax.legend(fontsize=7, loc="lower right")
    try:
        return _savefig(fig, path)
    finally:
        plt.close(fig)
