"""Pictures and files of a Pareto front: the plot (PNG), and the CSV and JSON written beside it."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import Bbox

from pipeline.files import write_atomic
from pipeline.results.catalogue import RunPoint, slug
from pipeline.results.front import DatasetRuns, count, to_json, write_csv

AXIS_LABELS = {  # {input}: the evaluation input size the cost was counted at, or "mixed input sizes"
    "gmacs_model": "model GMACs (MACs, {input})",
    "gmacs_decoder": "decoder GMACs (MACs, {input})",
    "params_m": "parameters (M)",
    "latency_p50_ms": "median latency (ms, {input})",
    "mIoU": "val mIoU (%)",
    "mBIoU": "val boundary mIoU (%)",
    "trimap_mIoU_4px": "val trimap mIoU, 4 px band (%)",
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
MAX_LISTED = 8  # runs lacking a metric named on the plot
# where a front label goes, tried in order: offset (points) from its point, alignment. Up-left of a front point is
# empty (a point there would dominate it), so that comes first.
LABEL_PLACES = tuple(
    (dx * 6, dy * step, "right" if dx < 0 else "left", "bottom" if dy > 0 else "top")
    for step in (6, 16, 26)
    for dx, dy in ((-1, 1), (1, -1), (-1, -1), (1, 1))
)


def plot_front(runs: DatasetRuns, path: Path) -> None:
    """PNG of one data set: every ranked run as a point (colour = decoder, marker = encoder), the front as a
    post-step line (the best y reachable for a budget x) with its points labelled where the labels do not collide,
    the axes named with the input size the cost was counted at ("mixed input sizes" in the title when the runs
    disagree), and the runs lacking a metric listed beside the legend; written atomically."""
    inputs = runs.eval_inputs
    size = "mixed input sizes" if len(inputs) > 1 else f"input {inputs[0] if inputs else 'unknown'}"
    figure = Figure(figsize=(10, 6), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)  # this figure's own canvas: pyplot's global backend stays as it is
    axes = figure.add_subplot()
    if runs.points:
        _draw_points(axes, runs)
    else:
        axes.text(0.5, 0.5, f"no run has both {runs.x} and {runs.y}", ha="center", va="center")
    axes.grid(True, color="0.88")
    axes.set_axisbelow(True)
    axes.set_xlabel(AXIS_LABELS.get(runs.x, runs.x).format(input=size))
    axes.set_ylabel(AXIS_LABELS.get(runs.y, runs.y).format(input=size))
    title = f"{runs.dataset}: {runs.y} vs {runs.x}, {count(runs.points, 'run')}, {len(runs.front)} on the Pareto front"
    if len(inputs) > 1:
        title += f"\nmixed input sizes: {', '.join(inputs)} (costs not comparable)"
    axes.set_title(title, fontsize=11)
    if runs.missing:
        names = [point.run_name for point in runs.missing]
        shown = names[:MAX_LISTED] + ([f"+ {len(names) - MAX_LISTED} more"] if len(names) > MAX_LISTED else [])
        note = "\n".join([f"not plotted, lacking\n{runs.x} or {runs.y}:", *shown])
        axes.text(1.02, 0.0, note, transform=axes.transAxes, fontsize=8, color="0.3", va="bottom")
    figure.draw_without_rendering()  # settle the layout, then keep it: the labels are placed in pixels
    figure.set_layout_engine("none")
    if runs.points:
        _label_front(axes, runs)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_atomic(path, buffer.getvalue())


def _draw_points(axes: Axes, runs: DatasetRuns) -> None:
    decoders = sorted({point.decoder for point in runs.points})
    encoders = sorted({point.encoder for point in runs.points})
    colours = {name: f"C{index % 10}" for index, name in enumerate(decoders)}
    markers = {name: MARKERS[index % len(MARKERS)] for index, name in enumerate(encoders)}
    front = runs.front
    right = max(point.x for point in runs.points)  # the best y stays reachable with a larger budget
    axes.step(
        [p.x for p in front] + [right],
        [p.y for p in front] + [front[-1].y],
        where="post",
        color="0.25",
        linewidth=1.5,
        zorder=1,
    )
    for point in runs.points:
        axes.scatter(
            point.x,
            point.y,
            s=_marker_area(point),
            color=colours[point.decoder],
            marker=markers[point.encoder],
            alpha=1.0 if point.on_front else 0.55,
            edgecolors="black" if point.on_front else "none",
            linewidths=0.8,
            zorder=2,
        )
    axes.margins(x=0.12, y=0.12)
    handles = [Line2D([], [], color="0.25", linewidth=1.5, label="Pareto front")]
    handles += [Line2D([], [], linestyle="", marker="o", color=colours[name], label=name) for name in decoders]
    handles += [Line2D([], [], linestyle="", marker=markers[name], color="0.4", label=name) for name in encoders]
    legend = axes.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=9,
        frameon=False,
        title="decoder (colour)\nencoder (marker)",
        title_fontsize=9,
    )
    legend.get_title().set_multialignment("left")


def _marker_area(point: RunPoint) -> float:
    return 70 if point.on_front else 40  # points²


def _label_front(axes: Axes, runs: DatasetRuns) -> None:
    """Label each front point with its configuration (decoder/encoder and the settings given; its run name when that
    configuration is on the front twice), at the first of LABEL_PLACES where the label stays inside the axes and
    clear of the markers and earlier labels; at the first place when none is clear."""
    renderer = axes.figure.canvas.get_renderer()
    inside = axes.get_window_extent(renderer)
    taken = []  # pixel boxes of every marker, then of the labels placed
    for point, centre in zip(runs.points, axes.transData.transform([(p.x, p.y) for p in runs.points]), strict=True):
        radius = math.sqrt(_marker_area(point)) / 2 * axes.figure.dpi / 72  # marker sizes are in points
        taken.append(Bbox.from_extents(*(centre - radius), *(centre + radius)))
    front = runs.front
    pairs = [p.label for p in front]
    for point, pair in zip(front, pairs, strict=True):
        label = axes.annotate(
            point.run_name if pairs.count(pair) > 1 else pair,
            (point.x, point.y),
            xytext=(0, 0),
            textcoords="offset points",
            fontsize=8,
            zorder=3,
        )
        for dx, dy, ha, va in (*LABEL_PLACES, LABEL_PLACES[0]):  # none clear: the usual place after all
            label.set(position=(dx, dy), horizontalalignment=ha, verticalalignment=va)
            box = label.get_window_extent(renderer)
            clear = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            if clear and not any(box.overlaps(other) for other in taken):
                break
        taken.append(box)


def write_reports(groups: dict[str, DatasetRuns], out_dir: Path) -> dict[str, list[Path]]:
    """Write, per data set, ``<dataset>_<y>_vs_<x>.png`` and ``.csv``, and one ``pareto_<y>_vs_<x>.json`` holding
    ``{dataset: {"front": [...], "points": [...]}}``; returns the paths per data set (and ``"json"``)."""
    first = next(iter(groups.values()))
    axes = slug(f"{first.y}_vs_{first.x}")
    paths: dict[str, list[Path]] = {}
    for name, runs in groups.items():
        stem = out_dir / f"{slug(name)}_{axes}"
        paths[name] = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".csv")]
        plot_front(runs, paths[name][0])
        write_csv(runs, paths[name][1])
    paths["json"] = [out_dir / f"pareto_{axes}.json"]
    write_atomic(paths["json"][0], (json.dumps(to_json(groups), indent=2) + "\n").encode())
    return paths
