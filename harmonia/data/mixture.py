"""Domain mixtures in hours.

A mixture is a target share of *hours* per domain (speech:music:sound), e.g. the paper's
speech-heavy 70:15:15 and balanced 40:30:30. Within a domain, corpora get hours in proportion to
their size, times an optional per-corpus weight. The result is one target hours share per stream
`domain/corpus`; the loader realises it with a deficit scheduler (`HoursScheduler`) so that hours,
not segment counts, match the target whatever the segment durations of each corpus.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

PRESETS: dict[str, dict[str, float]] = {
    # The paper's two mixtures (section III-B): with / without the 34 kh YODAS subset.
    "speech-heavy": {"speech": 0.70, "music": 0.15, "sound": 0.15},
    "balanced": {"speech": 0.40, "music": 0.30, "sound": 0.30},
}
RATIO_ORDER = ("speech", "music", "sound")  # order of a bare "70:15:15"


class MixtureError(ValueError):
    """A mixture cannot be built; the message names the fix."""


def parse_ratio(spec: str | Mapping[str, float]) -> dict[str, float]:
    """Domain ratio from a preset name, `70:15:15` (speech:music:sound), `speech=0.4,music=0.6`, or a
    mapping. Shares must sum to 1 (or 100 when given in percent); returned as fractions."""
    if isinstance(spec, Mapping):
        raw = {str(k): float(v) for k, v in spec.items()}
    elif spec in PRESETS:
        raw = dict(PRESETS[spec])
    elif ":" in spec and "=" not in spec:
        parts = spec.split(":")
        if len(parts) != len(RATIO_ORDER):
            raise MixtureError(f"ratio {spec!r}: expected {len(RATIO_ORDER)} numbers "
                               f"({':'.join(RATIO_ORDER)}), e.g. 70:15:15; or name domains: speech=0.7,...")
        try:
            raw = {d: float(p) for d, p in zip(RATIO_ORDER, parts)}
        except ValueError as e:
            raise MixtureError(f"ratio {spec!r}: {e}; expected numbers like 70:15:15") from e
    else:
        raw = {}
        for item in spec.split(","):
            key, sep, val = item.partition("=")
            try:
                if not sep:
                    raise ValueError("missing '='")
                raw[key.strip()] = float(val)
            except ValueError as e:
                raise MixtureError(f"ratio {spec!r}: cannot read {item!r} ({e}); expected a preset "
                                   f"{sorted(PRESETS)}, 70:15:15 or speech=0.7,music=0.15,sound=0.15") from e
    if any(v < 0 or not math.isfinite(v) for v in raw.values()):
        raise MixtureError(f"ratio {raw}: shares must be finite and >= 0")
    total = sum(raw.values())
    scale = 100.0 if abs(total - 100.0) < 1e-6 else 1.0
    if abs(total - scale) > 1e-6:
        raise MixtureError(f"ratio {spec!r}: shares sum to {total:g}; they must sum to 1 (or 100 in percent), "
                           "e.g. 70:15:15 or speech=0.4,music=0.3,sound=0.3")
    return {d: v / scale for d, v in raw.items()}


def check_weight(corpus: str, weight: float) -> float:
    """A corpus weight must be a finite number >= 0 (0 leaves the corpus out)."""
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
        raise MixtureError(f"corpus weight {corpus}={weight}: expected a finite number >= 0 (1 = in proportion "
                           "to its hours, 0 = leave it out), e.g. --weight commonvoice=0.5")
    return float(weight)


@dataclass(frozen=True)
class MixturePlan:
    """target[stream] = share of hours drawn from `domain/corpus`; shares sum to 1."""

    target: dict[str, float]
    domain_ratio: dict[str, float]
    hours: dict[str, float]  # available hours per stream

    def domain_of(self, stream: str) -> str:
        return stream.split("/", 1)[0]


def plan_mixture(hours: Mapping[str, float], ratio: str | Mapping[str, float],
                 corpus_weights: Mapping[str, float] | None = None) -> MixturePlan:
    """Target hours share per stream `domain/corpus` for a domain ratio.

    hours: available hours per stream key `domain/corpus`. corpus_weights: optional multiplier per
    corpus name (or stream key) applied to its hours within its domain (default 1).
    A domain with a positive share but no hours is an error; a domain with hours but no share is
    left out.
    """
    ratio = parse_ratio(ratio)
    corpus_weights = {k: check_weight(k, w) for k, w in (corpus_weights or {}).items()}
    by_domain: dict[str, dict[str, float]] = {}
    for stream, h in hours.items():
        if "/" not in stream:
            raise MixtureError(f"stream {stream!r}: expected a 'domain/corpus' key")
        if not (math.isfinite(h) and h >= 0):
            raise MixtureError(f"stream {stream!r}: {h} hours; expected a finite number >= 0 (check the durations "
                               "of its manifest or shard index)")
        by_domain.setdefault(stream.split("/", 1)[0], {})[stream] = float(h)
    known = {s.split("/", 1)[1] for s in hours} | set(hours)
    unknown_w = sorted(set(corpus_weights) - known)
    if unknown_w:
        raise MixtureError(f"corpus weights for {unknown_w}, which are not in the pool; corpora are "
                           f"{sorted(known)}")
    target: dict[str, float] = {}
    for domain, share in ratio.items():
        if share == 0:
            continue
        streams = by_domain.get(domain, {})
        weights = {s: corpus_weights.get(s, corpus_weights.get(s.split("/", 1)[1], 1.0)) for s in streams}
        top = max(weights.values(), default=0.0) or 1.0  # only ratios matter: keep h * w finite for w = 1e308
        weighted = {s: h * (weights[s] / top) for s, h in streams.items()}
        total = sum(weighted.values())
        if total <= 0 and sum(streams.values()) > 0:
            raise MixtureError(f"domain {domain!r} has share {share:.0%} but every corpus in it has weight 0 "
                               f"({sorted(s.split('/', 1)[1] for s in streams)}); give one of them a positive "
                               f"weight or set the share of {domain} to 0")
        if total <= 0:
            have = sorted(d for d, s in by_domain.items() if sum(s.values()) > 0)
            raise MixtureError(f"domain {domain!r} has share {share:.0%} but no data in the pool (domains "
                               f"with data: {have}); add a {domain} corpus or set its share to 0")
        for s, w in weighted.items():
            if w > 0:
                target[s] = share * w / total
    return MixturePlan(target=target, domain_ratio=ratio, hours=dict(hours))


def format_plan(plan: MixturePlan, seg_seconds: Mapping[str, float] | None = None, steps: int = 0,
                batch_size: int = 0) -> str:
    """A table: per stream available hours, pool share, target share, hours drawn and effective
    epochs over `steps` x `batch_size` segments (`seg_seconds` = mean segment length per stream)."""
    pool_total = sum(plan.hours.values()) or 1.0
    drawn_total = 0.0
    if steps and batch_size and seg_seconds:
        # Segments per second of audio drawn = sum_s target_s / mean_len_s, so the mean segment
        # length of the mixture is the harmonic mean weighted by target hours.
        inv = sum(t / max(seg_seconds.get(s, 10.0), 1e-6) for s, t in plan.target.items())
        drawn_total = steps * batch_size / inv / 3600.0 if inv > 0 else 0.0
    head = f"{'stream':<28}{'hours':>11}{'pool':>8}{'target':>8}"
    if drawn_total:
        head += f"{'drawn h':>11}{'epochs':>9}"
    lines = [head, "-" * len(head)]
    domains = sorted({plan.domain_of(s) for s in plan.hours})
    for d in domains:
        for s in sorted(x for x in plan.hours if plan.domain_of(x) == d):
            h, t = plan.hours[s], plan.target.get(s, 0.0)
            row = f"{s:<28}{h:>11.2f}{h / pool_total:>8.1%}{t:>8.1%}"
            if drawn_total:
                row += f"{t * drawn_total:>11.2f}{(t * drawn_total / h if h else 0):>9.2f}"
            lines.append(row)
        dh = sum(plan.hours[s] for s in plan.hours if plan.domain_of(s) == d)
        dt = sum(t for s, t in plan.target.items() if plan.domain_of(s) == d)
        row = f"{'= ' + d:<28}{dh:>11.2f}{dh / pool_total:>8.1%}{dt:>8.1%}"
        if drawn_total:
            row += f"{dt * drawn_total:>11.2f}{(dt * drawn_total / dh if dh else 0):>9.2f}"
        lines.append(row)
    lines.append(f"{'total':<28}{pool_total:>11.2f}")
    if drawn_total:
        lines.append(f"planned: {steps} steps x {batch_size} segments = {drawn_total:.2f} h drawn")
    return "\n".join(lines)


class HoursScheduler:
    """Deterministic deficit scheduler in seconds: the next stream is the one furthest below its
    target share of the audio drawn so far (ties: larger target, then name). The realised share of
    every stream stays within one segment of its target, so hours (not counts) match the mixture.

    Its state is the seconds drawn per stream (`state_dict` / `load_state_dict`)."""

    def __init__(self, target: Mapping[str, float]):
        self.target = {s: t for s, t in sorted(target.items()) if t > 0}
        if not self.target:
            raise MixtureError("empty mixture: no stream has a positive share")
        self.seconds = dict.fromkeys(self.target, 0.0)

    def next_stream(self) -> str:
        total = sum(self.seconds.values())
        return max(self.target, key=lambda s: (self.target[s] * total - self.seconds[s], self.target[s], s))

    def add(self, stream: str, seconds: float) -> None:
        self.seconds[stream] += seconds

    def state_dict(self) -> dict:
        return {"seconds": dict(self.seconds)}

    def load_state_dict(self, state: Mapping) -> None:
        if set(state["seconds"]) != set(self.seconds):
            raise MixtureError(f"checkpointed mixture streams {sorted(state['seconds'])} differ from the "
                               f"configured ones {sorted(self.seconds)}; resume with the same data and mixture")
        self.seconds = {k: float(v) for k, v in state["seconds"].items()}
