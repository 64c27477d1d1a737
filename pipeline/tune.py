"""``nrd-bench tune``: a Ray Tune search over decoders, their hyperparameters and encoder sizes.

Every trial is a full ``nrd-bench train`` run. A multi-worker trial launches its own ``TorchTrainer`` (so it may
span nodes) whose reports reach Tune through ``TuneReportCallback``; a single-worker trial runs the same training
loop in the trial's process, on the resources the trial holds, and reports to Tune directly. The driver creates
one MLflow parent run per sweep (search settings as params, the space file as artifact); each trial is a nested
child run with the same content as a ``train`` run, tagged with its trial id. One objective: ASHA stops weak
trials early on it. Several (e.g. maximise mIoU, minimise GMACs): Optuna's multi-objective sampler, no early
stopping.

Re-running with the same ``--name`` (or ``--resume``) continues a sweep: finished trials are not rerun and their
child runs are found again rather than duplicated (each trial keeps its MLflow run id beside its checkpoints).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from pipeline.config import ConfigError, TrainConfig, merge
from pipeline.spaces import SearchSpace, load_space
from pipeline.train import FINISHED_MARKER, RESULT_FILE, RUN_RECORD, resolve, start_ray, train

SWEEP_RECORD = "sweep.json"
SWEEP_KIND_TAG = "nrd_bench.kind"
KEY_SEPARATOR = "__"  # stands for "." in Tune's parameter names


def tune_distribution(kind: str, arguments: Any):
    from ray import tune

    return {
        "choice": lambda: tune.choice(arguments),
        "grid": lambda: tune.grid_search(arguments),
        "uniform": lambda: tune.uniform(*arguments),
        "loguniform": lambda: tune.loguniform(*arguments),
        "randint": lambda: tune.randint(*arguments),
        "fixed": lambda: arguments,
    }[kind]()


def param_space(space: SearchSpace) -> dict[str, Any]:
    # Tune and its searchers treat "." and "/" in keys as nesting; keep our dotted keys flat by encoding them.
    return {encode_key(key): tune_distribution(kind, arguments) for key, (kind, arguments) in space.space.items()}


def encode_key(key: str) -> str:
    return key.replace(".", KEY_SEPARATOR)


def decode_key(key: str) -> str:
    return key.replace(KEY_SEPARATOR, ".")


def run_trial(sampled: dict[str, Any], space: SearchSpace, base: dict[str, Any], sweep: dict[str, str]) -> None:
    """The Tune function trainable: one training run with this trial's values, as a child MLflow run."""
    import ray.tune
    from mlflow import MlflowClient

    from pipeline.tracking import RunLogger

    context = ray.tune.get_context()
    trial_id = context.get_trial_id()
    values = {decode_key(key): value for key, value in sampled.items()}
    config = TrainConfig.from_dict(merge(base, space.trial_overrides(values)), source=f"{space.path} trial {trial_id}")
    run = replace(
        config.run,
        name=trial_id,
        storage_path=str(Path(sweep["directory"]) / "trials"),
        tracking_uri=sweep["tracking_uri"],  # the driver's, resolved: a trial's working directory is elsewhere
        max_failures=0,
    )
    config = replace(config, run=run)
    directory = Path(run.storage_path) / run.name
    if (directory / FINISHED_MARKER).exists():  # finished before the sweep's driver could record it: report again
        record = json.loads((directory / RUN_RECORD).read_text())
        logger = RunLogger(record["tracking_uri"], record["run_id"], str(directory / "mlflow-driver-buffer.jsonl"))
        if MlflowClient(record["tracking_uri"]).get_run(record["run_id"]).info.status == "RUNNING":
            logger.close(status="FINISHED")  # killed between the marker and closing the run
        ray.tune.report(json.loads((directory / RESULT_FILE).read_text()))
        return
    tags = {"trial_id": trial_id, "sweep": sweep["name"], "trial_values": json.dumps(values, default=str)}
    train(config, parent_run_id=sweep["run_id"], extra_tags=tags, in_tune_trial=True)


