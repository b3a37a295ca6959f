"""Time to score the 18 Table-I tasks from cached embeddings (issue 6, item 7).

Synthetic embeddings of realistic sizes (D = 768, items per split/fold close to the X-ARES data,
DESED frames at 40 ms) go through exactly what `harmonia.eval.runner` does after loading the cache:
the linear probe with each task's epochs and batch size (one seed), and the kNN track (one matrix
product per block). Class structure is planted so the probes have something to learn.

    python benchmarks/eval_scoring.py [--scale 1.0] [--dim 768] [--tasks esc50,cremad]
    python benchmarks/eval_scoring.py --cache-io 128   # write + verified read of one frame chunk

`--cache-io N` instead times the embedding cache's I/O for one chunk of N DESED-like items
(250 frames x D each): the atomic safetensors write with its sha256, and the read that verifies
size and sha256 before memory-mapping the frames.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from harmonia.eval import metrics as M
from harmonia.eval.embed import ChunkBuffer, read_chunk, write_chunk
from harmonia.eval.knn import knn_scores
from harmonia.eval.linear_probe import ClipSet, FrameSet, PairSet, train_probe
from harmonia.eval.tasks import BUILTIN_TASKS, TABLE1_TASKS

# items per partition (train, valid, test) or per fold, approximating the X-ARES shards
SIZES = {
    "fsd50k": (36800, 4170, 10231), "vocalimitations": 1867, "fsdkaggle2018": (9470, 1600, 1600),
    "desed": (1500, 1153, 1153), "esc50": 400, "clotho": (3839, 1045, 1045), "urbansound8k": 873,
    "nsynthinstument": (55000, 12678, 4096), "gtzan_genre": 100, "freemusicarchive": (6400, 800, 800),
    "libricount": 1144, "cremad": (5144, 738, 1116), "ravdess": 360, "fluentspeechcommands": (23132, 3118, 3793),
    "librispeechmalefemale": (28539, 2703, 2620), "speechcommandsv1": (51088, 6798, 6835),
    "voxlingua33": (8000, 1609, 1609), "vocalsound": (15570, 1860, 3594),
}


def make_partition(task, n, dim, g):
    C = task.num_classes or 2
    if task.type == "frame":
        T = 250
        centers = torch.randn(C, dim, generator=g)
        y = (torch.rand(n, T, C, generator=g) < 0.1).float()
        frames = y @ centers + torch.randn(n, T, dim, generator=g)
        return FrameSet(lambda i, f=frames: f[i], list(y))
    if task.type == "contrastive":
        caps = 5
        audio = torch.randn(n, dim, generator=g).repeat_interleave(caps, 0)
        tokens = [torch.randint(4, 30522, (12,), generator=g).tolist() for _ in range(n * caps)]
        return PairSet(audio, tokens, caps)
    centers = torch.randn(C, dim, generator=g)
    if task.label == "multilabel":
        y = (torch.rand(n, C, generator=g) < 0.02).float()
        y[torch.arange(n), torch.randint(0, C, (n,), generator=g)] = 1.0
        return ClipSet(y @ centers / y.sum(1, keepdim=True) + 2 * torch.randn(n, dim, generator=g), y)
    y = torch.randint(0, C, (n,), generator=g)
    return ClipSet(centers[y] + 2 * torch.randn(n, dim, generator=g), y)


def concat(sets):
    if len(sets) == 1:
        return sets[0]
    return ClipSet(torch.cat([s.x for s in sets]), torch.cat([s.y for s in sets]))


def cache_io(n_items: int, dim: int) -> None:
    pending = ChunkBuffer()
    g = torch.Generator().manual_seed(0)
    for i in range(n_items):
        x = torch.randn(250, dim, generator=g)
        pending.keys.append(f"k{i}")
        pending.clips.append(f"k{i}")
        pending.jsons.append([{"onset": 0.5, "offset": 1.5, "label": "Dog"}])
        pending.pooled.append(x.mean(0))
        pending.frames.append(x)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "chunk-00000.safetensors"
        t0 = time.perf_counter()
        record = write_chunk(path, pending)
        t1 = time.perf_counter()
        tensors, _ = read_chunk(path, record)
        float(tensors["frames"].sum())  # touch every page
        t2 = time.perf_counter()
    mb = record["size"] / 2**20
    print(f"cache chunk of {n_items} items x 250 x {dim}: {mb:.0f} MB; write + sha256 {t1 - t0:.2f} s "
          f"({mb / (t1 - t0):.0f} MB/s), verified read + sum {t2 - t1:.2f} s ({mb / (t2 - t1):.0f} MB/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every split size")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--tasks", default=",".join(TABLE1_TASKS))
    ap.add_argument("--cache-io", type=int, default=0, metavar="N", help="time cache I/O for a chunk of N items")
    args = ap.parse_args()
    if args.cache_io:
        return cache_io(args.cache_io, args.dim)
    g = torch.Generator().manual_seed(0)
    total, rows = 0.0, []
    for name in args.tasks.split(","):
        task = BUILTIN_TASKS[name]
        size = SIZES[name]
        parts = {}
        if task.folds:
            for k in task.folds:
                parts[k] = make_partition(task, max(10, int(size * args.scale)), args.dim, g)
        else:
            for p, n in zip((task.train_split, task.valid_split, task.test_split), size):
                parts.setdefault(p, make_partition(task, max(10, int(n * args.scale)), args.dim, g))
        t0 = time.perf_counter()
        probe, knn = [], []
        for train_parts, valid, test in task.rounds():
            train = concat([parts[p] for p in train_parts]) if task.type == "clip" else parts[train_parts[0]]
            r = train_probe(task, train, parts[valid], parts[test], mode="clean", seed=0, hop_size_in_ms=40.0,
                            vocab_size=30522)
            probe.append(r.score)
        t_probe = time.perf_counter() - t0
        t1 = time.perf_counter()
        if task.knn:
            for train_parts, _, test in task.rounds():
                train = concat([parts[p] for p in train_parts])
                s = knn_scores(train.x, train.y, parts[test].x, task.num_classes)
                knn.append(M.accuracy(s, parts[test].y))
        t_knn = time.perf_counter() - t1
        n_train = sum(len(parts[p]) for p in task.rounds()[0][0])
        total += t_probe + t_knn
        rows.append((task.formal_name, n_train, t_probe, t_knn))
        print(f"{task.formal_name:26s} train items {n_train:6d}  probe {t_probe:7.2f} s  kNN {t_knn:6.3f} s", flush=True)
    print(f"TOTAL scoring time for {len(rows)} tasks (1 seed, torch threads {torch.get_num_threads()}): {total:.1f} s")


if __name__ == "__main__":
    main()
