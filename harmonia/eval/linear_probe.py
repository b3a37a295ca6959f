"""The "MLP" track (docs/xares.md §3.1): a linear probe trained on cached embeddings.

Clip and frame tasks: LayerNorm(D) -> Linear(D, C), default PyTorch initialisation; cross-entropy
(single label) or BCE-with-logits (multi-label, frame). Adam at the task's lr (1e-3), cosine decay to
a tenth of it: epoch e (1-based) of E uses lr/10 + 0.9 lr (1 + cos(pi (e-1)/E)) / 2 (constant when
E = 1). After every epoch the probe is scored on the valid split; the best epoch (strictly greater
wins, so the earliest of ties) is reloaded and scored once on the test split. No early stopping.
Clotho: the retrieval probe of X-ARES (audio and text MLPs, a text embedding table over BERT
WordPiece ids trained from scratch, symmetric InfoNCE with a learnable temperature).

Everything runs on in-memory tensors (frame tasks read memory-mapped frames batch by batch).

Mode differences: ``xares`` seeds the model with 42 and shuffles with an unseeded generator (X-ARES's
data order comes from pid and time, §0 point 7); frame batches are zero-padded, the loss and the
metric cover the padding, and targets are padded/trimmed to the batch length. ``clean`` seeds model
and order from `seed` and masks padded frames out of loss and metric.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harmonia.eval import metrics as M
from harmonia.eval.tasks import Task

XARES_SEED = 42


def cosine_lr(epoch: int, epochs: int, lr: float, final_fraction: float = 0.1) -> float:
    """Learning rate of 1-based `epoch` (ignite CosineAnnealingScheduler from lr to lr/10 over E)."""
    if epochs <= 1:
        return lr
    end = lr * final_fraction
    return end + (lr - end) * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2


# --------------------------------------------------------------------------------------------------
# Data


@dataclass
class ClipSet:
    """x (N, D) pooled embeddings; y (N,) int classes or (N, C) float many-hot."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class FrameSet:
    """frames(i) -> (T_i, D) stored frames; targets: one (T_y, C) float target per item."""

    frames: Callable[[int], Tensor]
    targets: list[Tensor]

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class PairSet:
    """Clotho: audio (N, D) pooled embedding per (audio, caption) pair, captions consecutive per
    audio; tokens: one list of WordPiece ids per caption."""

    audio: Tensor
    tokens: list[list[int]]
    captions_per_audio: int = 5

    def __len__(self) -> int:
        return self.audio.shape[0]


def pad_or_trim(y_TC: Tensor, T: int) -> Tensor:
    """Zero-pad or cut the time axis (dim 0) to T, as X-ARES does with frame targets."""
    if y_TC.shape[0] >= T:
        return y_TC[:T]
    return F.pad(y_TC, (0, 0, 0, T - y_TC.shape[0]))


def _frame_batch(data: FrameSet, idx: list[int], mode: str) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, Tmax, D), y (B, Tmax, C), valid mask (B, Tmax)."""
    xs = [data.frames(i).float() for i in idx]
    T = max(x.shape[0] for x in xs)
    x = torch.zeros(len(xs), T, xs[0].shape[1])
    mask = torch.zeros(len(xs), T, dtype=torch.bool)
    for b, xi in enumerate(xs):
        x[b, :xi.shape[0]] = xi
        mask[b, :xi.shape[0]] = True
    if mode == "xares":  # targets follow the padded batch length; every frame counts
        y = torch.stack([pad_or_trim(data.targets[i], T) for i in idx])
        mask[:] = True
    else:
        y = torch.stack([pad_or_trim(pad_or_trim(data.targets[i], xs[b].shape[0]), T) for b, i in enumerate(idx)])
    return x, y, mask


# --------------------------------------------------------------------------------------------------
# Models


class LinearProbe(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., C) logits."""
        return self.fc(self.ln(x))


