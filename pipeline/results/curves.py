"""Learning curves of a front's configurations: each run's y metric at every evaluation (its MLflow history), the
mean and min-max band over a configuration's seeds, whether it still rises at the end (``rising_at_end`` of the
mean curve, and of each run) and whether the ranking of the configurations changed at the last evaluation
(Kendall's tau-b). Written beside the intervals as ``<dataset>_<y>_learning_curves.csv/.json/.png``; a front whose
members still rise is ranked at a budget that favours fast learners, and the printed summary says so."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow import MlflowClient

from pipeline.files import write_atomic
from pipeline.results.catalogue import slug
from pipeline.results.convergence import (
    RISING_SLOPE_PER_1K,
    RISING_WINDOW,
    Convergence,
    CurveBand,
    RankingChange,
    curve_band,
    ranking_change,
    rising_at_end,
)
from pipeline.results.intervals import IntervalFront
from pipeline.training.tracking import mlflow_call


@dataclass
class LearningCurves:
    """Per configuration key: its band over seeds, the convergence of its mean curve and of each of its runs."""

    front: IntervalFront
    bands: dict[str, CurveBand]
    convergence: dict[str, Convergence]
    run_convergence: dict[str, dict[str, Convergence]]
    ranking: RankingChange

    def rising(self) -> list[str]:
        return [key for key, value in self.convergence.items() if value.rising]

    def to_dict(self) -> dict:
        configurations = {c.key: c for c in self.front.configurations}
        return {
            "metric": self.front.runs.y,
            "rising_rule": f"least-squares slope of the last {RISING_WINDOW} evaluations in the second half of the "
            f"curve above {RISING_SLOPE_PER_1K} points per 1000 iterations",
            "ranking_at_last_evaluation": asdict(self.ranking),
            "configurations": [
                {
                    "config_key": key,
                    "label": configurations[key].label,
                    "on_front_probability": configurations[key].probability,
                    "iterations": band.iterations.tolist(),
                    "mean": band.mean.tolist(),
                    "low": band.low.tolist(),
                    "high": band.high.tolist(),
                    "seeds": band.seeds.tolist(),
                    "convergence": asdict(self.convergence[key]),
                    "runs": {run_id: asdict(value) for run_id, value in self.run_convergence[key].items()},
                }
                for key, band in self.bands.items()
            ],
        }


def learning_curves(front: IntervalFront) -> LearningCurves:
    """Read the y metric's history of every run of ``front`` from MLflow and summarise it per configuration."""
    uri, metric = front.runs.scope.tracking_uri, front.runs.y
    bands, convergence, per_run = {}, {}, {}
    with mlflow_call(uri):
        client = MlflowClient(uri)
        for configuration in front.configurations:
            curves = {}
            for point in configuration.runs:
                history = sorted(client.get_metric_history(point.run_id, metric), key=lambda m: m.step)
                curves[point.run_id] = ([m.step for m in history], [m.value for m in history])
            band = curve_band(list(curves.values()))
            bands[configuration.key] = band
            convergence[configuration.key] = rising_at_end(band.iterations, band.mean)
            per_run[configuration.key] = {run_id: rising_at_end(*curve) for run_id, curve in curves.items()}
    ranking = ranking_change({key: (band.iterations, band.mean) for key, band in bands.items()})
    return LearningCurves(front, bands, convergence, per_run, ranking)


def curve_paths(curves: LearningCurves, out: Path) -> tuple[Path, Path, Path]:
    stem = f"{slug(curves.front.runs.dataset)}_{slug(curves.front.runs.y)}_learning_curves"
    return out / f"{stem}.csv", out / f"{stem}.json", out / f"{stem}.png"


def write_learning_curves(curves: LearningCurves, out: Path) -> list[Path]:
    """CSV (one row per configuration and evaluation), JSON (bands, flags, ranking) and the plot."""
    from pipeline.results.uncertainty_plots import plot_learning_curves

    csv_path, json_path, png_path = curve_paths(curves, out)
    labels = {c.key: c.label for c in curves.front.configurations}
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["config_key", "label", "iteration", "mean", "low", "high", "seeds"])
    for key, band in curves.bands.items():
        for values in zip(band.iterations, band.mean, band.low, band.high, band.seeds, strict=True):
            writer.writerow([key, labels[key], *(round(float(value), 4) for value in values)])
    write_atomic(csv_path, rows.getvalue().encode())
    write_atomic(json_path, (json.dumps(curves.to_dict(), indent=2) + "\n").encode())
    plot_learning_curves(curves.bands, png_path, curves.front.runs.y, curves.rising(), labels)
    return [csv_path, json_path, png_path]


def format_convergence(curves: LearningCurves) -> str:
    """Which configurations still rise at the end, and whether the last evaluation reordered them."""
    labels = {c.key: c.label for c in curves.front.configurations}
    on_front = {c.key for c in curves.front.configurations if (c.probability or 0) > 0}
    rising = curves.rising()
    lines = [f"learning curves ({curves.front.runs.y}, mean over seeds):"]
    for key in rising:
        slope = curves.convergence[key].slope_per_1k
        where = " (on the front in some resamples)" if key in on_front else ""
        lines.append(f"  still rising at the end: {labels[key]}{where}, {slope:+.1f} points per 1k iterations")
    if not rising:
        lines.append(
            f"  none still rising (slope of the last {RISING_WINDOW} evaluations in the second half "
            f"<= {RISING_SLOPE_PER_1K}/1k)"
        )
    ranking = curves.ranking
    if ranking.tau is not None:
        before, last = ranking.iterations
        verdict = "changed" if ranking.changed else "unchanged"
        lines.append(
            f"  ranking of {ranking.configurations} configurations at iteration {last:g} vs {before:g}: {verdict} "
            f"(Kendall's tau-b {ranking.tau:.2f})"
        )
    if rising and on_front & set(rising):
        lines.append("  the front is read at a budget where some of its members are still learning")
    return "\n".join(lines)
