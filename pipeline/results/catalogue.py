"""The run catalogue: which training runs an experiment (or a sweep's parent run) holds in MLflow, read once for
both the Pareto front and the report. Bookkeeping runs (``nrd_bench.kind`` ``sweep`` or ``pareto``, and any run
that has child runs) are never training runs."""

from __future__ import annotations

import math
import re
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from nrd import DECODERS
from nrd.errors import NRDBenchError, UnknownNameError
from pipeline.config import DECODER_ARGS, RunSettings
from pipeline.names import (
    CLASS_IOU_PREFIX,
    DATASET_TAG,
    DECODER_TAG,
    ENCODER_TAG,
    EVAL_INPUT_TAG,
    KIND_PARETO,
    KIND_SWEEP,
    KIND_TAG,
    PARENT_RUN_TAG,
)
from pipeline.training.tracking import mlflow_call

BOOKKEEPING_KINDS = (KIND_SWEEP, KIND_PARETO)
NO_DATASET = "(no dataset tag)"
OLD_DECODER_ARG_PREFIX = f"model.{DECODER_ARGS}."  # MLflow params of runs logged before the one spelling
OUTPUT_STRIDE_PARAM = "model.output_stride"


class NoFinishedRunsError(NRDBenchError):
    """There is no finished training run where the analysis looked; the message says where that was."""


def usable(value: float | None) -> bool:
    """A metric value that can be compared: present and not NaN."""
    return value is not None and not math.isnan(float(value))


def slug(text: str) -> str:
    """``text`` as a file-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


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
    parent_run_id: str | None = None  # the sweep's run, for a trial

    @property
    def on_front(self) -> bool:
        return self.rank == 0

    @property
    def label(self) -> str:
        """decoder/encoder and the settings given (those logged "None" were left to the decoder's default)."""
        settings = sorted(self.hyperparameters.items())
        extra = ",".join(f"{name}={value}" for name, value in settings if value != "None")
        return f"{self.decoder}/{self.encoder}" + (f" ({extra})" if extra else "")

    def to_dict(self) -> dict:
        keys = ("run_id", "run_name", "decoder", "encoder", "x", "y", "rank")
        return {key: getattr(self, key) for key in keys} | {"on_front": self.on_front}


@dataclass(frozen=True)
class Catalogue:
    """The training runs of one scope (of one data set when asked), FINISHED or not, in MLflow's order."""

    scope: Scope
    runs: list[Run]

    @property
    def finished(self) -> list[Run]:
        return [run for run in self.runs if run.info.status == "FINISHED"]

    def datasets(self) -> list[str]:
        """The data sets of the finished runs, sorted."""
        return sorted({dataset_of(run) for run in self.finished})

    def of_dataset(self, dataset: str) -> list[Run]:
        return [run for run in self.runs if dataset_of(run) == dataset]

    def require_metric(self, metric: str, what: str) -> None:
        """``UnknownNameError`` (``what``) listing the metrics that finished runs have, when none has ``metric``."""
        metrics = {key for run in self.finished for key in run.data.metrics}
        if metric not in metrics:  # one entry for the per-class IoUs, which can be 150
            listed = {key for key in metrics if not key.startswith(CLASS_IOU_PREFIX)}
            per_class = len(metrics) - len(listed)
            raise UnknownNameError(
                what, metric, listed | ({f"{CLASS_IOU_PREFIX}<class> ({per_class})"} if per_class else set())
            )


def find_scope(tracking_uri: str, experiment: str | None = None, parent_run_id: str | None = None) -> Scope:
    """The experiment (by name; default the training default ``nrd-bench``) or the parent run (by id) to read.
    Unknown names raise ``UnknownNameError`` listing the experiments, or the parent runs, that exist."""
    store = _local_store(tracking_uri)
    if store is not None and not store.exists():  # MLflow would create an empty store there
        raise NoFinishedRunsError(
            f"no MLflow store at {store} (tracking URI {tracking_uri}); pass --tracking-uri or set MLFLOW_TRACKING_URI"
        )
    with mlflow_call(tracking_uri):
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
            names = [item.name for item in pages(client.search_experiments)]
            raise UnknownNameError(f"experiment at {tracking_uri}", name, names)
        return Scope(tracking_uri, found.experiment_id, found.name)


def read_catalogue(
    tracking_uri: str,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    dataset: str | None = None,
    *,
    page_size: int = 1000,
) -> Catalogue:
    """The training runs of an experiment (or of a parent run's children), only those of ``dataset`` when given.
    Reads every page of ``search_runs`` (``page_size`` runs a request). Raises ``UnknownNameError`` for an unknown
    experiment, parent run or data set (listing the ones that exist), and ``NoFinishedRunsError`` when no training
    run has finished."""
    scope = find_scope(tracking_uri, experiment, parent_run_id)
    with mlflow_call(tracking_uri):
        client = MlflowClient(tracking_uri)
        query = f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'" if parent_run_id else ""
        runs = list(pages(client.search_runs, [scope.experiment_id], query, ViewType.ACTIVE_ONLY, page_size))
    parents = {run.data.tags.get(PARENT_RUN_TAG) for run in runs}
    runs = [
        run for run in runs if run.info.run_id not in parents and run.data.tags.get(KIND_TAG) not in BOOKKEEPING_KINDS
    ]
    catalogue = Catalogue(scope, runs)
    if not catalogue.finished:
        statuses = Counter(run.info.status for run in runs)
        seen = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())) or "none at all"
        raise NoFinishedRunsError(f"no finished training run in {scope}; training runs seen: {seen}")
    if dataset is not None:
        if dataset not in catalogue.datasets():
            raise UnknownNameError("dataset (tag of the finished runs)", dataset, catalogue.datasets())
        catalogue = Catalogue(scope, catalogue.of_dataset(dataset))
    return catalogue


