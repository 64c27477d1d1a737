"""``nrd-bench train``: Ray Train (DDP over gloo on CPU, NCCL on GPU) fed by Ray Data, tracked in MLflow.

The driver validates the config, starts or connects to Ray, creates (or finds again) the MLflow run, builds the Ray
Data pipelines (Parquet shards → decode → augment, in Ray Data's CPU tasks) and runs a ``TorchTrainer``. Workers run
``train_loop``: the official iteration schedule, periodic evaluation with dataset-level metrics summed across
workers, and checkpoints holding the full state, reported through ``ray.train.report``. A restarted attempt (worker
or node failure, or the same command run again) resumes from ``ray.train.get_checkpoint()`` and logs into the same
MLflow run without repeating a metric step. Inside a Ray Tune trial, a single-worker run executes the same loop in
the trial's process instead (see ``TrialSession``).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import os
import random
import secrets
import shlex
import sys
import tempfile
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from nrd.cost import count_macs, count_params, measure_latency
from nrd.data import read_manifest
from nrd.data.base import decode_image, decode_label
from nrd.data.transforms import TRAIN_PRESETS, TrainTransform, TrainTransformConfig, ValTransform
from nrd.inference import predict_to_label
from nrd.losses import segmentation_loss
from nrd.metrics import SegmentationMetrics
from pipeline.config import FROM_DATA, ConfigError, TrainConfig
from pipeline.files import write_atomic

CHECKPOINT_STATE = "state.pt"
CHECKPOINT_WEIGHTS = "model.pt"
RUN_RECORD = "mlflow_run.json"
FINISHED_MARKER = "FINISHED"
RESULT_FILE = "result.json"  # the final metrics, beside config.yaml
PREDICTION_SAMPLES = 4
# CPUs one Ray Data read/decode task asks for: below 1 so that a cluster whose cores are mostly reserved by training
# workers (fractional ones included) still fits a data task instead of waiting forever.
DATA_TASK_CPUS = 0.5


# --------------------------------------------------------------------------------------------------- data (Ray Data)
def transform_config(config: TrainConfig, manifest: dict) -> TrainTransformConfig:
    """The training augmentation: the dataset's preset, overridden by whatever ``data`` sets."""
    data = config.data
    preset = TRAIN_PRESETS.get(manifest["dataset"], TRAIN_PRESETS["synthetic"])
    return TrainTransformConfig(
        base_scale=data.base_scale or preset.base_scale,
        crop_size=data.crop_size or preset.crop_size,
        ratio_range=data.ratio_range,
        cat_max_ratio=data.cat_max_ratio,
        photometric=data.photometric,
        ignore_index=manifest["ignore_index"],
    )


def decode_augment(batch: dict[str, np.ndarray], transform: TrainTransformConfig, seed: int) -> dict[str, np.ndarray]:
    """Ray Data batch function: encoded rows → augmented (B, 3, h, w) float32 images and (B, h, w) int64 labels.

    Every row gets its own generator from (seed, crc32(id), fresh entropy): draws differ from pass to pass (each
    epoch sees new augmentations) as Ray Data's streaming order does; the model, schedule and evaluation are seeded.
    """
    apply = TrainTransform(transform)
    images, labels = [], []
    for sample_id, image_bytes, label_bytes in zip(batch["id"], batch["image"], batch["label"], strict=True):
        rng = np.random.default_rng([seed, zlib.crc32(str(sample_id).encode()), secrets.randbits(32)])
        image, label = apply(decode_image(image_bytes, sample_id), decode_label(label_bytes, sample_id), rng)
        images.append(image.numpy())
        labels.append(label.numpy())
    return {"image": np.stack(images), "label": np.stack(labels)}


