"""Fixtures shared by test modules: a real ``mlflow server`` that tests can stop and start again, and a private
Ray temp dir for tests whose Ray runs in other processes."""

from __future__ import annotations

import contextlib
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

import pytest


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

    def start(self) -> None:
        command = [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
            "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        with open(self.root / "server.log", "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"mlflow server did not answer on {self.uri}; see {self.root / 'server.log'}")
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


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A running ``MlflowServer`` (SQLite backend, local artifact folder) for the test module."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


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