class RetrievalProbe(nn.Module):
    """X-ARES RetrivalMLP: audio LN -> Linear(D, H) -> GELU -> Linear(H, H); text Embedding(V, H) ->
    Linear -> GELU -> Linear, mean over non-pad tokens; H = 1024."""

    def __init__(self, dim: int, vocab_size: int, pad_id: int = 0, hidden: int = 1024):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.audio_mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.text_model = nn.Embedding(vocab_size, hidden)
        self.text_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.log_scale = nn.Parameter(torch.tensor(1.0 / 0.07).log())  # learnable 1/temperature
        self.pad_id = pad_id

    def embed_audio(self, x_BD: Tensor) -> Tensor:
        return self.audio_mlp(self.ln(x_BD))

    def embed_text(self, ids_BL: Tensor) -> Tensor:
        h = self.text_mlp(self.text_model(ids_BL))
        m = (ids_BL != self.pad_id).unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)

    def loss(self, a: Tensor, t: Tensor) -> Tensor:
        """Symmetric InfoNCE (diagonal targets) + X-ARES's L1/L2 regulariser on both embeddings."""
        sim = self.log_scale.exp() * a @ t.T
        target = torch.arange(a.shape[0])
        loss = (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)) / 2
        return loss + a.abs().mean() / a.pow(2).sum().sqrt() + t.abs().mean() / t.pow(2).sum().sqrt()


def _pad_ids(seqs: list[list[int]], pad: int) -> Tensor:
    L = max(len(s) for s in seqs)
    return torch.tensor([s + [pad] * (L - len(s)) for s in seqs], dtype=torch.long)


# --------------------------------------------------------------------------------------------------
# Training


@dataclass
class ProbeResult:
    score: float  # test metric of the best epoch
    best_epoch: int  # 1-based
    valid_curve: list[float] = field(default_factory=list)  # valid metric per epoch
    loss_curve: list[float] = field(default_factory=list)  # mean train loss per epoch


def _order_generator(mode: str, seed: int) -> torch.Generator:
    g = torch.Generator()
    # X-ARES's sample shuffles are seeded from pid and time: reproduce the unseeded order.
    g.manual_seed(int.from_bytes(os.urandom(8), "little") if mode == "xares" else seed)
    return g


def train_probe(task: Task, train, valid, test, *, mode: str = "clean", seed: int = 0,
                hop_size_in_ms: float | None = None, vocab_size: int | None = None, pad_id: int = 0,
                epochs: int | None = None, batch_size: int | None = None, front: nn.Module | None = None) -> ProbeResult:
    """Train on `train`, select the epoch on `valid`, score `test` (ClipSet / FrameSet / PairSet).

    `front` (clip and frame tasks): a module with `output_dim` (e.g. a `harmonia.fusion` module)
    placed in front of the probe and trained jointly with it; it holds the best epoch's weights
    when this returns.

    Clip and frame probes are small (B x T x D @ D x C per step): they run on one intra-op thread,
    where thread start-up would otherwise cost more than the arithmetic (100x slower on a loaded
    2-core machine)."""
    threads = torch.get_num_threads()
    if task.type != "contrastive":
        torch.set_num_threads(1)
    try:
        return _train_probe(task, train, valid, test, mode=mode, seed=seed, hop_size_in_ms=hop_size_in_ms,
                            vocab_size=vocab_size, pad_id=pad_id, epochs=epochs, batch_size=batch_size, front=front)
    finally:
        torch.set_num_threads(threads)


def _train_probe(task: Task, train, valid, test, *, mode: str, seed: int, hop_size_in_ms: float | None,
                 vocab_size: int | None, pad_id: int, epochs: int | None, batch_size: int | None,
                 front: nn.Module | None = None) -> ProbeResult:
    epochs = epochs or task.epochs
    bs = batch_size or task.batch_size
    with torch.random.fork_rng():
        torch.manual_seed(XARES_SEED if mode == "xares" else seed)
        if task.type == "contrastive":
            if front is not None:
                raise ValueError(f"task {task.name!r}: a front module (learned fusion) is not available for "
                                 "contrastive tasks; evaluate them with plain concatenation")
            model: nn.Module = RetrievalProbe(train.audio.shape[1], vocab_size, pad_id)
        else:
            dim = train.x.shape[1] if isinstance(train, ClipSet) else train.frames(0).shape[1]
            num_classes = _num_outputs(task, train)
            model = LinearProbe(front.output_dim if front is not None else dim, num_classes)
            if front is not None:
                model = nn.Sequential(front, model)
    # the fused kernel: same Adam, one pass per step (Clotho's probe updates a 31M-value text table)
    opt = torch.optim.Adam(model.parameters(), lr=task.learning_rate, fused=True)
    gen = _order_generator(mode, seed)
    step = _make_step(task, model, mode)
    score_fn = _make_scorer(task, model, mode, hop_size_in_ms, bs)

    best, best_state, best_epoch = -math.inf, None, 0
    result = ProbeResult(0.0, 0)
    for epoch in range(1, epochs + 1):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(epoch, epochs, task.learning_rate)
        model.train()
        order = torch.randperm(len(train), generator=gen).tolist()
        losses = []
        for s in range(0, len(order), bs):  # the last partial batch is used, as in X-ARES
            opt.zero_grad()
            loss = step(train, order[s:s + bs])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        v = score_fn(valid)
        result.valid_curve.append(v)
        result.loss_curve.append(sum(losses) / max(len(losses), 1))
        if v > best:  # strictly greater: the earliest of tied epochs is kept
            best, best_epoch = v, epoch
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    result.best_epoch = best_epoch
    result.score = score_fn(test)
    return result


