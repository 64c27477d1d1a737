"""Results tables: the best finished run per decoder × encoder, per data set, read from MLflow.

Selection (also written beside the tables as JSON, see ``criteria``): the runs are those of the run catalogue
(``pipeline.results.catalogue``: the experiment's training runs; sweep/pareto bookkeeping runs and runs with child
runs left out), grouped by their ``dataset`` tag, then by their ``decoder`` and ``encoder`` tags. Only FINISHED runs
that have the ranking metric (``mIoU``, the last value logged: the final evaluation) compete; the highest wins, ties
going to the run name, then the run id, in alphabetical order. Each winner is one row: its accuracy and cost metrics
(empty where the run lacks one), the input size its cost was counted at (``eval_input`` tag), the device it trained
and was timed on, the commit it ran, its run id, and how many runs competed.

Per data set ``report_<dataset>.csv`` (full-precision values) and ``report_<dataset>.md`` (rounded), and one
``report_criteria.json``, all written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient

from pipeline.files import write_atomic
from pipeline.names import COMMIT_TAG, DEVICE_TAG, EVAL_INPUT_TAG, MIOU, MIOU_MSFLIP
from pipeline.results.catalogue import RunPoint, Scope, read_catalogue, run_point, slug
from pipeline.training.tracking import mlflow_call

RANK_METRIC = MIOU
# The ms+flip evaluation's metric: logged by runs with data.eval_msflip, the column stays empty for the others.
MSFLIP_METRIC = MIOU_MSFLIP
COMMIT_CHARS = 12  # of the commit hash in the Markdown table (the CSV has it whole)


@dataclass(frozen=True)
class Column:
    """One column of the tables: ``name`` in the CSV, ``header`` in the Markdown, the run ``metric`` or ``tag`` it
    comes from (neither: filled by the report itself), and the decimals shown in the Markdown (None: text)."""

    name: str
    header: str
    metric: str | None = None
    tag: str | None = None
    digits: int | None = None


COLUMNS = (
    Column("dataset", "dataset"),
    Column("decoder", "decoder"),
    Column("encoder", "encoder"),
    Column("mIoU", "mIoU", metric=RANK_METRIC, digits=2),
    Column("mIoU_msflip", "mIoU ms+flip", metric=MSFLIP_METRIC, digits=2),
    Column("trimap_mIoU_4px", "trimap mIoU 4px", metric="trimap_mIoU_4px", digits=2),
    Column("mBIoU", "mBIoU", metric="mBIoU", digits=2),
    Column("gmacs_model", "GMACs model", metric="gmacs_model", digits=2),
    Column("gmacs_decoder", "GMACs decoder", metric="gmacs_decoder", digits=2),
    Column("eval_input", "input (NxCxHxW)", tag=EVAL_INPUT_TAG),
    Column("params_m", "params (M)", metric="params_m", digits=2),
    Column("latency_p50_ms", "latency p50 (ms)", metric="latency_p50_ms", digits=1),
    Column("device", "device", tag=DEVICE_TAG),
    Column("commit", "commit", tag=COMMIT_TAG),
    Column("run_id", "run id"),
    Column("run_name", "run name"),
    Column("competing_runs", "runs"),
)

SELECTION_SOURCES = {  # where the columns without a metric or tag come from
    "dataset": "tag dataset",
    "decoder": "tag decoder, else param model.decoder",
    "encoder": "tag encoder, else param model.encoder",
    "run_id": "the run's id",
    "run_name": "the run's name",
    "competing_runs": "finished runs of the decoder x encoder pair with the ranking metric",
}


@dataclass
class DatasetReport:
    """The rows of one data set (column name → value, None where missing; sorted by decoder then encoder), the
    finished runs lacking the ranking metric, and the runs that are not finished (neither competes)."""

    dataset: str
    rows: list[dict[str, object]]
    lacking: list[RunPoint] = field(default_factory=list)
    unfinished: list[RunPoint] = field(default_factory=list)

    @property
    def finished_runs(self) -> int:
        return sum(row["competing_runs"] for row in self.rows) + len(self.lacking)


def best_points(points: list[RunPoint]) -> list[tuple[RunPoint, int]]:
    """The winning run of each (decoder, encoder) pair of a data set with the number of runs that competed, sorted
    by decoder then encoder. The runs compete on ``y`` (the ranking metric, which every point has)."""
    pairs: dict[tuple[str, str], list[RunPoint]] = {}
    for point in points:
        pairs.setdefault((point.decoder, point.encoder), []).append(point)
    winners = []
    for pair in sorted(pairs):
        candidates = sorted(pairs[pair], key=lambda point: (-point.y, point.run_name, point.run_id))
        winners.append((candidates[0], len(candidates)))
    return winners


def collect_report(
    tracking_uri: str, experiment: str | None = None, dataset: str | None = None
) -> tuple[Scope, dict[str, DatasetReport]]:
    """Read the finished runs of ``experiment`` (default nrd-bench), only those of ``dataset`` when given, and
    build each data set's rows (the selection rules are in the module docstring). The errors of ``collect_runs``
    (unknown experiment or data set, nothing finished, no run with mIoU) pass through."""
    catalogue = read_catalogue(tracking_uri, experiment, dataset=dataset)
    catalogue.require_metric(RANK_METRIC, "ranking metric (no finished run has it)")
    reports = {}
    with mlflow_call(tracking_uri):
        client = MlflowClient(tracking_uri)
        for name in catalogue.datasets():
            runs = catalogue.of_dataset(name)
            points = [run_point(run, None, RANK_METRIC) for run in runs if run.info.status == "FINISHED"]
            ranked = [point for point in points if point.y is not None]
            lacking = [point for point in points if point.y is None]
            unfinished = [run_point(run, None, RANK_METRIC) for run in runs if run.info.status != "FINISHED"]
            rows = []
            for point, competing in best_points(ranked):
                data = client.get_run(point.run_id).data
                row: dict[str, object] = {}
                for column in COLUMNS:
                    if column.metric:
                        row[column.name] = data.metrics.get(column.metric)
                    elif column.tag:
                        row[column.name] = data.tags.get(column.tag)
                row |= {
                    "dataset": name,
                    "decoder": point.decoder,
                    "encoder": point.encoder,
                    "run_id": point.run_id,
                    "run_name": point.run_name,
                    "competing_runs": competing,
                }
                rows.append(row)
            reports[name] = DatasetReport(name, rows, lacking, unfinished)
    return catalogue.scope, reports


def to_csv(report: DatasetReport) -> str:
    """One header line of ``COLUMNS`` names, then one line per row; values in full precision, missing ones
    empty."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([column.name for column in COLUMNS])
    for row in report.rows:
        writer.writerow(["" if row[column.name] is None else row[column.name] for column in COLUMNS])
    return text.getvalue()


