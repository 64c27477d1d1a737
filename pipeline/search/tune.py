"""``nrd-bench tune``: a Ray Tune search over decoders, their hyperparameters and encoder sizes.

Every trial is a full ``nrd-bench train`` run. A multi-worker trial launches its own ``TorchTrainer`` (so it may
span nodes) whose reports reach Tune through ``TuneReportCallback``; a single-worker trial runs the same training
loop in the trial's process, on the resources the trial holds, and reports to Tune directly. The driver creates
one MLflow parent run per sweep (search settings as params, the space file as artifact); each trial is a nested
child run with the same content as a ``train`` run, tagged with its trial id. One objective: ASHA stops weak
trials early on it. Several (e.g. maximise mIoU, minimise GMACs): Optuna's multi-objective sampler, no early
stopping.

Re-running with the same ``--name`` (or ``--resume``) continues a sweep: finished trials are not rerun and their
child runs are found again rather than duplicated (each trial keeps its MLflow run id beside its checkpoints). A
trial whose process dies (a preempted node, a crash) is restarted by Tune up to ``run.max_failures`` times (of the
sweep's config, e.g. ``fixed: {run.max_failures: 2}``; -1: no limit) from its last checkpoint, into the same child
run; Tune keeps the newest ``CHECKPOINTS_KEPT`` checkpoints of each trial.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from pipeline.config import ConfigError, TrainConfig, canonical_key, is_decoder_argument
from pipeline.names import (
    DRIVER_BUFFER,
    FINISHED_MARKER,
    GMACS_MODEL,
    ITERATION,
    KIND_SWEEP,
    KIND_TAG,
    MIOU,
    RUN_RECORD,
    STOPPED_EARLY_TAG,
    SWEEP_BUFFER,
    SWEEP_RECORD,
    SWEEP_TAG,
    TRIAL_ID_TAG,
    TRIAL_VALUES_TAG,
)
from pipeline.resolve import check_model, resolve
from pipeline.search.spaces import VARIANTS_KEY, SearchSpace, load_space
from pipeline.training.checkpoints import CHECKPOINTS_KEPT, read_result
from pipeline.training.cluster import start_ray
from pipeline.training.run import train
from pipeline.training.tracking import open_run, resolve_tracking_uri
from pipeline.values import SWEEP_NAME_EXPECTED, is_folder_name, merge, require


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


SAMPLED = "sampled"  # with search.seeds > 1: the Tune parameter holding one pre-drawn set of random values
SEED_KEY = "schedule.seed"
RANDOM = ("choice", "uniform", "loguniform", "randint")


def param_space(space: SearchSpace) -> dict[str, Any]:
    """Ray Tune's parameters, named with the flat names of ``pipeline.config`` (``nrd.dyn_channels``): no "/", which
    Tune and Optuna read as nesting.

    With ``search.seeds`` > 1 every configuration is repeated with ``schedule.seed`` 0..seeds-1, as a grid axis.
    Tune draws random values anew for every grid point, which would give each repeat other values; so the random
    distributions are drawn here instead, ``num_samples`` times from a seeded generator (the same draws on resume),
    and enter as one more grid axis (``sampled``) beside the space's own grids."""
    from ray import tune

    search = space.search
    if search.seeds == 1:
        return {key: tune_distribution(kind, arguments) for key, (kind, arguments) in space.space.items()}
    params = {key: tune_distribution(kind, arguments) for key, (kind, arguments) in space.space.items()}
    random_keys = [key for key, (kind, _) in space.space.items() if kind in RANDOM]
    rng = np.random.default_rng(0)
    draws = [{key: draw(rng, *space.space[key]) for key in random_keys} for _ in range(search.num_samples)]
    for key in random_keys:
        del params[key]
    if random_keys:
        params[SAMPLED] = tune.grid_search(draws)
    params[SEED_KEY] = tune.grid_search(list(range(search.seeds)))
    return params


def draw(rng: np.random.Generator, kind: str, arguments: Any) -> Any:
    """One value of a random distribution of a space, as plain Python."""
    if kind == "choice":
        return arguments[int(rng.integers(len(arguments)))]
    if kind == "uniform":
        return float(rng.uniform(*arguments))
    if kind == "loguniform":
        low, high = arguments
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return int(rng.integers(*arguments))  # randint: [low, high)


def trial_config(
    space: SearchSpace, base: TrainConfig, sampled: dict[str, Any], trial_id: str, sweep: dict
) -> TrainConfig:
    """The sweep's resolved config with the space's fixed values and this trial's ``sampled`` ones, run as
    ``trial_id`` under the sweep's folder and MLflow run; its model checked (``check_model``)."""
    source = f"{space.path} trial {trial_id}"
    run = {
        "run.name": trial_id,
        "run.storage_path": str(Path(sweep["directory"]) / "trials"),
        "run.tracking_uri": sweep["tracking_uri"],  # the driver's, resolved: a trial's working directory is elsewhere
        "run.max_failures": 0,  # a trial's own TorchTrainer: Tune restarts the whole trial (sweep_run_config)
    }
    # The base holds the fixed values already; those of the decoder's hyperparameters go again, since the trial's
    # decoder may differ from the base's (updated drops the hyperparameters of another decoder).
    hyperparameters = {key: value for key, value in space.fixed.items() if is_decoder_argument(key)}
    return check_model(base.updated({**hyperparameters, **sampled, **run}, source))


