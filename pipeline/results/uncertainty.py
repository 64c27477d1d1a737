"""How sure is a front? Bootstrap intervals, front probability, paired comparisons, latency intervals.

Pure NumPy, no MLflow calls: the callers (``pareto``, ``report``, ``compare``) read the runs and hand over arrays.
A *configuration* is a set of resolved settings without the seed; its *repeats* are runs that differ only in seed.

Resampling scheme of ``bootstrap`` (a percentile bootstrap, ``RESAMPLES`` replicates by default, seeded RNG):

- Evidence: per repeat, the per-image (TP, FP, FN) counts of every class (``nrd.evidence.ImageCounts``); all
  configurations are evaluated on the same validation images.
- Each replicate draws N images with replacement, **one draw shared by every configuration and every seed** (the
  comparisons stay paired: a hard image drawn twice is hard for everybody), and, per configuration independently
  (repeats of different configurations are different runs), S of its S seeds with replacement.
- A repeat's metric in a replicate is the metric of its counts **summed over the drawn images** (dataset-level, as
  reported by training; never a mean of per-image scores); the configuration's replicate value is the mean over its
  drawn seeds (a class absent from a draw's images leaves that draw's mean, as it would leave the mean of a
  validation set without it). The interval is the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles (linear
  interpolation) of the replicate values; the point value is the mean over the repeats of their full-data metric.
- With one seed only images are resampled (``scheme`` says so): the interval then covers which images were
  validated on, not training noise. Without per-image counts there is no interval (``Estimate.has_interval`` is
  False and ``note`` says why); the value is the mean of the logged metric over the repeats when given.
- How often the 95% interval holds the truth, measured by simulation (``benchmarks/bootstrap_coverage.py``, 100
  images, 400 trials): 94.5% with no seed effect; with one seed a seed effect is invisible (78% and 54% coverage for
  a seed-to-seed sd of 1.5 and 3.7 mIoU); 3 seeds: 94% and 87%; 5 seeds: 92% (sd 3.7). A bootstrap of S seeds
  underestimates their spread (variance factor (S - 1) / S, no heavy tails): with few seeds and large seed noise
  the interval is too narrow, which ``docs/uncertainty.md`` tells the reader.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nrd.cost import quantile_interval
from nrd.errors import NRDBenchError, UnknownNameError
from nrd.evidence import ImageCounts
from nrd.metrics import scores_from_counts
from pipeline.results.front import pareto_front

RESAMPLES = 2000
CONFIDENCE = 0.95
Y_METRICS = ("mIoU", "mAcc", "mDice", "aAcc")  # and "IoU.<class name>" for one class
COST_WORDS = {
    "gmacs_decoder": "decoder MACs",
    "gmacs_model": "model MACs",
    "params_m": "params",
    "latency_p50_ms": "median latency",
}
SEEDS_AND_IMAGES, IMAGES_ONLY, TIMINGS, EXACT, NO_INTERVAL = (
    "seeds and images",
    "images (one seed)",
    "timings",
    "exact",
    "none",
)


class UncertaintyInputError(NRDBenchError, ValueError):
    """Evidence that cannot be compared: different image sets or classes, bad settings; the message says which."""


@dataclass(frozen=True)
class Estimate:
    """A value with its interval [low, high] at ``confidence``, and how it was obtained: ``scheme`` is what was
    resampled (``SEEDS_AND_IMAGES``, ``IMAGES_ONLY``, ``TIMINGS``), ``EXACT`` for a counted quantity (MACs,
    params) or ``NO_INTERVAL`` (``note`` says why). ``seeds``: the repeats behind the value."""

    value: float | None
    low: float | None = None
    high: float | None = None
    scheme: str = NO_INTERVAL
    resamples: int = 0
    confidence: float = CONFIDENCE
    seeds: int = 0
    note: str = ""

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def format(self, digits: int = 1, signed: bool = False) -> str:
        """``41.2 [40.1, 42.3]``; ``41.2 (exact)``; ``41.2 (no interval: <note>)``; ``-`` without a value."""
        if self.value is None or not math.isfinite(self.value):
            return "-"
        number = f"{{:{'+' if signed else ''}.{digits}f}}".format
        if self.has_interval:
            return f"{number(self.value)} [{number(self.low)}, {number(self.high)}]"
        return f"{number(self.value)} ({'exact' if self.scheme == EXACT else f'no interval: {self.note}'})"

    def to_dict(self) -> dict:
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "scheme": self.scheme,
            "resamples": self.resamples,
            "confidence": self.confidence,
            "seeds": self.seeds,
            "note": self.note,
        }


def exact(value: float | None) -> Estimate:
    """A counted quantity (MACs, params): no sampling, no interval."""
    return Estimate(value, scheme=EXACT)


def _quantiles(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return float(low), float(high)


def _check_settings(resamples: int, confidence: float) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise UncertaintyInputError(f"resamples={resamples!r}; expected a positive integer")
    if not 0 < confidence < 1:
        raise UncertaintyInputError(f"confidence={confidence!r}; expected a number in (0, 1)")


# ------------------------------------------------------------------------------------------------------ bootstrap
@dataclass(frozen=True)
class Bootstrap:
    """The outcome of ``bootstrap``: ``estimates[key][metric]`` for every configuration, and for those with
    per-image counts the replicate values ``replicates[key][metric]`` (shape (resamples,)), row b of every
    configuration from the same image draw b (so differences between configurations are paired)."""

    image_ids: tuple[str, ...]
    resamples: int
    seed: int
    confidence: float
    estimates: dict[str, dict[str, Estimate]]
    replicates: dict[str, dict[str, np.ndarray]]

    def to_dict(self) -> dict:
        """JSON-ready: the settings and ``{"estimates": {key: {metric: Estimate.to_dict()}}}`` (no replicates)."""
        return {
            "resamples": self.resamples,
            "seed": self.seed,
            "confidence": self.confidence,
            "images": len(self.image_ids),
            "resampling": "percentile bootstrap over validation images (one draw "
            "shared by all configurations) and over each configuration's seeds",
            "estimates": {
                key: {name: e.to_dict() for name, e in values.items()} for key, values in self.estimates.items()
            },
        }


def _metric(scores: dict[str, np.ndarray], name: str, class_names: tuple[str, ...]) -> np.ndarray:
    if name in Y_METRICS:
        return scores[name]
    if name.startswith("IoU.") and name[4:] in class_names:
        return scores["per_class_iou"][..., class_names.index(name[4:])]
    raise UnknownNameError("metric", name, [*Y_METRICS, *(f"IoU.{c}" for c in class_names)])


def _aligned(evidence: Mapping[str, Sequence[ImageCounts]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The image ids (sorted: the draws do not depend on the order of the files) and class names shared by every
    repeat; else an error."""
    repeats = [(key, part) for key, parts in evidence.items() for part in parts]
    if not repeats:
        return (), ()
    first_key, first = repeats[0]
    for key, part in repeats[1:]:
        if part.class_names != first.class_names:
            raise UncertaintyInputError(
                f"configuration {key!r} counts classes {list(part.class_names)[:5]}..., configuration "
                f"{first_key!r} {list(first.class_names)[:5]}...; expected the same classes"
            )
        if set(part.image_ids) != set(first.image_ids):
            missing = sorted(set(first.image_ids) - set(part.image_ids))[:5]
            extra = sorted(set(part.image_ids) - set(first.image_ids))[:5]
            raise UncertaintyInputError(
                f"configuration {key!r} was evaluated on other images than {first_key!r} (missing {missing}, "
                f"extra {extra}); expected every repeat on the same validation images"
            )
    return tuple(sorted(first.image_ids)), first.class_names


