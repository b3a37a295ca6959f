"""Learned fusion over frozen encoders' hidden states, trained inside the downstream probe.

The paper's ensemble concatenates its members' final frames. Two learned alternatives sit in front
of the probe instead and are optimised jointly with it, on the training split only:

- **layer-weighted** (SUPERB's weighted sum): per member m with L_m + 1 hidden states h_{m,0..L_m},
  ``z_m = sum_l softmax(w_m)_l · h_{m,l}``; the members' z_m are concatenated
  (width sum_m D_m). Initialised uniform (w_m = 0).
- **gated**: the per-member layer-weighted sums are projected to one common width W,
  ``p_m = A_m z_m + b_m``, and mixed by gates that depend on the input:
  ``g = softmax(G [p_1; ...; p_M] + c)`` (one gate per member, summing to one),
  ``y = sum_m g_m · p_m`` (width W). Initialised with G = 0, c = 0: equal gates.

What the probe reads is produced by `StackedStatesEncoder`, an encoder wrapper whose frames are the
wrapped encoder's own output followed by every member's hidden states (time-aligned to the reference
member's frame grid by `EnsembleEncoder`, i.e. by `align_frames`), flattened along the feature
axis. Because it is an ordinary encoder with its own class, config and state-dict names, the
evaluation cache keys it apart from the final-frames encoder; mean pooling over time commutes with
the stacking, so clip tasks store pooled states as usual. `StateLayout` says where each member's
states lie; the first `final_dim` features are the wrapped encoder's normal output (what the kNN
track and `concat` use).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harmonia.encoder import AudioEncoder, EncoderOutput
from harmonia.ensemble import EnsembleEncoder

FUSIONS = ("concat", "layer-weighted", "gated")
LEARNED_FUSIONS = FUSIONS[1:]


# -------------------------------------------------------------------------------------------------
# where the states lie


@dataclass(frozen=True)
class StateLayout:
    """Feature layout of a stacked-states vector: ``[final (final_dim) | member 0 states | member 1
    states | ...]``, member m contributing `num_states[m]` states of `dims[m]` features each, state
    after state (state 0 = the input of the first layer, then each layer's output)."""

    names: tuple[str, ...]
    num_states: tuple[int, ...]
    dims: tuple[int, ...]
    final_dim: int
    #: which of each member's hidden states are stored (state numbers, ascending); () = all of them,
    #: 0..num_states-1. Set by a `states` selection of StackedStatesEncoder.
    indices: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.num_states) == len(self.dims) >= 1):
            raise ValueError(f"StateLayout: names, num_states and dims need one entry per member (at least one), "
                             f"found {len(self.names)}, {len(self.num_states)}, {len(self.dims)}")
        if min(self.num_states) < 1 or min(self.dims) < 1 or self.final_dim < 0:
            raise ValueError(f"StateLayout: every member needs >= 1 state of >= 1 feature, found num_states="
                             f"{list(self.num_states)}, dims={list(self.dims)}")
        if self.indices and [len(i) for i in self.indices] != list(self.num_states):
            raise ValueError(f"StateLayout: indices must list num_states={list(self.num_states)} state numbers per "
                             f"member, found {[list(i) for i in self.indices]}")

    def state_numbers(self, member: int) -> tuple[int, ...]:
        """The hidden-state numbers member `member`'s stored states are (0 = input of the first layer)."""
        return self.indices[member] if self.indices else tuple(range(self.num_states[member]))

    @property
    def total_dim(self) -> int:
        return self.final_dim + sum(s * d for s, d in zip(self.num_states, self.dims))

    def final(self, x: Tensor) -> Tensor:
        """(..., total_dim) -> (..., final_dim): the wrapped encoder's own output."""
        return x[..., :self.final_dim]

    def member_states(self, x: Tensor) -> list[Tensor]:
        """(..., total_dim) -> one (..., S_m, D_m) tensor per member."""
        if x.shape[-1] != self.total_dim:
            raise ValueError(f"stacked states: expected {self.total_dim} features ({self.describe()}), "
                             f"found {x.shape[-1]}; were the embeddings made by a StackedStatesEncoder of this encoder?")
        out, start = [], self.final_dim
        for s, d in zip(self.num_states, self.dims):
            out.append(x[..., start:start + s * d].unflatten(-1, (s, d)))
            start += s * d
        return out

    def describe(self) -> str:
        return ", ".join(f"{n}: {s} states × {d}" for n, s, d in zip(self.names, self.num_states, self.dims))

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "num_states": list(self.num_states), "dims": list(self.dims),
                "final_dim": self.final_dim, "states": [list(self.state_numbers(m)) for m in range(len(self.names))]}


