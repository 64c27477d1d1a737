"""Is a budget long enough? Learning curves over seeds, a still-rising flag per run, and whether the ranking of the
configurations changed at the last evaluation (Kendall's tau-b). Pure NumPy; the curves come from the callers.

A front read at a budget where some decoder is still far from converged ranks learning speed, not quality: these
flags say so next to the front (``pipeline.results.uncertainty`` gives its intervals)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nrd.errors import NRDBenchError

RISING_WINDOW = 3  # the last evaluations whose least-squares slope is tested
RISING_SLOPE_PER_1K = 0.5  # metric points (e.g. mIoU %) per 1000 iterations above which a curve is still rising


class CurveInputError(NRDBenchError, ValueError):
    """A learning curve or ranking that cannot be read: the message says which shapes were found."""


@dataclass(frozen=True)
class Convergence:
    """Whether a learning curve still rises at its end: ``slope_per_1k`` is the least-squares slope of its last
    ``points`` evaluations (metric points per 1000 iterations); ``rising`` when it exceeds ``threshold``; None
    for both when fewer than 2 evaluations exist."""

    slope_per_1k: float | None
    points: int
    threshold: float
    rising: bool | None


def rising_at_end(
    iterations: Sequence[float],
    values: Sequence[float],
    window: int = RISING_WINDOW,
    threshold: float = RISING_SLOPE_PER_1K,
) -> Convergence:
    """Least-squares slope of the last ``window`` (default ``RISING_WINDOW`` = 3) evaluations of one run's curve
    in the second half of its iterations (at or after half the last evaluation's iteration, so that a short curve's
    first jump out of its initial state is not read as "still rising"), in metric points per 1000 iterations,
    compared with ``threshold`` (default ``RISING_SLOPE_PER_1K`` = 0.5 mIoU points per 1k iterations: a run still
    gaining that fast would score higher with a longer budget). Non-finite values are left out; fewer than 2
    evaluations in the second half: no verdict (None)."""
    x, y = np.asarray(iterations, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise CurveInputError(f"curve: {x.shape} iterations but {y.shape} values; expected equal 1-d")
    keep = np.isfinite(x) & np.isfinite(y)
    order = np.argsort(x[keep], kind="stable")
    x, y = x[keep][order], y[keep][order]
    late = x >= x[-1] / 2 if x.size else np.zeros(0, dtype=bool)
    x, y = x[late][-window:] / 1000.0, y[late][-window:]
    if x.size < 2 or np.ptp(x) == 0:
        return Convergence(None, int(x.size), threshold, None)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return Convergence(slope, int(x.size), threshold, slope > threshold)


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two paired sequences (our own O(n²) implementation, no SciPy): (concordant - discordant)
    / sqrt((n0 - ties in a) * (n0 - ties in b)) over the n0 = n(n-1)/2 pairs; NaN when either is constant or
    n < 2."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise CurveInputError(f"kendall_tau_b: shapes {x.shape} and {y.shape}; expected equal 1-d")
    upper = np.triu_indices(x.size, k=1)
    dx, dy = np.sign(x[:, None] - x[None, :])[upper], np.sign(y[:, None] - y[None, :])[upper]
    untied_x, untied_y = np.count_nonzero(dx), np.count_nonzero(dy)
    if untied_x == 0 or untied_y == 0:
        return math.nan
    return float((dx * dy).sum() / math.sqrt(untied_x * untied_y))


@dataclass(frozen=True)
class RankingChange:
    """Kendall's tau-b between the configurations' values at ``iterations[1]`` (the last evaluation common to all)
    and at ``iterations[0]`` (the one before); ``changed`` when tau < 1 (some pair swapped or tied)."""

    tau: float | None
    iterations: tuple[float, float] | None
    configurations: int
    changed: bool | None


def ranking_change(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> RankingChange:
    """``curves[key]`` = (iterations, values) of a configuration (e.g. the mean over its seeds). The two last
    iterations evaluated by every configuration are compared; runs stopped early (ASHA) are best left out by the
    caller, or the comparison falls back to the iterations they reached. None when fewer than 2 configurations
    or 2 common evaluations."""
    tables = {
        key: dict(zip(np.asarray(it, float).tolist(), np.asarray(v, float).tolist(), strict=True))
        for key, (it, v) in curves.items()
    }
    common = sorted(set.intersection(*(set(table) for table in tables.values()))) if tables else []
    if len(tables) < 2 or len(common) < 2:
        return RankingChange(None, None, len(tables), None)
    before, last = common[-2], common[-1]
    tau = kendall_tau_b([t[last] for t in tables.values()], [t[before] for t in tables.values()])
    return RankingChange(
        None if math.isnan(tau) else tau, (before, last), len(tables), None if math.isnan(tau) else tau < 1.0
    )


@dataclass(frozen=True)
class CurveBand:
    """A configuration's learning curve over its seeds: at each iteration any seed evaluated, the mean, the band
    [low, high] = [min, max] over the seeds evaluated there (not an interval: with 2-5 seeds the range is the
    honest summary), and ``seeds``, how many seeds evaluated there."""

    iterations: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seeds: np.ndarray


def curve_band(curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> CurveBand:
    """``curves``: one (iterations, values) per seed; non-finite values are left out."""
    table: dict[float, list[float]] = {}
    for iterations, values in curves:
        for iteration, value in zip(iterations, values, strict=True):
            if math.isfinite(value):
                table.setdefault(float(iteration), []).append(float(value))
    steps = sorted(table)
    columns = [np.asarray(table[step]) for step in steps]
    return CurveBand(
        np.asarray(steps),
        np.asarray([c.mean() for c in columns]),
        np.asarray([c.min() for c in columns]),
        np.asarray([c.max() for c in columns]),
        np.asarray([c.size for c in columns]),
    )
