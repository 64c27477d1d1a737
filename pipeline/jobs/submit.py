"""Running nrd-bench on a Ray cluster through the Ray Jobs API (``nrd-bench submit`` and ``nrd-bench jobs``).

A job ships the project as its runtime environment's ``working_dir`` (without data, results, tracking stores,
virtual environments and caches: ``DEFAULT_EXCLUDES`` plus ``.gitignore``/``.rayignore``, as Ray applies them) and
runs its entrypoint there, so the cluster runs the code being submitted. Everything that can be checked locally is
checked before anything is uploaded: the entrypoint parses as an ``nrd-bench`` command, the environment variables are
valid, and the working dir fits the upload limit of the Jobs API.

Token authentication: the token comes from ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH`` (the
variables Ray documents), and travels only in the ``Authorization`` header of the requests. It is never put into the
runtime environment, the entrypoint or anything printed: the cluster's own processes have the cluster's token. With
neither variable set, Ray's client applies its own rules (``RAY_AUTH_MODE=token`` and ``~/.ray/auth_token``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shlex
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from nrd.errors import NRDBenchError

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
ADDRESS_ENV = "RAY_ADDRESS"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
# Sent along when set here and pointing at a tracking server; a local store (SQLite file, folder) on this machine
# means nothing on the cluster, so it is only sent when named with --env.
FORWARDED_ENV = (TRACKING_ENV,)
# gitignore-style patterns relative to the working dir; a leading "/" anchors at its top, so nrd/data/ still ships
DEFAULT_EXCLUDES = (
    ".git/",
    ".venv/",
    "/venv/",
    "/env/",
    ".env",
    "__pycache__/",
    "*.pyc",
    ".pytest_cache/",
    ".ruff_cache/",
    ".mypy_cache/",
    ".ipynb_checkpoints/",
    "*.egg-info/",
    "/build/",
    "/dist/",
    "/data/",
    "/shards/",
    "/results/",
    "/demo/",
    "mlruns/",
    "mlartifacts/",
    "mlflow.db",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.parquet",
)
CONNECT_TIMEOUT_S = 10.0
DEFAULT_DASHBOARD_PORT = 8265
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class JobSubmissionError(NRDBenchError):
    """A job that cannot be submitted or followed; the subclasses say why."""


class ClusterUnreachableError(JobSubmissionError, ConnectionError):
    """The Ray Jobs API (the dashboard's HTTP address) did not answer; the message names the address tried."""


class ClusterAuthError(JobSubmissionError, PermissionError):
    """The cluster refused the requests (token missing or wrong) or the token file cannot be read."""


class EntrypointError(JobSubmissionError, ValueError):
    """An entrypoint that is not a valid ``nrd-bench`` command (without ``--raw``) or that would leak the token."""


class WorkingDirTooLargeError(JobSubmissionError, ValueError):
    """A working dir whose upload would exceed what the Jobs API accepts; the message lists what to exclude."""


class JobsApiError(JobSubmissionError, RuntimeError):
    """A request the Jobs API answered with an error (e.g. an unknown job id)."""


# ----------------------------------------------------------------------------------------------- what is submitted
def resolve_address(address: str | None) -> tuple[str, str]:
    """The Jobs API URL (``http(s)://host:port`` of the head's dashboard) and where it came from: ``address`` (the
    --address flag), else ``$RAY_ADDRESS``. A bare ``host[:port]`` means http, port 8265."""
    source = "--address" if address else ADDRESS_ENV
    value = (address or os.environ.get(ADDRESS_ENV) or "").strip()
    if not value:
        raise ClusterUnreachableError(
            f"no cluster address: pass --address http://HEAD:{DEFAULT_DASHBOARD_PORT} or set {ADDRESS_ENV} (the Ray "
            "dashboard's HTTP address, e.g. forwarded by `ray dashboard CLUSTER.yaml` or `kubectl port-forward`)"
        )
    url = value if "://" in value else f"http://{value}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parses the port: a ValueError for one that is not a number)
    except ValueError as error:
        raise ClusterUnreachableError(
            f"{source}={value!r} is not a valid URL ({error}); expected http://HOST:{DEFAULT_DASHBOARD_PORT}"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClusterUnreachableError(
            f"{source}={value!r} is not the HTTP address of a Ray dashboard; expected http://HOST:"
            f"{DEFAULT_DASHBOARD_PORT} (a ray:// client address or a GCS address does not serve the Jobs API)"
        )
    if parts.port is None and "://" not in value:
        url = f"http://{parts.hostname}:{DEFAULT_DASHBOARD_PORT}"
    return url.rstrip("/"), source


def build_entrypoint(argv: Sequence[str], raw: bool = False, parser: argparse.ArgumentParser | None = None) -> str:
    """The shell command of the job. Unless ``raw``, ``argv`` must be ``nrd-bench COMMAND ...`` and, given the real
    ``nrd-bench`` ``parser`` (the command line passes its own), parse with it, so a typo fails now rather than after
    the upload."""
    argv = list(argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise EntrypointError("no entrypoint: give the command after --, e.g. -- nrd-bench train --config run.yaml")
    if not raw:
        if argv[0] != "nrd-bench":
            raise EntrypointError(
                f"the entrypoint {shlex.join(argv)!r} is not an nrd-bench command; submit `nrd-bench train|tune|... "
                "ARGS`, or pass --raw to run any command"
            )
        try:
            if parser is not None:
                parser.parse_args(argv[1:])
        except SystemExit:  # argparse printed why
            raise EntrypointError(f"the entrypoint {shlex.join(argv)!r} is not a valid nrd-bench command") from None
    return shlex.join(argv)


def auth_token() -> str | None:
    """The cluster token from ``$RAY_AUTH_TOKEN``, else from the file ``$RAY_AUTH_TOKEN_PATH``; None without them."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = os.environ.get(TOKEN_PATH_ENV)
    if not path:
        return None
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as error:
        raise ClusterAuthError(f"{TOKEN_PATH_ENV}={path}: cannot read the token file ({error.strerror})") from None
    if not token:
        raise ClusterAuthError(f"{TOKEN_PATH_ENV}={path}: the token file is empty")
    return token


def job_env(items: Sequence[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The job's environment variables: ``FORWARDED_ENV`` taken from here when they point at a server, then each
    ``KEY=VALUE`` (or ``KEY``, whose value is taken from here) of ``items``. The token variables are refused."""
    environ = os.environ if environ is None else environ
    env: dict[str, str] = {}
    for name in FORWARDED_ENV:
        value = environ.get(name, "")
        if value.partition(":")[0] in ("http", "https", "databricks"):
            env[name] = value
        elif value:
            print(
                f"note: not sending {name}={value} (a store on this machine); name it with --env to send it",
                file=sys.stderr,
            )
    for item in items:
        name, sep, value = item.partition("=")
        if not ENV_NAME.fullmatch(name):
            raise EntrypointError(f"--env {name!r}: not an environment variable name (expected KEY=VALUE or KEY)")
        if name in (TOKEN_ENV, TOKEN_PATH_ENV):
            raise EntrypointError(
                f"--env {name}: the Ray token is never put into a job's environment; the cluster's processes have it"
            )
        if not sep:
            if name not in environ:
                raise EntrypointError(f"--env {name}: not set here; give its value as --env {name}=VALUE")
            value = environ[name]
        env[name] = value
    return env


def project_root() -> Path:
    """The nrd-bench checkout this code runs from (the folder holding pyproject.toml): the default working dir."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise JobSubmissionError(f"nrd-bench is not run from a source checkout ({root}); pass --working-dir")
    return root


def upload_limit() -> int:
    """Bytes the Jobs API accepts for a working dir: the dashboard's request-size limit and the GCS package limit,
    whichever is smaller (both read from the installed Ray)."""
    from ray._private.ray_constants import DASHBOARD_CLIENT_MAX_SIZE
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

    return min(DASHBOARD_CLIENT_MAX_SIZE, GCS_STORAGE_MAX_SIZE)


def packaged_files(working_dir: str | os.PathLike, excludes: Sequence[str]) -> dict[str, int]:
    """Relative path → size of every file Ray would upload from ``working_dir`` with ``excludes``. Uses Ray's own
    directory walk (the one that builds the package), so ``.gitignore``/``.rayignore`` apply exactly as they will."""
    from ray._private.ray_constants import RAY_RUNTIME_ENV_IGNORE_GITIGNORE
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    root = Path(working_dir).absolute()
    files: dict[str, int] = {}

    def visit(path: Path) -> None:
        if path.is_file():
            files[path.relative_to(root).as_posix()] = path.stat().st_size

    include_gitignore = os.environ.get(RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    excluded = [_get_excludes(root, list(excludes))]
    _dir_travel(root, excluded, visit, include_gitignore=include_gitignore, logger=logging.getLogger(__name__))
    return files


def check_upload_size(working_dir: str | os.PathLike, excludes: Sequence[str]) -> int:
    """Total bytes of the working dir's upload; ``WorkingDirTooLargeError`` naming the largest entries when it is at
    or over ``upload_limit()``."""
    files = packaged_files(working_dir, excludes)
    total, limit = sum(files.values()), upload_limit()
    if total < limit:
        return total
    by_entry: Counter[str] = Counter()
    for path, size in files.items():
        top, sep, _ = path.partition("/")
        by_entry[top + sep] += size
    largest = ", ".join(f"{entry} {_mib(size)}" for entry, size in by_entry.most_common(5))
    raise WorkingDirTooLargeError(
        f"the working dir {working_dir} would upload {_mib(total)} ({len(files)} files after excludes), at or over "
        f"the {_mib(limit)} a Ray job's working_dir may have; largest: {largest}. Exclude what the job does not need "
        "with --exclude PATTERN (gitignore syntax, e.g. --exclude big_folder/) or a .rayignore file, and keep data "
        "on shared storage (e.g. --dataset-dir /mnt/shared/shards/...)"
    )


def build_runtime_env(working_dir: str | os.PathLike, env: Mapping[str, str], excludes: Sequence[str]) -> dict:
    """The job's runtime environment: the working dir to ship, what to leave out of it, the environment variables."""
    runtime_env: dict[str, object] = {"working_dir": str(Path(working_dir).absolute()), "excludes": list(excludes)}
    if env:
        runtime_env["env_vars"] = dict(env)
    return runtime_env


# -------------------------------------------------------------------------------------------------- the Jobs API
@contextlib.contextmanager
def jobs_api(url: str) -> Iterator[None]:
    """Turn the Jobs client's failures into named errors that say which address was used."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except JobSubmissionError:
        raise
    except AuthenticationError as error:
        status = "401: no token" if error.message.startswith("Authentication required") else "403: wrong token"
        raise ClusterAuthError(
            f"the Ray cluster at {url} refused the request (HTTP {status}); set {TOKEN_ENV} (or {TOKEN_PATH_ENV}) "
            "to the cluster's token: `ray get-auth-token` on the head node, or the cluster's Kubernetes secret"
        ) from None
    except (ConnectionError, requests.exceptions.ConnectionError) as error:
        raise ClusterUnreachableError(f"lost the connection to the Ray Jobs API at {url}: {error}") from None
    except RuntimeError as error:
        raise JobsApiError(f"the Ray Jobs API at {url} answered: {str(error).rstrip('.')}") from None


def connect(address: str | None = None) -> JobSubmissionClient:
    """A ``JobSubmissionClient`` for the cluster at ``address`` (or ``$RAY_ADDRESS``), sending the token (if any)
    in its headers. Unreachable address: ``ClusterUnreachableError``; refused token: ``ClusterAuthError``."""
    from ray.job_submission import JobSubmissionClient

    url, source = resolve_address(address)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        raise ClusterUnreachableError(
            f"cannot reach the Ray Jobs API at {url} (from {source}): {error.strerror or error}. Is the cluster "
            f"up and its dashboard port forwarded here (`ray dashboard CLUSTER.yaml`, `kubectl port-forward "
            f"svc/CLUSTER-head-svc {DEFAULT_DASHBOARD_PORT}`)?"
        ) from None
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with _without_env("RAY_API_SERVER_ADDRESS", ADDRESS_ENV), jobs_api(url):  # Ray would let them override url
        return JobSubmissionClient(url, headers=headers)


def submit(
    entrypoint: Sequence[str],
    address: str | None = None,
    working_dir: str | os.PathLike | None = None,
    env: Sequence[str] = (),
    excludes: Sequence[str] = (),
    gpus: float = 0,
    raw: bool = False,
    parser: argparse.ArgumentParser | None = None,
) -> tuple[JobSubmissionClient, str]:
    """Check everything locally, then submit ``entrypoint`` (argv) as a Ray job running in a copy of
    ``working_dir`` (default: this checkout) with ``gpus`` reserved for its driver. Returns the client and the job's
    submission id. ``parser``: the ``nrd-bench`` parser the entrypoint must parse with. Every refusal is a
    ``JobSubmissionError`` subclass naming the value at fault."""
    if gpus < 0:
        raise JobSubmissionError(f"--gpus {gpus:g}: expected 0 or more")
    command = build_entrypoint(entrypoint, raw, parser)
    resolve_address(address)  # a missing address is named before the rest is checked
    token = auth_token()
    variables = job_env(env)
    if token and any(token in text for text in (command, *variables.values())):
        raise EntrypointError("the entrypoint or an --env value holds the Ray token; it is never sent to a job")
    directory = Path(working_dir) if working_dir else project_root()
    if not directory.is_dir():
        raise JobSubmissionError(f"--working-dir {directory}: not a folder")
    all_excludes = [*DEFAULT_EXCLUDES, *excludes]
    size = check_upload_size(directory, all_excludes)
    runtime_env = build_runtime_env(directory, variables, all_excludes)
    client = connect(address)
    print(f"uploading {directory} ({_mib(size)}) and submitting: {command}", file=sys.stderr)
    with jobs_api(client.get_address()):
        job_id = client.submit_job(entrypoint=command, runtime_env=runtime_env, entrypoint_num_gpus=gpus or None)
    return client, job_id


def follow_logs(client: JobSubmissionClient, job_id: str) -> None:
    """Print the job's logs to stdout as they come, until the job ends."""
    url = client.get_address()

    async def stream() -> None:
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    with jobs_api(url):
        client.get_job_info(job_id)  # an unknown id fails here, by name
        asyncio.run(stream())


def wait_until_done(client: JobSubmissionClient, job_id: str, poll_s: float = 0.5) -> JobDetails:
    """The job's final ``JobDetails`` once its status is terminal (SUCCEEDED, FAILED or STOPPED)."""
    with jobs_api(client.get_address()):
        while True:
            info = client.get_job_info(job_id)
            if info.status.is_terminal():
                return info
            time.sleep(poll_s)


@contextlib.contextmanager
def _without_env(*names: str) -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
