"""`nrd-bench submit` and `nrd-bench jobs` against a real Ray head (started with `ray start --head` on free ports,
token authentication on, private temp dir), and the errors named before anything is uploaded."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from conftest import free_port, processes_using  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from ray._private import ray_constants  # noqa: E402
from ray._private.runtime_env import packaging  # noqa: E402

from pipeline.commands.cli import main  # noqa: E402
from pipeline.jobs.submit import (  # noqa: E402
    DEFAULT_EXCLUDES,
    EntrypointError,
    connect,
    job_env,
    packaged_files,
    resolve_address,
)

VENV_BIN = Path(sys.executable).parent
TOKEN_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")


@dataclass
class RayHead:
    url: str
    token: str
    temp_dir: str


def ray_processes(temp_dir: str) -> set[int]:
    """Processes that name ``temp_dir`` in their command line or inherited it in their environment (``RAY_TMPDIR``):
    every process of that Ray, the job drivers its job supervisors started included."""
    pids = set(processes_using(temp_dir))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if f"RAY_TMPDIR={temp_dir}".encode() in (entry / "environ").read_bytes():
                    pids.add(int(entry.name))
    return pids


def kill_all(temp_dir: str) -> None:
    deadline = time.monotonic() + 20
    while (pids := ray_processes(temp_dir)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 (2 CPUs, dashboard and Jobs API on a free port) requiring a fresh random token;
    every process it started is killed afterwards, whatever happened."""
    temp_dir = tempfile.mkdtemp(prefix="nrd-submit-", dir="/tmp")  # short: Ray's socket paths stay < 108 bytes
    token = secrets.token_hex(32)
    dashboard_port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in TOKEN_VARIABLES}
    env |= {
        "RAY_TMPDIR": temp_dir,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the job's `nrd-bench` is this venv's
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    }
    command = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={free_port()}",
        "--num-cpus=2",
        "--num-gpus=0",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        "--disable-usage-stats",
    ]
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        wait_for_jobs_api(url, token)
        yield RayHead(url, token, temp_dir)
    finally:
        kill_all(temp_dir)


def wait_for_jobs_api(url: str, token: str, timeout: float = 60) -> None:
    request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                pytest.fail(f"the Jobs API at {url} did not answer within {timeout:.0f} s")
            time.sleep(0.5)


