"""The training loop every Ray Train worker (or a Ray Tune trial's own process) runs, in named steps.

``train_loop`` reads like torchvision's ``train_one_epoch``: set up (seeds, model, resume from a checkpoint), then
per iteration one SGD step on the official schedule, the loss window logged every ``log_interval``, an evaluation
every ``eval_interval``, a checkpoint every ``checkpoint_interval``; rank 0 logs to MLflow and, after the last
iteration, the cost, per-class IoU, pictures and weights. A restarted attempt resumes from the last checkpoint.
"""

from __future__ import annotations

import functools
import math
import random
import time
from typing import Any

import numpy as np
import torch

from nrd.losses import segmentation_loss
from pipeline.config import ConfigError, ScheduleSettings, TrainConfig
from pipeline.names import ITERATION, MIOU_MSFLIP, VAL_METRICS
from pipeline.training.checkpoints import load_checkpoint_state, report_checkpoint, restore_rng_state
from pipeline.training.evaluation import class_metrics, eval_shape, evaluate, finish, log_pictures, static_cost
from pipeline.training.ingest import ValShards
from pipeline.training.sessions import (
    TrialSession,
    WorkerSession,
    distributed_backend,
    prepare_network,
    unwrap,
)

PREDICTION_SAMPLES = 4  # val images rank 0 logs as pictures after the last iteration


def train_loop(loop_config: dict[str, Any], session: WorkerSession | TrialSession | None = None) -> None:
    """Runs on every Ray Train worker (``session`` None: a ``WorkerSession``), or in a Tune trial's process
    (``TrialSession``). ``loop_config``: the resolved ``TrainConfig`` (``config``), the data set's ``manifest``,
    the MLflow run (``tracking_uri``, ``run_id``) and rank 0's MLflow ``buffer_path``."""
    config: TrainConfig = loop_config["config"]
    manifest = loop_config["manifest"]
    session = session or WorkerSession()
    schedule = config.schedule
    model, optimizer, iteration, resumed = start_or_resume(config, session)
    logger = open_logger(loop_config, session)
    train_data, val_data = session.dataset("train"), ValShards(config, manifest)
    criterion = functools.partial(
        segmentation_loss, ignore_index=manifest["ignore_index"], reduction=config.schedule.loss_reduction
    )
    window = LossWindow(schedule, iteration)
    model.train()
    monitor = start_system_metrics(config, loop_config, session)
    while iteration < schedule.iterations:
        epoch_start = iteration
        for batch in train_batches(train_data, config, session.device):
            if iteration >= schedule.iterations:
                break
            lr = learning_rate(iteration, schedule)
            loss = train_step(model, optimizer, criterion, batch, lr, schedule.aux_weight, session.device)
            iteration += 1
            final = iteration == schedule.iterations
            metrics = window.add(loss, batch["image"].shape[0] * session.world, iteration, lr, session.rank)
            values, examples, evidence = {}, [], ((), None)
            if iteration % schedule.eval_interval == 0 or final:
                values, examples, evidence, evaluated = validate(model, val_data, config, manifest, session, iteration)
                metrics |= evaluated
            if logger and metrics:  # the per-class IoUs go to MLflow only, in the same request
                logged = {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}
                fresh = logger.log_metrics(logged | (class_metrics(values, manifest) if values else {}), iteration)
                if fresh and examples:  # not again when a resumed attempt redoes this evaluation
                    log_pictures(logger, examples, manifest, iteration)
            if final and session.rank == 0:
                metrics |= finish(logger, model, values, examples, evidence, manifest, config, session.device)
            if iteration % schedule.checkpoint_interval == 0 or final:
                report_checkpoint(session, model, optimizer, iteration, metrics)
            elif iteration % schedule.eval_interval == 0:  # evaluations reach Tune's schedulers too
                session.report({ITERATION: iteration, **metrics})
        require_progress(iteration, epoch_start, session.rank, config)
    if resumed and resumed.get(ITERATION) == schedule.iterations:  # killed after its last checkpoint, before the
        session.report(resumed)  # run's end: nothing left to train, its final result again (Tune's, the run's)
    if monitor is not None:
        monitor.finish()
    close_logger(logger, config)


