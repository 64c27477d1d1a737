"""Where a front is read in MLflow: its files, summary metrics and a Markdown description on the sweep's parent run,
and links into the MLflow UI.

The run that receives them (``publication_run``) is the parent run analysed (``--parent-run``), or, for a whole
experiment, the one sweep every run in it belongs to; when the runs come from several sweeps or none, one run named
``pareto`` in the experiment (tagged ``nrd_bench.kind=pareto``, created once and reused). The description is
MLflow's own note tag, which the UI shows on the run's page; summary metrics are numbers the runs table can sort.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from pipeline.names import (
    KIND_PARETO,
    KIND_TAG,
    NOTE_TAG,
    PARENT_RUN_TAG,
    PARETO_ARTIFACT_DIR,
    PARETO_OPTIMAL_TAG,
)
from pipeline.results.catalogue import Scope, pages, slug
from pipeline.results.front import DatasetRuns
from pipeline.training.tracking import create_run, mlflow_call

PARETO_RUN_NAME = "pareto"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui --backend-store-uri <store>` serves a local store
NOTE_CHARS = 7500  # MLflow keeps at most 8000 characters of a tag value
TRIAL_STATUSES = {"FINISHED": "trials_finished", "FAILED": "trials_failed", "KILLED": "trials_killed"}


def publication_run(groups: Mapping[str, DatasetRuns]) -> str | None:
    """The sweep run the front belongs to: the parent run analysed, or the one parent of every run; else None."""
    scope = next(iter(groups.values())).scope
    if scope.parent_run_id:
        return scope.parent_run_id
    parents = {
        point.parent_run_id for runs in groups.values() for point in runs.points + runs.missing + runs.unfinished
    }
    return parents.pop() if len(parents) == 1 and None not in parents else None


def log_reports(scope: Scope, files: list[Path], run_id: str | None) -> str:
    """Upload ``files`` under ``pareto/`` to ``run_id``, or (None) to the experiment's ``pareto`` run; returns the
    id of the run that holds them."""
    with mlflow_call(scope.tracking_uri):
        client = MlflowClient(scope.tracking_uri)
        own_run = run_id is None
        if own_run:
            query = f"tags.`{KIND_TAG}` = '{KIND_PARETO}'"
            found = client.search_runs(
                [scope.experiment_id], query, order_by=["attributes.start_time ASC"], max_results=1
            )
            run_id = found[0].info.run_id if found else None
        if run_id is None:
            run_id = create_run(scope.tracking_uri, scope.experiment_id, PARETO_RUN_NAME, tags={KIND_TAG: KIND_PARETO})
        for path in files:
            client.log_artifact(run_id, str(path), PARETO_ARTIFACT_DIR)
        if own_run:
            with contextlib.redirect_stdout(sys.stderr):  # MLflow prints the run's URL: keep stdout for our output
                client.set_terminated(run_id, "FINISHED")
    return run_id


def ui_links(scope: Scope, run_id: str, plots: list[Path], sweep: bool) -> dict[str, str]:
    """Addresses in the MLflow UI (the tracking server's own, else where ``mlflow ui`` serves a local store): the
    run holding the front, the experiment's runs filtered to the front (of that sweep, when it is one), the plots."""
    base = scope.tracking_uri.rstrip("/") if scope.tracking_uri.startswith(("http://", "https://")) else LOCAL_UI
    experiment = f"{base}/#/experiments/{scope.experiment_id}"
    query = f"metrics.{PARETO_OPTIMAL_TAG} = 1"
    if sweep:
        query += f" AND tags.`{PARENT_RUN_TAG}` = '{run_id}'"
    links = {"run": f"{experiment}/runs/{run_id}", "front": f"{experiment}/runs?searchFilter={quote(query)}"}
    for plot in plots:
        links[f"plot {plot.name}"] = f"{experiment}/runs/{run_id}/artifactPath/{PARETO_ARTIFACT_DIR}/{plot.name}"
    return links


def trial_counts(client: MlflowClient, scope: Scope, run_id: str) -> dict[str, float]:
    """How the sweep's trials ended: ``trials_finished``, ``trials_failed``, ``trials_killed`` (stopped early or
    interrupted) and ``trials_running``."""
    query = f"tags.`{PARENT_RUN_TAG}` = '{run_id}'"
    statuses = Counter(run.info.status for run in pages(client.search_runs, [scope.experiment_id], query))
    counts = {name: float(statuses.pop(status, 0)) for status, name in TRIAL_STATUSES.items()}
    return counts | {"trials_running": float(sum(statuses.values()))}


def summary_metrics(groups: Mapping[str, DatasetRuns]) -> dict[str, float]:
    """Per data set (suffixed ``_<dataset>`` when there are several): the best y of a finished run and the front's
    size, e.g. ``best_mIoU`` and ``front_size``."""
    metrics = {}
    for name, runs in groups.items():
        suffix = "" if len(groups) == 1 else f"_{slug(name)}"
        if runs.points:
            metrics[f"best_{runs.y}{suffix}"] = max(point.y for point in runs.points)
        metrics[f"front_size{suffix}"] = float(len(runs.front))
    return metrics


def description(groups: Mapping[str, DatasetRuns], fronts: Mapping, links: Mapping[str, str]) -> str:
    """The front of each data set as Markdown: its runs by increasing cost, the configurations' intervals and front
    probabilities when computed, and the links; cut to what a tag holds, saying so."""
    lines = ["# Pareto front (nrd-bench pareto)", ""]
    for name, runs in groups.items():
        inputs = ", ".join(runs.eval_inputs)
        lines += [f"## {name}: {runs.x} (lower is better) vs {runs.y} (higher is better), cost counted at {inputs}", ""]
        lines += [f"| run | decoder | encoder | {runs.x} | {runs.y} |", "|---|---|---|---:|---:|"]
        lines += [f"| {p.run_name} | {p.decoder} | {p.encoder} | {p.x:.2f} | {p.y:.2f} |" for p in runs.front]
        lines.append("")
        front = fronts.get(name)
        if front is not None:
            lines += [f"{front.note}", "", f"| configuration | seeds | {runs.x} | {runs.y} [95% CI] | P(front) |"]
            lines.append("|---|---:|---:|---|---:|")
            for item in front.configurations:
                probability = "-" if item.probability is None else f"{item.probability:.2f}"
                label = item.label.replace("|", "/")
                cells = [label, str(len(item.runs)), f"{item.x:.2f}", item.estimate.format(2), probability]
                lines.append(f"| {' | '.join(cells)} |")
            lines.append("")
    lines += [f"- {name}: {address}" for name, address in links.items()]
    text = "\n".join(lines) + "\n"
    if len(text) > NOTE_CHARS:
        cut = text[:NOTE_CHARS].rsplit("\n", 1)[0]
        text = f"{cut}\n\n(cut at {NOTE_CHARS} characters: the full tables are the CSV files under pareto/)\n"
    return text


def summarize(
    groups: Mapping[str, DatasetRuns], fronts: Mapping, run_id: str, links: Mapping[str, str], sweep: bool
) -> None:
    """On the run holding the front: the summary metrics, how the trials ended (a sweep's run), and the front as
    its description."""
    scope = next(iter(groups.values())).scope
    with mlflow_call(scope.tracking_uri):
        client = MlflowClient(scope.tracking_uri)
        metrics = summary_metrics(groups) | (trial_counts(client, scope, run_id) if sweep else {})
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(key, value, now, 0) for key, value in metrics.items()],
            tags=[RunTag(NOTE_TAG, description(groups, fronts, links))],
        )
