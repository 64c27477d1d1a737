"""What an MLflow run records of where its model came from and what it is: the data it was trained on (MLflow
datasets, ``log_input``) and the trained network as an MLflow model (``mlflow.pytorch.log_model``).

The model is saved in MLflow 3's default PyTorch format, ``pt2`` (a ``torch.export`` program: no pickle, no
``nrd`` code needed to load it). Exporting specialises the padding branch of ``SegmentationModel``, so the loaded
program takes N x 3 x H x W float32 batches, ImageNet-normalised, with H and W multiples of 32: exactly what
``nrd-bench predict`` feeds the model after its zero padding (the logits of the padding are cropped away there).
``nrd-bench predict`` itself keeps reading the state dict (``weights/model.pt``, ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pipeline.names import DATASET_TAG, DECODER_TAG, ENCODER_TAG, LOGGED_MODEL_NAME, MODEL_INPUT_MULTIPLE
from pipeline.training.tracking import mlflow_call

EXAMPLE_SHAPE = (2, 3, 64, 64)  # batch 2: a batch of 1 would fix the exported program's batch size to 1
DATA_CONTEXT_TAG = "mlflow.data.context"  # MLflow's own input tag: what the data set was used for
CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


def dataset_entities(manifest: dict, dataset_dir: str) -> list[tuple[object, str]]:
    """One MLflow dataset per prepared split, with the context it is used in: named ``<dataset>-<split>``, its
    digest the first 32 hex digits of the SHA-256 over the split's shard SHA-256s in manifest order (MLflow keeps
    36 characters), its source the shard folder, its profile the image and shard counts and the classes."""
    from mlflow.entities import Dataset

    location = dataset_dir if "://" in dataset_dir else Path(dataset_dir).absolute().as_uri()
    entities = []
    for split, entry in manifest["splits"].items():
        shards = [shard["sha256"] for shard in entry["shards"]]
        digest = hashlib.sha256("\n".join(shards).encode()).hexdigest()[:32]
        profile = {"num_images": entry["count"], "num_shards": len(shards), "num_classes": manifest["num_classes"]}
        entities.append(
            (
                Dataset(
                    name=f"{manifest['dataset']}-{split}",
                    digest=digest,
                    source_type="local" if location.startswith("file:") else location.partition("://")[0],
                    source=json.dumps({"uri": f"{location}#{split}"}),
                    profile=json.dumps(profile),
                ),
                CONTEXTS.get(split, split),
            )
        )
    return entities


def log_datasets(tracking_uri: str, run_id: str, manifest: dict, dataset_dir: str) -> None:
    """Record the prepared shards as the run's inputs, unless the run has them already (a resumed run)."""
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, InputTag

    with mlflow_call(tracking_uri):
        client = MlflowClient(tracking_uri)
        if client.get_run(run_id).inputs.dataset_inputs:
            return
        inputs = [
            DatasetInput(dataset, [InputTag(DATA_CONTEXT_TAG, context)])
            for dataset, context in dataset_entities(manifest, dataset_dir)
        ]
        client.log_inputs(run_id, datasets=inputs)


def model_signature(num_classes: int):
    """Tensor in, tensor out: (-1, 3, -1, -1) float32 images to (-1, K, -1, -1) float32 logits."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    images = TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))
    logits = TensorSpec(np.dtype(np.float32), (-1, num_classes, -1, -1))
    return ModelSignature(inputs=Schema([images]), outputs=Schema([logits]))


def input_example() -> np.ndarray:
    """A fixed N(0, 1) batch (what ImageNet-normalised images look like) of ``EXAMPLE_SHAPE``."""
    return np.random.default_rng(0).standard_normal(EXAMPLE_SHAPE).astype(np.float32)


def find_logged_model(tracking_uri: str, run_id: str):
    """The run's MLflow model named ``LOGGED_MODEL_NAME`` (the latest if several), or None."""
    from mlflow import MlflowClient

    with mlflow_call(tracking_uri):
        client = MlflowClient(tracking_uri)
        models = [client.get_logged_model(output.model_id) for output in client.get_run(run_id).outputs.model_outputs]
    models = [model for model in models if model.name == LOGGED_MODEL_NAME]
    return max(models, key=lambda model: model.creation_timestamp) if models else None


def log_model(tracking_uri: str, run_id: str, network: torch.nn.Module, config: dict, dataset: str, step: int):
    """Log ``network`` (a CPU copy in eval mode; the training copy is left as it is) as the run's MLflow model,
    with its signature, an input example, the resolved ``config`` as metadata and the run's decoder, encoder and
    data set (``dataset``, the manifest's name) as tags; returns the ``LoggedModel``. Where the run already has
    one, that one is returned."""
    import copy

    import mlflow
    import mlflow.pytorch

    existing = find_logged_model(tracking_uri, run_id)
    if existing is not None:
        return existing
    model = copy.deepcopy(network).float().cpu().eval()
    model = model.to(memory_format=torch.contiguous_format)
    num_classes = int(config["model"]["num_classes"])
    tags = {
        DECODER_TAG: config["model"]["decoder"],
        ENCODER_TAG: config["model"]["encoder"],
        DATASET_TAG: dataset,
        "input": f"N x 3 x H x W float32, ImageNet-normalised, H and W multiples of {MODEL_INPUT_MULTIPLE}",
    }
    with mlflow_call(tracking_uri), global_tracking_uri(tracking_uri):  # log_model reads the global URI
        mlflow.pytorch.log_model(
            model,
            name=LOGGED_MODEL_NAME,
            run_id=run_id,
            signature=model_signature(num_classes),
            input_example=input_example(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            metadata={"nrd_bench_config": config},
            tags=tags,
            step=step,
        )
    return find_logged_model(tracking_uri, run_id)


@contextlib.contextmanager
def global_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``tracking_uri`` inside (MLflow's model functions read only it)."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