def flat_values(sampled: dict[str, Any]) -> dict[str, Any]:
    """A trial's Tune parameters as flat keys: the pre-drawn random values (``sampled``) and the chosen variant's
    values spread out."""
    values: dict[str, Any] = {}
    for key, value in sampled.items():
        if key == SAMPLED:
            values.update(flat_values(value))
        elif key == VARIANTS_KEY:
            values.update(value)
        else:
            values[key] = value
    return values


def run_trial(
    sampled: dict[str, Any], space: SearchSpace, base: TrainConfig, manifest: dict, sweep: dict[str, str]
) -> None:
    """The Tune function trainable: one training run with this trial's values, as a child MLflow run."""
    import ray.tune
    from mlflow import MlflowClient

    from pipeline.training.logger import RunLogger

    trial_id = ray.tune.get_context().get_trial_id()
    sampled = flat_values(sampled)
    values = {canonical_key(key, space.path): value for key, value in sampled.items()}  # old sweeps: nrd__arg
    config = trial_config(space, base, values, trial_id, sweep)
    directory = Path(config.run.storage_path) / config.run.name
    if (directory / FINISHED_MARKER).exists():  # finished before the sweep's driver could record it: report again
        record = json.loads((directory / RUN_RECORD).read_text())
        logger = RunLogger(record["tracking_uri"], record["run_id"], str(directory / DRIVER_BUFFER))
        if MlflowClient(record["tracking_uri"]).get_run(record["run_id"]).info.status == "RUNNING":
            logger.close(status="FINISHED")  # killed between the marker and closing the run
        ray.tune.report(read_result(directory))
        return
    tags = {TRIAL_ID_TAG: trial_id, SWEEP_TAG: sweep["name"], TRIAL_VALUES_TAG: json.dumps(values, default=str)}
    # a name a person can read in the MLflow UI; the folder keeps the trial id, which resumed sweeps look for
    name = f"{config.model.decoder}-{config.model.encoder}-{trial_id}"
    name += f"-seed{config.schedule.seed}" if space.search.seeds > 1 else ""
    train(config, manifest, parent_run_id=sweep["run_id"], extra_tags=tags, in_tune_trial=True, run_name=name)


def start_sweep(space: SearchSpace, base_config: TrainConfig, directory: Path, name: str) -> dict[str, str]:
    """The sweep's parent MLflow run: created once (with the search settings as params and the space file as an
    artifact), found again on resume."""
    from pipeline.training.logger import RunLogger

    uri = resolve_tracking_uri(base_config.run.tracking_uri)
    record, created = open_run(directory / SWEEP_RECORD, uri, base_config.run.experiment, name, {KIND_TAG: KIND_SWEEP})
    record = record | {"name": name, "directory": str(directory)}
    if not created:
        return record
    logger = RunLogger(uri, record["run_id"], str(directory / SWEEP_BUFFER))
    search = space.search
    logger.log_params(
        {
            "objectives": json.dumps(search.objectives),
            "scheduler": "optuna-multi-objective" if search.multi_objective else search.scheduler,
            "num_samples": search.num_samples,
            "seeds": search.seeds,
            "max_concurrent": search.max_concurrent,
            "iterations": search.iterations,
            "resources": json.dumps(search.resources),
            "space_file": space.path,
        }
    )
    logger.log_artifact(space.path, "space")
    logger.flush()
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
        return tune.TuneConfig(
            search_alg=searcher, num_samples=search.num_samples, max_concurrent_trials=search.max_concurrent
        )
    metric, mode = next(iter(search.objectives.items()))
    scheduler = None
    if search.scheduler == "asha":
        scheduler = ASHA(
            time_attr=ITERATION,
            max_t=search.iterations,
            grace_period=search.grace_period,
            reduction_factor=search.reduction_factor,
        )
    return tune.TuneConfig(
        metric=metric,
        mode=mode,
        scheduler=scheduler,
        num_samples=search.num_samples if search.seeds == 1 else 1,  # else drawn by param_space
        max_concurrent_trials=search.max_concurrent,
    )


# The live table's short names: parameters by their last part (nrd.static_base: static_base), and these metrics
SHORT_METRICS = {ITERATION: "iter", "loss": "loss", MIOU: "mIoU", GMACS_MODEL: "GMACs"}