def start_system_metrics(config: TrainConfig, loop_config: dict[str, Any], session):
    """With ``run.system_metrics``: MLflow's system-metrics monitor (CPU, memory, disk, network, GPU when present)
    in this worker, sampling every 10 s into ``system/...`` metrics (``system/rank<N>/...`` with several workers),
    continuing the steps of an earlier attempt. None without it."""
    if not config.run.system_metrics:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    node = f"rank{session.rank}" if session.world > 1 else None
    try:
        monitor = SystemMetricsMonitor(
            loop_config["run_id"], resume_logging=True, node_id=node, tracking_uri=loop_config["tracking_uri"]
        )
    except Exception as error:  # MLflow away at the start: training goes on without the monitor, and says so
        print(f"[rank {session.rank}] system metrics not monitored: {type(error).__name__}: {error}", flush=True)
        return None
    monitor.start()
    return monitor


def learning_rate(iteration: int, schedule: ScheduleSettings) -> float:
    """Poly(power) decay from lr to min_lr over all iterations; during the first warmup_iterations it is scaled by a
    factor rising linearly from warmup_ratio to 1 (mmseg's linear warm-up on top of the poly schedule)."""
    progress = min(1.0, iteration / schedule.iterations)
    poly = (schedule.lr - schedule.min_lr) * (1 - progress) ** schedule.power + schedule.min_lr
    if iteration < schedule.warmup_iterations:
        return poly * (1 - (1 - iteration / schedule.warmup_iterations) * (1 - schedule.warmup_ratio))
    return poly


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def start_or_resume(config: TrainConfig, session) -> tuple[torch.nn.Module, torch.optim.Optimizer, int, dict]:
    """The seeded model on its device (DDP-wrapped by Ray Train), its SGD optimiser, the iteration to start from
    (0, or the last checkpoint's, whose weights, optimiser state and (rank 0) random generators are restored) and
    the metrics reported with that checkpoint ({} without one)."""
    import ray

    rank, world, device, schedule = session.rank, session.world, session.device, config.schedule
    node = ray.get_runtime_context().get_node_id()
    print(f"[rank {rank}/{world}] node {node} device {device}", flush=True)
    seed_everything(schedule.seed)
    model = prepare_network(config.model.build(), device.type, world)
    state = load_checkpoint_state(session.checkpoint())
    iteration = 0
    if state:
        model.load_state_dict(state["model"])
        iteration = state["iteration"]
        if rank == 0:
            restore_rng_state(state["rng"])
        print(f"[rank {rank}] resumed from checkpoint at iteration {iteration}", flush=True)
    if rank != 0 or not state:
        seed_everything(schedule.seed * 1009 + rank * 7919 + iteration)
    # On its device (and DDP-wrapped) before the optimiser exists: a loaded optimiser state then lands beside the
    # parameters (SGD's momentum buffers on the GPU, not on the CPU where the checkpoint was read)
    model = session.prepare_model(model)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay
    )
    if state:
        optimizer.load_state_dict(state["optimizer"])
    return model, optimizer, iteration, (state or {}).get("reported", {})


def open_logger(loop_config: dict[str, Any], session):
    """Rank 0's MLflow logger (buffering to a file while MLflow is away); None on the other ranks."""
    if session.rank != 0:
        return None
    from pipeline.training.logger import RunLogger

    logger = RunLogger(loop_config["tracking_uri"], loop_config["run_id"], loop_config["buffer_path"])
    precision = "bf16 autocast" if session.device.type == "cuda" else "fp32"
    logger.set_tags({"dist_backend": distributed_backend(), "precision": precision})
    return logger


def train_batches(train_data, config: TrainConfig, device: torch.device):
    """One pass over this worker's share of the train split, in full batches of batch_size / workers."""
    batch_size = config.per_worker_batch_size
    return train_data.iter_torch_batches(
        batch_size=batch_size, drop_last=True, device=device, local_shuffle_buffer_size=max(4 * batch_size, 16)
    )