STATES_HELP = ("all (default): every hidden state; last:K: each member's last K states; every:K: states 0, K, "
               "2K, ... and always the last")


def select_states(spec: str, count: int) -> tuple[int, ...]:
    """Which of a member's `count` hidden states (0 = input of the first layer, count-1 = the last
    layer's output) a `states` spec keeps: "all", "last:K" or "every:K" (see STATES_HELP). The
    stored all-states cache grows with the number kept, (kept states) × width per frame and member."""
    kind, _, k = spec.partition(":")
    if kind == "all" and not k:
        return tuple(range(count))
    if kind in ("last", "every") and k.isdigit() and int(k) >= 1:
        k = int(k)
        if kind == "last":
            return tuple(range(max(0, count - k), count))
        return tuple(sorted(set(range(0, count, k)) | {count - 1}))
    raise ValueError(f"fusion states {spec!r}: expected {STATES_HELP.replace('; ', ', or ')}")


# -------------------------------------------------------------------------------------------------
# the encoder whose frames are the stacked states


class StackedStatesEncoder(AudioEncoder):
    """`encoder`'s frames followed by all of its members' hidden states: (B, T', layout.total_dim).

    An `EnsembleEncoder` contributes one member per ensemble member (its states aligned to the
    reference grid by the ensemble); any other encoder is one member. The number of states and
    their width per member are read once from a short silent input.
    """

    def __init__(self, encoder: AudioEncoder, states: str = "all") -> None:
        super().__init__()
        if isinstance(encoder, StackedStatesEncoder):
            raise TypeError("StackedStatesEncoder: the encoder already outputs stacked states")
        if not isinstance(encoder, AudioEncoder):
            raise TypeError(f"learned fusion needs a harmonia encoder (hidden states from encode(..., "
                            f"output_hidden_states=True)), found a {type(encoder).__name__}; load it with "
                            "harmonia.load_encoder, or use --fusion concat")
        self.inner = encoder
        members = list(encoder.members) if isinstance(encoder, EnsembleEncoder) else [encoder]
        names = list(encoder.names) if isinstance(encoder, EnsembleEncoder) else [type(encoder).__name__]
        if len(set(names)) < len(names):  # e.g. two unnamed BEATs members: "BeatsEncoder#0", "BeatsEncoder#1"
            names = [f"{n}#{i}" for i, n in enumerate(names)]
        counts, dims = [], []
        for name, m in zip(names, members):
            probe = m.encode(torch.zeros(1, max(m.min_samples, 400)), output_hidden_states=True).hidden_states
            if not probe:
                raise ValueError(f"learned fusion needs hidden states, but member {name!r} "
                                 f"({type(m).__name__}) returns none from encode(..., output_hidden_states=True); "
                                 "use --fusion concat for this encoder")
            widths = {h.shape[-1] for h in probe}
            if len(widths) != 1:
                raise ValueError(f"learned fusion: member {name!r} has hidden states of different widths "
                                 f"{sorted(widths)}; a layer-weighted sum needs one width per member")
            counts.append(len(probe))
            dims.append(widths.pop())
        select_states(states, 1)  # a bad spec fails before anything is encoded
        self.states = states
        kept = [select_states(states, c) for c in counts]
        offsets = [sum(counts[:m]) for m in range(len(counts))]
        #: positions, in the inner encoder's hidden-state tuple, of the states stored
        self._keep = [offsets[m] + i for m, idx in enumerate(kept) for i in idx]
        self.total_states = sum(counts)
        self.layout = StateLayout(tuple(names), tuple(len(i) for i in kept), tuple(dims), int(encoder.output_dim),
                                  indices=() if states == "all" else tuple(kept))
        self.sampling_rate = encoder.sampling_rate
        self.hop_size_in_ms = float(encoder.hop_size_in_ms)
        self.min_samples = encoder.min_samples
        self.output_dim = self.layout.total_dim

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def num_frames(self, num_samples: int) -> int:
        return self.inner.num_frames(num_samples)

    def _encode(self, wav_BN: Tensor, lengths_B: Tensor, output_hidden_states: bool) -> EncoderOutput:
        out = self.inner.encode(wav_BN, lengths_B, output_hidden_states=True)
        hidden = out.hidden_states or ()
        if len(hidden) != self.total_states:
            raise RuntimeError(f"StackedStatesEncoder: the encoder returned {len(hidden)} hidden states, expected "
                               f"{self.total_states} ({self.layout.describe()})")
        hidden = tuple(hidden[i] for i in self._keep)
        frames = torch.cat([out.frames, *hidden], dim=-1)
        return EncoderOutput(frames=frames, lengths=out.lengths, hidden_states=hidden if output_hidden_states else None)

    def export_config(self) -> dict[str, Any]:
        """What the evaluation cache fingerprints: the wrapped encoder's config and the layout."""
        inner = getattr(self.inner, "export_config", None)
        try:
            inner_config = inner() if inner else None
        except (NotImplementedError, AttributeError, TypeError):
            inner_config = None
        cls = type(self.inner)
        return {"family": "stacked-states", "stored": "final+all-hidden-states" if self.states == "all" else
                f"final+hidden-states:{self.states}",
                "inner_class": f"{cls.__module__}.{cls.__qualname__}", "inner": inner_config,
                "layout": self.layout.to_dict()}


