"""Input of a training run: the train split through Ray Data (the prepared Parquet shards, decoded and augmented in
Ray Data's CPU tasks, split across the workers); the val split read by each worker straight from its shards."""

from __future__ import annotations

import secrets
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from nrd.data.base import decode_image, decode_label
from nrd.data.transforms import TRAIN_PRESETS, TrainTransform, TrainTransformConfig, ValTransform, ValTransformConfig
from pipeline.config import TrainConfig
from pipeline.resolve import shard_files

# CPUs one Ray Data read/decode task asks for: below 1 so that a cluster whose cores are mostly reserved by training
# workers (fractional ones included) still fits a data task instead of waiting forever.
DATA_TASK_CPUS = 0.5


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


def decode_val(batch: dict[str, np.ndarray], test_scale: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """One val row (batch size 1: sizes may differ): the normalised image (resized to fit ``test_scale`` when set)
    padded to a multiple of 32, its size before padding (``valid_size``) and the untouched label."""
    transform = ValTransform(ValTransformConfig(test_scale=test_scale))
    image, label = transform(decode_image(batch["image"][0], batch["id"][0]), decode_label(batch["label"][0]))
    valid_size = np.array([transform.valid_size(*label.shape)], dtype=np.int64)
    return {"image": image.numpy()[None], "label": label.numpy()[None], "valid_size": valid_size}


def build_datasets(config: TrainConfig, manifest: dict) -> dict[str, Any]:
    """``train``: shards → decode → augment, split across the workers, one Ray Data execution per epoch. The val
    split is not a Ray Data dataset: see ``ValShards``."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the training log carries the progress
    context.print_on_execution_start = False  # one plan per epoch would drown the training log
    # Ray Data's Parquet reader V1: V2 starts a pool of up to 32 footer-reading actors (a Python process each) for
    # every execution, i.e. every epoch, to read the metadata of a handful of shards; on a small machine V1 took a
    # 4-iteration run on 2 cores from 63 to 45 s (87 to 61 CPU-seconds), with equal metrics
    context.use_datasource_v2 = False
    transform = transform_config(config, manifest)
    task = {"num_cpus": DATA_TASK_CPUS}
    # Shards in a new order every epoch (rows inside a shard are mixed by the workers' local shuffle buffer)
    train = ray.data.read_parquet(shard_files(config.data.dataset_dir, manifest, "train"), **task)
    train = train.randomize_block_order().map_batches(
        decode_augment, batch_size=4, fn_kwargs={"transform": transform, "seed": config.schedule.seed}, **task
    )
    return {"train": train}


class ValShards:
    """The val split as one worker evaluates it: read from the prepared shards (a local folder or any URI pyarrow
    reads) at every evaluation, in manifest order, the first ``data.val_limit`` rows (None: all).
    ``batches(rank, world, device)`` decodes only the rows ``index % world == rank`` (``decode_val``, batch size 1,
    plus the row's ``id``), so the workers together evaluate every row once. Why not Ray Data: every worker needs
    the whole, unshuffled split, and a Ray Data execution per evaluation and worker cost 7-11 s of start-up on 2
    cores for a split of a few MB."""

    def __init__(self, config: TrainConfig, manifest: dict):
        self.files = shard_files(config.data.dataset_dir, manifest, "val")
        self.limit = config.data.val_limit
        self.test_scale = config.data.test_scale

    def rows(self) -> Iterator[dict]:
        import pyarrow.parquet as pq
        from pyarrow import fs

        index = 0
        for file in self.files:
            filesystem, path = fs.FileSystem.from_uri(file) if "://" in file else (fs.LocalFileSystem(), file)
            with filesystem.open_input_file(path) as stream:
                for batch in pq.ParquetFile(stream).iter_batches(batch_size=16, columns=["id", "image", "label"]):
                    for row in batch.to_pylist():
                        if self.limit and index >= self.limit:
                            return
                        yield row
                        index += 1

    def batches(self, rank: int, world: int, device) -> Iterator[dict[str, torch.Tensor]]:
        for index, row in enumerate(self.rows()):
            if index % world == rank:
                decoded = decode_val({key: [row[key]] for key in ("id", "image", "label")}, self.test_scale)
                yield {"id": row["id"]} | {key: torch.from_numpy(value).to(device) for key, value in decoded.items()}
