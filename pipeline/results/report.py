"""Results tables: the best configuration per decoder × encoder, per data set, read from MLflow, with the mean
over its seeds and a 95% interval.

Selection (also written beside the tables as JSON, see ``criteria``): the runs are those of the run catalogue
(``pipeline.results.catalogue``: the experiment's training runs; sweep/pareto bookkeeping runs and runs with child
runs left out), grouped by their ``dataset`` tag, then by their ``decoder`` and ``encoder`` tags. Only FINISHED runs
that have the ranking metric (``mIoU``, the last value logged: the final evaluation) compete. Runs with equal
``config_key`` tags are repeats of one configuration (they differ only in seed); a run without the tag is a
configuration of its own. Per pair the configuration with the highest mean ranking metric over its repeats wins
(never the luckiest seed), ties going to its first run name, then its key. Each winner is one row: the mean mIoU
over its seeds with a percentile-bootstrap interval over validation images and seeds
(``pipeline.results.intervals``; empty where its runs kept no per-image counts), the number of seeds, the other
accuracy metrics as means over the repeats that logged them, and from its best run (highest mIoU, then run name):
the cost metrics, the input size its cost was counted at (``eval_input`` tag), the device it trained and was timed
on, the commit it ran and its run id; and how many runs of the pair competed.

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
from pipeline.results.intervals import estimate_configurations
from pipeline.results.uncertainty import RESAMPLES, Estimate
from pipeline.training.tracking import mlflow_call

RANK_METRIC = MIOU
# The ms+flip evaluation's metric: logged by runs with data.eval_msflip, the column stays empty for the others.
MSFLIP_METRIC = MIOU_MSFLIP
COMMIT_CHARS = 12  # of the commit hash in the Markdown table (the CSV has it whole)
MEAN_COLUMNS = ("mIoU_msflip", "trimap_mIoU_4px", "mBIoU")  # accuracy: the mean over the repeats that logged it


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
    Column("mIoU_low", "95% low", digits=2),
    Column("mIoU_high", "95% high", digits=2),
    Column("seeds", "seeds"),
    Column("mIoU_msflip", "mIoU ms+flip", metric=MSFLIP_METRIC, digits=2),
    Column("trimap_mIoU_4px", "trimap mIoU 4px", metric="trimap_mIoU_4px", digits=2),
    Column("mBIoU", "mBIoU", metric="mBIoU", digits=2),
    Column("gmacs_model", "GMACs model", metric="gmacs_model", digits=2),
    Column("gmacs_decoder", "GMACs decoder", metric="gmacs_decoder", digits=2),
    Column("eval_input", "input (NxCxHxW)", tag=EVAL_INPUT_TAG),
    Column("params_m", "params (M)", metric="params_m", digits=2),
    Column("latency_p50_ms", "latency p50 (ms)", metric="latency_p50_ms", digits=1),
    Column("latency_p50_low_ms", "p50 95% low", metric="latency_p50_low_ms", digits=1),
    Column("latency_p50_high_ms", "p50 95% high", metric="latency_p50_high_ms", digits=1),
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
    "mIoU_low": "95% percentile bootstrap over validation images and seeds (empty: no per-image counts)",
    "mIoU_high": "95% percentile bootstrap over validation images and seeds (empty: no per-image counts)",
    "seeds": "finished runs of the configuration (equal config_key tags) with the ranking metric",
    "run_id": "the configuration's best run",
    "run_name": "the configuration's best run",
    "competing_runs": "finished runs of the decoder x encoder pair with the ranking metric",
}


@dataclass
class DatasetReport:
    """The rows of one data set (column name → value, None where missing; sorted by decoder then encoder), the
    finished runs lacking the ranking metric, the runs that are not finished (neither competes), and how the
    intervals were obtained (or why there are none)."""

    dataset: str
    rows: list[dict[str, object]]
    lacking: list[RunPoint] = field(default_factory=list)
    unfinished: list[RunPoint] = field(default_factory=list)
    intervals: str = ""

    @property
    def finished_runs(self) -> int:
        return sum(row["competing_runs"] for row in self.rows) + len(self.lacking)


def best_run(points: list[RunPoint]) -> RunPoint:
    """The highest ``y``, ties going to the run name, then the run id."""
    return sorted(points, key=lambda point: (-point.y, point.run_name, point.run_id))[0]


def best_configurations(
    groups: dict[str, list[RunPoint]], estimates: dict[str, Estimate]
) -> list[tuple[str, list[RunPoint], int]]:
    """The winning configuration of each (decoder, encoder) pair as (key, repeats, runs that competed), sorted by
    decoder then encoder: the highest mean (``estimates[key].value``), ties going to the configuration's first run
    name, then its key."""
    pairs: dict[tuple[str, str], list[str]] = {}
    for key, repeats in groups.items():
        pairs.setdefault((repeats[0].decoder, repeats[0].encoder), []).append(key)

    def order(key: str) -> tuple:
        return (-estimates[key].value, min(point.run_name for point in groups[key]), key)

    winners = []
    for pair in sorted(pairs):
        key = sorted(pairs[pair], key=order)[0]
        winners.append((key, groups[key], sum(len(groups[other]) for other in pairs[pair])))
    return winners


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def collect_report(
    tracking_uri: str,
    experiment: str | None = None,
    dataset: str | None = None,
    resamples: int = RESAMPLES,
) -> tuple[Scope, dict[str, DatasetReport]]:
    """Read the finished runs of ``experiment`` (default nrd-bench), only those of ``dataset`` when given, and
    build each data set's rows (the selection rules are in the module docstring; ``resamples`` for the
    intervals). The errors of ``collect_runs`` (unknown experiment or data set, nothing finished, no run with
    mIoU) pass through."""
    catalogue = read_catalogue(tracking_uri, experiment, dataset=dataset)
    catalogue.require_metric(RANK_METRIC, "ranking metric (no finished run has it)")
    reports = {}
    for name in catalogue.datasets():
        runs = catalogue.of_dataset(name)
        points = [run_point(run, None, RANK_METRIC) for run in runs if run.info.status == "FINISHED"]
        ranked = [point for point in points if point.y is not None]
        lacking = [point for point in points if point.y is None]
        unfinished = [run_point(run, None, RANK_METRIC) for run in runs if run.info.status != "FINISHED"]
        groups, boot, note = estimate_configurations(tracking_uri, ranked, RANK_METRIC, resamples)
        estimates = {key: boot.estimates[key][RANK_METRIC] for key in groups}
        rows = []
        with mlflow_call(tracking_uri):
            client = MlflowClient(tracking_uri)
            for key, repeats, competing in best_configurations(groups, estimates):
                best = best_run(repeats)
                data = {point.run_id: client.get_run(point.run_id).data for point in repeats}
                row: dict[str, object] = {}
                for column in COLUMNS:
                    if column.metric:
                        row[column.name] = data[best.run_id].metrics.get(column.metric)
                    elif column.tag:
                        row[column.name] = data[best.run_id].tags.get(column.tag)
                for column in COLUMNS:
                    if column.name in MEAN_COLUMNS:
                        row[column.name] = _mean([data[point.run_id].metrics.get(column.metric) for point in repeats])
                estimate = estimates[key]
                row |= {
                    "dataset": name,
                    "decoder": best.decoder,
                    "encoder": best.encoder,
                    "mIoU": estimate.value,
                    "mIoU_low": estimate.low,
                    "mIoU_high": estimate.high,
                    "seeds": len(repeats),
                    "run_id": best.run_id,
                    "run_name": best.run_name,
                    "competing_runs": competing,
                }
                rows.append(row)
        reports[name] = DatasetReport(name, rows, lacking, unfinished, note)
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
    return column.digits is not None or column.name in ("competing_runs", "seeds")


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
        f"Best configuration per decoder x encoder by mean val {RANK_METRIC} (%) over its seeds, of "
        f"{report.finished_runs} finished run(s), from {scope}. Intervals: {report.intervals}. Accuracy in percent "
        "(means over the seeds); GMACs (MACs; FLOPs = 2 x MACs) and latency of the configuration's best run, at the "
        "input size in the input column.",
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
        "repeats": "runs with equal config_key tags (a run without the tag is a configuration of its own)",
        "rank_by": {
            "metric": RANK_METRIC,
            "value": "mean over the configuration's repeats of the last logged value",
            "order": "highest first",
            "ties": "the configuration's first run name, then its config_key, alphabetical",
        },
        "best_run": "highest last-logged mIoU of the configuration, ties by run name then run id",
        "missing_values": "empty cells",
        "columns": {column.name: _source(column) for column in COLUMNS},
        "datasets": {
            name: {
                "finished_runs": report.finished_runs,
                "intervals": report.intervals,
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
