"""Fault tolerance of ``nrd-bench train``, with real processes and no mocks: in one run, a node of a two-node Ray
cluster dies mid-run and then the driver is interrupted and run again; in another, the MLflow server goes away
mid-run (once briefly, then for good). Each time the run must end with the exact iteration count and leave one
FINISHED MLflow run in which every metric step the workers logged is present exactly once; after a failure it must
resume from its last checkpoint.

The driver always runs as a subprocess (``python -m pipeline.cli train``) in its own session, so that the test can
kill it, or a node under it, while it trains; its output (worker lines arrive through Ray's log_to_driver) is read
line by line. These tests never use the session's Ray of the pytest process (conftest.py). Each test gives
Ray a private, short temp dir (``RAY_TMPDIR``): no ``ray.init()`` elsewhere on the machine can join these clusters,
and whatever a killed driver leaves behind is found by that path and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ITERATIONS = 12
LOG_INTERVAL = 1
CHECKPOINT_INTERVAL = 4
EXPERIMENT = "faults"
TIMEOUT = 300  # seconds for any one stage of a run; a hang fails the test with the driver's output
# Ray Train's record of the checkpoints it registered (written by the controller once every worker has reported)
CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"
# Ray rewrites 127.0.0.1/localhost in a cluster address to the machine's outward IP, so the nodes of the test
# cluster announce other loopback addresses: nothing leaves the machine and the driver can still join
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def wait_for_exit(pids: list[int], timeout: float = 10) -> list[int]:
    """Those of ``pids`` still running (zombies aside) after up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if is_running(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def is_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


class TrainProcess:
    """``nrd-bench train ARGS`` in a new session; a thread collects its output lines (also written to ``log``, after
    the seconds since the start)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, iterations: int = ITERATIONS):
        self.log = log
        self.total = iterations
        self.lines: list[str] = []
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "train", *args],
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with open(self.log, "a") as log:
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))
                log.write(f"{time.monotonic() - self.started:7.1f}  {line}")
                log.flush()

    def fail(self, problem: str) -> NoReturn:
        tail = "\n".join(self.lines[-40:])
        pytest.fail(f"{problem}; full output in {self.log}, last lines:\n{tail}")

    def matches(self, pattern: str) -> list[re.Match]:
        return [match for line in list(self.lines) if (match := re.search(pattern, line))]

    def wait_until(self, condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
        """Poll ``condition()`` until it returns something truthy, which is returned; fail if the driver exits or
        ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            if self.process.poll() is not None:
                self.reader.join(timeout=10)
                if value := condition():
                    return value
                self.fail(f"the driver exited with code {self.process.returncode} before {what}")
            if time.monotonic() > deadline:
                self.fail(f"no {what} after {timeout} s")
            time.sleep(0.2)
        return value

    def wait_for_line(self, pattern: str) -> re.Match:
        return self.wait_until(lambda: next(iter(self.matches(pattern)), None), f"a line matching {pattern!r}")

    def iterations(self) -> list[int]:
        """The iterations rank 0 has printed."""
        return [int(match[1]) for match in self.matches(rf"\biter (\d+)/{self.total}\b")]

    def iteration(self) -> int:
        """The last iteration rank 0 has printed (0 before the first)."""
        return max(self.iterations(), default=0)

    def finish(self, timeout: float = TIMEOUT) -> dict:
        """Wait for the driver to exit; check it succeeded and return the result it printed (a JSON line; Ray may
        print more lines after it while it shuts down)."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.fail(f"the driver was still running after {timeout} s")
        self.reader.join(timeout=10)
        if self.process.returncode != 0:
            self.fail(f"the driver exited with code {self.process.returncode}")
        results = [line for line in self.lines if line.startswith('{"run_id"')]
        if not results:
            self.fail("the driver printed no result")
        return json.loads(results[-1])

    def interrupt(self, grace: float = 5) -> int:
        """Ctrl-C (SIGINT to the process group, as a terminal sends it), then SIGKILL to the group if the driver is
        still there after ``grace`` s. Returns the iteration printed when SIGINT was sent: Ray Train registers no
        checkpoint after it, though the workers may go on until they are killed."""
        printed = self.iteration()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        self.kill()
        return printed

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # the local Ray it started is in its group
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.reader.join(timeout=10)


@pytest.fixture
def drivers() -> Iterator[list[TrainProcess]]:
    """Register every TrainProcess here: any still running when the test ends is killed."""
    started: list[TrainProcess] = []
    yield started
    for driver in started:
        driver.kill()


def train_args(shards: Path, tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [
        "--dataset-dir",
        str(shards),
        "--decoder",
        "deeplabv3plus",
        "--encoder",
        "resnet18",
        "--crop-size",
        "64x64",
        "--batch-size",
        "4",
        "--lr",
        "0.05",
        "--iterations",
        str(ITERATIONS),
        "--log-interval",
        str(LOG_INTERVAL),
        "--eval-interval",
        str(ITERATIONS),
        "--checkpoint-interval",
        str(CHECKPOINT_INTERVAL),
        "--storage-path",
        str(tmp_path / "results"),
        "--name",
        name,
        "--experiment",
        EXPERIMENT,
        *extra,
    ]


def registered_checkpoint(run_dir: Path) -> int:
    """Iteration of the last checkpoint Ray Train registered for the run (0 if none yet)."""
    try:
        snapshot = json.loads((run_dir / CHECKPOINT_SNAPSHOT).read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return 0
    latest = snapshot.get("latest_checkpoint_result") or {}
    return int((latest.get("metrics") or {}).get("iteration", 0))


def resumed_iteration(driver: TrainProcess) -> int:
    """The iteration rank 0 resumed from (fails if it never said so)."""
    return int(driver.wait_for_line(r"\[rank 0\] resumed from checkpoint at iteration (\d+)")[1])


def every(interval: int, iterations: int = ITERATIONS) -> list[int]:
    """Steps of a metric logged every ``interval`` iterations and at the last one."""
    return sorted({*range(interval, iterations + 1, interval), iterations})


def check_single_run(tracking_uri: str, expected_steps: dict[str, list[int]], experiment: str = EXPERIMENT) -> Run:
    """The experiment holds exactly one FINISHED run; no metric has a step twice; the keys in ``expected_steps``
    have exactly those steps. Returns the run."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [run.info.run_name for run in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    history = {key: [m.step for m in client.get_metric_history(run.info.run_id, key)] for key in run.data.metrics}
    duplicated = {key: steps for key, steps in history.items() if len(steps) != len(set(steps))}
    assert not duplicated, f"metric steps logged more than once: {duplicated}"
    for key, steps in expected_steps.items():
        assert sorted(history.get(key, [])) == steps, key
    return run


def worker_nodes(driver: TrainProcess) -> dict[int, tuple[int, str]]:
    """Worker process id → (rank, node id), from the line each worker prints when it starts."""
    placement = r"pid=(\d+)\).*\[rank (\d+)/\d+\] node ([0-9a-f]+) device"
    return {int(m[1]): (int(m[2]), m[3]) for m in driver.matches(placement)}


def resumed_workers(driver: TrainProcess) -> dict[int, int]:
    """Worker process id → the iteration it resumed from."""
    return {int(m[1]): int(m[2]) for m in driver.matches(r"pid=(\d+)\).*resumed from checkpoint at iteration (\d+)")}


@pytest.mark.timeout(3 * TIMEOUT + 300)
def test_node_failure_then_interrupted_driver_resume_from_the_last_checkpoint(shards, tmp_path, ray_env, drivers):
    """One run on a two-node cluster, two faults: the worker node dies (Ray Train restarts both workers, one on a
    replacement node, from the last checkpoint), then the driver is interrupted (Ctrl-C); its workers end with it,
    and the same command run again resumes from the last checkpoint registered before the interruption."""
    iterations = 20  # room for both faults, a checkpoint registered between them
    cluster = Cluster(
        initialize_head=True,
        shutdown_at_exit=False,  # True would make pytest a process-group leader; the finally below cleans up
        head_node_args={"num_cpus": 3, "node_ip_address": HEAD_IP, "include_dashboard": False},
    )
    try:
        # 2 CPUs per train worker: one worker fits per node, and the head keeps 1 CPU for Ray Data's tasks
        worker_node = cluster.add_node(num_cpus=2, node_ip_address=WORKER_IP)
        tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        args = train_args(
            shards,
            tmp_path,
            "faults",
            "--address",
            cluster.address,
            "--workers",
            "2",
            "--cpus-per-worker",
            "2",
            "--max-failures",
            "1",
            "--tracking-uri",
            tracking_uri,
            "--iterations",
            str(iterations),
            "--eval-interval",
            str(iterations),
        )
        first = TrainProcess(args, ray_env, tmp_path / "first.log", iterations)
        drivers.append(first)
        first_attempt = first.wait_until(
            lambda: len(worker_nodes(first)) == 2 and worker_nodes(first), "both workers' placement lines"
        )
        assert {node for _, node in first_attempt.values()} == {cluster.head_node.node_id, worker_node.node_id}

        # the node failure
        run_dir = tmp_path / "results" / "faults"
        checkpoint = first.wait_until(lambda: registered_checkpoint(run_dir), "a registered checkpoint")
        printed_before_kill = first.iteration()
        cluster.remove_node(worker_node, allow_graceful=False)
        replacement = cluster.add_node(num_cpus=2, node_ip_address=WORKER_IP)
        resumed = first.wait_until(lambda: len(resumed_workers(first)) == 2 and resumed_workers(first), "2 resumes")
        assert not resumed.keys() & first_attempt.keys()  # two new workers...
        nodes = worker_nodes(first)
        assert {nodes[pid][1] for pid in resumed} == {cluster.head_node.node_id, replacement.node_id}  # ...on both
        (resumed_at,) = set(resumed.values())
        assert resumed_at >= checkpoint and resumed_at % CHECKPOINT_INTERVAL == 0
        assert printed_before_kill - resumed_at <= CHECKPOINT_INTERVAL, (printed_before_kill, resumed_at)

        # the interrupted driver: its workers on the cluster end with it
        first.wait_until(lambda: registered_checkpoint(run_dir) > resumed_at, "a checkpoint after the resume")
        printed_at_interrupt = first.interrupt()
        assert printed_at_interrupt < iterations, "the run ended before the driver was interrupted"
        left = wait_for_exit(list(resumed), timeout=60)
        assert not left, f"workers of the interrupted driver still running: {left}"
        last_checkpoint = registered_checkpoint(run_dir)

        second = TrainProcess(args, ray_env, tmp_path / "second.log", iterations)
        drivers.append(second)
        result = second.finish()
        assert result["iteration"] == iterations
        resumed = resumed_iteration(second)
        assert resumed == last_checkpoint > resumed_at and resumed % CHECKPOINT_INTERVAL == 0
        assert printed_at_interrupt - resumed <= CHECKPOINT_INTERVAL, (printed_at_interrupt, resumed)
        assert min(second.iterations()) == resumed + LOG_INTERVAL
        check_single_run(tracking_uri, {"loss": every(LOG_INTERVAL, iterations), "mIoU": [iterations]})
    finally:
        cluster.shutdown()


def buffered_steps(buffer: Path) -> list[int]:
    """Steps of the metrics waiting in a RunLogger buffer file (a line being written is skipped)."""
    steps = []
    with contextlib.suppress(OSError):
        for line in buffer.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record["op"] == "log_metrics":
                    steps.append(record["payload"]["step"])
    return steps


@pytest.mark.timeout(2 * TIMEOUT + 300)
def test_mlflow_outages_lose_no_metric_and_a_server_that_never_returns_ends_with_the_files_to_replay(
    shards, tmp_path, ray_env, drivers, mlflow_server
):
    """One run, two outages of the MLflow server. The first is short: rank 0 buffers the metrics it cannot send and
    sends them once the server is back, while the run goes on. The second lasts past the end: the run trains to the
    end, then fails with a clean error (exit 2, no traceback) naming the buffer files in the order to replay them;
    once MLflow is back, replaying them gives the complete FINISHED run, every metric step exactly once."""
    iterations = 4 * ITERATIONS  # room for both outages before the end (evaluations no longer start Ray Data)
    eval_interval = iterations // 2
    args = train_args(
        shards,
        tmp_path,
        "outages",
        "--cpus-per-worker",
        "1",
        "--tracking-uri",
        mlflow_server.uri,
        "--iterations",
        str(iterations),
        "--eval-interval",
        str(eval_interval),
        "--tracking-timeout",
        "3",
        "--experiment",
        "outages",
    )
    driver = TrainProcess(args, ray_env, tmp_path / "driver.log", iterations)
    drivers.append(driver)
    run_dir = tmp_path / "results" / "outages"
    record = run_dir / "mlflow_run.json"
    run_id = driver.wait_until(lambda: record.is_file() and json.loads(record.read_text())["run_id"], "the MLflow run")
    client = MlflowClient(mlflow_server.uri)
    driver.wait_until(lambda: client.get_metric_history(run_id, "loss"), "a loss value in MLflow")

    mlflow_server.stop()  # the short outage
    buffer = run_dir / "mlflow-buffer.jsonl"  # rank 0's, while MLflow cannot be reached
    held = driver.wait_until(lambda: len(steps := buffered_steps(buffer)) >= 2 and steps, "metrics buffered")
    # The server takes 10-30 s to start again on a loaded 2-core machine, about as long as the rest of the run on a
    # quiet one: rank 0 is paused (SIGSTOP) meanwhile, so the second outage still falls inside training however
    # fast the machine trains. It holds its buffer; nothing else of Ray notices a pause this short.
    (rank_0,) = [pid for pid, (rank, _) in worker_nodes(driver).items() if rank == 0]
    os.kill(rank_0, signal.SIGSTOP)
    try:
        mlflow_server.start()
    finally:
        os.kill(rank_0, signal.SIGCONT)
    driver.wait_until(
        lambda: {m.step for m in client.get_metric_history(run_id, "loss")} >= set(held),
        "the buffered metrics sent once MLflow is back",
    )
    printed = driver.iteration()
    assert printed < iterations, "the run ended before the second outage; give it more iterations"

    mlflow_server.stop()  # the server that never returns
    try:
        driver.process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        driver.fail(f"the driver was still running {TIMEOUT} s after MLflow went away")
    driver.reader.join(timeout=10)
    if driver.process.returncode != 2:
        driver.fail(f"the driver exited with code {driver.process.returncode}, expected 2 (a named error)")
    # no traceback from nrd-bench itself; Ray's actors may log (and recover from) their own under CPU load, e.g.
    # "(TrainController pid=N) Failed to send resource request ... safe to ignore", forwarded with their prefix
    assert (run_dir / "FINISHED").is_file() and not driver.matches(r"^(?!.*\(\w+ pid=\d+\)).*Traceback")
    message = driver.matches(r"nrd-bench train: error: (.*)")[0][1]
    worker_buffer, driver_buffer = run_dir / "mlflow-buffer.jsonl", run_dir / "mlflow-driver-buffer.jsonl"
    replays = re.findall(r"nrd-bench replay ([^\s;]+)", message)
    assert replays == [str(worker_buffer), str(driver_buffer)], message

    mlflow_server.start()
    assert client.get_run(run_id).info.status == "RUNNING"  # the end of the run is in the driver's buffer
    for path in replays:
        subprocess.run([sys.executable, "-m", "pipeline.cli", "replay", path], cwd=REPO, check=True, timeout=120)
    steps = {"loss": every(LOG_INTERVAL, iterations), "mIoU": every(eval_interval, iterations)}
    run = check_single_run(mlflow_server.uri, steps, "outages")
    assert run.info.run_id == run_id
    assert not buffer.exists()
    artifacts = {artifact.path for artifact in client.list_artifacts(run_id)}
    assert {"config.yaml", "per_class_iou.csv", "predictions", "weights"} <= artifacts