def train_step(model, optimizer, criterion, batch: dict, lr: float, aux_weight: float, device) -> float:
    """One SGD step at learning rate ``lr`` on the main loss plus ``aux_weight`` times the auxiliary head's;
    returns the loss. On GPU: channels-last images, bf16 autocast."""
    use_amp = device.type == "cuda"
    for group in optimizer.param_groups:
        group["lr"] = lr
    images, labels = batch["image"], batch["label"]
    if use_amp:
        images = images.to(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        logits, aux_logits = model(images, with_aux=True)
        loss = criterion(logits.float(), labels)
        if aux_logits is not None and aux_weight > 0:
            loss = loss + aux_weight * criterion(aux_logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


class LossWindow:
    """The mean loss and throughput over the iterations since the last log line, reported every ``log_interval``
    iterations and at the last one, with an ETA (rank 0 prints it)."""

    def __init__(self, schedule: ScheduleSettings, start_iteration: int):
        self.schedule, self.start_iteration = schedule, start_iteration
        self.started = time.perf_counter()
        self._reset()

    def _reset(self) -> None:
        self.loss, self.images, self.window_start = 0.0, 0, time.perf_counter()

    def add(self, loss: float, images: int, iteration: int, lr: float, rank: int) -> dict[str, float]:
        """Count one iteration; at a log step, the window's ``loss``, ``lr`` and ``images_per_s``, else {}."""
        schedule = self.schedule
        self.loss += loss
        self.images += images
        if iteration % schedule.log_interval and iteration != schedule.iterations:
            return {}
        elapsed = time.perf_counter() - self.window_start
        steps = iteration % schedule.log_interval or schedule.log_interval
        metrics = {"loss": self.loss / steps, "lr": lr, "images_per_s": self.images / elapsed}
        eta = (
            (time.perf_counter() - self.started)
            / (iteration - self.start_iteration)
            * (schedule.iterations - iteration)
        )
        if rank == 0:
            print(
                f"iter {iteration}/{schedule.iterations}  loss {metrics['loss']:.4f}  lr {lr:.2e}  "
                f"{metrics['images_per_s']:.1f} img/s  ETA {eta:.0f}s",
                flush=True,
            )
        self._reset()
        return metrics


def validate(model, val_data, config: TrainConfig, manifest: dict, session, iteration: int):
    """Evaluate on the whole val split (ms+flip too after the last iteration when ``data.eval_msflip``); returns
    the computed values, rank 0's examples for pictures, the per-image evidence (single-scale) and the metrics to
    log (rank 0 adds the cost)."""
    rank, world, device = session.rank, session.world, session.device
    use_amp = device.type == "cuda"
    num_classes, ignore_index = manifest["num_classes"], manifest["ignore_index"]
    final = iteration == config.schedule.iterations
    keep = (PREDICTION_SAMPLES if final else 1) if rank == 0 else 0
    results, evaluated, examples, evidence = evaluate(
        model, val_data, num_classes, ignore_index, device, use_amp, keep, rank=rank, world=world
    )
    values = results.compute()
    metrics = {key: values[key] for key in VAL_METRICS}
    metrics["val_images"] = evaluated
    metrics |= {f"trimap_mIoU_{width}px": value for width, value in values["trimap_mIoU"].items()}
    if rank == 0:
        metrics |= static_cost(unwrap(model), eval_shape(examples, config))  # searches may optimise it
        print(f"iter {iteration}: val mIoU {values['mIoU']:.2f}  aAcc {values['aAcc']:.2f}", flush=True)
    if final and config.data.eval_msflip:
        msflip, *_ = evaluate(model, val_data, num_classes, ignore_index, device, use_amp, 0, "msflip", rank, world)
        msflip_values = msflip.compute()
        metrics |= {MIOU_MSFLIP: msflip_values["mIoU"], "aAcc_msflip": msflip_values["aAcc"]}
        if rank == 0:
            print(f"iter {iteration}: val mIoU ms+flip {msflip_values['mIoU']:.2f}", flush=True)
    return values, examples, evidence, metrics


def require_progress(iteration: int, epoch_start: int, rank: int, config: TrainConfig) -> None:
    """A pass over the train split that gave no full batch would loop forever."""
    if iteration == epoch_start:
        raise ConfigError(
            f"worker {rank}: a pass over the train split gave no full batch of {config.per_worker_batch_size}; the "
            f"split is smaller than schedule.batch_size={config.schedule.batch_size}"
        )


def close_logger(logger, config: TrainConfig) -> None:
    """Rank 0 delivers what it buffered; the driver ends the MLflow run, after writing the finished marker."""
    if logger is None:
        return
    from pipeline.training.tracking import TrackingUnavailableError

    try:
        logger.drain(config.run.tracking_timeout)
    except TrackingUnavailableError as error:  # not a worker failure: retrying cannot help; the driver reports it
        print(f"[rank 0] {error}", flush=True)