def decode_val(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data batch function for evaluation (batch size 1: sizes may differ): the normalised image padded to a
    multiple of 32, its size before padding (``valid_size``) and the untouched label."""
    transform = ValTransform()
    image, label = transform(decode_image(batch["image"][0], batch["id"][0]), decode_label(batch["label"][0]))
    valid_size = np.array([transform.valid_size(*label.shape)], dtype=np.int64)
    return {"image": image.numpy()[None], "label": label.numpy()[None], "valid_size": valid_size}


def shard_files(dataset_dir: str, manifest: dict, split: str) -> list[str]:
    if split not in manifest["splits"]:
        raise ConfigError(
            f"{dataset_dir}: the prepared data set has no {split!r} split (has {list(manifest['splits'])})"
        )
    return [f"{dataset_dir.rstrip('/')}/{record['file']}" for record in manifest["splits"][split]["shards"]]


def build_datasets(config: TrainConfig, manifest: dict) -> dict[str, Any]:
    """``train``: shards → decode → augment, split across the workers. ``val``: decoded, normalised; every worker
    gets all of it and evaluates the rows ``index % world == rank`` (Ray's equal split would drop rows)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the training log carries the progress
    context.print_on_execution_start = False  # one plan per epoch would drown the training log
    transform = transform_config(config, manifest)
    directory = config.data.dataset_dir
    task = {"num_cpus": DATA_TASK_CPUS}
    # Shards in a new order every epoch (rows inside a shard are mixed by the workers' local shuffle buffer)
    train = ray.data.read_parquet(shard_files(directory, manifest, "train"), **task).randomize_block_order()
    train = train.map_batches(
        decode_augment, batch_size=4, fn_kwargs={"transform": transform, "seed": config.schedule.seed}, **task
    )
    val = ray.data.read_parquet(shard_files(directory, manifest, "val"), **task)
    if config.data.val_limit:
        val = val.limit(config.data.val_limit)
    return {"train": train, "val": val.map_batches(decode_val, batch_size=1, **task)}


# ------------------------------------------------------------------------------------------------ schedule and state
def learning_rate(iteration: int, schedule) -> float:
    """Poly(power) decay from lr to min_lr over all iterations; during the first warmup_iterations it is scaled by a
    factor rising linearly from warmup_ratio to 1 (mmseg's linear warm-up on top of the poly schedule)."""
    progress = min(1.0, iteration / schedule.iterations)
    poly = (schedule.lr - schedule.min_lr) * (1 - progress) ** schedule.power + schedule.min_lr
    if iteration < schedule.warmup_iterations:
        return poly * (1 - (1 - iteration / schedule.warmup_iterations) * (1 - schedule.warmup_ratio))
    return poly


def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


# ------------------------------------------------------------------------------------------------- worker loop
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def evaluate(
    model,
    val_data,
    num_classes: int,
    ignore_index: int,
    device,
    use_amp: bool,
    keep: int = 0,
    mode: str = "whole",
    rank: int = 0,
    world: int = 1,
):
    """Dataset-level metrics over the val split, summed across workers: each worker reads all of ``val_data`` and
    evaluates the rows ``index % world == rank``. Also the number of images evaluated (summed) and this worker's
    first ``keep`` (image, label, prediction) triples for pictures. ``mode``: an ``nrd.inference`` mode."""
    import torch.distributed as dist

    metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index, device=device)
    images = torch.zeros((), dtype=torch.int64, device=device)
    examples = []
    network = unwrap(model)
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    if distributed:  # each worker's last forward updated its own BatchNorm statistics: evaluate rank 0's model
        for buffer in network.buffers():
            dist.broadcast(buffer, src=0)
    was_training = network.training
    network.eval()
    with torch.inference_mode():
        for index, batch in enumerate(val_data.iter_torch_batches(batch_size=1, device=device)):
            if index % world != rank:
                continue
            height, width = batch["valid_size"][0].tolist()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                scores = predict_to_label(network, batch["image"], (height, width), batch["label"].shape[-2:], mode)
            prediction = scores.argmax(1)
            metrics.update(prediction, batch["label"])
            images += 1
            if len(examples) < keep:  # the image without its padding
                image = batch["image"][0, :, :height, :width]
                examples.append((image.cpu(), batch["label"][0].cpu(), prediction[0].cpu()))
    network.train(was_training)
    if distributed:
        for tensor in (*metrics.state().values(), images):
            dist.all_reduce(tensor)
    return metrics, int(images), examples


def colourise(label: np.ndarray, palette: list[list[int]], ignore_index: int) -> np.ndarray:
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    colours[ignore_index] = (0, 0, 0)
    return colours[label]


def prediction_figure(image: torch.Tensor, label: torch.Tensor, prediction: torch.Tensor, manifest: dict) -> bytes:
    """PNG with the (de-normalised) image, the colour-coded label and the colour-coded prediction side by side."""
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    rgb = (image.float() * std + mean).clamp(0, 255).byte().permute(1, 2, 0).numpy()
    palette, ignore = manifest["palette"], manifest["ignore_index"]
    panels = [rgb, colourise(label.numpy().astype(np.uint8), palette, ignore),
              colourise(prediction.numpy().astype(np.uint8), palette, ignore)]  # fmt: skip
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(panels, axis=1)).save(buffer, format="PNG")
    return buffer.getvalue()


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


