"""kNN: the xares-mode per-dimension normalisation against a hand computation, and cosine in clean."""

import math

import pytest
import torch

from harmonia.eval.knn import knn_scores

TRAIN = torch.tensor([[10.0, 0.0], [1.0, 1.0]])  # class 0, class 1
LABELS = torch.tensor([0, 1])
TEST = torch.tensor([[1.0, 0.5]])


def test_xares_and_clean_disagree_as_computed_by_hand():
    # xares: columns normalised over the training set: a -> (10/sqrt(101), 0), b -> (1/sqrt(101), 1);
    # test normalised per sample: (1, .5)/sqrt(1.25). sims: a 0.890, b 0.536 -> class 0.
    # clean (cosine): a 0.894, b 0.949 -> class 1.
    xs = knn_scores(TRAIN, LABELS, TEST, 2, k=1, mode="xares")
    cs = knn_scores(TRAIN, LABELS, TEST, 2, k=1, mode="clean")
    assert xs.argmax(1).item() == 0
    assert cs.argmax(1).item() == 1


def test_softmax_vote_weights():
    t = 1 / math.sqrt(1.25)
    sim_a = 1.0 * t  # cosine to (10, 0)
    sim_b = (1 + 0.5) / math.sqrt(2) * t  # cosine to (1, 1)
    w_b = 1 / (1 + math.exp((sim_a - sim_b) / 0.07))
    scores = knn_scores(TRAIN, LABELS, TEST, 2, k=2, mode="clean")
    assert scores[0].tolist() == pytest.approx([1 - w_b, w_b], abs=1e-6)

    n = math.sqrt(101)
    xa, xb = 10 / n * t, (1 / n + 0.5) * t
    w_b = 1 / (1 + math.exp((xa - xb) / 0.07))
    scores = knn_scores(TRAIN, LABELS, TEST, 2, k=2, mode="xares")
    assert scores[0].tolist() == pytest.approx([1 - w_b, w_b], abs=1e-6)


def test_blocks_give_the_same_scores_and_k_is_capped():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 8, generator=g), torch.randn(33, 8, generator=g)
    y = torch.randint(0, 4, (50,), generator=g)
    full = knn_scores(train, y, test, 4, mode="xares")
    blocked = knn_scores(train, y, test, 4, mode="xares", block=7)
    assert torch.allclose(full, blocked)
    assert torch.allclose(full.sum(1), torch.ones(33))  # softmax weights sum to one
    few = knn_scores(train[:3], y[:3], test, 4)  # k = 10 > 3 training items: capped
    assert torch.allclose(few.sum(1), torch.ones(33))


def test_bad_shapes_are_explained():
    with pytest.raises(ValueError, match="equal D"):
        knn_scores(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, 5), 2)


def _loop_reference(train, labels, test, C, k=10, T=0.07):
    """X-ARES 0.1.3 KNN restated item by item: train columns L2-normalised over the training set,
    each test row L2-normalised, top-k similarities, softmax(sim / T) vote over one-hot labels."""
    cols = train / train.norm(dim=0, keepdim=True)
    out = torch.zeros(test.shape[0], C)
    for m in range(test.shape[0]):
        t = test[m] / test[m].norm()
        sims = [(float(cols[n] @ t), int(labels[n])) for n in range(train.shape[0])]
        top = sorted(sims, key=lambda s: -s[0])[:k]
        w = torch.softmax(torch.tensor([s for s, _ in top]) / T, 0)
        for (_, c), wj in zip(top, w):
            out[m, c] += wj
    return out


def test_xares_mode_equals_the_xares_algorithm_on_fixed_embeddings():
    g = torch.Generator().manual_seed(3)
    train = torch.randn(40, 6, generator=g) * torch.tensor([0.1, 1, 5, 2, 0.5, 3]) + 1.0
    labels = torch.randint(0, 5, (40,), generator=g)
    test = torch.randn(12, 6, generator=g)
    ref = _loop_reference(train, labels, test, 5)
    ours = knn_scores(train, labels, test, 5, mode="xares")
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.equal(ours.argmax(1), ref.argmax(1))
