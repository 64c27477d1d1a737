"""``nrd-bench submit``: run an nrd-bench command as a Ray job on a cluster (Ray Jobs API)."""

from __future__ import annotations

import argparse
import sys


def add_address_argument(parser: argparse.ArgumentParser) -> None:
    """The cluster flag shared by ``submit`` and ``jobs``."""
    parser.add_argument(
        "--address",
        help="HTTP address of the cluster's Ray dashboard, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)",
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="run an nrd-bench command (train, tune, prepare, ...) as a job on a Ray cluster",
        description=(
            "Submit `nrd-bench COMMAND ...` (everything after --) through the Ray Jobs API. The job runs in a copy of "
            "the working dir (default: this checkout, without data, results, mlruns, .venv, .git and caches, nor what "
            ".gitignore/.rayignore list), checked against the Jobs upload limit before anything is sent. "
            "MLFLOW_TRACKING_URI is sent along when it names a tracking server. With token authentication, the token "
            "comes from $RAY_AUTH_TOKEN or the file $RAY_AUTH_TOKEN_PATH and is only sent as an HTTP header. "
            "Prints the job id; with --wait, streams the logs and exits 0 if the job succeeded, 1 if not."
        ),
        usage="nrd-bench submit [options] -- nrd-bench COMMAND [ARGS ...]",
    )
    add_address_argument(parser)
    parser.add_argument("--working-dir", help="folder shipped to the job and run in (default: this checkout)")
    parser.add_argument(
        "--exclude", dest="excludes", action="append", default=[], metavar="PATTERN",
        help="also leave out PATTERN (gitignore syntax, relative to the working dir), repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE",
        help="environment variable of the job, repeatable; a bare KEY takes its value from here",
    )  # fmt: skip
    parser.add_argument(
        "--gpus", type=float, default=0,
        help="GPUs reserved for the entrypoint process itself (default 0: training workers reserve their own)",
    )  # fmt: skip
    parser.add_argument("--wait", action="store_true", help="stream the job's logs and exit with its status")
    parser.add_argument("--raw", action="store_true", help="allow an entrypoint that is not an nrd-bench command")
    parser.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- nrd-bench COMMAND [ARGS ...]")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.submit import submit

    client, job_id = submit(
        args.entrypoint, address=args.address, working_dir=args.working_dir, env=args.env, excludes=args.excludes,
        gpus=args.gpus, raw=args.raw,
    )  # fmt: skip
    print(job_id, flush=True)
    if not args.wait:
        print(f"follow it with: nrd-bench jobs logs {job_id} --follow --address {client.get_address()}",
              file=sys.stderr)  # fmt: skip
        return 0
    return follow_to_end(client, job_id)


def follow_to_end(client, job_id: str) -> int:
    """Stream the job's logs until it ends, then say how it ended: 0 if it succeeded, 1 if not, 130 on Ctrl-C
    (which only stops following: the job goes on)."""
    from pipeline.submit import follow_logs, wait_until_done

    try:
        follow_logs(client, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on. Stop it with: nrd-bench jobs stop {job_id} --address "
              f"{client.get_address()}", file=sys.stderr)  # fmt: skip
        return 130
    info = wait_until_done(client, job_id)
    print(f"job {job_id} {info.status}" + (f": {info.message}" if info.message else ""), file=sys.stderr)
    return 0 if info.status == "SUCCEEDED" else 1
