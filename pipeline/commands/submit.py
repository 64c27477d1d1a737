"""``nrd-bench submit``: run an nrd-bench command as a Ray job on a cluster (Ray Jobs API)."""

from __future__ import annotations

import argparse
import sys

from pipeline.commands.common import add_address_argument, follow_to_end


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
        "--exclude",
        dest="excludes",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also leave out PATTERN (gitignore syntax, relative to the working dir), repeatable",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable of the job, repeatable; a bare KEY takes its value from here",
    )
    parser.add_argument(
        "--gpus",
        type=float,
        default=0,
        help="GPUs reserved for the entrypoint process itself (default 0: training workers reserve their own)",
    )
    parser.add_argument("--wait", action="store_true", help="stream the job's logs and exit with its status")
    parser.add_argument("--raw", action="store_true", help="allow an entrypoint that is not an nrd-bench command")
    parser.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- nrd-bench COMMAND [ARGS ...]")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.jobs.submit import submit

    client, job_id = submit(
        args.entrypoint,
        address=args.address,
        working_dir=args.working_dir,
        env=args.env,
        excludes=args.excludes,
        gpus=args.gpus,
        raw=args.raw,
        parser=args.parser,
    )
    print(job_id, flush=True)
    if not args.wait:
        print(
            f"follow it with: nrd-bench jobs logs {job_id} --follow --address {client.get_address()}", file=sys.stderr
        )
        return 0
    return follow_to_end(client, job_id)
