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


def check_cluster(config: TrainConfig, can_grow: bool = False, poll_interval: float = 5.0) -> None:
    """Refuse a run that asks for more GPUs than the cluster has, before any worker starts. A cluster that may
    autoscale (``can_grow``: one we connected to by address) is first asked for the workers' bundles (Ray's
    ``request_resources``) and given ``scaling.gpu_wait`` seconds to bring the GPU nodes up."""
    import ray

    scaling = config.scaling
    needed = scaling.workers * scaling.gpus_per_worker
    if needed <= ray.cluster_resources().get("GPU", 0):
        return
    waits = can_grow and scaling.gpu_wait > 0
    if waits:
        from ray.autoscaler.sdk import request_resources

        bundle = {"CPU": scaling.cpus_per_worker, "GPU": scaling.gpus_per_worker}
        request_resources(bundles=[bundle] * scaling.workers)
        print(f"waiting up to {scaling.gpu_wait:g} s for the cluster to scale up to {needed:g} GPUs", file=sys.stderr)
        deadline = time.monotonic() + scaling.gpu_wait
        try:
            while time.monotonic() < deadline:
                time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))
                if needed <= ray.cluster_resources().get("GPU", 0):
                    return
        finally:
            request_resources(bundles=[])  # the trainer's own placement group keeps the nodes from now on
    available = ray.cluster_resources().get("GPU", 0)
    waited = f" after waiting {scaling.gpu_wait:g} s (scaling.gpu_wait) for the autoscaler" if waits else ""
    raise ConfigError(
        f"scaling asks for {needed:g} GPUs ({scaling.workers} workers x {scaling.gpus_per_worker:g}) but the Ray "
        f"cluster has {available:g}{waited}"
    )
