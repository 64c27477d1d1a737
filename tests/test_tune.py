"""`nrd-bench tune` then `nrd-bench pareto`, end to end on a real local Ray and real MLflow (sqlite and an
`mlflow server` on 127.0.0.1), and a sweep whose driver is killed and resumed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from conftest import processes_using  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from nrd.data import create_dataset, prepare_shards  # noqa: E402
from pipeline.commands.cli import main  # noqa: E402
from pipeline.names import KIND_SWEEP, KIND_TAG  # noqa: E402

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    dataset = create_dataset("synthetic", num_samples={"train": 32, "val": 4}, size=(64, 64), num_classes=4, seed=5)
    prepare_shards(dataset, out, progress=False)
    return out


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2)  # with the dashboard: Train's placement-group cleaner needs it
    yield
    ray.shutdown()


def write_space(tmp_path: Path, decoders: str, search: str = FIFO, distribution: str = "grid") -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.format(decoders=decoders, search=search, distribution=distribution))
    return path


def children(client: MlflowClient, parent) -> list:
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )


def sweep_then_pareto(tracking_uri, shards, tmp_path, capsys, decoders: list[str], search: str, objectives) -> None:
    distribution = "choice" if search == OPTUNA else "grid"
    space = write_space(tmp_path, ", ".join(decoders), search, distribution)
    args = ["tune", "--space", str(space), "--dataset-dir", str(shards), "--storage-path", str(tmp_path / "results"),
            "--tracking-uri", tracking_uri, "--experiment", "sweeps", "--name", "e2e"]  # fmt: skip
    assert main(args) == 0
    parent_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["parent_run_id"]
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
        assert (run.info.status == "KILLED") == (run.data.tags.get("stopped_early") == "true")
    for run in finished:
        assert {"mIoU", "gmacs_model", "loss"} <= set(run.data.metrics)
        assert {"config.yaml", "weights"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    out = tmp_path / "pareto"
    assert main(["pareto", "--parent-run", parent_id, "--tracking-uri", tracking_uri, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic" in printed and ".png" in printed
    assert list(out.glob("*.png"))
    tagged = {run.info.run_id: run.data.tags for run in children(client, parent)}
    assert all(tags["pareto_optimal"] in ("true", "false") for tags in tagged.values())
    assert any(tags["pareto_optimal"] == "true" for tags in tagged.values())


def test_sweep_and_pareto_on_sqlite(local_ray, shards, tmp_path, capsys):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep_then_pareto(tracking_uri, shards, tmp_path, capsys, ["nrd", "bilinear"], FIFO, {"mIoU": "max"})


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


def test_asha_stops_a_trial_and_the_sweep_goes_on(local_ray, shards, tmp_path, capsys):
    """ASHA on the training loss: the second trial cannot learn (lr 1e-9), so at the rung (iteration 16) its loss is
    still the initial one, above the first trial's, and ASHA stops it. (Val mIoU cannot order trials this short: a
    model that has just learnt to say "background" scores below a random one.) The third trial must still start and
    finish (a stopped trial must not keep resources), and the stopped one is closed in MLflow as KILLED."""
    space = tmp_path / "asha.yaml"
    space.write_text(ASHA_SPACE)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["tune", "--space", str(space), "--dataset-dir", str(shards), "--storage-path", str(tmp_path / "results"),
            "--tracking-uri", tracking_uri, "--name", "asha"]  # fmt: skip
    assert main(args) == 0
    parent_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["parent_run_id"]
    client = MlflowClient(tracking_uri)
    trials = children(client, client.get_run(parent_id))
    by_lr = sorted(trials, key=lambda run: (float(run.data.params["schedule.lr"]), run.info.start_time))
    statuses = [run.info.status for run in by_lr]
    assert len(trials) == 3 and all(run.data.tags["trial_id"] for run in trials)
    at_rung = {run.data.params["schedule.lr"]: [m.value for m in client.get_metric_history(run.info.run_id, "loss")
                                                if m.step == 16] for run in by_lr}  # fmt: skip
    assert statuses[0] == "KILLED", (statuses, at_rung)  # the lr 1e-9 trial
    assert by_lr[0].data.tags["stopped_early"] == "true"
    assert max(run.info.start_time for run in trials) > by_lr[0].info.start_time  # a trial started after the stop
    assert "FINISHED" in statuses[1:]
    stopped_steps = [m.step for m in client.get_metric_history(by_lr[0].info.run_id, "loss")]
    assert 16 in stopped_steps and max(stopped_steps) < 20  # stopped at the rung, before the end


def test_multi_objective_sweep_and_pareto_on_an_mlflow_server(local_ray, shards, tmp_path, capsys, mlflow_server):
    """Optuna's multi-objective sampler (mIoU max, GMACs min), one trial, tracked over HTTP."""
    objectives = {"mIoU": "max", "gmacs_model": "min"}
    sweep_then_pareto(mlflow_server.uri, shards, tmp_path, capsys, ["bilinear"], OPTUNA, objectives)


def test_killed_sweep_resumes_without_rerunning_or_duplicating(shards, tmp_path, ray_env):
    """The driver (with its own local Ray, in a private RAY_TMPDIR) is SIGKILLed once a trial has finished."""
    space = write_space(tmp_path, "bilinear, nrd")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "pipeline.cli", "tune", "--space", str(space), "--dataset-dir", str(shards),
               "--storage-path", str(tmp_path / "results"), "--tracking-uri", tracking_uri,
               "--name", "resume"]  # fmt: skip
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

    resumed = subprocess.run([*command, "--resume"], cwd=tmp_path, env=ray_env, capture_output=True, text=True,
                             timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming sweep resume" in resumed.stderr
    experiment = client.get_experiment_by_name("nrd-bench")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get("trial_id")]
    trial_ids = [r.data.tags["trial_id"] for r in trials]
    assert len(trial_ids) == len(set(trial_ids)) == 2  # no child run duplicated
    assert sorted(r.data.tags["decoder"] for r in trials) == ["bilinear", "nrd"]
    again = client.get_run(first_trial.info.run_id)
    assert again.info.end_time == first_trial.info.end_time  # the finished trial was not rerun
    assert all(r.info.status == "FINISHED" for r in trials)
    assert len([r for r in runs if r.data.tags.get(KIND_TAG) == KIND_SWEEP]) == 1
