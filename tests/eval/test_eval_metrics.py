"""Metrics against hand-computed values."""

import math

import pytest
import torch

from harmonia.eval import metrics as M
from harmonia.eval.linear_probe import cosine_lr


def test_accuracy_first_max_wins_on_ties():
    scores = torch.tensor([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1], [0.3, 0.7]])
    # argmax: 1, 0 (tie -> first), 0, 1 ; targets 1, 1, 0, 0 -> 2 of 4 correct
    assert M.accuracy(scores, torch.tensor([1, 1, 0, 0])) == pytest.approx(0.5)


def test_macro_map_hand_computed():
    # class 0: ranking by score 0.9(pos) 0.8(neg) 0.1(pos) -> AP = (1/2)(1/1) + (1/2)(2/3) = 5/6
    # class 1: ranking 0.7(pos) 0.6(neg) 0.2(neg) -> AP = 1
    y = torch.tensor([[1, 1], [0, 0], [1, 0]])
    z = torch.tensor([[0.9, 0.7], [0.8, 0.6], [0.1, 0.2]])
    assert M.mean_average_precision(z, y) == pytest.approx((5 / 6 + 1) / 2)


def test_frames_per_segment():
    assert M.frames_per_segment(1.0, 40) == 25
    assert M.frames_per_segment(1.0, 20) == 50
    assert M.frames_per_segment(1.0, 160) == 7  # 1.12 s segments
    assert M.frames_per_segment(0.1, 40) == 3


def test_segment_f1_macro_micro_hand_computed():
    # K = 2 frames per segment; 5 frames -> 2 segments (the last partial one is dropped).
    # A zero logit gives sigmoid 0.5, which rounds (half to even) to 0.
    z = torch.tensor([[5.0, -5], [-5, 0.0], [-5, 3], [-5, -5], [9, 9]])
    y = torch.tensor([[1.0, 0], [0, 0], [0, 0], [1, 1], [0, 0]])
    # class 0: pred segs [1, 0], target [1, 1] -> TP 1, FN 1 -> F1 2/3
    # class 1: pred segs [0, 1], target [0, 1] -> F1 1
    assert M.segment_f1([z], [y], 2, "macro") == pytest.approx((2 / 3 + 1) / 2)
    # micro: TP = 1 + 1, FP = 0, FN = 1 -> 4 / 5
    assert M.segment_f1([z], [y], 2, "micro") == pytest.approx(4 / 5)


def test_recall_at_1_both_directions():
    # 2 audios x 2 captions. Audio 0 = e0, audio 1 = e1. Captions: a0: e0, e1 ; a1: e1, e1.
    e0, e1 = torch.tensor([1.0, 0]), torch.tensor([0.0, 1])
    audio = torch.stack([e0, e0, e1, e1])
    text = torch.stack([e0, e1, e1, e1])
    # a2t: audio 0 best caption = caption 0 (own) -> hit; audio 1 best = caption 1 (first of ties,
    # belongs to audio 0) -> miss => 1/2. t2a: c0 -> a0 hit, c1 -> a1 miss, c2 -> a1 hit, c3 -> a1 hit => 3/4
    assert M.retrieval_recall_at_1(audio, text, 2) == pytest.approx((0.5 + 0.75) / 2)


def test_weighted_average_and_mean_std():
    assert M.weighted_average([(0.5, 100), (1.0, 300)]) == pytest.approx(0.875)
    assert M.weighted_average([(0.5, 0)]) is None
    mean, std = M.mean_std([0.2, 0.4])
    assert (mean, std) == pytest.approx((0.3, math.sqrt(0.02)))


def test_cosine_lr_matches_xares_schedule():
    # values from docs/xares.md §3.1 (simulated ignite CosineAnnealingScheduler)
    assert [round(cosine_lr(e, 3, 1e-3), 7) for e in (1, 2, 3)] == [1e-3, 7.75e-4, 3.25e-4]
    assert cosine_lr(10, 10, 1e-3) == pytest.approx(1.22e-4, abs=1e-6)
    assert cosine_lr(20, 20, 1e-3) == pytest.approx(1.06e-4, abs=1e-6)
    assert cosine_lr(1, 1, 1e-3) == 1e-3


def test_macro_map_equals_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, 4, (60, 5), generator=g).float()  # many tied scores
    y = (torch.rand(60, 5, generator=g) < 0.3).float()
    y[:, 4] = 0  # a class without positives scores 0, as in scikit-learn
    expected = average_precision_score(y.numpy(), z.numpy(), average="macro")
    assert M.mean_average_precision(z, y) == pytest.approx(expected, abs=1e-12)
