"""``nrd-bench train``'s driver: Ray Train (DDP over gloo on CPU, NCCL on GPU) fed by Ray Data, tracked in MLflow.

The driver takes a resolved ``TrainConfig`` (``pipeline.resolve.resolve``), starts or connects to Ray, creates (or
finds again) the MLflow run, builds the Ray Data pipelines (``ingest``) and runs a ``TorchTrainer`` whose workers run
``loop.train_loop`` with that same config object. A restarted attempt (worker or node failure, or the same command
run again) resumes from the last checkpoint and logs into the same MLflow run without repeating a metric step.
Inside a Ray Tune trial, a single-worker run executes the same loop in the trial's process instead
(``TrialSession``).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from nrd.errors import NRDBenchError
from pipeline.config import TrainConfig
from pipeline.names import CONFIG_FILE, DRIVER_BUFFER, ERROR_TAG, ERROR_TAG_CHARS, RUN_BUFFER
from pipeline.training.checkpoints import (
    CHECKPOINTS_KEPT,
    refuse_finished,
    run_directory,
    write_config,
    write_result,
)
from pipeline.training.cluster import check_cluster, start_ray
from pipeline.training.ingest import build_datasets
from pipeline.training.lineage import log_datasets
from pipeline.training.loop import train_loop
from pipeline.training.sessions import TrialSession
from pipeline.training.tracking import TrackingUnavailableError, start_tracking


def train(
    config: TrainConfig,
    manifest: dict,
    address: str | None = None,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    in_tune_trial: bool = False,
    run_name: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the training run described by ``config``, resolved against the data set's ``manifest``
    (``pipeline.resolve.resolve``); returns the final metrics and run ids. ``parent_run_id`` nests the MLflow run
    (sweeps). ``in_tune_trial``: called from a Ray Tune trial, whose reports and checkpoints then go to Tune; a
    single-worker run trains in the trial's own process (``TrialSession``), a multi-worker one through its own
    ``TorchTrainer``. ``run_name``: the MLflow run's name, when it is not ``run.name`` (which names the folder)."""
    from pipeline.training.logger import RunLogger

    directory = run_directory(config)
    refuse_finished(config, directory)
    check_cluster(config, can_grow=start_ray(address), in_tune_trial=in_tune_trial)
    record = start_tracking(config, manifest, directory, parent_run_id, extra_tags, run_name)
    log_datasets(record["tracking_uri"], record["run_id"], manifest, config.data.dataset_dir)
    driver_logger = RunLogger(record["tracking_uri"], record["run_id"], str(directory / DRIVER_BUFFER))
    if in_tune_trial:  # the sweep ends the runs of trials that failed or were stopped (close_stopped_trials)
        return _train(config, manifest, directory, record, driver_logger, in_tune_trial)
    try:
        return _train(config, manifest, directory, record, driver_logger, in_tune_trial)
    except TrackingUnavailableError:
        raise  # MLflow is away: the run's end is in the buffer files the error names, to replay
    except BaseException as error:  # the run exists: it must not stay RUNNING
        end_failed(driver_logger, error, config)
        raise


def end_failed(driver_logger, error: BaseException, config: TrainConfig) -> None:
    """End the MLflow run as KILLED (interrupted: the same command resumes it) or FAILED, with the error as the
    ``ERROR_TAG`` tag; best effort, within a few seconds (the error that got here is the one to report)."""
    interrupted = isinstance(error, KeyboardInterrupt | SystemExit)
    message = "interrupted; rerun the same command to resume" if interrupted else f"{type(error).__name__}: {error}"
    with contextlib.suppress(Exception):
        driver_logger.set_tags({ERROR_TAG: message[:ERROR_TAG_CHARS]})
        driver_logger.close(status="KILLED" if interrupted else "FAILED", timeout=min(5.0, config.run.tracking_timeout))