def start_sweep(space: SearchSpace, base_config: TrainConfig, directory: Path, name: str) -> dict[str, str]:
    """The sweep's parent MLflow run: created once, found again on resume."""
    from pipeline import tracking

    record_path = directory / SWEEP_RECORD
    uri = tracking.resolve_tracking_uri(base_config.run.tracking_uri)
    if record := tracking.recorded_run(record_path, uri):
        return record
    experiment_id = tracking.ensure_experiment(uri, base_config.run.experiment)
    run_id = tracking.create_run(uri, experiment_id, name, tags={SWEEP_KIND_TAG: "sweep"})
    logger = tracking.RunLogger(uri, run_id, str(directory / "mlflow-sweep-buffer.jsonl"))
    search = space.search
    logger.log_params(
        {
            "objectives": json.dumps(search.objectives),
            "scheduler": "optuna-multi-objective" if search.multi_objective else search.scheduler,
            "num_samples": search.num_samples,
            "max_concurrent": search.max_concurrent,
            "iterations": search.iterations,
            "resources": json.dumps(search.resources),
            "space_file": space.path,
        }
    )
    logger.log_artifact(space.path, "space")
    logger.flush()
    record = {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id, "name": name,
              "directory": str(directory)}  # fmt: skip
    tracking.save_run_record(record_path, record)
    return record


class ASHA(AsyncHyperBandScheduler):
    """ASHA (``time_attr`` iteration) that lets a trial's report at ``max_t`` through. That report is the trial's
    last: stopping it there (as Ray's ASHA does) would end the trial before its run is closed as FINISHED. Its
    result still enters the last rung when the trial completes."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self._max_t:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def tune_config(space: SearchSpace):
    from ray import tune

    search = space.search
    if search.multi_objective:
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(metric=list(search.objectives), mode=list(search.objectives.values()), seed=0)
        return tune.TuneConfig(search_alg=searcher, num_samples=search.num_samples,
                               max_concurrent_trials=search.max_concurrent)  # fmt: skip
    metric, mode = next(iter(search.objectives.items()))
    scheduler = None
    if search.scheduler == "asha":
        scheduler = ASHA(
            time_attr="iteration", max_t=search.iterations, grace_period=search.grace_period,
            reduction_factor=search.reduction_factor,
        )  # fmt: skip
    return tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler, num_samples=search.num_samples,
                           max_concurrent_trials=search.max_concurrent)  # fmt: skip


def close_stopped_trials(record: dict[str, str], results) -> None:
    """Child runs of trials ASHA stopped (or that failed) stay RUNNING in MLflow: end them as KILLED/FAILED."""
    from mlflow import MlflowClient

    client = MlflowClient(record["tracking_uri"])
    children = client.search_runs(
        [record["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{record['run_id']}'"
    )
    failed = {result.metrics.get("trial_id") for result in results if result.error}
    for child in children:
        if child.info.status == "RUNNING":
            status = "FAILED" if child.data.tags.get("trial_id") in failed else "KILLED"
            client.set_tag(child.info.run_id, "stopped_early", "true" if status == "KILLED" else "false")
            client.set_terminated(child.info.run_id, status)


def tune(
    space_path: str,
    dataset_dir: str | None = None,
    name: str | None = None,
    resume: bool = False,
    base: dict[str, Any] | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """Run (or continue) the sweep described by ``space_path``; returns the parent run id and trial results."""
    import ray
    from ray import tune as ray_tune

    space = load_space(space_path)
    overrides = {"data": {"dataset_dir": dataset_dir}} if dataset_dir else {}
    base_dict = merge(merge(base or {}, space.trial_overrides({})), overrides)
    base_config, _ = resolve(TrainConfig.from_dict(base_dict, source=space_path))
    name = name or Path(space_path).stem
    storage = Path(base_config.run.storage_path)
    directory = storage / name
    if resume and not directory.exists():
        raise ConfigError(f"--resume: no sweep named {name!r} in {storage} to resume")
    start_ray(address)
    available = ray.cluster_resources().get("CPU", 0)
    load_space(space_path, available_cpus=available)  # resources the cluster cannot give
    record = start_sweep(space, base_config, directory, name)
    trainable = ray_tune.with_parameters(
        run_trial, space=space, base=base_config.to_dict(), sweep=record
    )
    trainable = ray_tune.with_resources(trainable, space.search.trial_resources())
    started = time.perf_counter()
    if ray_tune.Tuner.can_restore(str(directory)):
        print(f"resuming sweep {name} from {directory}", file=sys.stderr)
        tuner = ray_tune.Tuner.restore(str(directory), trainable=trainable, resume_errored=True)
    else:
        tuner = ray_tune.Tuner(
            trainable,
            param_space=param_space(space),
            tune_config=tune_config(space),
            run_config=ray_tune.RunConfig(name=name, storage_path=str(storage), verbose=1),
        )
    results = tuner.fit()
    close_stopped_trials(record, results)
    from pipeline.tracking import RunLogger

    RunLogger(record["tracking_uri"], record["run_id"], str(directory / "mlflow-sweep-buffer.jsonl")).close()
    summary = {
        "parent_run_id": record["run_id"],
        "experiment_id": record["experiment_id"],
        "trials": len(results),
        "errors": sum(1 for result in results if result.error),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary), file=sys.stderr)
    return summary
