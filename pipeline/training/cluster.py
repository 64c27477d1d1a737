"""The Ray cluster of a run: start or connect to Ray, and refuse, before any worker starts, what it cannot give."""

from __future__ import annotations

import os
import sys
import time

from pipeline.config import ConfigError, TrainConfig


def start_ray(address: str | None) -> bool:
    """Connect to the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray bound to 127.0.0.1 (no
    usage stats); nothing when this process is already connected (e.g. inside a Tune trial, which holds its
    resources). True when it connected to a cluster by address (which may autoscale), else False."""
    import ray

    check_ray_address(address)
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address or os.environ.get("RAY_ADDRESS"):  # e.g. a job submitted to a cluster has RAY_ADDRESS set
        ray.init(address=address, log_to_driver=True)
        return True
    else:
        # Workers of a local Ray inherit this: Train V2 patches print to also log, so every line showed twice.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        init_local_ray(log_to_driver=True)
        return False


def check_ray_address(address: str | None) -> None:
    """Refuse a dashboard URL where Ray needs its cluster address: the README's cluster section has users set
    ``RAY_ADDRESS=http://HEAD:8265`` for ``submit`` and ``jobs``, and Ray itself only says "Invalid Ray address"."""
    source, value = ("--address", address) if address else ("RAY_ADDRESS", os.environ.get("RAY_ADDRESS", ""))
    if value.strip().lower().startswith(("http://", "https://")):
        raise ConfigError(
            f"{source}={value} is a Ray dashboard (Jobs API) address, which `nrd-bench submit` and `nrd-bench jobs` "
            "use; train, tune and demo join a cluster by its GCS address (HOST:6379, or auto on a node of it). Run "
            f"this command on the cluster with `nrd-bench submit -- nrd-bench ...`, or unset {source} to start a "
            "local Ray"
        )


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_local_ray(**options) -> str:
    """Start a new local Ray bound to 127.0.0.1 with its dashboard on a free port, and connect to it; returns the
    dashboard's URL. The dashboard stays on: Ray Train's placement-group cleaner reads it, and without it a trial
    stopped by ASHA leaks its workers' reservation and later trials wait forever. Ray's processes are told that
    URL (``RAY_API_SERVER_ADDRESS``, set only while Ray starts, so this process keeps its own environment): left
    to find it themselves they give up with "Found multiple active Ray instances" whenever another Ray runs on the
    machine (a notebook's, a second command's), and the cleaner dies with a traceback in the run's log."""
    import ray

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    previous = os.environ.get(API_SERVER_VARIABLE)
    os.environ[API_SERVER_VARIABLE] = url  # the raylet starts now, and every Ray worker inherits its environment
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", dashboard_port=port, **options)
    finally:
        if previous is None:
            del os.environ[API_SERVER_VARIABLE]
        else:
            os.environ[API_SERVER_VARIABLE] = previous
    return url


API_SERVER_VARIABLE = "RAY_API_SERVER_ADDRESS"  # ray._private.ray_constants.RAY_API_SERVER_ADDRESS_ENVIRONMENT_VARIABLE


def check_cluster(
    config: TrainConfig, can_grow: bool = False, poll_interval: float = 5.0, in_tune_trial: bool = False
) -> None:
    """Refuse, before any worker starts, a run the cluster cannot place (Ray would wait for it forever): more GPUs
    than the cluster has; a worker with more CPUs than its largest node; or the workers' CPUs plus the one task's
    worth Ray Data needs to feed them (``DATA_TASK_CPUS``) more than the cluster's CPUs. A cluster that may autoscale
    (``can_grow``: one we connected to by address) is first asked for the workers' bundles (Ray's
    ``request_resources``) and given ``scaling.gpu_wait`` seconds to bring the nodes up. Inside a Tune trial
    (``in_tune_trial``) the trial already holds its CPUs (the sweep checked them), so only GPUs are checked."""
    scaling = config.scaling
    if (problem := _shortfall(scaling, in_tune_trial)) is None:
        return
    waits = can_grow and scaling.gpu_wait > 0
    if waits:
        from ray.autoscaler.sdk import request_resources

        bundle = {"CPU": scaling.cpus_per_worker} | (
            {"GPU": scaling.gpus_per_worker} if scaling.gpus_per_worker else {}
        )
        request_resources(bundles=[bundle] * scaling.workers)
        print(f"waiting up to {scaling.gpu_wait:g} s for the cluster to scale up: {problem}", file=sys.stderr)
        deadline = time.monotonic() + scaling.gpu_wait
        try:
            while time.monotonic() < deadline:
                time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))
                if (problem := _shortfall(scaling, in_tune_trial)) is None:
                    return
        finally:
            request_resources(bundles=[])  # the trainer's own placement group keeps the nodes from now on
    waited = f" after waiting {scaling.gpu_wait:g} s (scaling.gpu_wait) for the autoscaler" if waits else ""
    raise ConfigError(problem + waited)


def _shortfall(scaling, in_tune_trial: bool) -> str | None:
    """What the cluster lacks for the run's workers, or None."""
    import ray

    from pipeline.training.ingest import DATA_TASK_CPUS

    resources = ray.cluster_resources()
    gpus = scaling.workers * scaling.gpus_per_worker
    if gpus > resources.get("GPU", 0):
        return (
            f"scaling asks for {gpus:g} GPUs ({scaling.workers} workers x {scaling.gpus_per_worker:g}) but the Ray "
            f"cluster has {resources.get('GPU', 0):g}"
        )
    if in_tune_trial:
        return None
    largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    if scaling.cpus_per_worker > largest:
        return (
            f"scaling.cpus_per_worker={scaling.cpus_per_worker:g} (--cpus-per-worker) but the largest node of the Ray "
            f"cluster has {largest:g} CPUs: a worker runs on one node"
        )
    cpus = scaling.workers * scaling.cpus_per_worker + DATA_TASK_CPUS
    if cpus > resources.get("CPU", 0):
        return (
            f"scaling asks for {cpus:g} CPUs ({scaling.workers} workers x {scaling.cpus_per_worker:g} "
            f"--cpus-per-worker, plus {DATA_TASK_CPUS:g} for Ray Data's tasks, which feed them) but the Ray cluster "
            f"has {resources.get('CPU', 0):g}; lower --workers or --cpus-per-worker"
        )
    return None
