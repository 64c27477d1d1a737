"""Where the training loop runs, and what it needs from there: a Ray Train worker (``WorkerSession``) or a Ray Tune
trial's own process (``TrialSession``); the device, the DDP wrapping and the distributed backend."""

from __future__ import annotations

from typing import Any

import torch


class WorkerSession:
    """What ``train_loop`` needs from its runner, on a Ray Train worker (a ``TorchTrainer`` run)."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def dataset(self, name: str):
        import ray.train

        return ray.train.get_dataset_shard(name)

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


class TrialSession:
    """The same for a single-worker run inside a Ray Tune trial: the loop runs in the trial's own process on the
    resources the trial holds, reads the whole Ray Data datasets and reports straight to Tune. No ``TorchTrainer``,
    hence no placement group that a trial stopped early by ASHA could leave reserved."""

    rank, world = 0, 1

    def __init__(self, datasets: dict[str, Any], use_gpu: bool):
        self.datasets = datasets
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.last_metrics: dict[str, Any] = {}

    def checkpoint(self):
        import ray.tune

        return ray.tune.get_checkpoint()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def dataset(self, name: str):
        return self.datasets[name]

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        import ray.tune

        self.last_metrics = dict(metrics)
        checkpoint = ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.tune.report(metrics, checkpoint=checkpoint)


def prepare_network(model: torch.nn.Module, device_type: str, world: int) -> torch.nn.Module:
    """On GPU: channels-last weights, and SyncBatchNorm when several workers share the batch. CPU: as built."""
    if device_type != "cuda":
        return model
    model = model.to(memory_format=torch.channels_last)
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if world > 1 else model


def distributed_backend() -> str:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else "none (one process)"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
