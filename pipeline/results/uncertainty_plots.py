"""Pictures of ``pipeline.results.uncertainty``'s results: learning curves with their band over seeds, and a front with
interval whiskers and points shaded by front probability. Matplotlib through its Agg canvas (no pyplot state);
PNGs written atomically."""

from __future__ import annotations

import io
from collections.abc import Collection, Mapping
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from pipeline.files import write_atomic
from pipeline.results.convergence import CurveBand
from pipeline.results.front import pareto_front
from pipeline.results.uncertainty import Estimate


def _save(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_atomic(path, buffer.getvalue())


def plot_learning_curves(
    bands: Mapping[str, CurveBand],
    path: Path,
    metric: str = "mIoU",
    rising: Collection[str] = (),
    labels: Mapping[str, str] | None = None,
) -> None:
    """One line per configuration (the mean over its seeds) with its min-max band over the seeds shaded; the
    configurations in ``rising`` (still rising at the end) are named so in the legend."""
    figure = Figure(figsize=(9, 5.5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (key, band) in enumerate(bands.items()):
        colour = f"C{index % 10}"
        seeds = int(band.seeds.max()) if band.seeds.size else 0
        name = f"{(labels or {}).get(key, key)} ({seeds} seed{'' if seeds == 1 else 's'})"
        name += ", still rising" if key in rising else ""
        axes.plot(band.iterations, band.mean, color=colour, linewidth=1.6, marker=".", label=name)
        axes.fill_between(band.iterations, band.low, band.high, color=colour, alpha=0.18, linewidth=0)
    if not bands:
        axes.text(0.5, 0.5, "no learning curve", ha="center", va="center")
    axes.set_xlabel("iteration")
    axes.set_ylabel(f"val {metric} (%)")
    axes.set_title(f"val {metric} vs iteration: mean over seeds, band = min to max over seeds", fontsize=11)
    axes.grid(True, color="0.88")
    if bands:
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    _save(figure, path)


def plot_front_uncertainty(
    costs: Mapping[str, float | None],
    estimates: Mapping[str, Estimate],
    probabilities: Mapping[str, float | None],
    path: Path,
    x_label: str,
    y_label: str,
    labels: Mapping[str, str] | None = None,
    rising: Collection[str] = (),
    title: str = "",
) -> None:
    """Every configuration with a cost and a value: its interval as a vertical whisker, its point coloured by its
    front probability (hollow grey when it has none: no per-image counts), the front of the point values as a
    post-step line, and each point labelled with its name, probability and ``rising`` when still rising."""
    keys = [k for k in costs if costs[k] is not None and estimates.get(k) and estimates[k].value is not None]
    figure = Figure(figsize=(10, 6), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    shades = ScalarMappable(Normalize(0.0, 1.0), "viridis")
    for key in keys:
        x, estimate, p = costs[key], estimates[key], probabilities.get(key)
        if estimate.has_interval:
            axes.errorbar(
                x,
                estimate.value,
                yerr=[[estimate.value - estimate.low], [estimate.high - estimate.value]],
                color="0.35",
                linewidth=1,
                capsize=3,
                zorder=1,
            )
        if p is None:
            axes.scatter(x, estimate.value, s=45, facecolors="none", edgecolors="0.5", zorder=2)
        else:
            axes.scatter(x, estimate.value, s=55, color=shades.to_rgba(p), edgecolors="black", linewidths=0.6, zorder=2)
        note = "no interval" if p is None else f"p={p:.2f}"
        note += ", rising" if key in rising else ""
        axes.annotate(
            f"{(labels or {}).get(key, key)} ({note})",
            (x, estimate.value),
            xytext=(5, 5),
            textcoords="offset points",
            fontsize=7,
        )
    if keys:
        xs, ys = [costs[k] for k in keys], [estimates[k].value for k in keys]
        front = sorted((xs[i], ys[i]) for i in pareto_front(xs, ys))
        axes.step(
            [x for x, _ in front] + [max(xs)],
            [y for _, y in front] + [front[-1][1]],
            where="post",
            color="0.25",
            linewidth=1.2,
            zorder=0,
            label="front of the point values",
        )
        axes.legend(loc="lower right", fontsize=8, frameon=False)
        axes.margins(x=0.12, y=0.12)
    else:
        axes.text(0.5, 0.5, "no configuration has both a cost and a value", ha="center", va="center")
    figure.colorbar(shades, ax=axes, label="front probability (share of bootstrap resamples on the front)")
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.grid(True, color="0.88")
    axes.set_axisbelow(True)
    axes.set_title(title or f"{y_label} vs {x_label}: whiskers = bootstrap interval", fontsize=11)
    _save(figure, path)
