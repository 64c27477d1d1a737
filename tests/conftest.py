"""Fixtures shared by test modules, each started once per pytest session: a real ``mlflow server`` that tests can
stop and start again, one local Ray instance in the pytest process (``local_ray``), one set of synthetic shards;
and a private Ray temp dir for tests whose Ray runs in other processes. Tests that need a cluster of their own in
the pytest process (``own_ray``) get the shared Ray shut down for their duration and started again after them."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def readme_commands(path: Path) -> list[list[str]]:
    """Every shell command of the Markdown file's bash blocks, split into words, leading VAR=value dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip().rstrip("&").strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words.pop(0)
            commands.append(words)
    return commands


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # real data: read there, never copied


def shared(*parts: str) -> Path:
    """A path under ../shared/data; the test is skipped, saying which path, when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (the real data sets are read from ../shared/data)")
    return path


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 in its own process group; stop() and start() keep its port and stores."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.process: subprocess.Popen | None = None
        self.started = False

    def start(self) -> None:
        """Start it; the first start takes another free port (up to 3 tries) if something else bound the probed one
        in between, later starts keep the port clients already know."""
        tries = 1 if self.started else 3
        for attempt in range(tries):
            if self._start(last=attempt == tries - 1):
                self.started = True
                return
            self.port = free_port()
            self.uri = f"http://127.0.0.1:{self.port}"

    def _start(self, last: bool) -> bool:
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'server.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as answer:
                    if answer.status == 200 and self.process.poll() is None:
                        return True
            except (OSError, http.client.HTTPException):  # not up yet, or another server on the port
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                if last:
                    pytest.fail(f"mlflow server did not answer on {self.uri}; see {self.root / 'server.log'}")
                return False
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # anything left in its group
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None


@pytest.fixture(scope="session")
def mlflow_server_session(tmp_path_factory):
    """One ``MlflowServer`` (SQLite backend, local artifact folder) for the whole session."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_server(mlflow_server_session):
    """The session's ``MlflowServer``, running: a test that stopped it and failed before starting it again does
    not take the next test down with it. Tests use their own experiment names (the store is shared)."""
    if mlflow_server_session.process is None or mlflow_server_session.process.poll() is not None:
        mlflow_server_session.start()
    return mlflow_server_session


class LocalRay:
    """The session's local Ray instance in the pytest process: 2 CPUs, the dashboard (Train's placement-group
    cleaner needs it), a private short temp dir, worker output echoed to the driver (tests read it)."""

    def __init__(self, temp_dir: str):
        self.temp_dir = temp_dir
        self.starts = 0

    def ensure(self) -> None:
        import ray

        if not ray.is_initialized():
            from pipeline.training.cluster import init_local_ray

            init_local_ray(num_cpus=2, log_to_driver=True, _temp_dir=self.temp_dir)
            self.starts += 1


@pytest.fixture(scope="session")
def ray_session() -> Iterator[LocalRay]:
    """The ``LocalRay`` of the session, not started yet (``local_ray`` starts it); killed and removed at the end."""
    pytest.importorskip("ray")
    temp_dir = tempfile.mkdtemp(prefix="nrd-ray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        # the Train controller polls its workers every 2 s by default; 0.5 s ends each fit() sooner
        patch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        patch.setenv("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # as pipeline.train.start_ray: each line printed once
        yield LocalRay(temp_dir)
        import ray

        ray.shutdown()
    for pid in processes_using(temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def local_ray(ray_session) -> LocalRay:
    """The pytest process connected to the session's local Ray (started on first use)."""
    ray_session.ensure()
    return ray_session


@pytest.fixture
def own_ray(ray_session) -> Iterator[None]:
    """For a test that starts its own cluster and connects the pytest process to it: the session's Ray is shut down
    first (one connection per process) and started again afterwards if it was running."""
    import ray

    was_running = ray.is_initialized()
    ray.shutdown()
    yield
    ray.shutdown()
    if was_running:
        ray_session.ensure()


SHARDS_TRAIN, SHARDS_VAL = 96, 15


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """Synthetic Parquet shards for the training, sweep and fault tests: 96 train and 15 val samples of 64x64, 4
    classes. An odd val count: an equal split over 2 workers would drop a row, so a test sees whether every image
    counts."""
    from nrd.data import create_dataset, prepare_shards

    out = tmp_path_factory.mktemp("synthetic")
    dataset = create_dataset(
        "synthetic", num_samples={"train": SHARDS_TRAIN, "val": SHARDS_VAL}, size=(64, 64), num_classes=4, seed=3
    )
    prepare_shards(dataset, out, progress=False)
    return out


@pytest.fixture
def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on when the fixture ran."""
    return free_port()


@pytest.fixture
def ray_env(monkeypatch) -> Iterator[dict[str, str]]:
    """Environment for Ray processes with a private ``RAY_TMPDIR`` (short: Ray's socket paths must stay < 108
    bytes); afterwards every process still running from it is killed and the folder removed."""
    temp_dir = tempfile.mkdtemp(prefix="nrd-ray-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)  # also for a Cluster started in this process
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # the Train controller polls its workers every 2 s by default: registering a checkpoint, or noticing a dead
    # worker, takes up to that long; 0.5 s keeps the runs short and the checkpoint registered soon after its report
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    yield env
    for pid in processes_using(temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def processes_using(path: str) -> list[int]:
    """Ids of the processes whose command line mentions ``path`` (every Ray process names its temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if path.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids
