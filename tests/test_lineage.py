"""Model lineage in MLflow, on a real SQLite store: the shards as the run's datasets (digest from the manifest's
SHA-256s), evaluation pictures as MLflow images (through the buffering logger, also while MLflow is away), and
`nrd-bench pareto --register`: the front's models logged from their runs' weights, registered with aliases, loaded
with plain ``mlflow.pytorch.load_model("models:/NAME@pareto-<dataset>")`` and predicting the labels `nrd-bench
predict` writes. The same on models logged by real training runs is in test_tune.py (the multi-objective sweep)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric
from PIL import Image

from nrd import create_model
from nrd.data import create_dataset, prepare_shards, read_manifest
from pipeline.commands.cli import main
from pipeline.names import (
    CHECKPOINT_WEIGHTS,
    CONFIG_FILE,
    DATASET_TAG,
    DECODER_TAG,
    ENCODER_TAG,
    EVAL_INPUT_TAG,
    GMACS_MODEL,
    KIND_SWEEP,
    KIND_TAG,
    MIOU,
    PARENT_RUN_TAG,
    WEIGHTS_ARTIFACT_DIR,
)
from pipeline.training.lineage import log_datasets
from pipeline.training.logger import RunLogger, replay

K = 4
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lineage") / "shards"
    dataset = create_dataset("synthetic", num_samples={"train": 3, "val": 2}, size=(32, 32), num_classes=K)
    prepare_shards(dataset, root, shard_size=2, progress=False)
    return root


def new_run(tmp_path: Path, **tags) -> tuple[str, MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lineage")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment("lineage", artifact_location=(tmp_path / "artifacts").as_uri())
    )
    return uri, client, client.create_run(experiment_id, tags=tags).info.run_id


@pytest.mark.timeout(120)
def test_shards_are_the_runs_datasets_once_with_the_manifests_digest(data, tmp_path):
    uri, client, run_id = new_run(tmp_path)
    manifest = read_manifest(data)
    log_datasets(uri, run_id, manifest, str(data))
    log_datasets(uri, run_id, manifest, str(data))  # a resumed run: not twice
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert sorted(item.dataset.name for item in inputs) == ["synthetic-train", "synthetic-val"]
    for item in inputs:
        split = item.dataset.name.removeprefix("synthetic-")
        shards = manifest["splits"][split]["shards"]
        assert len(shards) == (2 if split == "train" else 1)  # 3 train images in shards of 2
        expected = hashlib.sha256("\n".join(shard["sha256"] for shard in shards).encode()).hexdigest()[:32]
        assert item.dataset.digest == expected
        profile = json.loads(item.dataset.profile)
        assert profile == {
            "num_images": manifest["splits"][split]["count"],
            "num_shards": len(shards),
            "num_classes": K,
        }
        assert json.loads(item.dataset.source)["uri"] == f"{data.absolute().as_uri()}#{split}"
        context = {tag.key: tag.value for tag in item.tags}["mlflow.data.context"]
        assert context == {"train": "training", "val": "validation"}[split]


@pytest.mark.timeout(120)
def test_pictures_are_mlflow_images_by_step_also_when_buffered(tmp_path):
    uri, client, run_id = new_run(tmp_path)
    picture = tmp_path / "val_0.png"
    Image.fromarray(np.full((8, 12, 3), 200, np.uint8)).save(picture)
    RunLogger(uri, run_id, tmp_path / "buffer.jsonl").log_image(picture, "val_0", 5)
    away = RunLogger("http://127.0.0.1:9", run_id, tmp_path / "away.jsonl", retry_interval=60)  # nothing listens
    away.log_image(picture, "val_0", 10)
    assert away.pending == 1
    picture.unlink()  # the buffer kept its own copy
    replay(tmp_path / "away.jsonl", uri)
    names = [item.path for item in client.list_artifacts(run_id, "images")]
    pictures = [Path(name).name.split("+") for name in names if name.endswith(".png")]  # key+step+N+timestamp+...
    assert sorted(int(parts[2]) for parts in pictures) == [5, 10], names
    assert all(parts[:2] == ["val_0", "step"] for parts in pictures), names


def trained_run(tmp_path: Path, data: Path, client: MlflowClient, experiment_id: str, parent: str, decoder: str):
    """A finished run as training leaves one: config.yaml and weights/model.pt artifacts, cost and mIoU metrics."""
    torch.manual_seed(len(decoder))
    model = create_model(decoder, "resnet18", K, aux_head=False).eval()
    folder = tmp_path / decoder
    folder.mkdir()
    torch.save(model.state_dict(), folder / CHECKPOINT_WEIGHTS)
    config = {
        "model": {"decoder": decoder, "encoder": "resnet18", "num_classes": K, "aux_head": False},
        "data": {"dataset_dir": str(data)},
    }
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(config))
    tags = {DATASET_TAG: "synthetic", DECODER_TAG: decoder, ENCODER_TAG: "resnet18", PARENT_RUN_TAG: parent}
    run_id = client.create_run(experiment_id, tags=tags | {EVAL_INPUT_TAG: "1x3x32x32"}, run_name=decoder).info.run_id
    client.log_artifact(run_id, str(folder / CONFIG_FILE))
    client.log_artifact(run_id, str(folder / CHECKPOINT_WEIGHTS), WEIGHTS_ARTIFACT_DIR)
    values = {"bilinear": (1.0, 20.0), "deeplabv3plus": (3.0, 40.0), "nrd": (2.0, 10.0)}[decoder]  # nrd: dominated
    client.log_batch(run_id, metrics=[Metric(GMACS_MODEL, values[0], 0, 0), Metric(MIOU, values[1], 0, 0)])
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.mark.timeout(300)
def test_register_puts_the_front_under_aliases_that_load_and_predict_like_nrd_bench_predict(data, tmp_path, capsys):
    uri, client, parent = new_run(tmp_path, **{KIND_TAG: KIND_SWEEP})
    client.set_terminated(parent, "FINISHED")
    experiment_id = client.get_run(parent).info.experiment_id
    runs = {
        decoder: trained_run(tmp_path, data, client, experiment_id, parent, decoder)
        for decoder in ("bilinear", "deeplabv3plus", "nrd")
    }
    pareto = ["pareto", "--parent-run", parent, "--tracking-uri", uri, "--no-intervals", "--register", "front"]
    assert main([*pareto, "--out", str(tmp_path / "pareto")]) == 0
    printed = capsys.readouterr().out
    assert "mlflow.pytorch.load_model('models:/front@pareto-synthetic')" in printed, printed

    versions = {version.run_id: version for version in client.search_model_versions("name = 'front'")}
    assert set(versions) == {runs["bilinear"], runs["deeplabv3plus"]}  # the front only
    aliases = client.get_registered_model("front").aliases
    assert aliases == {
        "pareto-synthetic": versions[runs["deeplabv3plus"]].version,  # the most accurate
        "pareto-synthetic-1": versions[runs["bilinear"]].version,  # by increasing cost
        "pareto-synthetic-2": versions[runs["deeplabv3plus"]].version,
    }
    assert versions[runs["bilinear"]].tags[MIOU] == "20"

    # registering again finds the versions; a front that lost a member loses its alias
    client.log_metric(runs["bilinear"], MIOU, 50.0, step=1)  # now it dominates deeplabv3plus
    assert main([*pareto, "--out", str(tmp_path / "pareto2")]) == 0
    capsys.readouterr()
    assert len(client.search_model_versions("name = 'front'")) == 2
    assert client.get_registered_model("front").aliases == {
        "pareto-synthetic": versions[runs["bilinear"]].version,
        "pareto-synthetic-1": versions[runs["bilinear"]].version,
    }

    image = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)  # multiples of 32: no padding
    Image.fromarray(image).save(tmp_path / "a.png")
    args = ["predict", "--run-id", runs["bilinear"], "--tracking-uri", uri, "--input", str(tmp_path / "a.png")]
    assert main([*args, "--out", str(tmp_path / "predicted")]) == 0
    with Image.open(tmp_path / "predicted" / "labels" / "a.png") as labels:
        expected = np.asarray(labels)
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pytorch.load_model("models:/front@pareto-synthetic")  # plain MLflow, nothing of ours
    batch = torch.from_numpy(((image.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        labels = loaded(batch).argmax(1)[0].numpy().astype(np.uint8)
    assert labels.shape == expected.shape and (labels == expected).all()
    assert len(np.unique(expected)) > 1  # not a constant map that any model would match