def bootstrap(
    evidence: Mapping[str, Sequence[ImageCounts]],
    metrics: Sequence[str] = ("mIoU",),
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    logged: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> Bootstrap:
    """Paired percentile bootstrap of ``metrics`` for every configuration (scheme in the module docstring).
    ``evidence[key]``: the per-image counts of each repeat of configuration ``key`` (empty: none kept).
    ``logged[key][metric]``: the metric as logged by each repeat, used for the value of a configuration without
    counts (which gets no interval). Reproducible: the draws depend only on ``seed``, the number of images and the
    numbers of repeats of the configurations taken in sorted key order (images in sorted id order)."""
    _check_settings(resamples, confidence)
    image_ids, class_names = _aligned(evidence)
    if image_ids:
        scores = scores_from_counts(np.zeros((len(class_names), 3)))
        for name in metrics:  # unknown names fail before any work
            _metric(scores, name, class_names)
    rng = np.random.default_rng(seed)
    n = len(image_ids)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64) if n else None
    estimates: dict[str, dict[str, Estimate]] = {}
    replicates: dict[str, dict[str, np.ndarray]] = {}
    for key in sorted(evidence):
        parts = evidence[key]
        if not parts or n == 0:
            values = (logged or {}).get(key, {})
            estimates[key] = {
                name: Estimate(
                    float(np.mean(values[name])) if len(values.get(name, ())) else None,
                    seeds=len(values.get(name, ())),
                    note="no per-image counts",
                )
                for name in metrics
            }
            continue
        counts = np.stack([part.in_order(image_ids) for part in parts]).astype(np.float64)  # (S, N, K, 3)
        s, _, k, _ = counts.shape
        full = scores_from_counts(counts.sum(1))  # (S,) per metric: each repeat's own full-data metric
        drawn = weights @ counts.transpose(1, 0, 2, 3).reshape(n, -1)  # (B, S*K*3): summed over the drawn images
        scores = scores_from_counts(drawn.reshape(resamples, s, k, 3))
        seed_weights = rng.multinomial(s, np.full(s, 1.0 / s), size=resamples)  # (B, S)
        scheme = SEEDS_AND_IMAGES if s > 1 else IMAGES_ONLY
        estimates[key], replicates[key] = {}, {}
        for name in metrics:
            per_seed = _metric(scores, name, class_names)  # (B, S)
            values = np.where(seed_weights > 0, per_seed, 0.0)
            values = (seed_weights * values).sum(1) / s
            replicates[key][name] = values
            finite = values[np.isfinite(values)]
            low, high = _quantiles(finite, confidence) if finite.size else (None, None)
            estimates[key][name] = Estimate(
                float(np.mean(_metric(full, name, class_names))),
                low,
                high,
                scheme,
                resamples,
                confidence,
                s,
                "" if finite.size == resamples else f"{resamples - finite.size} replicates undefined, left out",
            )
    return Bootstrap(image_ids, resamples, seed, confidence, estimates, replicates)


