"""`nrd-bench tune` then `nrd-bench pareto` and `nrd-bench report`, end to end on a real local Ray and real MLflow
(sqlite and an `mlflow server` on 127.0.0.1): Optuna's multi-objective search, ASHA stopping a weak trial, and a
grid sweep whose driver is killed and resumed (the one FIFO grid sweep on sqlite: it is also checked whole). The
Pareto and report checks read the runs the real training code wrote (tags such as ``eval_input`` included)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
from conftest import processes_using  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline.commands.cli import main  # noqa: E402
from pipeline.names import CONFIG_KEY_TAG, KIND_SWEEP, KIND_TAG  # noqa: E402
from pipeline.search.spaces import load_space  # noqa: E402
from pipeline.search.tune import ASHA, param_space, progress_reporter, tune_config  # noqa: E402

RUNG = 16  # ASHA_SPACE's grace_period
EVAL_INPUT = "1x3x64x64"  # the input size the trials' cost is counted at: batch 1, RGB, the 64x64 val images

SPACE = """
search:
{search}
  max_concurrent: 1
  iterations: 10
  resources: {{workers: 1, cpus_per_worker: 0.5}}
fixed:
  batch_size: 4
  lr: 0.05
  data.crop_size: [64, 64]
  schedule.log_interval: 5
  schedule.eval_interval: 5
  schedule.checkpoint_interval: 10
space:
  decoder: {{{distribution}: [{decoders}]}}
  encoder: resnet18
