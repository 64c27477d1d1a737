"""The accuracy-vs-cost Pareto front of finished training runs, read from MLflow.

Which decoder, at which size, on which encoder, gives the best accuracy for the compute one can afford, on one's own
data set? Each finished training run is a point: ``x`` a cost metric (default ``gmacs_model``), to minimise, and ``y``
an accuracy metric (default ``mIoU``), to maximise; runs are compared within their data set (the ``dataset`` tag).

Rules of the comparison (``pareto_ranks``, ``pareto_front``):

- Point a *dominates* point b when ``a.x <= b.x`` and ``a.y >= b.y`` with at least one of the two strict. Equal
  values compare exactly (no tolerance). Exact duplicates therefore do not dominate each other and share their rank;
  a point tied with another in one coordinate and worse in the other is dominated.
- Non-dominated sorting: rank 0 is the front (points nothing dominates); rank k is the front of what is left once
  ranks 0..k-1 are removed. Equivalently, a point's rank is one more than the highest rank among the points that
  dominate it.
- A point with a missing (None) or NaN coordinate is compared with nothing: its rank is None.

What is written back to MLflow (unless told not to): every finished run in scope gets the tags ``pareto_optimal``
(``true``/``false``), ``pareto_rank`` (the rank; ``none`` when the run lacks x or y, which also makes it
``pareto_optimal=false``) and ``pareto_axes`` (e.g. ``gmacs_model min, mIoU max``: the comparison the two tags come
from; the latest analysis of a run wins). The plots, CSV files and JSON go, as artifacts under ``pareto/``, to the
sweep's parent run when a parent run is analysed, else to one run named ``pareto`` in the experiment (tagged
``nrd_bench.kind=pareto``, created once and reused). Bookkeeping runs (``nrd_bench.kind`` ``sweep`` or ``pareto``,
and any run that has child runs) are never points.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import io
import json
import math
import re
import sys
import urllib.parse
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.transforms import Bbox
from mlflow import MlflowClient
from mlflow.entities import Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from nrd.errors import NRDBenchError, UnknownNameError
from pipeline.config import RunSettings
from pipeline.files import write_atomic
from pipeline.tracking import PARENT_RUN_TAG, _mlflow_call, create_run

KIND_TAG = "nrd_bench.kind"
BOOKKEEPING_KINDS = ("sweep", "pareto")
PARETO_RUN_NAME = "pareto"
ARTIFACT_DIR = "pareto"
NO_DATASET = "(no dataset tag)"
HYPERPARAMETER_PREFIXES = {"model.decoder_kwargs.": "", "model.output_stride": "output_stride"}
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


class NoFinishedRunsError(NRDBenchError):
    """There is no finished training run where the analysis looked; the message says where that was."""


def _usable(value: float | None) -> bool:
    return value is not None and not math.isnan(float(value))


def pareto_ranks(xs: Sequence[float | None], ys: Sequence[float | None]) -> list[int | None]:
    """Non-dominated sorting rank of each point ``(xs[i], ys[i])``, x minimised and y maximised: 0 for the front,
    k for the front once ranks < k are removed, None where a coordinate is None or NaN (rules in the module
    docstring). O(n log n)."""
    if len(xs) != len(ys):
        raise ValueError(f"pareto_ranks: {len(xs)} x values but {len(ys)} y values")
    usable = [_usable(x) and _usable(y) for x, y in zip(xs, ys, strict=True)]
    distinct = {(float(x), float(y)) for x, y, ok in zip(xs, ys, usable, strict=True) if ok}
    # Scan the distinct points by increasing x, and by decreasing y among equal x. Every point scanned before p has
    # x <= p.x and differs from p, so it dominates p exactly when its y >= p.y. best[k], the highest y among the
    # scanned points of rank k, never increases with k (each rank-k point is dominated by a rank-(k-1) point scanned
    # earlier), so p's rank is the first k with best[k] < p.y: p is dominated by some point of every lower rank.
    negated_best: list[float] = []  # -best[k], non-decreasing in k, so bisect finds that k
    rank_of: dict[tuple[float, float], int] = {}
    for x, y in sorted(distinct, key=lambda point: (point[0], -point[1])):
        rank = bisect.bisect_right(negated_best, -y)
        if rank == len(negated_best):
            negated_best.append(-y)
        else:
            negated_best[rank] = -y
        rank_of[x, y] = rank
    return [rank_of[float(x), float(y)] if ok else None for x, y, ok in zip(xs, ys, usable, strict=True)]


def pareto_front(xs: Sequence[float | None], ys: Sequence[float | None]) -> list[int]:
    """Indices (ascending) of the non-dominated points, x minimised and y maximised; exact duplicates of a front
    point are on the front too, points with a None or NaN coordinate never are."""
    return [index for index, rank in enumerate(pareto_ranks(xs, ys)) if rank == 0]


@dataclass(frozen=True)
class Scope:
    """Where the runs are read: one experiment, or the child runs of one parent (sweep) run in it."""

    tracking_uri: str
    experiment_id: str
    experiment_name: str
    parent_run_id: str | None = None

    def __str__(self) -> str:
        where = f"experiment {self.experiment_name!r} (id {self.experiment_id}) at {self.tracking_uri}"
        return f"the child runs of run {self.parent_run_id} in {where}" if self.parent_run_id else where


@dataclass
class RunPoint:
    """One training run as a point. ``x``/``y`` are None when the run lacks the metric; ``rank`` is its non-dominated
    sorting rank among the runs of its data set (0 = on the front; None when x or y is missing).
    ``hyperparameters`` holds the decoder keyword arguments and ``output_stride``, as logged (strings)."""

    run_id: str
    run_name: str
    status: str
    decoder: str
    encoder: str
    eval_input: str
    hyperparameters: dict[str, str]
    x: float | None
    y: float | None
    rank: int | None = None

    @property
    def on_front(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict:
        keys = ("run_id", "run_name", "decoder", "encoder", "x", "y", "rank")
        return {key: getattr(self, key) for key in keys} | {"on_front": self.on_front}


@dataclass
class DatasetRuns:
    """The finished runs of one data set in one scope, ranked on creation. ``points`` have both metrics, sorted by
    rank then x; ``missing`` lack x or y (never ranked, never dropped); ``unfinished`` are the runs of the data set
    that are not FINISHED (running, failed, killed), only counted."""

    dataset: str
    scope: Scope
    x: str
    y: str
    points: list[RunPoint]
    missing: list[RunPoint] = field(default_factory=list)
    unfinished: list[RunPoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        ranks = pareto_ranks([point.x for point in self.points], [point.y for point in self.points])
        for point, rank in zip(self.points, ranks, strict=True):
            point.rank = rank
        self.points.sort(key=lambda point: (point.rank, point.x, -point.y, point.run_name))

    @property
    def front(self) -> list[RunPoint]:
        """The front, by increasing x."""
        return [point for point in self.points if point.on_front]

    @property
    def eval_inputs(self) -> list[str]:
        """The distinct evaluation input sizes (``eval_input`` tags) of the ranked runs; more than one means the
        costs were counted at different sizes."""
        return sorted({point.eval_input for point in self.points})

    def varying_hyperparameters(self) -> list[str]:
        """The hyperparameters (decoder kwargs, output_stride) taking more than one value among the runs."""
        values: dict[str, set[str]] = {}
        for point in self.points + self.missing:
            for name, value in point.hyperparameters.items():
                values.setdefault(name, set()).add(value)
        return sorted(name for name, seen in values.items() if len(seen) > 1)

    def to_dict(self) -> dict:
        """``{"front": [run ids by increasing x], "points": [every run, the missing ones last]}``."""
        return {
            "front": [point.run_id for point in self.front],
            "points": [point.to_dict() for point in self.points + self.missing],
        }


def find_scope(tracking_uri: str, experiment: str | None = None, parent_run_id: str | None = None) -> Scope:
    """The experiment (by name; default the training default ``nrd-bench``) or the parent run (by id) to read.
    Unknown names raise ``UnknownNameError`` listing the experiments, or the parent runs, that exist."""
    store = _local_store(tracking_uri)
    if store is not None and not store.exists():  # MLflow would create an empty store there
        raise NoFinishedRunsError(f"no MLflow store at {store} (tracking URI {tracking_uri}); pass --tracking-uri "
                                  "or set MLFLOW_TRACKING_URI")  # fmt: skip
    with _mlflow_call(tracking_uri):
        client = MlflowClient(tracking_uri)
        if parent_run_id:
            try:
                parent = client.get_run(parent_run_id)
            except MlflowException as error:
                if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                    raise
                raise UnknownNameError(f"parent run at {tracking_uri}", parent_run_id, _parent_runs(client)) from None
            found = client.get_experiment(parent.info.experiment_id)
            if experiment and found.name != experiment:
                raise NRDBenchError(
                    f"run {parent_run_id} is in experiment {found.name!r}, not {experiment!r}; drop --experiment"
                )
            return Scope(tracking_uri, found.experiment_id, found.name, parent_run_id)
        name = experiment or RunSettings.experiment
        found = client.get_experiment_by_name(name)
        if found is None or found.lifecycle_stage == "deleted":
            names = [item.name for item in _pages(client.search_experiments)]
            raise UnknownNameError(f"experiment at {tracking_uri}", name, names)
        return Scope(tracking_uri, found.experiment_id, found.name)


def collect_runs(
    tracking_uri: str,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    dataset: str | None = None,
    x: str = "gmacs_model",
    y: str = "mIoU",
    *,
    page_size: int = 1000,
) -> dict[str, DatasetRuns]:
    """The finished training runs of an experiment (or of a parent run's children), grouped by their ``dataset`` tag
    (only ``dataset`` when given) and ranked on ``x`` (minimised) and ``y`` (maximised). Runs lacking x or y are kept
    in each group's ``missing``. Reads every page of ``search_runs`` (``page_size`` runs a request).

    Raises ``UnknownNameError`` for an unknown experiment, parent run, data set, or an x/y metric that no finished
    run has (listing the ones that exist), and ``NoFinishedRunsError`` when nothing has finished."""
    scope = find_scope(tracking_uri, experiment, parent_run_id)
    with _mlflow_call(tracking_uri):
        client = MlflowClient(tracking_uri)
        query = f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'" if parent_run_id else ""
        runs = list(_pages(client.search_runs, [scope.experiment_id], query, ViewType.ACTIVE_ONLY, page_size))
    parents = {run.data.tags.get(PARENT_RUN_TAG) for run in runs}
    runs = [
        run for run in runs
        if run.info.run_id not in parents and run.data.tags.get(KIND_TAG) not in BOOKKEEPING_KINDS
    ]  # fmt: skip
    finished = [run for run in runs if run.info.status == "FINISHED"]
    if not finished:
        statuses = Counter(run.info.status for run in runs)
        seen = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())) or "none at all"
        raise NoFinishedRunsError(f"no finished training run in {scope}; training runs seen: {seen}")
    if dataset is not None:
        datasets = {_dataset(run) for run in finished}
        if dataset not in datasets:
            raise UnknownNameError("dataset (tag of the finished runs)", dataset, datasets)
        runs = [run for run in runs if _dataset(run) == dataset]
        finished = [run for run in finished if _dataset(run) == dataset]
    metrics = {key for run in finished for key in run.data.metrics}  # that some finished run has
    for axis, name in (("x", x), ("y", y)):
        if name not in metrics:
            raise UnknownNameError(f"--{axis} metric", name, metrics)
    groups: dict[str, DatasetRuns] = {}
    for name in sorted({_dataset(run) for run in finished}):
        points = [_point(run, x, y) for run in finished if _dataset(run) == name]
        groups[name] = DatasetRuns(
            dataset=name,
            scope=scope,
            x=x,
            y=y,
            points=[point for point in points if point.x is not None and point.y is not None],
            missing=[point for point in points if point.x is None or point.y is None],
            unfinished=[_point(run, x, y) for run in runs if run.info.status != "FINISHED" and _dataset(run) == name],
        )
    return groups


def _local_store(tracking_uri: str) -> Path | None:
    """The SQLite file or folder of a local tracking URI; None for a server."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///").partition("?")[0])
    if tracking_uri.startswith("file:"):
        return Path(urllib.parse.urlparse(tracking_uri).path)
    return None if ":" in tracking_uri else Path(tracking_uri)