def load_checkpoint_state(checkpoint) -> dict[str, Any] | None:
    """The full training state of a Ray checkpoint (see ``report_checkpoint``), or None without one."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return torch.load(Path(directory) / CHECKPOINT_STATE, map_location="cpu", weights_only=True)


def train_loop(loop_config: dict[str, Any], session: WorkerSession | TrialSession | None = None) -> None:
    """Runs on every Ray Train worker (``session`` None: a ``WorkerSession``), or in a Tune trial's process
    (``TrialSession``). ``loop_config``: the resolved config dict, the manifest, the MLflow run."""
    import ray

    from pipeline.tracking import RunLogger, TrackingUnavailableError

    config = TrainConfig.from_dict(loop_config["config"], source="train loop config")
    manifest = loop_config["manifest"]
    session = session or WorkerSession()
    rank, world, device = session.rank, session.world, session.device
    use_amp = device.type == "cuda"
    schedule = config.schedule
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

    logger = None
    if rank == 0:
        logger = RunLogger(loop_config["tracking_uri"], loop_config["run_id"], loop_config["buffer_path"])
        logger.set_tags({"dist_backend": distributed_backend(), "precision": "bf16 autocast" if use_amp else "fp32"})

    train_shard = session.dataset("train")
    val_data = session.dataset("val")
    batch_size = config.per_worker_batch_size
    ignore_index = manifest["ignore_index"]
    num_classes = manifest["num_classes"]
    criterion = functools.partial(segmentation_loss, ignore_index=ignore_index, reduction=schedule.loss_reduction)

    window_loss, window_images, window_start = 0.0, 0, time.perf_counter()
    started = time.perf_counter()
    start_iteration = iteration
    model.train()
    shuffle_buffer = max(4 * batch_size, 16)
    while iteration < schedule.iterations:
        epoch_start = iteration
        for batch in train_shard.iter_torch_batches(
            batch_size=batch_size, drop_last=True, device=device, local_shuffle_buffer_size=shuffle_buffer
        ):
            if iteration >= schedule.iterations:
                break
            lr = learning_rate(iteration, schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = batch["image"], batch["label"]
            if use_amp:
                images = images.to(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits, aux_logits = model(images, with_aux=True)
                loss = criterion(logits.float(), labels)
                if aux_logits is not None and schedule.aux_weight > 0:
                    loss = loss + schedule.aux_weight * criterion(aux_logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            iteration += 1
            window_loss += loss.item()
            window_images += images.shape[0] * world

            metrics: dict[str, float] = {}
            if iteration % schedule.log_interval == 0 or iteration == schedule.iterations:
                elapsed = time.perf_counter() - window_start
                steps = (
                    schedule.log_interval
                    if iteration % schedule.log_interval == 0
                    else iteration % schedule.log_interval
                )
                metrics = {"loss": window_loss / steps, "lr": lr, "images_per_s": window_images / elapsed}
                done = iteration - start_iteration
                eta = (time.perf_counter() - started) / done * (schedule.iterations - iteration)
                if rank == 0:
                    print(
                        f"iter {iteration}/{schedule.iterations}  loss {metrics['loss']:.4f}  lr {lr:.2e}  "
                        f"{metrics['images_per_s']:.1f} img/s  ETA {eta:.0f}s",
                        flush=True,
                    )
                window_loss, window_images, window_start = 0.0, 0, time.perf_counter()
            final = iteration == schedule.iterations
            examples = []
            if iteration % schedule.eval_interval == 0 or final:
                keep = (PREDICTION_SAMPLES if final else 1) if rank == 0 else 0
                results, evaluated, examples = evaluate(
                    model, val_data, num_classes, ignore_index, device, use_amp, keep, rank=rank, world=world
                )
                values = results.compute()
                metrics |= {key: values[key] for key in ("mIoU", "aAcc", "mAcc", "mDice", "mBIoU")}
                metrics["val_images"] = evaluated
                metrics |= {f"trimap_mIoU_{width}px": value for width, value in values["trimap_mIoU"].items()}
                if rank == 0:
                    metrics |= static_cost(unwrap(model), eval_shape(examples, config))  # searches may optimise it
                    print(f"iter {iteration}: val mIoU {values['mIoU']:.2f}  aAcc {values['aAcc']:.2f}", flush=True)
                if final and config.data.eval_msflip:
                    msflip, _, _ = evaluate(
                        model, val_data, num_classes, ignore_index, device, use_amp, 0, "msflip", rank, world
                    )
                    msflip_values = msflip.compute()
                    metrics |= {"mIoU_msflip": msflip_values["mIoU"], "aAcc_msflip": msflip_values["aAcc"]}
                    if rank == 0:
                        print(f"iter {iteration}: val mIoU ms+flip {msflip_values['mIoU']:.2f}", flush=True)
            if logger and metrics:
                logger.log_metrics({k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}, iteration)
            if final and rank == 0:
                metrics |= finish(logger, model, values, examples, manifest, config, device)
            if iteration % schedule.checkpoint_interval == 0 or final:
                report_checkpoint(session, model, optimizer, iteration, metrics)
            elif iteration % schedule.eval_interval == 0:  # evaluations reach Tune's schedulers too
                session.report({"iteration": iteration, **metrics})
        if iteration == epoch_start:
            raise ConfigError(
                f"worker {rank}: a pass over the train split gave no full batch of {batch_size}; the split is "
                f"smaller than schedule.batch_size={schedule.batch_size}"
            )
    if logger:
        try:
            logger.drain(config.run.tracking_timeout)  # the driver ends the run, after writing the finished marker
        except TrackingUnavailableError as error:  # not a worker failure: retrying cannot help; the driver reports it
            print(f"[rank 0] {error}", flush=True)


def report_checkpoint(session, model, optimizer, iteration: int, metrics: dict) -> None:
    """Every worker reports (Ray needs the same number of reports from each); only rank 0 writes the files."""
    reported = {"iteration": iteration, **{k: v for k, v in metrics.items() if v is not None}}
    if session.rank != 0:
        session.report(reported)
        return
    with tempfile.TemporaryDirectory() as directory:
        state = {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "rng": rng_state(),
        }
        torch.save(state, Path(directory) / CHECKPOINT_STATE)
        torch.save(unwrap(model).state_dict(), Path(directory) / CHECKPOINT_WEIGHTS)
        session.report(reported, directory)


def eval_shape(examples: list, config: TrainConfig) -> tuple[int, int, int, int]:
    """(1, 3, H, W) of the first evaluated image: the size cost is counted at."""
    height, width = examples[0][0].shape[-2:] if examples else config.data.crop_size or (512, 512)
    return (1, 3, int(height), int(width))


@functools.cache
def _static_cost(network: torch.nn.Module, shape: tuple[int, int, int, int]) -> dict[str, float]:
    gmacs, params = count_macs(network, shape), count_params(network)
    return {f"gmacs_{level}": value for level, value in gmacs.items()} | {"params_m": params["model"]}


def static_cost(network: torch.nn.Module, shape: tuple[int, int, int, int]) -> dict[str, float]:
    """GMACs per level (``gmacs_encoder`` ... ``gmacs_model``, see ``nrd.cost``) and params of ``network`` at
    ``shape``: shapes only, so computed once per size."""
    return dict(_static_cost(network, shape))


def finish(logger, model, values: dict, examples: list, manifest: dict, config: TrainConfig, device) -> dict:
    """Rank 0 after the last iteration: cost at the evaluation size, latency, per-class IoU, pictures, weights.
    Returns the cost metrics, which also go into the final report (multi-objective searches need them)."""
    network = unwrap(model)
    shape = eval_shape(examples, config)
    latency = measure_latency(network, shape, levels=("model",), device=device, warmup=1, repeats=5)
    network.train()
    cost = static_cost(network, shape) | {"latency_p50_ms": latency["model"]["p50"]}
    logger.log_metrics(cost, config.schedule.iterations)
    logger.set_tags({"eval_input": "x".join(map(str, shape)), "cost_convention": "MACs (FLOPs = 2 x MACs)"})
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["class_index", "class_name", "iou_percent", "acc_percent"])
    for index, name in enumerate(manifest["class_names"]):
        writer.writerow([index, name, values["per_class_iou"][index], values["per_class_acc"][index]])
    logger.log_text(rows.getvalue(), "per_class_iou.csv")
    with tempfile.TemporaryDirectory() as directory:
        for index, (image, label, prediction) in enumerate(examples):
            path = Path(directory) / f"val_{index}.png"
            path.write_bytes(prediction_figure(image, label, prediction, manifest))
            logger.log_artifact(str(path), "predictions")
        weights = Path(directory) / CHECKPOINT_WEIGHTS
        torch.save(network.state_dict(), weights)
        logger.log_artifact(str(weights), "weights")
    return cost


# ------------------------------------------------------------------------------------------------------- driver
def run_directory(config: TrainConfig) -> Path:
    return Path(config.run.storage_path) / config.run.name


def resolve(config: TrainConfig) -> tuple[TrainConfig, dict]:
    """Fill what the data set decides (num_classes, default name, absolute storage) and check what needs data."""
    try:
        manifest = read_manifest(config.data.dataset_dir)
    except Exception as error:
        raise ConfigError(f"data.dataset_dir: {error}") from error
    model = config.model
    if model.num_classes == FROM_DATA:
        model = replace(model, num_classes=manifest["num_classes"])
    elif model.num_classes != manifest["num_classes"]:
        raise ConfigError(
            f"model.num_classes={model.num_classes} but {config.data.dataset_dir} has {manifest['num_classes']} classes"
        )
    if config.schedule.aux_weight == 0 and model.aux_head:
        model = replace(model, aux_head=False)  # an unused head would leave DDP with parameters that get no gradient
    for split in ("train", "val"):
        shard_files(config.data.dataset_dir, manifest, split)
    train_count = manifest["splits"]["train"]["count"]
    if train_count < config.schedule.batch_size:
        raise ConfigError(
            f"{config.data.dataset_dir}: the train split has {train_count} samples, fewer than one batch "
            f"(schedule.batch_size={config.schedule.batch_size})"
        )
    run = config.run
    name = run.name or f"{manifest['dataset']}-{model.decoder}-{model.encoder}"
    data = config.data
    if "://" not in data.dataset_dir:  # workers on other nodes or in other folders must find it too
        data = replace(data, dataset_dir=str(Path(data.dataset_dir).resolve()))
    storage = str(Path(run.storage_path).resolve())
    config = replace(config, model=model, data=data, run=replace(run, name=name, storage_path=storage))
    with torch.device("meta"):
        config.model.build()  # unknown names, invalid hyperparameters: before any worker starts
    return config, manifest


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
        # The dashboard (bound to 127.0.0.1) stays on: Ray Train's placement-group cleaner reads it, and without
        # it a trial stopped by ASHA leaks its workers' reservation and later trials wait forever.
        ray.init(_node_ip_address="127.0.0.1", log_to_driver=True)
        return False


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


def start_tracking(
    config: TrainConfig,
    manifest: dict,
    directory: Path,
    parent_run_id: str | None = None,
    extra_tags: dict | None = None,
) -> dict[str, str]:
    """The MLflow run of this training run: created once (before any worker starts), found again on re-runs."""
    from pipeline import tracking

    record_path = directory / RUN_RECORD
    uri = tracking.resolve_tracking_uri(config.run.tracking_uri)
    if record := tracking.recorded_run(record_path, uri):
        return record
    experiment_id = tracking.ensure_experiment(uri, config.run.experiment)
    tags = {
        "dataset": manifest["dataset"],
        "dataset_dir": config.data.dataset_dir,
        "decoder": config.model.decoder,
        "encoder": config.model.encoder,
        "git_commit": git_commit(),
        "ray_version": _version("ray"),
        "torch_version": torch.__version__,
        "device_type": "cuda" if config.scaling.use_gpu else "cpu",
    }
    run_id = tracking.create_run(
        uri, experiment_id, config.run.name, tags=tags | (extra_tags or {}), parent_run_id=parent_run_id
    )
    record = {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id}
    tracking.save_run_record(record_path, record)
    return record


def end_tracking(driver_logger, worker_buffer: Path, config: TrainConfig, directory: Path) -> None:
    """Deliver what rank 0 could not (its buffer file, left when MLflow stayed away at its end), then end the run
    as FINISHED. If MLflow stays unreachable for ``run.tracking_timeout`` seconds, raise one error naming every
    buffer file, in the order to replay them: the training itself is done and recorded beside the checkpoints."""
    from pipeline.tracking import RunLogger, TrackingUnavailableError

    timeout = config.run.tracking_timeout
    try:
        if worker_buffer.exists():
            RunLogger(driver_logger.tracking_uri, driver_logger.run_id, worker_buffer).drain(timeout)
        driver_logger.close(status="FINISHED", timeout=timeout)
    except TrackingUnavailableError as error:
        if not driver_logger.buffer_path.exists():  # the end of the run must be replayed too
            with contextlib.suppress(TrackingUnavailableError):
                driver_logger.close(status="FINISHED", timeout=0)
        buffers = [path for path in (worker_buffer, driver_logger.buffer_path) if path.exists()]
        replay = "; ".join(f"nrd-bench replay {shlex.quote(str(path))}" for path in buffers)
        raise TrackingUnavailableError(
            f"training of {config.run.name!r} finished (results and checkpoints in {directory}), but MLflow at "
            f"{driver_logger.tracking_uri} was still unreachable {timeout:g} s after the end of training. Nothing is "
            f"lost: run {driver_logger.run_id}'s remaining operations are kept in {len(buffers)} file(s); when MLflow "
            f"is reachable, run, in this order: {replay}"
        ) from error


def git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)  # fmt: skip
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def train(
    config: TrainConfig,
    address: str | None = None,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    in_tune_trial: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the training run described by ``config``; returns the final metrics and run ids.
    ``parent_run_id`` nests the MLflow run (sweeps). ``in_tune_trial``: called from a Ray Tune trial, whose reports
    and checkpoints then go to Tune; a single-worker run trains in the trial's own process (``TrialSession``), a
    multi-worker one through its own ``TorchTrainer``."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline.tracking import RunLogger

    config, manifest = resolve(config)
    directory = run_directory(config)
    if (directory / FINISHED_MARKER).exists():
        raise ConfigError(
            f"run {config.run.name!r} in {config.run.storage_path} already finished; pass another --name for a new run"
        )
    check_cluster(config, can_grow=start_ray(address))
    record = start_tracking(config, manifest, directory, parent_run_id, extra_tags)
    buffer_path = str(directory / "mlflow-buffer.jsonl")  # rank 0's; the driver keeps its own beside it
    driver_logger = RunLogger(record["tracking_uri"], record["run_id"], str(directory / "mlflow-driver-buffer.jsonl"))
    if driver_logger.last_step() is None:
        driver_logger.log_params(config.flat_params())
        driver_logger.log_dict(config.to_dict(), "config.yaml")
    driver_logger.flush()
    write_atomic(directory / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))

    loop_config = {
        "config": config.to_dict(),
        "manifest": manifest,
        "tracking_uri": record["tracking_uri"],
        "run_id": record["run_id"],
        "buffer_path": buffer_path,
    }
    scaling = config.scaling
    if in_tune_trial and scaling.workers == 1:
        session = TrialSession(build_datasets(config, manifest), scaling.use_gpu)
        train_loop(loop_config, session)
        metrics = session.last_metrics
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        resources = {"CPU": scaling.cpus_per_worker} | ({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {})
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=loop_config,
            scaling_config=ray.train.ScalingConfig(
                num_workers=scaling.workers,
                use_gpu=scaling.use_gpu,
                resources_per_worker=resources,
                placement_strategy="SPREAD" if scaling.workers > 1 else "PACK",
            ),
            run_config=ray.train.RunConfig(
                name=config.run.name,
                storage_path=config.run.storage_path,
                failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                callbacks=[TuneReportCallback()] if in_tune_trial else None,
            ),
            datasets=build_datasets(config, manifest),
            dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),  # val: see build_datasets
        )
        metrics = dict(trainer.fit().metrics or {})
    write_atomic(directory / RESULT_FILE, json.dumps(metrics, indent=2, default=str))
    write_atomic(directory / FINISHED_MARKER, time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    end_tracking(driver_logger, Path(buffer_path), config, directory)  # last: FINISHED in MLflow implies the marker
    print(f"finished {config.run.name}: {json.dumps(metrics, default=str)}", file=sys.stderr)
    return {"metrics": metrics, "run_id": record["run_id"], "directory": str(directory), "config": config.to_dict()}