def progress_reporter(space: SearchSpace):
    """Tune's live table of trials: each searched setting under its short name, then the iteration, the loss, the
    objectives (mIoU, GMACs) and the others the search optimises. Tune's newer output engine picks its own columns
    (the first four metrics a trial reports, the full parameter names), so the sweep uses this reporter instead
    (``RAY_AIR_NEW_OUTPUT=0``, unless the user set it)."""
    from ray import tune

    repeated = space.search.seeds > 1  # random values then sit under SAMPLED (param_space), the seed is an axis
    keys = []
    for key, (kind, arguments) in space.space.items():
        if key == VARIANTS_KEY:  # a grid of mappings: a column per key all of them set (Tune's best-trial line
            # looks every column up with no default: a key some variants lack would fail the sweep at its end)
            names = dict.fromkeys(name for variant in arguments for name in variant)
            keys += [f"{key}/{name}" for name in names if all(name in variant for variant in arguments)]
        else:
            keys.append(f"{SAMPLED}/{key}" if repeated and kind in RANDOM else key)
    short = {}
    for key in [*keys, *([SEED_KEY] if repeated else [])]:
        name = key.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
        short[key] = name if name not in short.values() else key.rsplit("/", 1)[-1]
    metrics = dict(SHORT_METRICS) | {
        metric: metric for metric in space.search.objectives if metric not in SHORT_METRICS
    }
    # The table at every report and at the end, said here: left unset, Tune decides it from the process-wide
    # verbosity, which the first sweep's tune.run lowers, so a second sweep in one process printed no table at all
    return tune.CLIReporter(
        parameter_columns=short, metric_columns=metrics, max_report_frequency=30, print_intermediate_tables=True
    )


def sweep_run_config(name: str, storage: Path, base_config: TrainConfig, space: SearchSpace):
    """Tune's run settings: a trial that fails (its process killed by a preemption, or a crash) is restarted up to
    ``run.max_failures`` times from its last checkpoint (``TrialSession.checkpoint``); the restarted trial finds its
    MLflow run again (the record beside its run folder) and logs no metric step twice (``RunLogger``). A
    multi-worker trial's own TorchTrainer resumes from its own checkpoints, of which it keeps as many."""
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=str(storage),
        failure_config=tune.FailureConfig(max_failures=base_config.run.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        progress_reporter=progress_reporter(space),
        verbose=1,
    )


def first_line(error: BaseException) -> str:
    """The first line of the innermost message of a trial's error (Ray wraps the trial's own exception)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    return (causes[-1] if causes else (lines or [type(error).__name__])[-1])[:300]


def close_stopped_trials(record: dict[str, str], results) -> None:
    """Child runs of trials ASHA stopped (or that failed) stay RUNNING in MLflow: end them as KILLED/FAILED."""
    from mlflow import MlflowClient

    client = MlflowClient(record["tracking_uri"])
    children = client.search_runs(
        [record["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{record['run_id']}'"
    )
    failed = {result.metrics.get("trial_id") for result in results if result.error}  # Tune's own trial id
    for child in children:
        if child.info.status == "RUNNING":
            status = "FAILED" if child.data.tags.get(TRIAL_ID_TAG) in failed else "KILLED"
            client.set_tag(child.info.run_id, STOPPED_EARLY_TAG, "true" if status == "KILLED" else "false")
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

    name = name or Path(space_path).stem
    require(is_folder_name(name), "nrd-bench tune", "--name", name, SWEEP_NAME_EXPECTED)
    space = load_space(space_path)
    overrides = {"data": {"dataset_dir": dataset_dir}} if dataset_dir else {}
    base_dict = merge(merge(base or {}, space.trial_overrides({})), overrides)
    base_config, manifest = resolve(TrainConfig.from_dict(base_dict, source=space_path))  # once for the sweep
    storage = Path(base_config.run.storage_path)
    directory = storage / name
    if resume and not directory.exists():
        raise ConfigError(f"--resume: no sweep named {name!r} in {storage} to resume")
    start_ray(address)
    available = ray.cluster_resources().get("CPU", 0)
    load_space(space_path, available_cpus=available)  # resources the cluster cannot give
    record = start_sweep(space, base_config, directory, name)
    trainable = ray_tune.with_parameters(run_trial, space=space, base=base_config, manifest=manifest, sweep=record)
    trainable = ray_tune.with_resources(trainable, space.search.trial_resources())
    started = time.perf_counter()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's live table from progress_reporter (see there)
    if ray_tune.Tuner.can_restore(str(directory)):
        print(f"resuming sweep {name} from {directory}", file=sys.stderr)
        tuner = ray_tune.Tuner.restore(str(directory), trainable=trainable, resume_errored=True)
    else:
        tuner = ray_tune.Tuner(
            trainable,
            param_space=param_space(space),
            tune_config=tune_config(space),
            run_config=sweep_run_config(name, storage, base_config, space),
        )
    results = tuner.fit()
    close_stopped_trials(record, results)
    from pipeline.training.logger import RunLogger

    RunLogger(record["tracking_uri"], record["run_id"], str(directory / SWEEP_BUFFER)).close()
    summary = {
        "parent_run_id": record["run_id"],
        "experiment_id": record["experiment_id"],
        "trials": len(results),
        "errors": sum(1 for result in results if result.error),
        "failed_trials": [
            {"trial": Path(result.path).name, "error": first_line(result.error)} for result in results if result.error
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary), file=sys.stderr)
    return summary