def _train(config: TrainConfig, manifest: dict, directory: Path, record: dict, driver_logger, in_tune_trial: bool):
    resolved = config.to_dict()  # as written beside the results and logged
    if driver_logger.last_step() is None:
        driver_logger.log_params(config.flat_params())
        driver_logger.log_dict(resolved, CONFIG_FILE)
    driver_logger.flush()
    write_config(directory, resolved)
    loop_config = {
        "config": config,
        "manifest": manifest,
        "tracking_uri": record["tracking_uri"],
        "run_id": record["run_id"],
        "buffer_path": str(directory / RUN_BUFFER),  # rank 0's; the driver keeps its own beside it
    }
    if in_tune_trial and config.scaling.workers == 1:
        session = TrialSession(build_datasets(config, manifest), config.scaling.use_gpu)
        train_loop(loop_config, session)
        metrics = session.last_metrics
    else:
        metrics = fit_trainer(config, manifest, loop_config, in_tune_trial)
    write_result(directory, metrics)
    end_tracking(
        driver_logger, directory / RUN_BUFFER, config, directory
    )  # last: FINISHED in MLflow implies the marker
    print(f"finished {config.run.name}: {json.dumps(metrics, default=str)}", file=sys.stderr)
    return {"metrics": metrics, "run_id": record["run_id"], "directory": str(directory)}


def fit_trainer(config: TrainConfig, manifest: dict, loop_config: dict[str, Any], in_tune_trial: bool) -> dict:
    """Train with a ``TorchTrainer`` (its workers spread over the nodes); its reports reach Tune when inside a
    trial. Returns the last reported metrics."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.exceptions import TrainingFailedError

    scaling = config.scaling
    callbacks = None
    if in_tune_trial:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks = [TuneReportCallback()]
    resources = {"CPU": scaling.cpus_per_worker} | ({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {})
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy="SPREAD" if scaling.workers > 1 else "PACK",
        ),
        run_config=ray.train.RunConfig(
            name=config.run.name,
            storage_path=config.run.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            callbacks=callbacks,
        ),
        datasets=build_datasets(config, manifest),
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    try:
        return dict(trainer.fit().metrics or {})
    except TrainingFailedError as error:  # a bad input a worker found (weights it cannot get): that one line
        for failure in getattr(error, "worker_failures", {}).values():
            cause = getattr(failure, "cause", None) or failure
            if isinstance(cause, NRDBenchError):
                raise cause from error
        raise


def end_tracking(driver_logger, worker_buffer: Path, config: TrainConfig, directory: Path) -> None:
    """Deliver what rank 0 could not (its buffer file, left when MLflow stayed away at its end), then end the run
    as FINISHED. If MLflow stays unreachable for ``run.tracking_timeout`` seconds, raise one error naming every
    buffer file, in the order to replay them: the training itself is done and recorded beside the checkpoints."""
    from pipeline.training.logger import RunLogger

    timeout = config.run.tracking_timeout
    try:
        if worker_buffer.exists():
            RunLogger(driver_logger.tracking_uri, driver_logger.run_id, worker_buffer).drain(timeout)
        driver_logger.close(status="FINISHED", timeout=timeout)
    except TrackingUnavailableError as error:
        if not driver_logger.buffer_path.exists():  # the end of the run must be replayed too
            with contextlib.suppress(TrackingUnavailableError):
                driver_logger.close(status="FINISHED", timeout=0)
        buffers = [path for path in (worker_buffer, driver_logger.buffer_path) if path.exists()]
        replay = "; ".join(f"nrd-bench replay {shlex.quote(str(path))}" for path in buffers)
        raise TrackingUnavailableError(
            f"training of {config.run.name!r} finished (results and checkpoints in {directory}), but MLflow at "
            f"{driver_logger.tracking_uri} was still unreachable {timeout:g} s after the end of training. Nothing is "
            f"lost: run {driver_logger.run_id}'s remaining operations are kept in {len(buffers)} file(s); when MLflow "
            f"is reachable, run, in this order: {replay}"
        ) from error