# ----------------------------------------------------------------------------------- front probability, pairs
def front_probability(boot: Bootstrap, costs: Mapping[str, float | None], metric: str = "mIoU") -> dict:
    """``{key: share of replicates in which the configuration is on the Pareto front}`` (x = ``costs[key]``, exact,
    minimised; y = its replicate ``metric``, maximised; the rules of ``front.pareto_front``), over every
    configuration of ``costs``. A configuration without replicates (no per-image counts) takes part with its
    fixed value but gets None, as does one lacking a cost or a value."""
    unknown = sorted(set(costs) - set(boot.estimates))
    if unknown:
        raise UnknownNameError("configuration", unknown[0], boot.estimates)
    if any(metric not in estimates for estimates in boot.estimates.values()):
        raise UnknownNameError("bootstrapped metric", metric, next(iter(boot.estimates.values()), {}))
    keys = list(costs)
    xs = [costs[key] for key in keys]
    ys = np.empty((boot.resamples, len(keys)))
    for column, key in enumerate(keys):
        fixed = boot.estimates[key][metric].value
        ys[:, column] = boot.replicates[key][metric] if key in boot.replicates else np.nan if fixed is None else fixed
    on_front = np.zeros(len(keys))
    for row in ys:
        on_front[pareto_front(xs, row.tolist())] += 1
    return {
        key: float(on_front[column] / boot.resamples) if key in boot.replicates and xs[column] is not None else None
        for column, key in enumerate(keys)
    }