# -------------------------------------------------------------------------------------------------
# fusion modules: (..., layout.total_dim) -> (..., output_dim)


class LayerWeightedFusion(nn.Module):
    """Per member a softmax-weighted sum of its hidden states, then concatenation across members.

    The weights are ``softmax(gain · θ_m)``. Adam moves θ by about the learning rate per step
    whatever the gradient's scale, so at the probe's learning rate (1e-3) and budget (a few hundred
    steps on small tasks) plain logits would leave the weights within a few percent of uniform;
    `gain` (default 10) acts as a 10× learning rate for the layer weights alone."""

    def __init__(self, layout: StateLayout, gain: float = 10.0) -> None:
        super().__init__()
        if not gain > 0:
            raise ValueError(f"LayerWeightedFusion: gain must be > 0, found {gain}")
        self.layout = layout
        self.gain = float(gain)
        self.logits = nn.ParameterList([nn.Parameter(torch.zeros(s)) for s in layout.num_states])
        self.output_dim = sum(layout.dims)

    def layer_weights(self) -> list[Tensor]:
        """One (S_m,) softmax weight vector per member."""
        return [(self.gain * w).softmax(0) for w in self.logits]

    @torch.no_grad()
    def set_layer_weights(self, member: int, weights: Tensor) -> None:
        """Set member `member`'s layer weights (positive, summing to one) exactly."""
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if weights.shape != self.logits[member].shape or (weights < 0).any() or abs(float(weights.sum()) - 1) > 1e-5:
            raise ValueError(f"member {member}: expected {self.logits[member].numel()} non-negative weights summing "
                             f"to 1, found {weights.tolist()}")
        self.logits[member].copy_(weights.log() / self.gain)  # a zero weight is exactly zero (-inf logit)

    def member_sums(self, x: Tensor) -> list[Tensor]:
        """(..., total_dim) -> one (..., D_m) weighted sum per member."""
        return [torch.einsum("...sd,s->...d", h, w.to(h.dtype))
                for h, w in zip(self.layout.member_states(x), self.layer_weights())]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(self.member_sums(x), dim=-1)