"""
FIFO = "  objectives: {mIoU: max}\n  scheduler: fifo"
OPTUNA = "  objectives: {mIoU: max, gmacs_model: min}\n  scheduler: fifo\n  num_samples: 1"


def write_space(tmp_path: Path, decoders: str, search: str = FIFO, distribution: str = "grid") -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.format(decoders=decoders, search=search, distribution=distribution))
    return path


def children(client: MlflowClient, parent) -> list:
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )


def check_sweep(tracking_uri, parent_id, tmp_path, capsys, decoders: list[str], objectives: dict) -> list:
    """The sweep's parent run and its trials in MLflow, then `nrd-bench pareto` and `nrd-bench report` on the
    trials' runs as training wrote them; returns the trials' runs."""
    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_id)
    assert parent.data.tags[KIND_TAG] == KIND_SWEEP and parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["objectives"]) == objectives
    assert [a.path for a in client.list_artifacts(parent_id, "space")] == ["space/space.yaml"]
    trials = children(client, parent)
    assert sorted(run.data.tags["decoder"] for run in trials) == sorted(decoders)
    finished = [run for run in trials if run.info.status == "FINISHED"]
    assert finished
    for run in trials:  # a trial ASHA stopped is closed, not left RUNNING
        assert run.data.tags["trial_id"] and run.info.status in ("FINISHED", "KILLED")
        tags = run.data.tags  # named for a person reading the MLflow UI (the seed too when repeated)
        assert re.fullmatch(rf"{tags['decoder']}-{tags['encoder']}-{tags['trial_id']}(-seed\d+)?", run.info.run_name)
        assert (run.info.status == "KILLED") == (run.data.tags.get("stopped_early") == "true")
    for run in finished:
        assert {"mIoU", "gmacs_model", "loss"} <= set(run.data.metrics)
        assert {"config.yaml", "weights", "images"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        datasets = sorted(item.dataset.name for item in run.inputs.dataset_inputs)  # the shards, as MLflow datasets
        assert datasets == ["synthetic-train", "synthetic-val"]

    out = tmp_path / "pareto"
    capsys.readouterr()
    assert main(["pareto", "--parent-run", parent_id, "--tracking-uri", tracking_uri, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic" in printed and ".png" in printed
    assert f"cost counted at input {EVAL_INPUT}" in printed, printed  # the tag training wrote, read by pareto
    assert list(out.glob("*.png"))
    (table,) = out.glob("*_vs_gmacs_model.csv")  # beside it: the _intervals.csv
    with open(table, newline="") as file:
        assert {row["eval_input"] for row in csv.DictReader(file)} == {EVAL_INPUT}
    tagged = {run.info.run_id: run.data.tags for run in children(client, parent)}
    assert all(tags["pareto_optimal"] in ("true", "false") for tags in tagged.values())
    assert any(tags["pareto_optimal"] == "true" for tags in tagged.values())
    summary = client.get_run(parent_id).data  # the parent run sums the sweep up
    assert summary.metrics["trials_finished"] == len(finished) and summary.metrics["front_size"] >= 1
    assert summary.metrics["best_mIoU"] == max(run.data.metrics["mIoU"] for run in finished)
    note = summary.tags["mlflow.note.content"]
    front_names = [run.info.run_name for run in children(client, parent) if run.data.tags["pareto_optimal"] == "true"]
    assert all(f"| {name} |" in note for name in front_names), note
    ui = tracking_uri if tracking_uri.startswith("http") else "http://127.0.0.1:5000"  # `mlflow ui` for a local store
    assert f"  run: {ui}/#/experiments/{parent.info.experiment_id}/runs/{parent_id}" in printed

    report = tmp_path / "report"
    experiment = client.get_experiment(parent.info.experiment_id).name
    assert main(["report", "--experiment", experiment, "--tracking-uri", tracking_uri, "--out", str(report)]) == 0
    capsys.readouterr()
    with open(report / "report_synthetic.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert sorted(row["decoder"] for row in rows) == sorted({run.data.tags["decoder"] for run in finished})
    for row in rows:  # the report's columns from the tags and metrics training wrote
        run = client.get_run(row["run_id"])
        assert row["eval_input"] == EVAL_INPUT and row["device"] == "cpu", row
        assert float(row["gmacs_model"]) == run.data.metrics["gmacs_model"]
        assert row["commit"] == run.data.tags["git_commit"]
    return trials


def sweep(space: Path, shards: Path, tmp_path: Path, tracking_uri: str, name: str, capsys, *extra: str) -> str:
    """`nrd-bench tune` in this process (on the session's Ray); returns the parent run id it printed."""
    args = [
        "tune",
        "--space",
        str(space),
        "--dataset-dir",
        str(shards),
        "--storage-path",
        str(tmp_path / "results"),
        "--tracking-uri",
        tracking_uri,
        "--name",
        name,
        *extra,
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    (tmp_path / f"{name}.out").write_text(printed)  # Tune's live table, for the tests that read it
    return json.loads(printed.strip().splitlines()[-1])["parent_run_id"]


# ------------------------------------------------------------------------------------------------- tune_config
def test_tune_config_picks_optuna_for_several_objectives_asha_or_fifo_for_one(tmp_path):
    """Which Tune search each space gets: Optuna's multi-objective sampler (every objective with its mode, no
    scheduler), ASHA with the space's rungs on the one objective, or plain FIFO."""
    from ray.tune.search.optuna import OptunaSearch

    several = tune_config(load_space(write_space(tmp_path, "bilinear", OPTUNA, "choice")))
    searcher = several.search_alg
    assert isinstance(searcher, OptunaSearch) and several.scheduler is None
    assert (searcher.metric, searcher.mode) == (["mIoU", "gmacs_model"], ["max", "min"])
    assert several.num_samples == 1 and several.max_concurrent_trials == 1

    asha_space = tmp_path / "asha.yaml"
    asha_space.write_text(ASHA_SPACE)
    one = tune_config(load_space(asha_space))
    assert isinstance(one.scheduler, ASHA) and one.search_alg is None
    assert (one.metric, one.mode) == ("loss", "min")
    assert (one.scheduler._time_attr, one.scheduler._max_t) == ("iteration", 20)
    assert [milestone for milestone, _ in one.scheduler._brackets[0]._rungs] == [16]  # grace 16, x2 > max_t 20

    fifo = tune_config(load_space(write_space(tmp_path, "nrd, bilinear")))
    assert fifo.scheduler is None and fifo.search_alg is None and (fifo.metric, fifo.mode) == ("mIoU", "max")


def test_the_live_table_names_parameters_short_and_shows_the_objectives(tmp_path, monkeypatch):
    space = tmp_path / "space.yaml"
    space.write_text(
        "search: {objectives: {mIoU: max}, scheduler: fifo, num_samples: 2, seeds: 2}\n"
        "space:\n  variants: {grid: [{model.decoder: nrd, nrd.static_base: true}, {model.decoder: bilinear}]}\n"
        "  lr: {loguniform: [0.001, 0.1]}\n  encoder: {grid: [resnet18, resnet34]}\n"
    )
    from ray.tune.utils import log

    # what an earlier sweep in this process leaves behind (tune.run sets it), put back after the test
    monkeypatch.setattr(log, "verbosity", log.Verbosity.V1_EXPERIMENT)
    reporter = progress_reporter(load_space(space))
    assert reporter._print_intermediate_tables  # the table, in the second sweep of a process too
    assert reporter._parameter_columns == {  # where each value sits in a trial's Tune config: see param_space
        "variants/model.decoder": "decoder",  # not static_base: only one variant sets it
        "sampled/schedule.lr": "lr",
        "model.encoder": "encoder",
        "schedule.seed": "seed",
    }
    assert list(reporter._metric_columns.values()) == ["iter", "loss", "mIoU", "GMACs"]
    config = param_space(load_space(space))
    assert set(config) == {"variants", "sampled", "model.encoder", "schedule.seed"}


def test_seeds_repeat_each_draw_with_the_same_values(tmp_path):
    """``search.seeds: 3`` with random distributions: the values are drawn here (the same on every call, so a
    resumed sweep gets the same ones), num_samples draws, each a grid point repeated with seeds 0, 1, 2; Tune itself
    samples nothing more. With several objectives, or a seed set by hand as well, the space is refused by name."""
    from pipeline.config import ConfigError
    from pipeline.search.tune import SAMPLED, SEED_KEY, param_space

    path = write_space(tmp_path, "bilinear, nrd", FIFO + "\n  seeds: 3\n  num_samples: 4", "choice")
    with open(path, "a") as file:
        file.write("  lr: {loguniform: [0.001, 0.1]}\n")
    space = load_space(path)
    params = param_space(space)
    assert params == param_space(load_space(path))  # reproducible draws
    assert params[SEED_KEY] == {"grid_search": [0, 1, 2]} and set(params) == {SAMPLED, SEED_KEY, "model.encoder"}
    draws = params[SAMPLED]["grid_search"]
    assert len(draws) == 4 and all(set(d) == {"model.decoder", "schedule.lr"} for d in draws)
    assert all(d["model.decoder"] in ("bilinear", "nrd") and 0.001 <= d["schedule.lr"] <= 0.1 for d in draws)
    assert tune_config(space).num_samples == 1
    with pytest.raises(ConfigError, match=r"search\.seeds"):
        load_space(write_space(tmp_path, "bilinear", OPTUNA + "\n  seeds: 2", "choice"))
    twice = write_space(tmp_path, "bilinear", FIFO + "\n  seeds: 2", "choice")
    twice.write_text(twice.read_text().replace("fixed:\n", "fixed:\n  schedule.seed: 1\n"))
    with pytest.raises(ConfigError, match=r"schedule\.seed: set by search\.seeds"):
        load_space(twice)


ASHA_SPACE = """
search:
  objectives: {loss: min}
  scheduler: asha
  grace_period: 16
  reduction_factor: 2
  max_concurrent: 1
  iterations: 20
  resources: {workers: 1, cpus_per_worker: 0.5}
fixed:
  decoder: bilinear
  encoder: resnet18
  batch_size: 8
  data.crop_size: [64, 64]
  schedule.warmup_iterations: 0
  schedule.log_interval: 4
  schedule.eval_interval: 4
  schedule.checkpoint_interval: 20
  schedule.min_lr: 0.0
space:
  lr: {grid: [0.05, 1.0e-9, 0.05]}
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_asha_stops_the_trial_whose_loss_is_worse_at_the_rung(local_ray, shards, tmp_path, capsys):
    """ASHA on the training loss, one rung at iteration 16 (grace_period), reduction factor 2, trials one at a time
    with lr 0.05, 1e-9, 0.05: the 1e-9 trial cannot learn, so at the rung its loss is still the initial one. Each
    trial's fate must follow ASHA's rule on the losses MLflow holds, not its place in the order: a trial is stopped
    exactly when its loss at the rung is above the median of the rung losses of the trials that reached the rung
    before it (the cutoff for reduction factor 2). So the learning trial that reaches the rung after the stopped one
    must finish, and a scheduler that stopped by arrival order would fail here. (Val mIoU cannot order trials this
    short: a model that has just learnt to say "background" scores below a random one.) A stopped trial must not
    keep resources, and is closed in MLflow as KILLED."""
    space = tmp_path / "asha.yaml"
    space.write_text(ASHA_SPACE)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent_id = sweep(space, shards, tmp_path, tracking_uri, "asha", capsys)
    client = MlflowClient(tracking_uri)
    trials = sorted(children(client, client.get_run(parent_id)), key=lambda run: run.info.start_time)
    assert len(trials) == 3 and all(run.data.tags["trial_id"] for run in trials)
    assert [float(run.data.params["schedule.lr"]) for run in trials] == [0.05, 1e-9, 0.05]  # the grid, in order
    history = {run.info.run_id: client.get_metric_history(run.info.run_id, "loss") for run in trials}
    at_rung = {run_id: [m.value for m in metrics if m.step == RUNG] for run_id, metrics in history.items()}
    assert all(len(values) == 1 for values in at_rung.values()), at_rung

    expected, earlier = [], []
    for run in trials:
        loss = at_rung[run.info.run_id][0]
        expected.append("KILLED" if earlier and loss > np.percentile(earlier, 50) else "FINISHED")
        earlier.append(loss)
    statuses = [run.info.status for run in trials]
    assert statuses == expected, (statuses, [at_rung[run.info.run_id] for run in trials])
    assert statuses == ["FINISHED", "KILLED", "FINISHED"], (statuses, at_rung)  # the lr 1e-9 trial, and only it
    stopped = trials[1]
    assert stopped.data.tags["stopped_early"] == "true"
    stopped_steps = [m.step for m in history[stopped.info.run_id]]
    assert RUNG in stopped_steps and max(stopped_steps) < 20  # stopped at the rung, before the end
    assert trials[2].info.start_time > stopped.info.start_time  # the sweep went on after the stop
    assert max(m.step for m in history[trials[2].info.run_id]) == 20


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_multi_objective_sweep_and_pareto_on_an_mlflow_server(local_ray, shards, tmp_path, capsys, mlflow_server):
    """Optuna's multi-objective sampler (mIoU max, GMACs min), one trial, tracked over HTTP. That Optuna ran the
    search is read from the searcher state Tune saved beside the sweep: an Optuna study with both directions, whose
    trial was told both objective values the trial's MLflow run holds."""
    import optuna

    space = write_space(tmp_path, "bilinear", OPTUNA, "choice")
    parent_id = sweep(space, shards, tmp_path, mlflow_server.uri, "e2e", capsys, "--experiment", "sweeps")
    objectives = {"mIoU": "max", "gmacs_model": "min"}
    (trial,) = check_sweep(mlflow_server.uri, parent_id, tmp_path, capsys, ["bilinear"], objectives)
    table = (tmp_path / "e2e.out").read_text()  # Tune's live table: short parameter names, mIoU and GMACs
    header = [line for line in table.splitlines() if "Trial name" in line][-1]  # the metrics come with results
    assert re.search(r"\|\s+decoder\s+\|", header) and "GMACs" in header and "mIoU" in header, header
    assert "model.decoder" not in header, header

    states = sorted((tmp_path / "results" / "e2e").glob("searcher-state-*.pkl"))
    assert states, f"no searcher state in {tmp_path / 'results' / 'e2e'}: Tune ran without a search algorithm"
    with open(states[-1], "rb") as file:
        state = pickle.load(file)
    study = state["_ot_study"]
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    (done,) = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert done.values == [trial.data.metrics["mIoU"], trial.data.metrics["gmacs_model"]]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_killed_sweep_resumes_without_rerunning_or_duplicating(shards, tmp_path, ray_env, capsys):
    """A FIFO sweep on SQLite of one random draw (decoder: choice of bilinear, nrd) repeated with two seeds
    (``search.seeds: 2``), whose driver (with its own local Ray, in a private RAY_TMPDIR) is SIGKILLed once a trial
    has finished; run again with --resume it completes without rerunning or duplicating a repeat. The two trials
    are repeats: the same drawn values and config_key, seeds 0 and 1. The whole sweep is then checked as any other
    (parent, trials, pareto, report), and the front groups the repeats into one configuration with an interval."""
    space = write_space(tmp_path, "bilinear, nrd", FIFO + "\n  seeds: 2", "choice")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "tune",
        "--space",
        str(space),
        "--dataset-dir",
        str(shards),
        "--storage-path",
        str(tmp_path / "results"),
        "--tracking-uri",
        tracking_uri,
        "--name",
        "resume",
    ]
    with open(tmp_path / "first.log", "wb") as log:
        driver = subprocess.Popen(command, cwd=tmp_path, env=ray_env, stdout=log, stderr=log, start_new_session=True)
    client = MlflowClient(tracking_uri)
    deadline = time.monotonic() + 400
    finished = []
    while not finished and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(2)
        if (tmp_path / "mlflow.db").exists():
            experiment = client.get_experiment_by_name("nrd-bench")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            finished = [r for r in runs if r.data.tags.get("trial_id") and r.info.status == "FINISHED"]
    assert finished, f"no trial finished; see {tmp_path / 'first.log'}"
    os.killpg(driver.pid, signal.SIGKILL)  # a driver crash: no clean-up at all
    driver.wait()
    for pid in processes_using(ray_env["RAY_TMPDIR"]):  # its orphaned Ray, and only its own
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    first_trial = finished[0]

    resumed = subprocess.run(
        [*command, "--resume"], cwd=tmp_path, env=ray_env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming sweep resume" in resumed.stderr
    experiment = client.get_experiment_by_name("nrd-bench")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get("trial_id")]
    trial_ids = [r.data.tags["trial_id"] for r in trials]
    assert len(trial_ids) == len(set(trial_ids)) == 2  # no child run duplicated
    again = client.get_run(first_trial.info.run_id)
    assert again.info.end_time == first_trial.info.end_time  # the finished trial was not rerun
    assert all(r.info.status == "FINISHED" for r in trials)
    assert len([r for r in runs if r.data.tags.get(KIND_TAG) == KIND_SWEEP]) == 1
    parent_id = json.loads(resumed.stdout.strip().splitlines()[-1])["parent_run_id"]
    assert sorted(int(r.data.params["schedule.seed"]) for r in trials) == [0, 1]
    assert len({r.data.tags[CONFIG_KEY_TAG] for r in trials}) == 1  # repeats of one configuration
    assert len({r.data.params["model.decoder"] for r in trials}) == 1  # the same draw for both seeds
    decoder = trials[0].data.params["model.decoder"]
    check_sweep(tracking_uri, parent_id, tmp_path, capsys, [decoder, decoder], {"mIoU": "max"})
    (intervals,) = (tmp_path / "pareto").glob("*_intervals.csv")
    with open(intervals, newline="") as file:
        (row,) = csv.DictReader(file)  # one configuration, both repeats in it
    assert row["seeds"] == "2" and set(row["run_ids"].split()) == {r.info.run_id for r in trials}
    assert row["scheme"] == "seeds and images" and float(row["low"]) <= float(row["mIoU"]) <= float(row["high"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sweep_whose_trials_fail_exits_non_zero_and_names_them(local_ray, shards, tmp_path, capsys):
    """Values valid one by one (checked at load) can still fail together inside a trial: batch sizes that two
    workers cannot share. The sweep runs its trials, then exits 1 naming each failed trial and its error."""
    space = tmp_path / "space.yaml"
    space.write_text(
        "search: {objectives: {mIoU: max}, scheduler: fifo, max_concurrent: 1, iterations: 4,\n"
        "         resources: {workers: 2, cpus_per_worker: 0.4}}\n"
        "fixed: {decoder: bilinear, encoder: resnet18}\n"
        "space:\n  schedule.batch_size: {grid: [3, 5]}\n"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["tune", "--space", str(space), "--dataset-dir", str(shards), "--storage-path", str(tmp_path / "results")]
    assert main([*args, "--tracking-uri", uri, "--name", "failing"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("nrd-bench tune: error: 2 of 2 trial(s) failed: ")
    assert "schedule.batch_size=3 is not divisible by scaling.workers=2" in err
    assert "schedule.batch_size=5 is not divisible by scaling.workers=2" in err
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("nrd-bench").experiment_id])
    assert runs and all(run.info.status != "RUNNING" for run in runs)
