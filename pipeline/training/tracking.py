"""MLflow runs of training and sweeps: the tracking URI, experiments, runs created once and found again on re-runs
(the run record beside the checkpoints), and MLflow calls that fail fast with a named error.

MLflow's HTTP client retries a failed request for minutes by default. Around its own calls this module sets
``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` (seconds) unless the user set these
variables (MLflow reads them at request time, from the process environment), so a dead server is noticed at once and
the retrying is done by the buffering ``RunLogger`` (``pipeline.training.logger``), without slowing training.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import requests
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, TEMPORARILY_UNAVAILABLE, ErrorCode

from nrd.errors import NRDBenchError
from pipeline.config import TrainConfig
from pipeline.files import write_atomic
from pipeline.names import (
    COMMIT_TAG,
    CONFIG_KEY_TAG,
    DATASET_DIR_TAG,
    DATASET_TAG,
    DECODER_TAG,
    DEVICE_TAG,
    ENCODER_TAG,
    PARENT_RUN_TAG,
    RUN_RECORD,
)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # in the working directory; resolve_tracking_uri makes it absolute
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
SERVER_SCHEMES = ("http", "https", "databricks")
_TRANSIENT_TYPES = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.RetryError,  # the server kept answering 429/5xx
    ConnectionError,
    TimeoutError,
)


class TrackingError(NRDBenchError):
    """A tracking operation that failed; the subclasses say whether MLflow was unreachable or refused it."""


class TrackingUnavailableError(TrackingError):
    """MLflow could not be reached (connection refused/reset, timeout, HTTP 5xx, database locked)."""


class TrackingRejectedError(TrackingError, ValueError):
    """MLflow refused an operation for good (e.g. INVALID_PARAMETER_VALUE: a param logged again with a new value)."""


class BufferFileError(TrackingError, ValueError):
    """A tracking buffer file that is missing or cannot be read back; the message names the line at fault."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: ``uri`` (the --tracking-uri flag), else ``$MLFLOW_TRACKING_URI``, else the SQLite file
    ``mlflow.db`` in the working directory. Relative SQLite files and plain folder paths are made absolute, so that
    Ray workers, which run in other directories, reach the same store."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and ":memory:" not in uri:
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).absolute())
    if ":" not in uri:  # a folder: MLflow's file store
        return str(Path(uri).absolute())
    return uri


