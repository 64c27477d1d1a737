"""`nrd-bench train` on a real local Ray with a real sqlite MLflow store, on synthetic shards.

The session's Ray (``local_ray`` of conftest.py) and shards are shared (starting Ray costs seconds; each
TorchTrainer.fit() ~20 s here); only the tests that start workers are ``slow``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from conftest import SHARDS_VAL  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from nrd import ModelConfig, create_model  # noqa: E402
from nrd.data import ShardDataset, create_dataset, prepare_shards  # noqa: E402
from nrd.data.transforms import ValTransform, ValTransformConfig  # noqa: E402
from nrd.metrics import SegmentationMetrics  # noqa: E402
from pipeline.commands.cli import main  # noqa: E402
from pipeline.training.loop import learning_rate  # noqa: E402
from pipeline.training.sessions import prepare_network  # noqa: E402

VAL_IMAGES = SHARDS_VAL  # odd: an equal split over 2 workers would drop a row


def train_args(shards: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--dataset-dir",
        str(shards),
        "--decoder",
        "deeplabv3plus",
        "--encoder",
        "resnet18",
        "--crop-size",
        "64x64",
        "--batch-size",
        "8",
        "--lr",
        "0.05",
        "--iterations",
        "60",
        "--log-interval",
        "10",
        "--eval-interval",
        "30",
        "--checkpoint-interval",
        "20",
        "--storage-path",
        str(tmp_path / "results"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--experiment",
        "test-train",
        *extra,
    ]


def independent_val_metrics(shards: Path, model: torch.nn.Module, num_classes: int) -> dict:
    """mIoU/aAcc of ``model`` over the whole val split, in this process, one image at a time (normalised only: the
    model pads inside)."""
    dataset = ShardDataset(shards, "val", transform=ValTransform(ValTransformConfig(size_divisor=None)))
    metrics = SegmentationMetrics(num_classes, ignore_index=255)
    model.eval()
    with torch.inference_mode():
        for image, label in dataset:
            metrics.update(model(image[None]).argmax(1), label[None])
    return metrics.compute()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_workers_train_and_leave_a_complete_mlflow_record(local_ray, shards, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(train_args(shards, tmp_path, "--workers", "2", "--cpus-per-worker", "0.5", "--name", "two")) == 0
    output = capsys.readouterr()
    progress = re.findall(r"iter (\d+)/60  loss (\S+)  lr (\S+)  (\S+) img/s  ETA (\d+)s", output.out + output.err)
    assert sorted({int(match[0]) for match in progress}) == list(range(10, 61, 10))  # Ray may echo a line twice
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test-train")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params["schedule.iterations"] == "60" and run.data.params["scaling.workers"] == "2"
    assert run.data.tags["dataset"] == "synthetic" and run.data.tags["device_type"] == "cpu"
    assert (run.data.tags["decoder"], run.data.tags["encoder"]) == ("deeplabv3plus", "resnet18")
    assert run.data.tags["ray_version"] == ray.__version__ and run.data.tags["torch_version"] == torch.__version__
    assert run.data.tags["dist_backend"] == "gloo" and run.data.tags["precision"] == "fp32"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", run.data.tags["git_commit"])
    loss = [m.value for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)]
    assert len(loss) == 6 and loss[-1] < loss[0]
    miou = client.get_metric_history(run_id, "mIoU")
    assert [m.step for m in sorted(miou, key=lambda m: m.step)] == [30, 60]
    assert run.data.metrics["mIoU"] > 100 / 4 + 15  # well above chance for 4 classes
    levels = ("encoder", "context", "decoder", "head", "model")
    for key in ("params_m", "latency_p50_ms", "images_per_s", "lr", "mBIoU", *(f"gmacs_{level}" for level in levels)):
        assert key in run.data.metrics, key

    # Every val image counted once: the confusion matrices of the two workers add up to the whole split, which an
    # evaluation of the logged weights in this process reproduces
    assert run.data.metrics["val_images"] == VAL_IMAGES
    weights = client.download_artifacts(run_id, "weights/model.pt", str(tmp_path / "download"))
    model = ModelConfig.from_dict(yaml.safe_load((tmp_path / "results" / "two" / "config.yaml").read_text())["model"])
    network = model.build()
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    expected = independent_val_metrics(shards, network, 4)
    assert run.data.metrics["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-3)
    assert run.data.metrics["aAcc"] == pytest.approx(expected["aAcc"], abs=1e-3)

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "per_class_iou.csv", "predictions", "weights"} <= artifacts
    rows = (Path(client.download_artifacts(run_id, "per_class_iou.csv", str(tmp_path / "download")))).read_text()
    assert len(rows.strip().splitlines()) == 1 + 4  # header + one row per class
    pictures = client.list_artifacts(run_id, "predictions")
    assert pictures
    with Image.open(client.download_artifacts(run_id, pictures[0].path, str(tmp_path / "download"))) as picture:
        assert picture.width == 3 * picture.height  # image | label | prediction

    # The last checkpoint holds the whole training state
    checkpoints = sorted(path for path in (tmp_path / "results" / "two").glob("checkpoint_*") if path.is_dir())
    state = torch.load(checkpoints[-1] / "state.pt", map_location="cpu", weights_only=True)
    assert state["iteration"] == 60 and {"model", "optimizer", "rng"} <= set(state)
    assert all("momentum_buffer" in entry for entry in state["optimizer"]["state"].values())
    assert state["optimizer"]["state"] and {"torch", "python", "numpy"} <= set(state["rng"])


def test_prepare_network_converts_for_gpu_only():
    """Channels-last weights and SyncBatchNorm (several workers) only on CUDA; nothing changes on CPU. The layout
    change itself runs on CPU tensors, so this is checked without a GPU."""
    model = create_model("bilinear", "resnet18", 4, aux_head=False)
    assert prepare_network(model, "cpu", 2) is model
    converted = prepare_network(create_model("bilinear", "resnet18", 4, aux_head=False), "cuda", 2)
    assert any(isinstance(module, torch.nn.SyncBatchNorm) for module in converted.modules())
    assert converted.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    single = prepare_network(create_model("bilinear", "resnet18", 4, aux_head=False), "cuda", 1)
    assert not any(isinstance(module, torch.nn.SyncBatchNorm) for module in single.modules())


def test_schedule_warmup_then_poly():
    from pipeline.config import ScheduleSettings

    schedule = ScheduleSettings(iterations=100, lr=0.01, warmup_iterations=10, warmup_ratio=0.1, min_lr=1e-4)

    def poly(i):
        return (0.01 - 1e-4) * (1 - i / 100) ** 0.9 + 1e-4

    assert learning_rate(0, schedule) == pytest.approx(0.001)  # warmup_ratio x lr
    assert learning_rate(5, schedule) == pytest.approx(poly(5) * (0.1 + 0.9 * 0.5))
    assert learning_rate(10, schedule) == pytest.approx(poly(10))
    assert learning_rate(50, schedule) == pytest.approx((0.01 - 1e-4) * 0.5**0.9 + 1e-4)
    assert learning_rate(100, schedule) == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--decoder", "nrdd"], "unknown decoder 'nrdd'"),
        (["--workers", "3"], "not divisible by scaling.workers=3"),
        (["--num-classes", "19"], "model.num_classes=19 but"),
        (["--decoder", "nrd", "--decoder-arg", "patch_factor=12"], "patch_factor=12 is invalid"),
        (["--batch-size", "128"], "the train split has 96 samples, fewer than one batch"),
        (["--aux-weight", "-1"], "schedule.aux_weight=-1.0 is invalid"),
        (["--storage-path", "s3://bucket/results"], "is a URI; expected a folder path"),
    ],
    ids=["unknown decoder", "workers", "num classes", "decoder arg", "batch size", "aux weight", "s3 storage"],
)
def test_configs_that_cannot_work_fail_before_any_worker(shards, tmp_path, capsys, monkeypatch, extra, message):
    """Refused with a named error before anything is written: neither the results folder, nor the MLflow store, nor
    (from the working directory, where a URI taken as a path would land: ``s3:/bucket/...``) any other file."""
    monkeypatch.chdir(tmp_path)
    assert main(train_args(shards, tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_missing_manifest_and_gpu_requests_are_named(local_ray, tmp_path, shards, capsys):
    assert main(train_args(tmp_path / "nothing", tmp_path)) == 2
    assert "not a prepared dataset" in capsys.readouterr().err
    train_only = tmp_path / "train-only"
    prepare_shards(
        create_dataset("synthetic", num_samples={"train": 8}, size=(32, 32), num_classes=4),
        train_only,
        splits=("train",),
        progress=False,
    )
    assert main(train_args(train_only, tmp_path)) == 2
    assert "has no 'val' split" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
    assert main(train_args(shards, tmp_path, "--gpus-per-worker", "1")) == 2
    err = capsys.readouterr().err
    assert "asks for 1 GPUs" in err and "the Ray cluster has 0" in err


def test_yaml_config_with_unknown_key_names_file_and_key(tmp_path, shards, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  dataset_dir: {shards}\nschedule:\n  iteratons: 5\n")
    assert main(["train", "--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "iteratons" in err and "did you mean 'iterations'" in err
    config.write_text(f"data:\n  dataset_dir: {shards}\nschedule:\n  iterations: 5\n")
    assert main(["train", "--config", str(config), "--dry-run", "--lr", "0.1"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["schedule"]["iterations"] == 5 and resolved["schedule"]["lr"] == 0.1
    assert resolved["model"]["num_classes"] == 4


def test_dataset_dir_may_be_a_uri(tmp_path, shards, capsys):
    """A URI pyarrow reads (here file://) works like the local folder: the manifest is read through pyarrow."""
    assert main(["train", "--dataset-dir", shards.as_uri(), "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["data"]["dataset_dir"] == shards.as_uri() and resolved["model"]["num_classes"] == 4
    assert main(["train", "--dataset-dir", (tmp_path / "nothing").as_uri(), "--dry-run"]) == 2
    assert "not a prepared dataset" in capsys.readouterr().err


def test_loss_reduction_and_default_warmup_follow_the_official_recipe(tmp_path, shards, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  dataset_dir: {shards}\nschedule:\n  loss_reduction: mean\n")
    assert main(["train", "--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "schedule.loss_reduction='mean'" in err and "official, valid" in err
    config.write_text(f"data:\n  dataset_dir: {shards}\n")
    assert main(["train", "--config", str(config), "--dry-run"]) == 0
    schedule = json.loads(capsys.readouterr().out)["schedule"]
    assert schedule["loss_reduction"] == "official"  # mmseg's, by default
    # The official schedule_80k_warmup: 84k iterations, the first 4k a linear warm-up; other budgets the same share.
    assert (schedule["iterations"], schedule["warmup_iterations"], schedule["warmup_ratio"]) == (84000, 4000, 0.01)
    assert main(["train", "--config", str(config), "--dry-run", "--iterations", "2100"]) == 0
    assert json.loads(capsys.readouterr().out)["schedule"]["warmup_iterations"] == 100
    assert main(["train", "--config", str(config), "--dry-run", "--warmup-iterations", "7"]) == 0
    assert json.loads(capsys.readouterr().out)["schedule"]["warmup_iterations"] == 7