@pytest.fixture
def clean_env(monkeypatch):
    """No token, address or tracking URI inherited from the shell running the tests."""
    for name in (*TOKEN_VARIABLES, "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def small_working_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "run.py").write_text("print('hello')\n")
    return directory


def sparse_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.truncate(size)  # takes no disk space


# ------------------------------------------------------------------------------------------ on a real Ray head
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_submit_wait_trains_on_the_cluster_and_jobs_reads_it_back(ray_head, shards, tmp_path, capfd, clean_env):
    clean_env.setenv("RAY_AUTH_TOKEN", ray_head.token)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(
        [
            "submit",
            "--address",
            ray_head.url,
            "--wait",
            "--env",
            f"MLFLOW_TRACKING_URI={tracking_uri}",
            "--",
            "nrd-bench",
            "train",
            "--dataset-dir",
            str(shards),
            "--decoder",
            "bilinear",
            "--encoder",
            "resnet18",
            "--crop-size",
            "32x32",
            "--batch-size",
            "2",
            "--iterations",
            "2",
            "--log-interval",
            "1",
            "--eval-interval",
            "2",
            "--checkpoint-interval",
            "2",
            "--val-limit",
            "2",
            "--cpus-per-worker",
            "0.5",
            "--storage-path",
            str(tmp_path / "results"),
            "--name",
            "on-cluster",
            "--experiment",
            "submitted",
        ]
    )
    submitted = capfd.readouterr()
    assert code == 0, submitted.err[-3000:]
    job_id = submitted.out.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert f"job {job_id} SUCCEEDED" in submitted.err

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("submitted").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "on-cluster"
    assert run.data.params["schedule.iterations"] == "2" and "mIoU" in run.data.metrics
    assert run.info.run_id in submitted.out  # the job's own output (train prints its run id) was streamed here

    assert main(["jobs", "logs", job_id, "--address", ray_head.url]) == 0
    logs = capfd.readouterr()
    assert run.info.run_id in logs.out and "iter 2/2" in logs.out
    assert main(["jobs", "status", job_id, "--address", ray_head.url]) == 0
    status = capfd.readouterr()
    assert status.out.startswith(f"{job_id} SUCCEEDED")
    assert main(["jobs", "list", "--address", ray_head.url]) == 0
    listing = capfd.readouterr()
    assert job_id in listing.out

    runtime_env = connect(ray_head.url).get_job_info(job_id).runtime_env  # as the cluster stored it
    assert runtime_env["env_vars"] == {"MLFLOW_TRACKING_URI": tracking_uri}
    assert runtime_env["working_dir"].startswith("gcs://")
    for text in (json.dumps(runtime_env), *submitted, *logs, *status, *listing):
        assert ray_head.token not in text


@pytest.mark.slow
def test_jobs_stop_ends_a_running_job(ray_head, tmp_path, capfd, clean_env):
    clean_env.setenv("RAY_AUTH_TOKEN", ray_head.token)
    project = small_working_dir(tmp_path)
    command = ["submit", "--address", ray_head.url, "--working-dir", str(project), "--raw", "--", "sleep", "120"]
    assert main(command) == 0
    job_id = capfd.readouterr().out.strip()
    assert main(["jobs", "stop", job_id, "--wait", "--address", ray_head.url]) == 0
    assert capfd.readouterr().out.strip() == f"{job_id} STOPPED"
    assert main(["jobs", "stop", job_id, "--address", ray_head.url]) == 0
    assert capfd.readouterr().out.strip() == f"{job_id} had already ended"
    assert main(["jobs", "status", "raysubmit_nosuchjob", "--address", ray_head.url]) == 2
    assert "Job raysubmit_nosuchjob does not exist" in capfd.readouterr().err


@pytest.mark.slow
def test_a_missing_or_wrong_token_is_refused_by_name_and_never_shown(ray_head, tmp_path, capfd, clean_env):
    assert main(["jobs", "list", "--address", ray_head.url]) == 2  # no token here
    missing = capfd.readouterr()
    assert f"the Ray cluster at {ray_head.url} refused the request" in missing.err and "RAY_AUTH_TOKEN" in missing.err
    wrong = secrets.token_hex(32)
    clean_env.setenv("RAY_AUTH_TOKEN", wrong)
    assert main(["jobs", "list", "--address", ray_head.url]) == 2
    refused = capfd.readouterr()
    assert "HTTP 403: wrong token" in refused.err and wrong not in refused.err + refused.out
    token_file = tmp_path / "auth_token"
    token_file.write_text(ray_head.token + "\n")
    clean_env.delenv("RAY_AUTH_TOKEN")
    clean_env.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert main(["jobs", "list", "--address", ray_head.url]) == 0
    accepted = capfd.readouterr()
    for text in (*missing, *accepted):
        assert ray_head.token not in text


# ------------------------------------------------------------------------------- named before any upload
def test_unreachable_address_is_named_with_where_it_came_from(tmp_path, capfd, clean_env):
    project, port, other = small_working_dir(tmp_path), free_port(), free_port()
    command = ["submit", "--working-dir", str(project), "--", "nrd-bench", "cost", "--decoder", "nrd"]
    assert main([command[0], "--address", f"127.0.0.1:{port}", *command[1:]]) == 2
    err = capfd.readouterr().err
    assert f"cannot reach the Ray Jobs API at http://127.0.0.1:{port} (from --address)" in err
    clean_env.setenv("RAY_ADDRESS", f"http://127.0.0.1:{other}")
    assert main(command) == 2
    assert f"at http://127.0.0.1:{other} (from RAY_ADDRESS)" in capfd.readouterr().err
    assert main([command[0], "--address", f"http://127.0.0.1:{port}", *command[1:]]) == 2  # the flag wins
    assert f"at http://127.0.0.1:{port} (from --address)" in capfd.readouterr().err
    clean_env.delenv("RAY_ADDRESS")
    assert main(command) == 2
    assert "no cluster address: pass --address" in capfd.readouterr().err


def test_addresses_are_the_dashboards_http_address(clean_env):
    assert resolve_address("head.internal") == ("http://head.internal:8265", "--address")
    assert resolve_address("10.0.0.5:9000")[0] == "http://10.0.0.5:9000"
    assert resolve_address("https://ray.example.com/")[0] == "https://ray.example.com"
    with pytest.raises(ConnectionError, match="not the HTTP address of a Ray dashboard"):
        resolve_address("ray://head:10001")


def test_entrypoints_that_are_not_nrd_bench_commands_are_refused_unless_raw(tmp_path, capfd, clean_env):
    project, port = small_working_dir(tmp_path), free_port()
    base = ["submit", "--address", f"127.0.0.1:{port}", "--working-dir", str(project)]
    assert main([*base, "--", "python", "-c", "print(1)"]) == 2
    err = capfd.readouterr().err
    assert "is not an nrd-bench command" in err and "--raw" in err
    assert main([*base, "--", "nrd-bench", "trian"]) == 2
    err = capfd.readouterr().err
    assert "invalid choice: 'trian'" in err and "'nrd-bench trian' is not a valid nrd-bench command" in err
    assert main([*base, "--", "nrd-bench", "train", "--iterations", "many"]) == 2
    assert "not a valid nrd-bench command" in capfd.readouterr().err
    assert main(base) == 2
    assert "no entrypoint" in capfd.readouterr().err
    assert main([*base, "--raw", "--", "python", "-c", "print(1)"]) == 2  # accepted: it gets as far as connecting
    assert "cannot reach the Ray Jobs API" in capfd.readouterr().err


def test_oversized_working_dir_is_named_before_upload_with_what_to_exclude(tmp_path, capfd, clean_env):
    limit = min(ray_constants.DASHBOARD_CLIENT_MAX_SIZE, packaging.GCS_STORAGE_MAX_SIZE)  # what Ray accepts
    project, port = small_working_dir(tmp_path), free_port()
    sparse_file(project / "data" / "cityscapes.tar", 10 * 2**30)  # excluded by default: does not count
    sparse_file(project / "checkpoints" / "weights.bin", limit)
    command = ["submit", "--address", f"127.0.0.1:{port}", "--working-dir", str(project), "--", "nrd-bench", "cost"]
    assert main(command) == 2
    err = capfd.readouterr().err
    assert f"would upload {(limit + 15) / 2**20:.1f} MiB (2 files after excludes)" in err  # run.py is 15 bytes
    assert f"over the {limit / 2**20:.1f} MiB" in err and "checkpoints/" in err and "--exclude" in err
    assert "cannot reach" not in err  # nothing was sent
    assert main([*command[:5], "--exclude", "checkpoints/", *command[5:]]) == 2
    assert "cannot reach the Ray Jobs API" in capfd.readouterr().err  # now small enough: on to connecting


def test_packaged_files_are_exactly_what_ray_zips(tmp_path):
    project = small_working_dir(tmp_path)
    kept = ["run.py", "nrd/data/base.py", "notes.md", ".gitignore", ".rayignore"]
    dropped = [
        "data/raw.bin",
        ".venv/lib/x.py",
        ".git/HEAD",
        "mlruns/0/meta.yaml",
        "results/run/result.json",
        "pipeline/__pycache__/cli.cpython-311.pyc",
        "weights.pt",
        "secret.env",
        "scratch/tmp.txt",
    ]
    for name in kept + dropped:
        if name not in ("run.py", ".gitignore", ".rayignore"):
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            (project / name).write_text(name)
    (project / ".gitignore").write_text("secret.env\n")
    (project / ".rayignore").write_text("scratch/\n")
    files = packaged_files(project, DEFAULT_EXCLUDES)
    assert sorted(files) == sorted(kept)
    assert files["nrd/data/base.py"] == len("nrd/data/base.py")
    package = tmp_path / "package.zip"
    packaging.create_package(str(project), package, include_gitignore=True, excludes=list(DEFAULT_EXCLUDES))
    with zipfile.ZipFile(package) as archive:  # what Ray itself would upload
        assert sorted(name for name in archive.namelist() if not name.endswith("/")) == sorted(kept)


def test_the_token_is_never_put_into_a_jobs_environment(tmp_path, capfd, clean_env):
    token = secrets.token_hex(32)
    clean_env.setenv("RAY_AUTH_TOKEN", token)
    base = ["submit", "--address", f"127.0.0.1:{free_port()}", "--working-dir", str(small_working_dir(tmp_path))]
    for env in ("RAY_AUTH_TOKEN", f"RAY_AUTH_TOKEN={token}", "RAY_AUTH_TOKEN_PATH=/x", f"LEAK={token}"):
        assert main([*base, "--env", env, "--", "nrd-bench", "cost"]) == 2
        captured = capfd.readouterr()
        assert "never" in captured.err and token not in captured.out + captured.err
    assert main([*base, "--", "nrd-bench", "cost", "--decoder", token]) == 2  # in the entrypoint
    captured = capfd.readouterr()
    assert "holds the Ray token" in captured.err and token not in captured.out + captured.err
    environ = {"RAY_AUTH_TOKEN": token, "MLFLOW_TRACKING_URI": "http://mlflow:5000", "SEED": "3"}
    assert job_env(["SEED", "MODE=fast"], environ) == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "SEED": "3",
        "MODE": "fast",
    }