def _local_store(tracking_uri: str) -> Path | None:
    """The SQLite file or folder of a local tracking URI; None for a server."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///").partition("?")[0])
    if tracking_uri.startswith("file:"):
        return Path(urllib.parse.urlparse(tracking_uri).path)
    return None if ":" in tracking_uri else Path(tracking_uri)


def pages(search, *args) -> Iterator:
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
    experiment_ids = [item.experiment_id for item in pages(client.search_experiments)]
    sweeps = client.search_runs(experiment_ids, f"tags.`{KIND_TAG}` = '{KIND_SWEEP}'", max_results=1000)
    children = client.search_runs(experiment_ids, f"tags.`{PARENT_RUN_TAG}` LIKE '%'", max_results=1000)
    names = {run.info.run_id: run.info.run_name for run in sweeps}
    for run_id in {child.data.tags[PARENT_RUN_TAG] for child in children} - set(names):
        try:
            names[run_id] = client.get_run(run_id).info.run_name
        except MlflowException:
            names[run_id] = "deleted"
    return [f"{run_id} ({name})" for run_id, name in names.items()]


def dataset_of(run: Run) -> str:
    return run.data.tags.get(DATASET_TAG) or NO_DATASET


def hyperparameters(params: dict[str, str], decoder: str) -> dict[str, str]:
    """The decoder hyperparameters (``nrd.dyn_channels``; older runs' ``model.decoder_kwargs.dyn_channels`` read as
    that) and the output stride (``model.output_stride``) among a run's MLflow params, as logged (strings)."""
    found = {}
    for key, value in params.items():
        if key.startswith(OLD_DECODER_ARG_PREFIX):
            found[f"{decoder}.{key.removeprefix(OLD_DECODER_ARG_PREFIX)}"] = value
        elif key.partition(".")[0] in DECODERS or key == OUTPUT_STRIDE_PARAM:
            found[key] = value
    return found


def run_point(run: Run, x: str | None, y: str) -> RunPoint:
    """``run`` as a point on metrics ``x`` (None: no cost axis) and ``y``; a missing or NaN value is None."""
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    decoder = tags.get(DECODER_TAG) or params.get("model.decoder", "?")
    return RunPoint(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id,
        status=run.info.status,
        decoder=decoder,
        encoder=tags.get(ENCODER_TAG) or params.get("model.encoder", "?"),
        eval_input=tags.get(EVAL_INPUT_TAG, "unknown"),
        hyperparameters=hyperparameters(params, decoder),
        x=metrics[x] if x is not None and usable(metrics.get(x)) else None,
        y=metrics[y] if usable(metrics.get(y)) else None,
        parent_run_id=tags.get(PARENT_RUN_TAG),
    )