def _pages(search, *args) -> Iterator:
    """Every item of a paginated MLflow search (search_runs, search_experiments), following the page tokens."""
    token = None
    while True:
        page = search(*args, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _parent_runs(client: MlflowClient) -> list[str]:
    """``run id (run name)`` of the sweep runs and the parents of the latest 1000 child runs, in every experiment."""
    experiment_ids = [item.experiment_id for item in _pages(client.search_experiments)]
    sweeps = client.search_runs(experiment_ids, f"tags.`{KIND_TAG}` = 'sweep'", max_results=1000)
    children = client.search_runs(experiment_ids, f"tags.`{PARENT_RUN_TAG}` LIKE '%'", max_results=1000)
    names = {run.info.run_id: run.info.run_name for run in sweeps}
    for run_id in {child.data.tags[PARENT_RUN_TAG] for child in children} - set(names):
        try:
            names[run_id] = client.get_run(run_id).info.run_name
        except MlflowException:
            names[run_id] = "deleted"
    return [f"{run_id} ({name})" for run_id, name in names.items()]


def _dataset(run: Run) -> str:
    return run.data.tags.get("dataset") or NO_DATASET


def _point(run: Run, x: str, y: str) -> RunPoint:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    hyperparameters = {}
    for key, value in params.items():
        for prefix, name in HYPERPARAMETER_PREFIXES.items():
            if key.startswith(prefix):
                hyperparameters[name or key.removeprefix(prefix)] = value
    return RunPoint(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id,
        status=run.info.status,
        decoder=tags.get("decoder") or params.get("model.decoder", "?"),
        encoder=tags.get("encoder") or params.get("model.encoder", "?"),
        eval_input=tags.get("eval_input", "unknown"),
        hyperparameters=hyperparameters,
        x=metrics[x] if _usable(metrics.get(x)) else None,
        y=metrics[y] if _usable(metrics.get(y)) else None,
    )


# ------------------------------------------------------------------------------------------------------- reports
def format_table(runs: DatasetRuns) -> str:
    """The ranked runs of one data set as a text table (``*`` marks the front), then the runs lacking a metric and
    the unfinished ones."""
    hyperparameters = runs.varying_hyperparameters()
    header = ["run", "decoder", "encoder", *hyperparameters, runs.x, runs.y, "front", "rank"]
    rows = [
        [point.run_name, point.decoder, point.encoder,
         *(point.hyperparameters.get(name, "-") for name in hyperparameters),
         _number(point.x), _number(point.y), "*" if point.on_front else "", str(point.rank)]
        for point in runs.points
    ]  # fmt: skip
    inputs = ", ".join(runs.eval_inputs)
    lines = [
        f"{runs.dataset}: {_count(runs.points, 'run')} by {runs.x} (lower is better) and {runs.y} (higher is better), "
        f"cost counted at {'MIXED input sizes ' if len(runs.eval_inputs) > 1 else 'input '}{inputs}; {runs.scope}",
        _layout(header, rows, right_aligned={runs.x, runs.y, "rank"}),
    ]
    for point in runs.missing:
        lacks = " and ".join(name for name, value in ((runs.x, point.x), (runs.y, point.y)) if value is None)
        lines.append(f"not ranked, lacks {lacks}: {point.run_name} ({point.run_id})")
    if runs.unfinished:
        listed = ", ".join(f"{point.run_name} ({point.status})" for point in runs.unfinished)
        lines.append(f"not counted, not finished: {listed}")
    return "\n".join(lines)


def format_summary(groups: dict[str, DatasetRuns]) -> str:
    """Across data sets: for each (decoder, encoder) pair, whether one of its runs is on each data set's front
    (``front``), else its best rank there (``rank k``), ``no metric`` when its runs lack x or y, ``-`` when absent."""
    pairs = sorted({(point.decoder, point.encoder) for runs in groups.values() for point in runs.points + runs.missing})
    rows = []
    for pair in pairs:
        row = list(pair)
        for runs in groups.values():
            ranks = [point.rank for point in runs.points if (point.decoder, point.encoder) == pair]
            lacking = any((point.decoder, point.encoder) == pair for point in runs.missing)
            if ranks:
                row.append("front" if min(ranks) == 0 else f"rank {min(ranks)}")
            else:
                row.append("no metric" if lacking else "-")
        rows.append(row)
    table = _layout(["decoder", "encoder", *groups], rows)
    return f"(decoder, encoder) pairs on each data set's Pareto front:\n{table}"


def _layout(header: list[str], rows: list[list[str]], right_aligned: Collection[str] = ()) -> str:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.rjust(width) if name in right_aligned else cell.ljust(width)
                 for cell, width, name in zip(row, widths, header, strict=True)]  # fmt: skip
        lines.append("  ".join(cells).rstrip())
        if row is header:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def write_csv(runs: DatasetRuns, path: Path) -> None:
    """Every run of the data set, ranked ones first, missing metrics as empty cells; written atomically."""
    hyperparameters = runs.varying_hyperparameters()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["dataset", "run_id", "run_name", "decoder", "encoder", *hyperparameters, "eval_input",
                     runs.x, runs.y, "on_front", "rank"])  # fmt: skip
    for point in runs.points + runs.missing:
        writer.writerow([runs.dataset, point.run_id, point.run_name, point.decoder, point.encoder,
                         *(point.hyperparameters.get(name, "") for name in hyperparameters), point.eval_input,
                         "" if point.x is None else point.x, "" if point.y is None else point.y,
                         str(point.on_front).lower(), "" if point.rank is None else point.rank])  # fmt: skip
    write_atomic(path, text.getvalue().encode())


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
    title = f"{runs.dataset}: {runs.y} vs {runs.x}, {_count(runs.points, 'run')}, {len(runs.front)} on the Pareto front"
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
    axes.step([p.x for p in front] + [right], [p.y for p in front] + [front[-1].y], where="post",
              color="0.25", linewidth=1.5, zorder=1)  # fmt: skip
    for point in runs.points:
        axes.scatter(point.x, point.y, s=_marker_area(point), color=colours[point.decoder],
                     marker=markers[point.encoder], alpha=1.0 if point.on_front else 0.55,
                     edgecolors="black" if point.on_front else "none", linewidths=0.8, zorder=2)  # fmt: skip
    axes.margins(x=0.12, y=0.12)
    handles = [Line2D([], [], color="0.25", linewidth=1.5, label="Pareto front")]
    handles += [Line2D([], [], linestyle="", marker="o", color=colours[name], label=name) for name in decoders]
    handles += [Line2D([], [], linestyle="", marker=markers[name], color="0.4", label=name) for name in encoders]
    legend = axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, frameon=False,
                         title="decoder (colour)\nencoder (marker)", title_fontsize=9)  # fmt: skip
    legend.get_title().set_multialignment("left")