@dataclass(frozen=True)
class Comparison:
    """``a`` minus ``b`` in ``metric`` (paired bootstrap interval) and the ratio of their ``cost``."""

    a: str
    b: str
    metric: str
    difference: Estimate
    cost: str
    cost_ratio: float | None

    def __str__(self) -> str:
        ratio = "" if self.cost_ratio is None else f", {self.cost_ratio:.2f}x {COST_WORDS.get(self.cost, self.cost)}"
        diff = self.difference
        if diff.value is None:
            return f"{self.a} vs {self.b}: no {self.metric} difference ({diff.note}){ratio}"
        if diff.has_interval:
            text = f"{diff.value:+.1f} {self.metric} [{diff.low:+.1f}, {diff.high:+.1f}]"
        else:
            text = f"{diff.value:+.1f} {self.metric} (no interval: {diff.note})"
        return f"{self.a} vs {self.b}: {text}{ratio}"


def compare(
    boot: Bootstrap,
    a: str,
    b: str,
    costs: Mapping[str, float | None] | None = None,
    metric: str = "mIoU",
    cost: str = "gmacs_decoder",
    labels: Mapping[str, str] | None = None,
) -> Comparison:
    """``a`` minus ``b``: the difference of their values, its percentile interval from the replicate differences
    (the same image draw for both, seeds drawn per configuration), and ``costs[a] / costs[b]``. ``labels`` maps a
    configuration key to the name printed (e.g. ``nrd/resnet50``)."""
    for key in (a, b):
        if key not in boot.estimates:
            raise UnknownNameError("configuration", key, boot.estimates)
    first, second = boot.estimates[a][metric], boot.estimates[b][metric]
    value = None if first.value is None or second.value is None else first.value - second.value
    seeds = min(first.seeds, second.seeds)
    if a in boot.replicates and b in boot.replicates:
        delta = boot.replicates[a][metric] - boot.replicates[b][metric]
        delta = delta[np.isfinite(delta)]
        low, high = _quantiles(delta, boot.confidence) if delta.size else (None, None)
        scheme = SEEDS_AND_IMAGES if SEEDS_AND_IMAGES in (first.scheme, second.scheme) else IMAGES_ONLY
        difference = Estimate(value, low, high, scheme, boot.resamples, boot.confidence, seeds)
    else:
        lacking = [key for key in (a, b) if key not in boot.replicates]
        difference = Estimate(value, seeds=seeds, note=f"no per-image counts for {', '.join(lacking)}")
    ratio = None
    if costs is not None and costs.get(a) is not None and costs.get(b):
        ratio = float(costs[a]) / float(costs[b])
    name = (labels or {}).get
    return Comparison(name(a, a), name(b, b), metric, difference, cost, ratio)


# --------------------------------------------------------------------------------------------------------- latency
def latency_interval(
    timings_ms: Sequence[float],
    quantile: float = 0.5,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Estimate:
    """The ``quantile`` (0.5: the median) of repeated timings with a percentile bootstrap interval: the timings
    are drawn with replacement ``resamples`` times and the quantile taken of each draw. It covers the timing noise
    of that machine in that session (timings are treated as exchangeable), not machine-to-machine variation.
    Fewer than 2 timings: no interval."""
    _check_settings(resamples, confidence)
    timings = np.asarray(timings_ms, dtype=np.float64)
    if timings.ndim != 1 or not np.isfinite(timings).all():
        raise UncertaintyInputError("timings: expected a 1-d sequence of finite numbers")
    if timings.size == 0:
        return Estimate(None, note="no timings")
    value = float(np.quantile(timings, quantile))
    if timings.size < 2:
        return Estimate(value, note="one timing")
    low, high = quantile_interval(timings, quantile, resamples, seed, confidence)
    return Estimate(value, low, high, TIMINGS, resamples, confidence)
