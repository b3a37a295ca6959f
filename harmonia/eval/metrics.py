"""Metrics of the X-ARES tracks (docs/xares.md §3.3) and the weighted task average (§2.3).

Every function takes plain tensors and returns a Python float in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch


def accuracy(scores_NC: torch.Tensor, target_N: torch.Tensor) -> float:
    """Fraction of items whose argmax (first maximum on ties, as torch/ignite) equals the target."""
    if scores_NC.shape[0] == 0:
        raise ValueError("accuracy of an empty evaluation set: expected at least one item")
    return float((scores_NC.argmax(dim=1) == target_N.long()).float().mean())


def mean_average_precision(scores_NC: torch.Tensor, target_NC: torch.Tensor) -> float:
    """Macro mAP, equal to scikit-learn's `average_precision_score(Y, Z, average="macro")` (what
    X-ARES calls): per class the non-interpolated AP = sum over distinct thresholds of
    (R_k - R_{k-1}) P_k, i.e. the mean over positives of the precision at the end of their tie
    group; a class without positives scores 0. Computed in torch (sklearn's per-class Python loop
    dominated FSD50k scoring). Depends only on the ranking, so logits are fine."""
    z = scores_NC.double()
    y = target_NC.double()
    N, C = z.shape
    order = torch.argsort(z, dim=0, descending=True, stable=True)
    zs, ys = torch.gather(z, 0, order), torch.gather(y, 0, order)
    precision = ys.cumsum(0) / torch.arange(1, N + 1, dtype=torch.float64)[:, None]
    # precision at the end of each item's tie group (sklearn evaluates at distinct thresholds only)
    is_end = torch.ones_like(zs, dtype=torch.bool)
    is_end[:-1] = zs[:-1] != zs[1:]
    # for every position, the row of its group's end: the smallest end row >= position
    rows = torch.where(is_end, torch.arange(N)[:, None].expand(N, C), torch.full((N, C), N))
    rows = torch.flip(torch.cummin(torch.flip(rows, [0]), 0).values, [0])
    end_prec = torch.gather(precision, 0, rows)
    n_pos = ys.sum(0)
    ap = (ys * end_prec).sum(0) / n_pos.clamp(min=1)
    return float(ap.mean())


def frames_per_segment(segment_length_s: float, hop_size_in_ms: float) -> int:
    """K = ceil(segment / hop): DESED's 1 s at 40 ms -> 25, at 160 ms -> 7 (1.12 s segments)."""
    return math.ceil(segment_length_s / (hop_size_in_ms / 1000.0))


def segment_f1(logits: list[torch.Tensor], targets: list[torch.Tensor], frames_per_seg: int,
               average: str = "macro") -> float:
    """Segment-based F1 (X-ARES SegmentF1Metric). `logits` and `targets`: one (T_i, C) tensor per
    item (or per evaluation batch). Predictions are sigmoid(z) rounded half-to-even, i.e. z > 0;
    both are max-pooled over non-overlapping windows of K frames (a last partial window is dropped),
    then all segments of all items are pooled and scored with scikit-learn's `f1_score`
    (`average` "macro" or "micro"; a class with no positives and no predictions scores 0)."""
    from sklearn.metrics import f1_score

    preds, tars = [], []
    for z_TC, y_TC in zip(logits, targets):
        if z_TC.shape != y_TC.shape:
            raise ValueError(f"segment_f1: logits {tuple(z_TC.shape)} and targets {tuple(y_TC.shape)} differ")
        n = z_TC.shape[0] // frames_per_seg
        if n == 0:
            continue
        p = torch.sigmoid(z_TC[: n * frames_per_seg].float()).round()
        preds.append(p.view(n, frames_per_seg, -1).amax(1))
        tars.append(y_TC[: n * frames_per_seg].float().view(n, frames_per_seg, -1).amax(1))
    if not preds:
        raise ValueError(f"segment_f1: no item is at least one segment ({frames_per_seg} frames) long")
    pred = torch.cat(preds).long().numpy()
    tar = torch.cat(tars).long().numpy()
    return float(f1_score(tar, pred, average=average, zero_division=0))


def retrieval_recall_at_1(audio_ND: torch.Tensor, text_ND: torch.Tensor, captions_per_audio: int = 5) -> float:
    """Clotho R@1 averaged over audio->text and text->audio (X-ARES `recallatk_r1`).

    Rows are (audio, caption) pairs in evaluation order with each audio's `captions_per_audio`
    captions consecutive, so audio_ND repeats each audio embedding that many times. Similarity is
    cosine. a2t: an audio scores if its best-ranked caption among all N is one of its own; t2a: a
    caption scores if its own audio ranks first among the N / captions_per_audio distinct audios.
    Ties rank by index (stable sort), one of several tie orders X-ARES's argsort may produce."""
    n = audio_ND.shape[0]
    if n == 0 or n % captions_per_audio:
        raise ValueError(f"retrieval: expected a multiple of {captions_per_audio} (audio, caption) pairs, found {n}")
    a = torch.nn.functional.normalize(audio_ND.float()[::captions_per_audio], dim=1)  # (A, D) distinct audios
    t = torch.nn.functional.normalize(text_ND.float(), dim=1)  # (N, D)
    sim = a @ t.T  # (A, N)
    owner = torch.arange(n) // captions_per_audio
    a2t = (owner[sim.argmax(dim=1)] == torch.arange(a.shape[0])).float().mean()
    t2a = (sim.T.argmax(dim=1) == owner).float().mean()
    return float((a2t + t2a) / 2)


def weighted_average(scores: list[tuple[float, float]]) -> float | None:
    """S = sum_t w_t s_t / sum_t w_t over (score, weight) pairs; None when the weights sum to 0."""
    w = sum(float(wt) for _, wt in scores)
    if w <= 0:
        return None
    return float(sum(float(s) * float(wt) for s, wt in scores) / w)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def call_effect(a, b) -> tuple[str, str]:
    """Does `a` beat `b`? The one rule for every such question (demo verdicts, fusion benchmarks).

    `a` and `b` are per-seed scores of the same probe seeds 0..n-1 (pairs beyond the shorter list are
    dropped). The seed spread is the sample standard deviation of the per-seed differences a_s - b_s:
    pairing removes what both runs share (a seed that makes every probe worse). The effect HOLDS when
    the mean difference exceeds that spread, DOES NOT HOLD when it is below minus the spread, and is
    WITHIN SEED NOISE otherwise; with one seed the spread is unknown and the answer is UNDECIDED.
    Returns (status, numbers)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = min(len(a), len(b))
    if n == 0:
        raise ValueError("call_effect needs at least one seed's score on each side")
    a, b = a[:n], b[:n]
    d = a - b
    m = float(d.mean())
    if n < 2:
        return "UNDECIDED", f"{a.mean():.3f} vs {b.mean():.3f}, difference {m:+.3f}; one probe seed, spread not measured"
    s = float(d.std(ddof=1))
    status = "WITHIN SEED NOISE" if abs(m) <= s else "HOLDS" if m > 0 else "DOES NOT HOLD"
    return status, f"{a.mean():.3f} vs {b.mean():.3f}, difference {m:+.3f} ± {s:.3f} over {n} probe seeds"