def _is_number(column: Column) -> bool:
    return column.digits is not None or column.name == "competing_runs"


def _cell(column: Column, value: object) -> str:
    if value is None:
        return ""
    if column.digits is not None:
        return f"{float(value):.{column.digits}f}"
    if column.name == "commit":
        return str(value)[:COMMIT_CHARS]
    return str(value).replace("|", "\\|")


def to_markdown(report: DatasetReport, scope: Scope) -> str:
    """A section per data set: a heading, what was selected and from where, the table (every column but
    ``dataset``, numbers rounded, missing values empty), then the runs that did not compete."""
    columns = [column for column in COLUMNS if column.name != "dataset"]
    lines = [
        f"## {report.dataset}",
        "",
        f"Best of {report.finished_runs} finished run(s) per decoder x encoder by val {RANK_METRIC} (%), from {scope}. "
        "Accuracy in percent; GMACs (MACs; FLOPs = 2 x MACs) and latency at the input size in the input column.",
        "",
        "| " + " | ".join(column.header for column in columns) + " |",
        "|" + "|".join("---:" if _is_number(column) else "---" for column in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(column, row[column.name]) for column in columns) + " |" for row in report.rows]
    if not report.rows:
        lines.append(f"\nNo finished run has {RANK_METRIC}.")
    if report.lacking:
        listed = ", ".join(f"{point.run_name} ({point.run_id})" for point in report.lacking)
        lines.append(f"\nNot ranked, finished without {RANK_METRIC}: {listed}.")
    if report.unfinished:
        listed = ", ".join(f"{point.run_name} ({point.run_id}, {point.status})" for point in report.unfinished)
        lines.append(f"\nNot counted, not finished: {listed}.")
    return "\n".join(lines) + "\n"


def report_paths(dataset: str, out: Path) -> tuple[Path, Path]:
    """(CSV, Markdown) paths of ``dataset``'s tables in ``out``."""
    stem = f"report_{slug(dataset)}"
    return out / f"{stem}.csv", out / f"{stem}.md"


def _source(column: Column) -> dict[str, str] | str:
    if column.metric:
        return {"metric": column.metric}
    if column.tag:
        return {"tag": column.tag}
    return SELECTION_SOURCES[column.name]


def criteria(scope: Scope, reports: dict[str, DatasetReport], out: Path, dataset: str | None = None) -> dict:
    """The selection as applied: where the runs came from, the rules, each column's source, and per data set the
    counts, the runs left out and the files written."""
    return {
        "tracking_uri": scope.tracking_uri,
        "experiment": scope.experiment_name,
        "experiment_id": scope.experiment_id,
        "dataset_filter": dataset,
        "runs": "training runs of the experiment; bookkeeping runs (tag nrd_bench.kind sweep or pareto) and runs "
        "with child runs left out",
        "status": "FINISHED",
        "group_by": ["tag dataset", "tag decoder", "tag encoder"],
        "rank_by": {
            "metric": RANK_METRIC,
            "value": "last logged",
            "order": "highest first",
            "ties": "run name, then run id, alphabetical",
        },
        "missing_values": "empty cells",
        "columns": {column.name: _source(column) for column in COLUMNS},
        "datasets": {
            name: {
                "finished_runs": report.finished_runs,
                "rows": len(report.rows),
                "lacking_rank_metric": [point.run_id for point in report.lacking],
                "not_finished": [{"run_id": point.run_id, "status": point.status} for point in report.unfinished],
                "files": [str(path) for path in report_paths(name, out)],
            }
            for name, report in reports.items()
        },
    }


def write_report(scope: Scope, reports: dict[str, DatasetReport], out: Path, dataset: str | None = None) -> list[Path]:
    """Write each data set's CSV and Markdown and ``report_criteria.json`` into ``out`` (atomically); returns the
    paths."""
    written = []
    for name, report in reports.items():
        csv_path, markdown_path = report_paths(name, out)
        write_atomic(csv_path, to_csv(report))
        write_atomic(markdown_path, to_markdown(report, scope))
        written += [csv_path, markdown_path]
    path = out / "report_criteria.json"
    write_atomic(path, json.dumps(criteria(scope, reports, out, dataset), indent=2) + "\n")
    return [*written, path]
