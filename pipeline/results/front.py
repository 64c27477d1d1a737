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
from; the latest analysis of a run wins). Where the plots, CSV files and JSON go: ``pipeline.results.publish``.
Bookkeeping runs (``nrd_bench.kind`` ``sweep`` or ``pareto``, and any run that has child runs) are never points.
"""

from __future__ import annotations

import bisect
import csv
import io
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from pipeline.files import write_atomic
from pipeline.names import (
    GMACS_MODEL,
    MIOU,
    PARETO_AXES_TAG,
    PARETO_OPTIMAL_TAG,
    PARETO_RANK_TAG,
)
from pipeline.results.catalogue import RunPoint, Scope, read_catalogue, run_point, usable
from pipeline.training.tracking import mlflow_call


def pareto_ranks(xs: Sequence[float | None], ys: Sequence[float | None]) -> list[int | None]:
    """Non-dominated sorting rank of each point ``(xs[i], ys[i])``, x minimised and y maximised: 0 for the front,
    k for the front once ranks < k are removed, None where a coordinate is None or NaN (rules in the module
    docstring). O(n log n)."""
    if len(xs) != len(ys):
        raise ValueError(f"pareto_ranks: {len(xs)} x values but {len(ys)} y values")
    comparable = [usable(x) and usable(y) for x, y in zip(xs, ys, strict=True)]
    distinct = {(float(x), float(y)) for x, y, ok in zip(xs, ys, comparable, strict=True) if ok}
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
    return [rank_of[float(x), float(y)] if ok else None for x, y, ok in zip(xs, ys, comparable, strict=True)]


def pareto_front(xs: Sequence[float | None], ys: Sequence[float | None]) -> list[int]:
    """Indices (ascending) of the non-dominated points, x minimised and y maximised; exact duplicates of a front
    point are on the front too, points with a None or NaN coordinate never are."""
    return [index for index, rank in enumerate(pareto_ranks(xs, ys)) if rank == 0]


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


def collect_runs(
    tracking_uri: str,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    dataset: str | None = None,
    x: str = GMACS_MODEL,
    y: str = MIOU,
    *,
    page_size: int = 1000,
    flags: tuple[str, str] = ("--x", "--y"),
) -> dict[str, DatasetRuns]:
    """The finished training runs of an experiment (or of a parent run's children, see ``read_catalogue``), grouped
    by their ``dataset`` tag (only ``dataset`` when given) and ranked on ``x`` (minimised) and ``y`` (maximised).
    Runs lacking x or y are kept in each group's ``missing``.

    Raises ``UnknownNameError`` for an unknown experiment, parent run, data set, or an x/y metric that no finished
    run has (listing the ones that exist), and ``NoFinishedRunsError`` when nothing has finished."""
    catalogue = read_catalogue(tracking_uri, experiment, parent_run_id, dataset, page_size=page_size)
    for flag, name in zip(flags, (x, y), strict=True):  # the command's own flags, in the error
        catalogue.require_metric(name, f"{flag} metric")
    groups: dict[str, DatasetRuns] = {}
    for name in catalogue.datasets():
        runs = catalogue.of_dataset(name)
        points = [run_point(run, x, y) for run in runs if run.info.status == "FINISHED"]
        groups[name] = DatasetRuns(
            dataset=name,
            scope=catalogue.scope,
            x=x,
            y=y,
            points=[point for point in points if point.x is not None and point.y is not None],
            missing=[point for point in points if point.x is None or point.y is None],
            unfinished=[run_point(run, x, y) for run in runs if run.info.status != "FINISHED"],
        )
    return groups


# ------------------------------------------------------------------------------------------------------- reports
def format_table(runs: DatasetRuns) -> str:
    """The ranked runs of one data set as a text table (``*`` marks the front), then the runs lacking a metric and
    the unfinished ones."""
    hyperparameters = runs.varying_hyperparameters()
    header = ["run", "decoder", "encoder", *hyperparameters, runs.x, runs.y, "front", "rank"]
    rows = [
        [
            point.run_name,
            point.decoder,
            point.encoder,
            *(point.hyperparameters.get(name, "-") for name in hyperparameters),
            _number(point.x),
            _number(point.y),
            "*" if point.on_front else "",
            str(point.rank),
        ]
        for point in runs.points
    ]
    inputs = ", ".join(runs.eval_inputs)
    lines = [
        f"{runs.dataset}: {count(runs.points, 'run')} by {runs.x} (lower is better) and {runs.y} (higher is better), "
        f"cost counted at {'MIXED input sizes ' if len(runs.eval_inputs) > 1 else 'input '}{inputs}; {runs.scope}",
        layout_table(header, rows, right_aligned={runs.x, runs.y, "rank"}),
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
    table = layout_table(["decoder", "encoder", *groups], rows)
    return f"(decoder, encoder) pairs on each data set's Pareto front:\n{table}"


def layout_table(header: list[str], rows: list[list[str]], right_aligned: Collection[str] = ()) -> str:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(width) if name in right_aligned else cell.ljust(width)
            for cell, width, name in zip(row, widths, header, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if row is header:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def write_csv(runs: DatasetRuns, path: Path) -> None:
    """Every run of the data set, ranked ones first, missing metrics as empty cells; written atomically."""
    hyperparameters = runs.varying_hyperparameters()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(
        [
            "dataset",
            "run_id",
            "run_name",
            "decoder",
            "encoder",
            *hyperparameters,
            "eval_input",
            runs.x,
            runs.y,
            "on_front",
            "rank",
        ]
    )
    for point in runs.points + runs.missing:
        writer.writerow(
            [
                runs.dataset,
                point.run_id,
                point.run_name,
                point.decoder,
                point.encoder,
                *(point.hyperparameters.get(name, "") for name in hyperparameters),
                point.eval_input,
                "" if point.x is None else point.x,
                "" if point.y is None else point.y,
                str(point.on_front).lower(),
                "" if point.rank is None else point.rank,
            ]
        )
    write_atomic(path, text.getvalue().encode())


def to_json(groups: dict[str, DatasetRuns]) -> dict:
    """``{dataset: {"front": [run ids], "points": [{run_id, run_name, decoder, encoder, x, y, rank, on_front}]}}``."""
    return {name: runs.to_dict() for name, runs in groups.items()}


def count(items: Sequence, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# ------------------------------------------------------------------------------------------------------- MLflow
def tag_runs(groups: dict[str, DatasetRuns]) -> int:
    """Set ``pareto_optimal``, ``pareto_rank`` and ``pareto_axes`` on every finished run of ``groups``, the first
    two also as metrics (1/0 and the rank; one request per run); returns the number of runs tagged."""
    tagged = 0
    for runs in groups.values():
        axes = f"{runs.x} min, {runs.y} max"
        with mlflow_call(runs.scope.tracking_uri):
            client = MlflowClient(runs.scope.tracking_uri)
            for point in runs.points + runs.missing:
                tags = {
                    PARETO_OPTIMAL_TAG: str(point.on_front).lower(),
                    PARETO_RANK_TAG: str(point.rank).lower(),
                    PARETO_AXES_TAG: axes,
                }
                # also as metrics, which sort and filter as numbers in the UI (the tag "10" sorts before "2")
                numbers = {PARETO_OPTIMAL_TAG: float(point.on_front)}
                numbers |= {PARETO_RANK_TAG: float(point.rank)} if point.rank is not None else {}
                now = int(time.time() * 1000)
                client.log_batch(
                    point.run_id,
                    metrics=[Metric(key, value, now, 0) for key, value in numbers.items()],
                    tags=[RunTag(key, value) for key, value in tags.items()],
                )
                tagged += 1
    return tagged
