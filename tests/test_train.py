"""`nrd-bench train` on a real local Ray with a real sqlite MLflow store, on synthetic shards.

One Ray instance is shared by the module (starting Ray costs seconds; each TorchTrainer.fit() ~20 s here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from nrd.data import create_dataset, prepare_shards  # noqa: E402
from pipeline.cli import main  # noqa: E402
from pipeline.train import learning_rate  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, log_to_driver=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    dataset = create_dataset("synthetic", num_samples={"train": 96, "val": 16}, size=(64, 64), num_classes=4, seed=3)
    prepare_shards(dataset, out, progress=False)
    return out


def train_args(shards: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train", "--dataset-dir", str(shards), "--decoder", "deeplabv3plus", "--encoder", "resnet18",
        "--crop-size", "64x64", "--batch-size", "8", "--lr", "0.05", "--iterations", "60",
        "--log-interval", "10", "--eval-interval", "30", "--checkpoint-interval", "20",
        "--storage-path", str(tmp_path / "results"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--experiment", "test-train", *extra,
    ]  # fmt: skip


def test_two_workers_train_and_leave_a_complete_mlflow_record(local_ray, shards, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(train_args(shards, tmp_path, "--workers", "2", "--cpus-per-worker", "0.5", "--name", "two")) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test-train")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["schedule.iterations"] == "60" and run.data.params["scaling.workers"] == "2"
    assert run.data.tags["dataset"] == "synthetic"
    for tag in ("dataset", "decoder", "encoder", "git_commit", "ray_version", "torch_version", "device_type"):
        assert run.data.tags.get(tag), tag
    loss = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(loss) == 6 and loss[-1] < loss[0]
    miou = client.get_metric_history(run.info.run_id, "mIoU")
    assert [m.step for m in sorted(miou, key=lambda m: m.step)] == [30, 60]
    assert run.data.metrics["mIoU"] > 100 / 4 + 15  # well above chance for 4 classes
    for key in ("gmacs_model", "gmacs_decoder", "params_m", "latency_p50_ms", "images_per_s", "lr", "mBIoU"):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "per_class_iou.csv", "predictions", "weights"} <= artifacts
    assert client.list_artifacts(run.info.run_id, "predictions")
    assert (tmp_path / "results" / "two" / "config.yaml").is_file()


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
    ],
)
def test_configs_that_cannot_work_fail_before_any_worker(shards, tmp_path, capsys, extra, message):
    assert main(train_args(shards, tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_missing_manifest_and_gpu_requests_are_named(local_ray, tmp_path, shards, capsys):
    assert main(train_args(tmp_path / "nothing", tmp_path)) == 2
    assert "not a prepared dataset" in capsys.readouterr().err
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