def test_a_tracking_store_on_this_machine_is_only_sent_when_named(capsys):
    assert job_env([], {"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}) == {}
    assert "not sending MLFLOW_TRACKING_URI=sqlite:///mlflow.db" in capsys.readouterr().err
    uri = "sqlite:////shared/mlflow.db"
    assert job_env(["MLFLOW_TRACKING_URI"], {"MLFLOW_TRACKING_URI": uri}) == {"MLFLOW_TRACKING_URI": uri}
    with pytest.raises(EntrypointError, match="--env UNSET: not set here"):
        job_env(["UNSET"], {})
    with pytest.raises(EntrypointError, match="not an environment variable name"):
        job_env(["1X=2"], {})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["jobs", "list", "--address", "http://[::1"], "--address='http://[::1' is not a valid URL (Invalid IPv6 URL)"),
        (["jobs", "list", "--address", "http://head:abc"], "--address='http://head:abc' is not a valid URL"),
        (
            ["jobs", "logs", "bad id/../x", "--address", "http://127.0.0.1:1"],
            "'bad id/../x' is not a job submission id",
        ),
        (["jobs", "stop", "..", "--address", "http://127.0.0.1:1"], "'..' is not a job submission id"),
    ],
)
def test_bad_addresses_and_job_ids_are_named_before_any_request(args, message, capfd, clean_env):
    with pytest.raises(SystemExit) if args[1] != "list" else contextlib.nullcontext() as exited:
        code = main(args)
    code = exited.value.code if exited else code
    err = capfd.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