class GatedFusion(nn.Module):
    """Per-member layer-weighted sums, projected to a common width and mixed by input-dependent
    softmax gates (one per member). width: the common width (default: the widest member's)."""

    def __init__(self, layout: StateLayout, width: int | None = None) -> None:
        super().__init__()
        width = int(width or max(layout.dims))
        if width < 1:
            raise ValueError(f"GatedFusion: width must be >= 1, found {width}")
        self.layout = layout
        self.layers = LayerWeightedFusion(layout)
        self.proj = nn.ModuleList([nn.Linear(d, width) for d in layout.dims])
        self.gate = nn.Linear(len(layout.dims) * width, len(layout.dims))
        nn.init.zeros_(self.gate.weight)  # equal gates at the start
        nn.init.zeros_(self.gate.bias)
        self.output_dim = width

    def projected(self, x: Tensor) -> Tensor:
        """(..., total_dim) -> (..., M, width): every member's projected layer-weighted sum."""
        return torch.stack([p(z) for p, z in zip(self.proj, self.layers.member_sums(x))], dim=-2)

    def gates(self, x: Tensor, projected: Tensor | None = None) -> Tensor:
        """(..., total_dim) -> (..., M) member gates (non-negative, summing to one)."""
        p = self.projected(x) if projected is None else projected
        return self.gate(p.flatten(-2)).softmax(-1)

    def forward(self, x: Tensor) -> Tensor:
        p = self.projected(x)
        return (self.gates(x, p).unsqueeze(-1) * p).sum(-2)


def make_fusion(kind: str, layout: StateLayout, *, seed: int | None = None, width: int | None = None) -> nn.Module:
    """A fresh fusion module of `kind` ("layer-weighted" | "gated") for `layout`; with `seed`, its
    initialisation is drawn from that seed (the global RNG is left as it was)."""
    if kind not in LEARNED_FUSIONS:
        raise ValueError(f"fusion={kind!r}: expected one of {LEARNED_FUSIONS} for a learned fusion "
                         f"(or 'concat' for plain concatenation of the final frames)")
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return LayerWeightedFusion(layout) if kind == "layer-weighted" else GatedFusion(layout, width)


def check_fusion(kind: str) -> str:
    if kind not in FUSIONS:
        raise ValueError(f"fusion={kind!r}: expected one of {FUSIONS}")
    return kind


# -------------------------------------------------------------------------------------------------
# what was learned


@torch.no_grad()
def describe(fusion: nn.Module, sample: Tensor | None = None) -> dict[str, Any]:
    """The learned weights as plain lists: per member its softmax layer weights; for gated fusion
    also the mean gate per member over `sample` (..., total_dim), e.g. the training inputs."""
    layers = fusion.layers if isinstance(fusion, GatedFusion) else fusion
    layout = layers.layout
    out: dict[str, Any] = {
        "kind": "gated" if isinstance(fusion, GatedFusion) else "layer-weighted",
        "members": [{"name": n, "states": list(layout.state_numbers(m)),
                     "layer_weights": [round(float(v), 6) for v in w]}
                    for m, (n, w) in enumerate(zip(layout.names, layers.layer_weights()))],
    }
    if isinstance(fusion, GatedFusion) and sample is not None:
        g = fusion.gates(sample.float()).reshape(-1, len(layout.names)).mean(0)
        for m, v in zip(out["members"], g.tolist()):
            m["mean_gate"] = round(float(v), 6)
    return out


def training_sample(data, max_items: int = 64) -> Tensor:
    """Inputs of a probe training set to average gates over: a ClipSet's `x` (N, F), or the frames
    of a FrameSet's first `max_items` items concatenated (sum T, F)."""
    if hasattr(data, "x"):
        return data.x
    return torch.cat([data.frames(i) for i in range(min(len(data), max_items))])