def _is_server(tracking_uri: str) -> bool:
    return tracking_uri.partition(":")[0] in SERVER_SCHEMES


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created when missing. Local stores (SQLite, folders) get the artifact location
    ``<cwd>/mlartifacts/<name>`` (an absolute file:// URI), else MLflow would put artifacts in ``./mlruns`` of
    whichever process's working directory; a tracking server chooses its own."""
    with mlflow_call(tracking_uri):
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            location = None if _is_server(tracking_uri) else (Path.cwd() / "mlartifacts" / name).absolute().as_uri()
            try:
                return client.create_experiment(name, artifact_location=location)
            except MlflowException as error:  # created meanwhile by another process
                if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise TrackingRejectedError(
            f"experiment {name!r} (id {experiment.experiment_id}) is deleted in {tracking_uri}; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or choose another name"
        )
    return experiment.experiment_id


def create_run(
    tracking_uri: str,
    experiment_id: str,
    run_name: str,
    tags: dict | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a RUNNING run and return its id; with ``parent_run_id`` it is nested under that run (MLflow's
    ``mlflow.parentRunId`` tag)."""
    tags = {key: str(value) for key, value in (tags or {}).items()}
    if parent_run_id:
        tags[PARENT_RUN_TAG] = parent_run_id
    with mlflow_call(tracking_uri):
        return MlflowClient(tracking_uri).create_run(experiment_id, tags=tags, run_name=run_name).info.run_id


def recorded_run(record_path: Path, tracking_uri: str) -> dict | None:
    """The run record (tracking_uri, experiment_id, run_id, ...) kept at ``record_path`` by an earlier attempt, when
    it points into ``tracking_uri``: a re-run logs into that run instead of creating another one."""
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record["tracking_uri"] == tracking_uri:
            return record
    return None


def save_run_record(record_path: Path, record: dict) -> None:
    record_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(record_path, json.dumps(record, indent=2))


def open_run(
    record_path: Path,
    tracking_uri: str,
    experiment: str,
    run_name: str,
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> tuple[dict[str, str], bool]:
    """The MLflow run recorded at ``record_path`` when it points into ``tracking_uri`` (a re-run, a resumed sweep),
    else a new RUNNING run, recorded there. Returns the record (tracking_uri, experiment_id, run_id) and whether
    the run is new."""
    if record := recorded_run(record_path, tracking_uri):
        return record, False
    experiment_id = ensure_experiment(tracking_uri, experiment)
    run_id = create_run(tracking_uri, experiment_id, run_name, tags=tags, parent_run_id=parent_run_id)
    record = {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "run_id": run_id}
    save_run_record(record_path, record)
    return record, True


def start_tracking(
    config: TrainConfig,
    manifest: dict,
    directory: Path,
    parent_run_id: str | None = None,
    extra_tags: dict | None = None,
    run_name: str | None = None,
) -> dict[str, str]:
    """The MLflow run of a training run: created once (before any worker starts), found again on re-runs (and set
    RUNNING again if an earlier attempt ended it FAILED or KILLED). ``run_name``: its name in MLflow (default the
    run's ``run.name``, which also names its folder)."""
    tags = {
        DATASET_TAG: manifest["dataset"],
        DATASET_DIR_TAG: config.data.dataset_dir,
        DECODER_TAG: config.model.decoder,
        ENCODER_TAG: config.model.encoder,
        COMMIT_TAG: git_commit(),
        CONFIG_KEY_TAG: config.config_key(),
        "ray_version": _version("ray"),
        "torch_version": torch.__version__,
        DEVICE_TAG: "cuda" if config.scaling.use_gpu else "cpu",
    }
    uri = resolve_tracking_uri(config.run.tracking_uri)
    record, new = open_run(
        directory / RUN_RECORD,
        uri,
        config.run.experiment,
        run_name or config.run.name,
        tags | (extra_tags or {}),
        parent_run_id,
    )
    if not new:  # resumed: a run that ended FAILED or KILLED (an interruption) is running again
        with mlflow_call(uri):
            client = MlflowClient(uri)
            if client.get_run(record["run_id"]).info.status in ("FAILED", "KILLED"):
                client.update_run(record["run_id"], status="RUNNING")
    return record


def git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


@contextlib.contextmanager
def mlflow_call(tracking_uri: str) -> Iterator[None]:
    """Fail fast on a dead server (no HTTP retries, short timeout, unless the user set them) and turn MLflow's
    failures into ``TrackingUnavailableError`` (transient) or ``TrackingRejectedError`` naming the URI."""
    added = [name for name in HTTP_DEFAULTS if name not in os.environ]
    os.environ.update({name: HTTP_DEFAULTS[name] for name in added})
    try:
        yield
    except TrackingError:
        raise
    except Exception as error:
        if is_transient(error):
            raise TrackingUnavailableError(f"cannot reach MLflow at {tracking_uri}: {error}") from error
        if isinstance(error, MlflowException):
            raise TrackingRejectedError(f"MLflow at {tracking_uri} refused the request: {error.message}") from error
        raise
    finally:
        for name in added:
            os.environ.pop(name, None)


def is_transient(error: BaseException) -> bool:
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, _TRANSIENT_TYPES) or "database is locked" in str(cause):
            return True
        if isinstance(cause, requests.HTTPError) and cause.response is not None and cause.response.status_code >= 500:
            return True
        if isinstance(cause, MlflowException) and (
            cause.error_code == ErrorCode.Name(TEMPORARILY_UNAVAILABLE)
            or (isinstance(cause, RestException) and cause.get_http_status_code() >= 500)
        ):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