def _marker_area(point: RunPoint) -> float:
    return 70 if point.on_front else 40  # points²


def _label_front(axes: Axes, runs: DatasetRuns) -> None:
    """Label each front point with decoder/encoder (its run name when that pair is on the front twice), at the first
    of LABEL_PLACES where the label stays inside the axes and clear of the markers and earlier labels; at the
    first place when none is clear."""
    renderer = axes.figure.canvas.get_renderer()
    inside = axes.get_window_extent(renderer)
    taken = []  # pixel boxes of every marker, then of the labels placed
    for point, centre in zip(runs.points, axes.transData.transform([(p.x, p.y) for p in runs.points]), strict=True):
        radius = math.sqrt(_marker_area(point)) / 2 * axes.figure.dpi / 72  # marker sizes are in points
        taken.append(Bbox.from_extents(*(centre - radius), *(centre + radius)))
    front = runs.front
    pairs = [f"{p.decoder}/{p.encoder}" for p in front]
    for point, pair in zip(front, pairs, strict=True):
        label = axes.annotate(point.run_name if pairs.count(pair) > 1 else pair, (point.x, point.y), xytext=(0, 0),
                              textcoords="offset points", fontsize=8, zorder=3)  # fmt: skip
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
    axes = _slug(f"{first.y}_vs_{first.x}")
    paths: dict[str, list[Path]] = {}
    for name, runs in groups.items():
        stem = out_dir / f"{_slug(name)}_{axes}"
        paths[name] = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".csv")]
        plot_front(runs, paths[name][0])
        write_csv(runs, paths[name][1])
    paths["json"] = [out_dir / f"pareto_{axes}.json"]
    write_atomic(paths["json"][0], (json.dumps(to_json(groups), indent=2) + "\n").encode())
    return paths


