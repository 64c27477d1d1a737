"""A ``TrainConfig`` against its prepared data set, once per run (or once per sweep for what its trials share): what
the data set decides (num_classes, the default name, absolute paths), what needs the data to check, and the model
built on the meta device, so that bad settings fail before any worker starts."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import torch

from nrd.data import read_manifest
from nrd.data.verify import verify_shards
from nrd.weights import resolve_encoder_weights
from pipeline.config import FROM_DATA, ConfigError, TrainConfig


def shard_files(dataset_dir: str, manifest: dict, split: str) -> list[str]:
    """The Parquet shard files of one split of a prepared data set (``nrd-bench prepare``)."""
    if split not in manifest["splits"]:
        raise ConfigError(
            f"{dataset_dir}: the prepared data set has no {split!r} split (has {list(manifest['splits'])})"
        )
    return [f"{dataset_dir.rstrip('/')}/{record['file']}" for record in manifest["splits"][split]["shards"]]


def resolve(config: TrainConfig) -> tuple[TrainConfig, dict]:
    """Once per run (or per sweep, for what its trials share): fill what the data set decides (num_classes, the
    default name, absolute paths), check what needs the data (every local shard against the manifest's SHA-256,
    ``nrd.data.verify``), and build the model on the meta device (unknown names, invalid hyperparameters fail here,
    before any worker starts). Returns the config and the data set's manifest."""
    try:
        manifest = read_manifest(config.data.dataset_dir)
        if "://" not in config.data.dataset_dir:  # a bucket's shards are not read twice here: Ray Data reads them
            verify_shards(config.data.dataset_dir, manifest)
    except Exception as error:
        raise ConfigError(f"data.dataset_dir: {error}") from error
    model = config.model
    if model.num_classes == FROM_DATA:
        model = replace(model, num_classes=manifest["num_classes"])
    elif model.num_classes != manifest["num_classes"]:
        raise ConfigError(
            f"model.num_classes={model.num_classes} but {config.data.dataset_dir} has {manifest['num_classes']} classes"
        )
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
    return check_model(config), manifest


def check_model(config: TrainConfig) -> TrainConfig:
    """Drop an auxiliary head no loss uses (DDP would be left with parameters that get no gradient), and build the
    model on the meta device so that unknown names and invalid hyperparameters fail before any worker starts.

    ``model.encoder_weights`` is resolved for the encoder without downloading (``nrd.weights``): a mapping that
    lacks the encoder, a name with no published file and none in the cache, a cached file with the wrong SHA-256
    fail here; a local or cached file is loaded (keys and shapes checked); a file still to download is left to the
    workers, which fetch it into their cache when they build the model."""
    if config.schedule.aux_weight == 0 and config.model.aux_head:
        config = replace(config, model=replace(config.model, aux_head=False))
    model = config.model
    weights = resolve_encoder_weights(model.encoder_weights, model.encoder, download=False, source="model")
    with torch.device("meta"), warnings.catch_warnings():
        # a file's keys and shapes are checked; copying its values into meta tensors is the no-op wanted here
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter", category=UserWarning)
        replace(model, encoder_weights=weights).build()
    return config
