"""Evaluation inside the training loop: dataset-level metrics over the val split summed across workers, the cost of
the model at the evaluation size, and what rank 0 logs once training is done (cost, per-class IoU, pictures,
weights)."""

from __future__ import annotations

import csv
import functools
import io
import math
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from nrd.cost import count_macs, count_params, measure_latency
from nrd.evidence import IMAGE_COUNTS_FILE, ImageCounts, write_image_counts
from nrd.inference import predict_to_label
from nrd.metrics import COUNT_FIELDS, SegmentationMetrics, per_image_counts
from pipeline.config import TrainConfig
from pipeline.names import (
    CHECKPOINT_WEIGHTS,
    CLASS_IOU_PREFIX,
    COST_CONVENTION_TAG,
    EVAL_INPUT_TAG,
    PER_CLASS_FILE,
    PREDICTIONS_ARTIFACT_DIR,
    WEIGHTS_ARTIFACT_DIR,
)
from pipeline.training.pictures import prediction_figure
from pipeline.training.sessions import unwrap
from pipeline.training.tracking import TrackingError

LATENCY_REPEATS = 10  # timed forward passes of the trained model at the evaluation size (after one untimed)


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
    """Dataset-level metrics over the val split, summed across workers: each worker evaluates the rows
    ``index % world == rank`` of ``val_data`` (a ``ValShards``). Also the number of images evaluated (summed) and
    this worker's first ``keep`` (image, label, prediction) triples for pictures, and the per-image evidence of all
    workers: (image ids, (images, classes, 3) int64 TP/FP/FN counts, ``nrd.metrics.per_image_counts``).
    ``mode``: an ``nrd.inference`` mode."""
    import torch.distributed as dist

    metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index, device=device)
    images = torch.zeros((), dtype=torch.int64, device=device)
    examples, image_ids, counts = [], [], []
    network = unwrap(model)
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    if distributed:  # each worker's last forward updated its own BatchNorm statistics: evaluate rank 0's model
        for buffer in network.buffers():
            dist.broadcast(buffer, src=0)
    was_training = network.training
    network.eval()
    with torch.inference_mode():
        for batch in val_data.batches(rank, world, device):
            height, width = batch["valid_size"][0].tolist()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                scores = predict_to_label(network, batch["image"], (height, width), batch["label"].shape[-2:], mode)
            prediction = scores.argmax(1)
            metrics.update(prediction, batch["label"])
            image_ids.append(batch["id"])
            counts.append(per_image_counts(prediction, batch["label"], num_classes, ignore_index)[0].cpu().numpy())
            images += 1
            if len(examples) < keep:  # the image without its padding
                image = batch["image"][0, :, :height, :width]
                examples.append((image.cpu(), batch["label"][0].cpu(), prediction[0].cpu()))
    network.train(was_training)
    part = (image_ids, np.stack(counts) if counts else np.zeros((0, num_classes, len(COUNT_FIELDS)), dtype=np.int64))
    parts = [part]
    if distributed:
        for tensor in (*metrics.state().values(), images):
            dist.all_reduce(tensor)
        parts = [None] * world
        dist.all_gather_object(parts, part)  # every worker's images: rank 0 logs them as the run's evidence
    image_ids = tuple(name for ids, _ in parts for name in ids)
    return metrics, int(images), examples, (image_ids, np.concatenate([counts for _, counts in parts]))


def class_metrics(values: dict, manifest: dict) -> dict[str, float]:
    """``iou/<class name>``: each class's IoU (%) of one evaluation, the classes absent from the val split (NaN)
    left out; names kept to what MLflow accepts in a metric key."""
    metrics = {}
    for index, name in enumerate(manifest["class_names"]):
        value = float(values["per_class_iou"][index])
        if math.isfinite(value):
            metrics[CLASS_IOU_PREFIX + re.sub(r"[^A-Za-z0-9_.\- ]", "_", str(name))] = value
    return metrics


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


def log_pictures(logger, examples: list, manifest: dict, step: int) -> None:
    """Rank 0's pictures of this evaluation as MLflow images ``val_<i>`` at ``step`` (the UI's image grid shows
    how the predictions change over training)."""
    with tempfile.TemporaryDirectory() as directory:
        for index, (image, label, prediction) in enumerate(examples):
            path = Path(directory) / f"val_{index}.png"
            path.write_bytes(prediction_figure(image, label, prediction, manifest))
            logger.log_image(path, f"val_{index}", step)


def finish(
    logger, model, values: dict, examples: list, evidence: tuple, manifest: dict, config: TrainConfig, device
) -> dict:
    """Rank 0 after the last iteration: cost at the evaluation size, latency, per-class IoU, the per-image evidence
    of the last evaluation (``image_counts.npz``, ``nrd.evidence``: what intervals are resampled from), pictures,
    weights. Returns the cost metrics, which also go into the final report (multi-objective searches need them)."""
    network = unwrap(model)
    shape = eval_shape(examples, config)
    latency = measure_latency(network, shape, levels=("model",), device=device, warmup=1, repeats=LATENCY_REPEATS)
    network.train()
    timed = latency["model"]
    cost = static_cost(network, shape) | {"latency_p50_ms": timed["p50"]}
    cost |= {"latency_p50_low_ms": timed["p50_low"], "latency_p50_high_ms": timed["p50_high"]}  # 95%, over timings
    logger.log_metrics(cost, config.schedule.iterations)
    logger.set_tags({EVAL_INPUT_TAG: "x".join(map(str, shape)), COST_CONVENTION_TAG: "MACs (FLOPs = 2 x MACs)"})
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["class_index", "class_name", "iou_percent", "acc_percent"])
    for index, name in enumerate(manifest["class_names"]):
        writer.writerow([index, name, values["per_class_iou"][index], values["per_class_acc"][index]])
    logger.log_text(rows.getvalue(), PER_CLASS_FILE)
    with tempfile.TemporaryDirectory() as directory:
        image_ids, counts = evidence
        image_counts = ImageCounts(image_ids, tuple(manifest["class_names"]), counts, manifest["ignore_index"])
        write_image_counts(Path(directory) / IMAGE_COUNTS_FILE, image_counts)
        logger.log_artifact(str(Path(directory) / IMAGE_COUNTS_FILE))
        for index, (image, label, prediction) in enumerate(examples):
            path = Path(directory) / f"val_{index}.png"
            path.write_bytes(prediction_figure(image, label, prediction, manifest))
            logger.log_artifact(str(path), PREDICTIONS_ARTIFACT_DIR)
        weights = Path(directory) / CHECKPOINT_WEIGHTS
        torch.save(network.state_dict(), weights)
        logger.log_artifact(str(weights), WEIGHTS_ARTIFACT_DIR)
    if config.run.log_model:
        log_final_model(logger, network, config, manifest)
    return cost


def log_final_model(logger, network: torch.nn.Module, config: TrainConfig, manifest: dict) -> None:
    """The network as the run's MLflow model. MLflow away or refusing: said on stderr, training still succeeds
    (the weights went through the buffering logger; ``nrd-bench pareto --register`` logs the model from them)."""
    from pipeline.training.lineage import log_model

    logger.flush()
    try:
        log_model(
            logger.tracking_uri,
            logger.run_id,
            network,
            config.to_dict(),
            manifest["dataset"],
            config.schedule.iterations,
        )
    except TrackingError as error:
        print(f"{config.run.name}: the MLflow model was not logged ({error})", file=sys.stderr)
