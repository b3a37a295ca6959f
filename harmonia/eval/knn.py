"""The kNN track (docs/xares.md §3.2): k = 10 nearest training clips, softmax vote at T = 0.07.

Scoring is one matrix product per block of test items (test (n, D) @ train (D, N)), a top-k and a
scatter-add: no Python loop over items.

Similarity by mode:
- ``xares``: X-ARES 0.1.3 normalises the *training matrix per feature dimension* over the training
  set (`normalize(train.T, dim=1)`), and each test vector per sample; this is not cosine similarity.
- ``clean``: true cosine similarity (both sides normalised per sample).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_K = 10
DEFAULT_TEMPERATURE = 0.07


def knn_scores(train_ND: torch.Tensor, train_y_N: torch.Tensor, test_MD: torch.Tensor, num_classes: int,
               k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE, mode: str = "clean",
               block: int = 4096) -> torch.Tensor:
    """Class scores (M, C): sum over the k most similar training items of softmax(sim / T) weights.

    train_ND (N, D) pooled training embeddings, train_y_N (N,) int labels in [0, C), test_MD (M, D).
    k is capped at N (X-ARES would crash with fewer than k training items; the runner records it).
    """
    if mode not in ("xares", "clean"):
        raise ValueError(f"mode must be 'xares' or 'clean', found {mode!r}")
    if train_ND.ndim != 2 or test_MD.ndim != 2 or train_ND.shape[1] != test_MD.shape[1]:
        raise ValueError(f"kNN expects train (N, D) and test (M, D) with equal D, found "
                         f"{tuple(train_ND.shape)} and {tuple(test_MD.shape)}")
    if train_ND.shape[0] == 0:
        raise ValueError("kNN needs at least one training item, found none")
    train = train_ND.float()
    if mode == "xares":
        train_DN = F.normalize(train.T, dim=1, p=2)  # X-ARES quirk: per dimension, over the training set
    else:
        train_DN = F.normalize(train, dim=1, p=2).T
    k = min(k, train.shape[0])
    labels_N = train_y_N.long()
    out = torch.empty(test_MD.shape[0], num_classes)
    for s in range(0, test_MD.shape[0], block):
        test = F.normalize(test_MD[s:s + block].float(), dim=1, p=2)
        sims, idx = (test @ train_DN).topk(k, dim=1, largest=True, sorted=True)  # (m, k)
        weights = torch.softmax(sims / temperature, dim=1)
        scores = torch.zeros(test.shape[0], num_classes)
        scores.scatter_add_(1, labels_N[idx], weights)
        out[s:s + block] = scores
    return out
