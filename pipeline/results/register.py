"""``nrd-bench pareto --register NAME``: the front's models in the MLflow model registry, under aliases.

Every run on a data set's front gets its MLflow model (``pipeline.training.lineage.log_model``; a run that logged one
at the end of training keeps it, the others get one built from their ``config.yaml`` and ``weights/model.pt``
artifacts) and becomes a version of the registered model ``NAME`` (once: registering again finds the version).
Aliases, per data set: ``pareto-<dataset>`` is the front's most accurate model (highest y), and
``pareto-<dataset>-1`` ... ``-<n>`` its members by increasing cost; aliases of an earlier, longer front are removed.
Load one with ``mlflow.pytorch.load_model("models:/NAME@pareto-<dataset>")``.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nrd.errors import InvalidHyperparameterError
from pipeline.names import DATASET_TAG, PARETO_ALIAS_PREFIX
from pipeline.results.front import DatasetRuns
from pipeline.training.tracking import mlflow_call

# MLflow's registered-model names may hold more, but this keeps `models:/NAME@alias` URIs plain
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
NAME_EXPECTED = "letters, digits, '_', '.', '-' (starting with a letter or digit, at most 100 characters)"


@dataclass
class RegisteredFrontModel:
    dataset: str
    run_name: str
    version: str
    aliases: list[str]


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidHyperparameterError("nrd-bench pareto", "--register", name, NAME_EXPECTED)


def alias_slug(dataset: str) -> str:
    """An alias-safe form of a data set's name (MLflow aliases: letters, digits, '_' and '-')."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", dataset)


def register_fronts(groups: dict[str, DatasetRuns], name: str) -> list[RegisteredFrontModel]:
    """Register every front run of every data set in ``groups`` under ``name`` and set the aliases."""
    from mlflow import MlflowClient

    registered = []
    for runs in groups.values():
        uri = runs.scope.tracking_uri
        client = MlflowClient(uri)
        versions = {}
        for point in runs.front:
            tags = {
                DATASET_TAG: runs.dataset,
                "run_name": point.run_name,
                runs.y: f"{point.y:.6g}",
                runs.x: f"{point.x:.6g}",
            }
            versions[point.run_id] = register_run(client, uri, point.run_id, name, tags)
        best = max(runs.front, key=lambda point: (point.y, -point.x))
        wanted = {f"{PARETO_ALIAS_PREFIX}{alias_slug(runs.dataset)}": versions[best.run_id]}
        for number, point in enumerate(runs.front, 1):  # the front is by increasing cost
            wanted[f"{PARETO_ALIAS_PREFIX}{alias_slug(runs.dataset)}-{number}"] = versions[point.run_id]
        with mlflow_call(uri):
            stale_prefix = f"{PARETO_ALIAS_PREFIX}{alias_slug(runs.dataset)}-"
            for alias in client.get_registered_model(name).aliases:
                if alias.startswith(stale_prefix) and alias not in wanted:
                    client.delete_registered_model_alias(name, alias)
            for alias, version in wanted.items():
                client.set_registered_model_alias(name, alias, version)
        for point in runs.front:
            aliases = sorted(alias for alias, version in wanted.items() if version == versions[point.run_id])
            registered.append(RegisteredFrontModel(runs.dataset, point.run_name, versions[point.run_id], aliases))
    return registered


def register_run(client, uri: str, run_id: str, name: str, tags: dict[str, str]) -> str:
    """The version of ``name`` holding run ``run_id``'s MLflow model, registered now if it is not yet."""
    import mlflow

    from pipeline.training.lineage import find_logged_model, global_tracking_uri

    model = find_logged_model(uri, run_id) or log_model_from_artifacts(uri, run_id)
    with mlflow_call(uri):
        for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
            if version.source == model.model_uri:  # (the SQLite registry leaves the version's model_id empty)
                return version.version
        with global_tracking_uri(uri):  # register_model resolves models:/ URIs through the global URI
            version = mlflow.register_model(model.model_uri, name, tags=tags)
    return version.version


def log_model_from_artifacts(uri: str, run_id: str):
    """Log run ``run_id``'s MLflow model from its ``config.yaml`` and ``weights/model.pt`` artifacts."""
    from mlflow import MlflowClient

    from pipeline.results.predict import download_run_files, load_trained_model
    from pipeline.training.lineage import log_model

    with tempfile.TemporaryDirectory() as directory:
        config_path, weights = download_run_files(uri, run_id, Path(directory))
        trained = load_trained_model(config_path, weights)
    with mlflow_call(uri):
        run = MlflowClient(uri).get_run(run_id)
    config = trained.config  # as trained, with num_classes filled in from the data set
    dataset = run.data.tags.get(DATASET_TAG, "")
    return log_model(uri, run_id, trained.model, config.to_dict(), dataset, config.schedule.iterations)
