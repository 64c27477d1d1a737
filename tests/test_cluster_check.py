"""The GPU pre-flight check of ``nrd-bench train`` on a real multi-node Ray (``ray.cluster_utils.Cluster``).

A local Ray cannot grow: asking for GPUs it lacks is refused at once. A cluster we connect to may autoscale (the
deploy/ configs start with 0 GPU workers), so it is asked for the workers' bundles and given ``scaling.gpu_wait``
seconds. Here the "autoscaler" is the test itself adding a node that declares a GPU (Ray takes a node's declared
resources as given, so no GPU is needed to run this); the check must pass once that node has joined, and refuse
when nothing comes. What the check asked the autoscaler for is read back from the cluster's GCS, where Ray's
``request_resources`` stores it for the autoscaler to read.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from pipeline.config import ConfigError, TrainConfig  # noqa: E402
from pipeline.training.cluster import check_cluster  # noqa: E402

pytestmark = pytest.mark.slow


def gpu_config(workers: int, gpu_wait: float) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "data": {"dataset_dir": "unused"},
            "schedule": {"batch_size": 2 * workers},
            "scaling": {"workers": workers, "gpus_per_worker": 1, "cpus_per_worker": 1, "gpu_wait": gpu_wait},
        }
    )


def autoscaler_requests() -> list[dict]:
    """The resource bundles the autoscaler is asked to make room for (``request_resources``), as the cluster's GCS
    holds them (the v1 autoscaler, which a ``Cluster`` runs, reads them from this key)."""
    from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    assert not is_autoscaler_v2(), "the v2 autoscaler keeps requests elsewhere: read them from its cluster status"
    stored = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(stored) if stored else []


@pytest.mark.timeout(400)
def test_a_cluster_gets_time_to_bring_up_gpus_and_is_refused_when_none_come(ray_env, own_ray):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    ray.init(address=cluster.address)
    try:
        with pytest.raises(ConfigError, match=r"asks for 1 GPUs .* but the Ray cluster has 0$"):
            check_cluster(gpu_config(1, gpu_wait=60), can_grow=False)  # a local Ray: no waiting
        assert autoscaler_requests() == []  # nothing asked of an autoscaler that is not there

        started = time.monotonic()
        with pytest.raises(ConfigError, match=r"has 0 after waiting 2 s \(scaling.gpu_wait\) for the autoscaler"):
            check_cluster(gpu_config(1, gpu_wait=2), can_grow=True, poll_interval=0.5)
        assert time.monotonic() - started >= 2
        assert autoscaler_requests() == []  # the request is withdrawn when the check gives up

        # The check waits in a thread while this (main) thread adds the node, as an autoscaler would meanwhile
        outcome: dict[str, object] = {}

        def check() -> None:
            try:
                check_cluster(gpu_config(1, gpu_wait=120), can_grow=True, poll_interval=0.5)
                outcome["returned_after"] = time.monotonic() - started
            except Exception as error:  # reported below, in the test's thread
                outcome["error"] = error

        started = time.monotonic()
        waiting = threading.Thread(target=check)
        waiting.start()
        time.sleep(2)
        assert waiting.is_alive()  # still waiting: no GPU yet
        assert autoscaler_requests() == [{"CPU": 1, "GPU": 1}]  # one bundle per worker, asked of the autoscaler
        cluster.add_node(num_cpus=1, num_gpus=1)
        waiting.join(timeout=120)
        assert "error" not in outcome, outcome
        assert 2 <= outcome["returned_after"] < 120 and ray.cluster_resources().get("GPU") == 1
        assert autoscaler_requests() == []  # withdrawn: the trainer's placement group keeps the nodes from now on

        with pytest.raises(ConfigError, match=r"asks for 2 GPUs \(2 workers x 1\) but the Ray cluster has 1 after"):
            check_cluster(gpu_config(2, gpu_wait=1), can_grow=True, poll_interval=0.5)
    finally:
        ray.shutdown()
        cluster.shutdown()