def mean_description(runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Average `describe` outputs of several probe runs (seeds × folds) member by member."""
    if not runs:
        return None
    out = {"kind": runs[0]["kind"], "runs": len(runs), "members": []}
    for i, m in enumerate(runs[0]["members"]):
        entry = {"name": m["name"], **({"states": m["states"]} if "states" in m else {}),
                 "layer_weights": [round(sum(r["members"][i]["layer_weights"][j] for r in runs) / len(runs), 6)
                                   for j in range(len(m["layer_weights"]))]}
        if all("mean_gate" in r["members"][i] for r in runs):
            entry["mean_gate"] = round(sum(r["members"][i]["mean_gate"] for r in runs) / len(runs), 6)
        out["members"].append(entry)
    return out


def weights_chart(results: dict, path: str | Path) -> Path | None:
    """Which layers of which member each task uses: one heat map per member, tasks (rows) × hidden
    states (columns), coloured by the mean learned layer weight; gated fusion adds a panel of the
    mean member gates. Written atomically; None when no task has learned weights."""
    from harmonia.io import atomic_path

    tasks = [(n, e["fusion"]) for n, e in results.get("tasks", {}).items() if e.get("fusion")]
    if not tasks:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = tasks[0][1]
    panels = [(m["name"], [f["members"][k]["layer_weights"] for _, f in tasks], "hidden state", m.get("states"))
              for k, m in enumerate(first["members"])]
    if all("mean_gate" in m for _, f in tasks for m in f["members"]):
        panels.append(("member gates", [[m["mean_gate"] for m in f["members"]] for _, f in tasks], "member", None))
    widths = [len(grid[0]) for _, grid, _, _ in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.5 + 0.5 * sum(widths) + 0.6 * len(panels), 1.4 + 0.35 * len(tasks)),
                             gridspec_kw={"width_ratios": widths}, squeeze=False, constrained_layout=True)
    vmax = max(v for _, grid, _, _ in panels for row in grid for v in row)
    for k, (ax, (title, grid, xlabel, numbers)) in enumerate(zip(axes[0], panels)):
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
        ticks = ([m["name"] for m in first["members"]] if xlabel == "member" else
                 [str(j) for j in (numbers or range(len(grid[0])))])
        ax.set_xticks(range(len(grid[0])), ticks, fontsize=7, rotation=30 if xlabel == "member" else 0)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_yticks(range(len(tasks)), [n for n, _ in tasks] if k == 0 else [], fontsize=7)
        ax.set_title(title, fontsize=8)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 * vmax else "black")
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.03, pad=0.01)
    fig.suptitle(f"{results.get('model', '')}: learned {first['kind']} fusion (mean over {first.get('runs', 1)} "
                 "probe run(s); hidden state 0 = input of the first layer)", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


# -------------------------------------------------------------------------------------------------
# comparing runs


def seed_scores(results: dict) -> list[float]:
    """The weighted MLP score of each probe seed, ``sum_t w_t s_{t,seed} / sum_t w_t`` over the tasks
    scored in every seed (the run's summary averages the per-task means instead)."""
    entries = [e for e in results["tasks"].values() if e.get("status") == "ok" and e.get("mlp")]
    if not entries:
        return []
    n = min(len(e["mlp"]["per_seed"]) for e in entries)
    total = sum(e["weight"] for e in entries)
    return [sum(e["weight"] * e["mlp"]["per_seed"][s] for e in entries) / total for s in range(n)]


def compare(name: str, fused: Sequence[float], concat: Sequence[float]) -> tuple[str, str]:
    """(status, sentence): does `name` fusion beat concatenation on the weighted score, over the same
    probe seeds? The rule is `harmonia.eval.metrics.call_effect`, the one the demo's verdicts use."""
    from harmonia.eval.metrics import call_effect

    status, numbers = call_effect(fused, concat)
    says = {"HOLDS": "beats concatenation", "DOES NOT HOLD": "is worse than concatenation",
            "WITHIN SEED NOISE": "and concatenation are within seed noise",
            "UNDECIDED": "vs concatenation is undecided"}[status]
    return status, f"{name} fusion {says} ({numbers})"
