"""``nrd-bench jobs status|logs|stop|list``: the rest of a submitted job's life (Ray Jobs API)."""

from __future__ import annotations

import argparse
import re
import time

from pipeline.commands.common import add_address_argument, follow_to_end


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "jobs",
        help="status, logs, stop or list the Ray jobs of a cluster (see nrd-bench submit)",
        description=(
            "Follow jobs submitted with `nrd-bench submit`. The cluster is --address or $RAY_ADDRESS; the token, if "
            "the cluster needs one, comes from $RAY_AUTH_TOKEN or the file $RAY_AUTH_TOKEN_PATH."
        ),
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="the job's status and message")
    logs = actions.add_parser("logs", help="the job's logs so far (--follow: until it ends)")
    logs.add_argument("--follow", action="store_true", help="stream new lines until the job ends; exit with its status")
    stop = actions.add_parser("stop", help="ask the job to stop")
    stop.add_argument("--wait", action="store_true", help="wait until it has stopped")
    listing = actions.add_parser("list", help="every job the cluster knows, newest first")
    for action, handler in ((status, show_status), (logs, show_logs), (stop, stop_job)):
        action.add_argument("job_id", type=job_id, metavar="JOB_ID", help="submission id printed by nrd-bench submit")
        action.set_defaults(handler=handler)
    listing.set_defaults(handler=list_jobs)
    for action in (status, logs, stop, listing):
        add_address_argument(action)


def job_id(text: str) -> str:
    """A submission id as Ray makes them (letters, digits, '_', '-', '.'): never a path that names another job."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", text) or ".." in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job submission id (letters, digits, '_', '-', '.')")
    return text


def show_status(args: argparse.Namespace) -> int:
    from pipeline.jobs.submit import connect, jobs_api

    client = connect(args.address)
    with jobs_api(client.get_address()):
        info = client.get_job_info(args.job_id)
    print(f"{args.job_id} {info.status}" + (f": {info.message}" if info.message else ""))
    return 0


def show_logs(args: argparse.Namespace) -> int:
    from pipeline.jobs.submit import connect, jobs_api

    client = connect(args.address)
    if args.follow:
        return follow_to_end(client, args.job_id)
    with jobs_api(client.get_address()):
        print(client.get_job_logs(args.job_id), end="")
    return 0


def stop_job(args: argparse.Namespace) -> int:
    from pipeline.jobs.submit import connect, jobs_api, wait_until_done

    client = connect(args.address)
    with jobs_api(client.get_address()):
        running = client.stop_job(args.job_id)
    if not running:
        print(f"{args.job_id} had already ended")
        return 0
    if args.wait:
        info = wait_until_done(client, args.job_id)
        print(f"{args.job_id} {info.status}")
    else:
        print(f"{args.job_id} asked to stop")
    return 0


def list_jobs(args: argparse.Namespace) -> int:
    from pipeline.jobs.submit import connect, jobs_api

    client = connect(args.address)
    with jobs_api(client.get_address()):
        jobs = client.list_jobs()
    print(f"{'JOB_ID':<30}{'STATUS':<11}{'STARTED':<21}ENTRYPOINT")
    for job in sorted(jobs, key=lambda job: job.start_time or 0, reverse=True):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) if job.start_time else "-"
        print(f"{job.submission_id or job.job_id or '-':<30}{job.status!s:<11}{started:<21}{job.entrypoint}")
    return 0
