"""A sweep's trial whose process dies mid-training (a preempted node, a crash) on the real local Ray and MLflow:
Tune restarts it (``run.max_failures``) from its last checkpoint, into the same MLflow child run, and keeps no more
than ``CHECKPOINTS_KEPT`` of its checkpoints."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from mlflow.tracking import MlflowClient  # noqa: E402
from test_tune import children, sweep  # noqa: E402

from pipeline.names import CHECKPOINT_STATE  # noqa: E402
from pipeline.training.checkpoints import CHECKPOINTS_KEPT  # noqa: E402

ITERATIONS, CHECKPOINT_INTERVAL = 10, 2
# One trial, the smallest budget of the sweep tests; a report (with a checkpoint) every 2 iterations, each with the
# training loss, the objective (so no evaluation before the last iteration)
PREEMPTED_SPACE = f"""
search:
  objectives: {{loss: min}}
  scheduler: fifo
  max_concurrent: 1
  iterations: {ITERATIONS}
  resources: {{workers: 1, cpus_per_worker: 0.5}}
fixed:
  batch_size: 4
  lr: 0.05
  data.crop_size: [64, 64]
  run.max_failures: 1
  schedule.log_interval: 1
  schedule.eval_interval: {ITERATIONS}
  schedule.checkpoint_interval: {CHECKPOINT_INTERVAL}
space:
  decoder: bilinear
  encoder: resnet18
"""


def tune_reports(sweep_dir: Path) -> list[dict]:
    """The results Tune received from the sweep's trials, in order (its trial folders' result.json; a line being
    written is skipped). Each holds the reporting process's ``pid``."""
    rows = []
    for path in sorted(sweep_dir.glob("*/result.json")):
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    rows.append(json.loads(line))
    return rows


def kill_trial_once_reported(sweep_dir: Path, iteration: int, killed: dict, stop: threading.Event) -> None:
    """SIGKILL the trial's process (no clean-up at all, as a preemption) once Tune has received its report at
    ``iteration``: Tune asks for the next result only after registering the checkpoint of the one before, so the
    restarted trial has one to resume from."""
    while not stop.wait(0.1):
        reported = [row for row in tune_reports(sweep_dir) if row.get("iteration", 0) >= iteration]
        if reported:
            killed.update(reported[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(reported[0]["pid"], signal.SIGKILL)
            return


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_trial_resumes_from_its_checkpoint_into_the_same_run(local_ray, shards, tmp_path, capsys):
    """The trial's process is killed after its second report (iteration 4), i.e. once a checkpoint is registered.
    Tune restarts it in a new process that resumes from the last checkpoint: its first report comes after the
    iteration the kill followed, not at the first checkpoint as a fresh start would. The sweep ends without error
    and with one FINISHED child run (not a second one for the restart) whose loss has every step exactly once;
    Tune kept at most CHECKPOINTS_KEPT checkpoints of the trial, each one file (state.pt)."""
    space = tmp_path / "preempted.yaml"
    space.write_text(PREEMPTED_SPACE)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep_dir = tmp_path / "results" / "preempted"
    killed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(
        target=kill_trial_once_reported, args=(sweep_dir, 2 * CHECKPOINT_INTERVAL, killed, stop), daemon=True
    )
    killer.start()
    try:
        parent_id = sweep(space, shards, tmp_path, tracking_uri, "preempted", capsys)
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, "the trial finished before it could be killed"

    reports = tune_reports(sweep_dir)
    pids = list(dict.fromkeys(row["pid"] for row in reports))
    assert len(pids) == 2 and pids[0] == killed["pid"], pids  # the killed process, then the restarted one
    first = [row["iteration"] for row in reports if row["pid"] == pids[0]]
    second = [row["iteration"] for row in reports if row["pid"] == pids[1]]
    assert first[:2] == [CHECKPOINT_INTERVAL, 2 * CHECKPOINT_INTERVAL] and killed["iteration"] in first
    assert second[0] >= killed["iteration"], (first, second)  # resumed, from the checkpoint before the kill or later
    assert second == list(range(second[0], ITERATIONS + 1, CHECKPOINT_INTERVAL)), second  # on to the end

    client = MlflowClient(tracking_uri)
    (trial,) = children(client, client.get_run(parent_id))  # the restart logged into the same child run
    assert trial.info.status == "FINISHED"
    steps = [metric.step for metric in client.get_metric_history(trial.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, ITERATIONS + 1)), steps  # each step once: none repeated, none lost

    (trial_dir,) = {path.parent for path in sweep_dir.glob("*/result.json")}
    checkpoints = sorted(path for path in trial_dir.glob("checkpoint_*") if path.is_dir())
    assert 1 <= len(checkpoints) <= CHECKPOINTS_KEPT, checkpoints
    for checkpoint in checkpoints:
        assert [path.name for path in checkpoint.iterdir() if not path.name.startswith(".")] == [CHECKPOINT_STATE]