def _num_outputs(task: Task, train) -> int:
    if isinstance(train, FrameSet):
        return train.targets[0].shape[1]
    return train.y.shape[1] if train.y.ndim == 2 else int(task.num_classes or int(train.y.max()) + 1)


def _make_step(task: Task, model: nn.Module, mode: str) -> Callable[[object, list[int]], Tensor]:
    pos_weight = torch.tensor(task.pos_weight) if task.pos_weight else None

    def clip_step(data: ClipSet, idx: list[int]) -> Tensor:
        z = model(data.x[idx].float())
        y = data.y[idx]
        if y.ndim == 2:
            return F.binary_cross_entropy_with_logits(z, y.float(), pos_weight=pos_weight)
        return F.cross_entropy(z, y.long())

    def frame_step(data: FrameSet, idx: list[int]) -> Tensor:
        x, y, mask = _frame_batch(data, idx, mode)
        per = F.binary_cross_entropy_with_logits(model(x), y, pos_weight=pos_weight, reduction="none")
        return per[mask].mean()  # xares: mask is all-true, so padding counts

    def pair_step(data: PairSet, idx: list[int]) -> Tensor:
        a = model.embed_audio(data.audio[idx].float())
        t = model.embed_text(_pad_ids([data.tokens[i] for i in idx], model.pad_id))
        return model.loss(a, t)

    return {"clip": clip_step, "frame": frame_step, "contrastive": pair_step}[task.type]


def _make_scorer(task: Task, model: nn.Module, mode: str, hop_ms: float | None, bs: int) -> Callable[[object], float]:
    def clip_score(data: ClipSet) -> float:
        model.eval()
        z = torch.cat([model(data.x[s:s + 8192].float()) for s in range(0, len(data), 8192)])
        if task.metric == "mAP":
            return M.mean_average_precision(z, data.y)
        return M.accuracy(z, data.y)

    def frame_score(data: FrameSet) -> float:
        model.eval()
        if hop_ms is None:
            raise ValueError("frame tasks need the encoder's hop_size_in_ms to score segments")
        logits, targets = [], []
        for s in range(0, len(data), bs):  # eval batches in order, as X-ARES's eval loader
            idx = list(range(s, min(s + bs, len(data))))
            x, y, mask = _frame_batch(data, idx, mode)
            z = model(x)
            for b in range(len(idx)):
                n = int(mask[b].sum())
                logits.append(z[b, :n])
                targets.append(y[b, :n])
        K = M.frames_per_segment(task.segment_length_s, hop_ms)
        return M.segment_f1(logits, targets, K, average=task.metric.split("_")[1])

    def pair_score(data: PairSet) -> float:
        model.eval()
        a, t = [], []
        for s in range(0, len(data), bs):
            a.append(model.embed_audio(data.audio[s:s + bs].float()))
            t.append(model.embed_text(_pad_ids(data.tokens[s:s + bs], model.pad_id)))
        return M.retrieval_recall_at_1(torch.cat(a), torch.cat(t), data.captions_per_audio)

    fn = {"clip": clip_score, "frame": frame_score, "contrastive": pair_score}[task.type]
    return lambda data: torch.no_grad()(fn)(data)