def to_json(groups: dict[str, DatasetRuns]) -> dict:
    """``{dataset: {"front": [run ids], "points": [{run_id, run_name, decoder, encoder, x, y, rank, on_front}]}}``."""
    return {name: runs.to_dict() for name, runs in groups.items()}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def _count(items: Sequence, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# ------------------------------------------------------------------------------------------------------- MLflow
def tag_runs(groups: dict[str, DatasetRuns]) -> int:
    """Set ``pareto_optimal``, ``pareto_rank`` and ``pareto_axes`` on every finished run of ``groups`` (one request
    per run); returns the number of runs tagged."""
    tagged = 0
    for runs in groups.values():
        axes = f"{runs.x} min, {runs.y} max"
        with _mlflow_call(runs.scope.tracking_uri):
            client = MlflowClient(runs.scope.tracking_uri)
            for point in runs.points + runs.missing:
                tags = {"pareto_optimal": str(point.on_front).lower(), "pareto_rank": str(point.rank).lower(),
                        "pareto_axes": axes}  # fmt: skip
                client.log_batch(point.run_id, tags=[RunTag(key, value) for key, value in tags.items()])
                tagged += 1
    return tagged


def log_reports(scope: Scope, files: list[Path]) -> str:
    """Upload ``files`` under ``pareto/`` to the parent run of ``scope``, else to the experiment's ``pareto`` run
    (created on first use, tagged ``nrd_bench.kind=pareto``, reused afterwards); returns that run's id."""
    with _mlflow_call(scope.tracking_uri):
        client = MlflowClient(scope.tracking_uri)
        run_id = scope.parent_run_id
        if run_id is None:
            query = f"tags.`{KIND_TAG}` = 'pareto'"
            found = client.search_runs([scope.experiment_id], query, order_by=["attributes.start_time ASC"],
                                       max_results=1)  # fmt: skip
            run_id = found[0].info.run_id if found else None
        if run_id is None:
            run_id = create_run(scope.tracking_uri, scope.experiment_id, PARETO_RUN_NAME, tags={KIND_TAG: "pareto"})
        for path in files:
            client.log_artifact(run_id, str(path), ARTIFACT_DIR)
        if scope.parent_run_id is None:
            with contextlib.redirect_stdout(sys.stderr):  # MLflow prints the run's URL: keep stdout for our output
                client.set_terminated(run_id, "FINISHED")
    return run_id
