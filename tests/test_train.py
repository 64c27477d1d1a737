"""`nrd-bench train` on a real local Ray with a real sqlite MLflow store, on synthetic shards.

The session's Ray (``local_ray`` of conftest.py) and shards are shared (starting Ray costs seconds; each
TorchTrainer.fit() ~20 s here); only the tests that start workers are ``slow``."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
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
from nrd.evidence import IMAGE_COUNTS_FILE, read_image_counts  # noqa: E402
from nrd.metrics import SegmentationMetrics  # noqa: E402
from pipeline.commands.cli import main  # noqa: E402
from pipeline.config import TrainConfig  # noqa: E402
from pipeline.names import CONFIG_KEY_TAG  # noqa: E402
from pipeline.training.lineage import find_logged_model  # noqa: E402
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


@pytest.fixture(scope="module")
def two_worker_run(request, shards, tmp_path_factory) -> dict:
    """One 2-worker training run (with the final ms+flip evaluation) on the session's local Ray, tracked in SQLite,
    and what it printed. Started only by the tests that use it; shared by the record and the predict checks, which
    are about the same run."""
    request.getfixturevalue("local_ray")  # only now: deselected tests start no Ray
    tmp_path = tmp_path_factory.mktemp("two_workers")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(printed), redirect_stderr(printed):
        patch.chdir(tmp_path)  # MLflow's artifact folder goes to the working directory
        lineage = tmp_path / "lineage.yaml"  # the MLflow model and system metrics at the end of training too
        lineage.write_text(yaml.safe_dump({"run": {"log_model": True, "system_metrics": True}}))
        args = train_args(shards, tmp_path, "--workers", "2", "--cpus-per-worker", "0.5", "--name", "two")
        code = main([*args, "--eval-msflip", "--config", str(lineage)])
    assert code == 0, printed.getvalue()[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = json.loads((tmp_path / "results" / "two" / "mlflow_run.json").read_text())["run_id"]
    return {"root": tmp_path, "uri": uri, "run_id": run_id, "printed": printed.getvalue()}


@pytest.mark.slow
@pytest.mark.timeout(600)  # with the fixture's training run
def test_two_workers_train_and_leave_a_complete_mlflow_record(two_worker_run, shards):
    tmp_path = two_worker_run["root"]
    progress = re.findall(r"iter (\d+)/60  loss (\S+)  lr (\S+)  (\S+) img/s  ETA (\d+)s", two_worker_run["printed"])
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
    metrics = run.data.metrics
    assert metrics["latency_p50_low_ms"] <= metrics["latency_p50_ms"] <= metrics["latency_p50_high_ms"]

    # Every val image counted once: the confusion matrices of the two workers add up to the whole split, which an
    # evaluation of the logged weights in this process reproduces
    assert run.data.metrics["val_images"] == VAL_IMAGES
    weights = client.download_artifacts(run_id, "weights/model.pt", str(tmp_path / "download"))
    resolved = yaml.safe_load((tmp_path / "results" / "two" / "config.yaml").read_text())
    train_config = TrainConfig.from_dict(resolved)
    model = ModelConfig.from_dict(resolved["model"])
    network = model.build()
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    expected = independent_val_metrics(shards, network, 4)
    assert run.data.metrics["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-3)
    assert run.data.metrics["aAcc"] == pytest.approx(expected["aAcc"], abs=1e-3)

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "per_class_iou.csv", "predictions", "weights", IMAGE_COUNTS_FILE} <= artifacts
    # The per-image evidence of the last evaluation: every val image once, from both workers, summing to the
    # logged metrics exactly; and the configuration key its repeats would share
    evidence = read_image_counts(client.download_artifacts(run_id, IMAGE_COUNTS_FILE, str(tmp_path / "download")))
    assert sorted(evidence.image_ids) == sorted(row["id"] for row in ShardDataset(shards, "val", decode=False))
    assert evidence.class_names == tuple(json.loads((shards / "manifest.json").read_text())["class_names"])
    assert float(evidence.scores()["mIoU"]) == pytest.approx(run.data.metrics["mIoU"], abs=1e-9)
    assert float(evidence.scores()["aAcc"]) == pytest.approx(run.data.metrics["aAcc"], abs=1e-9)
    assert run.data.tags[CONFIG_KEY_TAG] == train_config.config_key()
    rows = (Path(client.download_artifacts(run_id, "per_class_iou.csv", str(tmp_path / "download")))).read_text()
    assert len(rows.strip().splitlines()) == 1 + 4  # header + one row per class
    for row in csv.DictReader(rows.splitlines()):  # per-class IoU also as metrics, at every evaluation
        history = client.get_metric_history(run_id, f"iou/{row['class_name']}")
        if row["iou_percent"] != "nan":
            assert sorted(m.step for m in history) == [30, 60]
            assert max(history, key=lambda m: m.step).value == pytest.approx(float(row["iou_percent"]), abs=1e-9)
    pictures = client.list_artifacts(run_id, "predictions")
    assert pictures
    with Image.open(client.download_artifacts(run_id, pictures[0].path, str(tmp_path / "download"))) as picture:
        assert picture.width == 3 * picture.height  # image | label | prediction

    # Lineage: the shards as the run's datasets, pictures as MLflow images at each evaluation, both workers'
    # system metrics, and the network as an MLflow model that plain MLflow loads (the same logits)
    manifest = json.loads((shards / "manifest.json").read_text())
    inputs = {item.dataset.name: item.dataset for item in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["synthetic-train", "synthetic-val"]
    for split in ("train", "val"):
        shard_hashes = "\n".join(shard["sha256"] for shard in manifest["splits"][split]["shards"])
        assert inputs[f"synthetic-{split}"].digest == hashlib.sha256(shard_hashes.encode()).hexdigest()[:32]
    images = [Path(a.path).name.split("+") for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(parts[2]) for parts in images if parts[0] == "val_0") == [30, 60], images
    for rank in (0, 1):
        assert f"system/rank{rank}/cpu_utilization_percentage" in run.data.metrics, sorted(run.data.metrics)
    logged = find_logged_model(two_worker_run["uri"], run_id)
    assert logged.tags["decoder"] == "deeplabv3plus" and logged.tags["dataset"] == "synthetic"
    mlflow.set_tracking_uri(two_worker_run["uri"])  # plain MLflow finds models through its global URI
    loaded = mlflow.pytorch.load_model(logged.model_uri)
    batch = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(batch), network.eval()(batch), atol=1e-4)

    # The last checkpoint holds the whole training state
    checkpoints = sorted(path for path in (tmp_path / "results" / "two").glob("checkpoint_*") if path.is_dir())
    state = torch.load(checkpoints[-1] / "state.pt", map_location="cpu", weights_only=True)
    assert state["iteration"] == 60 and {"model", "optimizer", "rng"} <= set(state)
    assert all("momentum_buffer" in entry for entry in state["optimizer"]["state"].values())
    assert state["optimizer"]["state"] and {"torch", "python", "numpy"} <= set(state["rng"])


def evaluate_json(pred: Path, labels: Path, capsys) -> dict:
    """`nrd-bench evaluate --json` of predicted label PNGs against the val labels (4 classes, 255 ignored)."""
    capsys.readouterr()
    args = ["evaluate", "--pred", str(pred), "--label", str(labels), "--num-classes", "4", "--ignore-index", "255"]
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_predictions_reproduce_the_metrics_training_logged(two_worker_run, shards, tmp_path, capsys):
    """`nrd-bench predict` on the val images, by run id (weights and config from MLflow) and by the last checkpoint's
    weights, then `nrd-bench evaluate` on its label PNGs: the same pixels as training's evaluation (split over two
    workers), so the same counts and exactly the same mIoU; and --mode msflip against training's final ms+flip
    evaluation (only the thread count differs: Ray's workers run torch on 1 thread)."""
    from mlflow import MlflowClient

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    ids = []
    for row in ShardDataset(shards, "val", decode=False):  # the val files exactly as prepared
        suffix = ".png" if row["image"][:4] == b"\x89PNG" else ".jpg"
        (images / f"{row['id']}{suffix}").write_bytes(row["image"])
        (labels / f"{row['id']}.png").write_bytes(row["label"])
        ids.append(row["id"])
    assert len(ids) == VAL_IMAGES
    run_id, uri = two_worker_run["run_id"], two_worker_run["uri"]
    logged = MlflowClient(uri).get_run(run_id).data.metrics
    by_run = ["predict", "--run-id", run_id, "--tracking-uri", uri, "--input", str(images)]
    assert main([*by_run, "--out", str(tmp_path / "by_run")]) == 0
    checkpoints = sorted((two_worker_run["root"] / "results" / "two").glob("checkpoint_*/state.pt"))
    by_weights = ["predict", "--weights", str(checkpoints[-1]), "--input", str(images)]
    assert main([*by_weights, "--out", str(tmp_path / "by_weights")]) == 0
    assert capsys.readouterr().out.count("palette:  dataset manifest") == 2
    for name in ids:
        predicted = tmp_path / "by_run" / "labels" / f"{name}.png"
        assert (tmp_path / "by_weights" / "labels" / f"{name}.png").read_bytes() == predicted.read_bytes()
        with Image.open(predicted) as label, Image.open(labels / f"{name}.png") as truth:
            assert label.size == truth.size  # the image's own size, as training evaluates
    result = evaluate_json(tmp_path / "by_run" / "labels", labels, capsys)
    assert result["num_images"] == VAL_IMAGES == logged["val_images"]
    assert 0 < logged["mIoU"] < 100
    assert result["mIoU"] == logged["mIoU"]  # the same pixels predicted, the same counts: exactly equal
    assert result["aAcc"] == logged["aAcc"] and result["mBIoU"] == logged["mBIoU"]
    assert result["trimap_mIoU"]["4"] == logged["trimap_mIoU_4px"]

    # registered as the front of its experiment, loaded by its alias with plain MLflow: the labels predict wrote
    pareto = ["pareto", "--experiment", "test-train", "--tracking-uri", uri, "--no-intervals", "--register", "two"]
    assert main([*pareto, "--out", str(tmp_path / "pareto")]) == 0
    capsys.readouterr()
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pytorch.load_model("models:/two@pareto-synthetic")
    prepared = ShardDataset(shards, "val", transform=ValTransform(ValTransformConfig()))  # normalised, padded to 32
    for name, (image, _) in zip(ids, prepared, strict=True):  # both in manifest order
        with torch.no_grad(), Image.open(tmp_path / "by_run" / "labels" / f"{name}.png") as written:
            label = loaded(image[None]).argmax(1)[0][: written.height, : written.width]
            assert (label.numpy() == np.asarray(written)).all()

    assert main([*by_run, "--mode", "msflip", "--out", str(tmp_path / "msflip")]) == 0
    msflip = evaluate_json(tmp_path / "msflip" / "labels", labels, capsys)
    assert msflip["mIoU"] == pytest.approx(logged["mIoU_msflip"], abs=1e-3)
    assert msflip["aAcc"] == pytest.approx(logged["aAcc_msflip"], abs=1e-3)


@pytest.mark.parametrize("uri", [False, True], ids=["folder", "file URI"])
def test_val_shards_give_every_row_once_across_workers_in_manifest_order(shards, uri):
    """What each worker evaluates: the rows ``index % world == rank`` of the val split in manifest order (the
    first ``val_limit`` only), decoded as training decodes them; read from a folder or through a URI."""
    from pipeline.config import DataSettings
    from pipeline.training.ingest import ValShards, decode_val

    directory = shards.as_uri() if uri else str(shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    source = list(ShardDataset(shards, "val", decode=False))
    for limit in (None, 4):
        val = ValShards(TrainConfig(data=DataSettings(dataset_dir=directory, val_limit=limit)), manifest)
        expected = source[:limit] if limit else source
        assert [row["id"] for row in val.rows()] == [row["id"] for row in expected]
        for world in (1, 2, 3):
            parts = [list(val.batches(rank, world, torch.device("cpu"))) for rank in range(world)]
            assert sum(len(part) for part in parts) == len(expected)
            for rank, part in enumerate(parts):
                for batch, row in zip(part, expected[rank::world], strict=True):
                    reference = decode_val({key: [row[key]] for key in ("id", "image", "label")})
                    assert batch.pop("id") == row["id"] and batch.keys() == reference.keys()
                    for key, value in reference.items():
                        assert torch.equal(batch[key], torch.from_numpy(value)), (key, row["id"])


def test_val_shards_resize_to_the_test_scale(shards):
    """``data.test_scale``: the image fits (long, short) keeping its aspect ratio, the label keeps its size, and
    ``valid_size`` says where the content ends inside the padding."""
    from pipeline.config import DataSettings
    from pipeline.training.ingest import ValShards

    manifest = json.loads((shards / "manifest.json").read_text())
    full = next(ValShards(TrainConfig(data=DataSettings(dataset_dir=str(shards))), manifest).batches(0, 1, "cpu"))
    data = DataSettings(dataset_dir=str(shards), test_scale=(24, 24))
    small = next(ValShards(TrainConfig(data=data), manifest).batches(0, 1, "cpu"))
    height, width = full["label"].shape[-2:]
    scale = min(24 / max(height, width), 24 / min(height, width))
    assert small["valid_size"][0].tolist() == [int(height * scale + 0.5), int(width * scale + 0.5)]
    assert small["image"].shape[-1] % 32 == 0 and small["image"].shape[-1] < full["image"].shape[-1]
    assert torch.equal(small["label"], full["label"])


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


def test_replaced_and_corrupted_shards_are_refused_before_training(shards, tmp_path, capsys, monkeypatch):
    """A train shard replaced by another data set's and a val shard with a flipped byte: training refuses before
    Ray starts, naming both shards in one line, and writes nothing (no results folder, no MLflow store)."""
    import shutil

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    other = tmp_path / "other"
    prepare_shards(
        create_dataset("synthetic", num_samples={"train": 8}, size=(64, 64), num_classes=4, seed=9),
        other,
        splits=("train",),
        progress=False,
    )
    replaced = copy / "train" / "part-00000.parquet"
    shutil.copy(other / "train" / "part-00000.parquet", replaced)
    flipped = copy / "val" / "part-00000.parquet"
    data = bytearray(flipped.read_bytes())
    data[-100] ^= 0xFF
    flipped.write_bytes(bytes(data))
    assert main(train_args(copy, tmp_path)) == 2
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    assert f"{replaced} (SHA-256" in line and f"{flipped} (SHA-256" in line and "Traceback" not in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache", "other", "shards"]


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
    # CPUs Ray cannot give would leave the run waiting forever: a worker larger than any node, or workers that
    # leave Ray Data's tasks no CPU
    cpus = local_ray_cpus()
    assert main(train_args(shards, tmp_path, "--cpus-per-worker", f"{cpus + 2:g}")) == 2
    err = capsys.readouterr().err
    assert (
        f"cpus_per_worker={cpus + 2:g} (--cpus-per-worker) but the largest node of the Ray cluster has {cpus:g}" in err
    )
    assert main(train_args(shards, tmp_path, "--workers", "2", "--cpus-per-worker", f"{cpus / 2:g}")) == 2
    err = capsys.readouterr().err
    assert f"asks for {cpus + 0.5:g} CPUs (2 workers x {cpus / 2:g} --cpus-per-worker, plus 0.5 for Ray Data" in err
    assert f"but the Ray cluster has {cpus:g}; lower --workers or --cpus-per-worker" in err
    assert "Traceback" not in err and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_run_that_fails_after_its_mlflow_run_exists_never_stays_running(
    local_ray, shards, tmp_path, capsys, monkeypatch
):
    """A failure once the MLflow run exists (injected where the Ray Data pipeline is built) ends the run FAILED with
    the error as a tag, in one line and no traceback (exit 1: not a bad input); the same command again re-opens
    the same run as RUNNING, and an interruption then ends it KILLED, saying how to resume (exit 130)."""
    import pipeline.training.run as driver
    from pipeline.names import ERROR_TAG

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    seen: list[str] = []

    def disk_on_fire(*args, **kwargs):
        raise RuntimeError("disk on fire")

    def interrupted(*args, **kwargs):
        (run,) = client.search_runs([client.get_experiment_by_name("test-train").experiment_id])
        seen.append(run.info.status)
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "build_datasets", disk_on_fire)
    assert main(train_args(shards, tmp_path, "--name", "broken")) == 1
    err = capsys.readouterr().err
    assert "nrd-bench train: error: unexpected RuntimeError: disk on fire" in err and "Traceback" not in err
    (run,) = client.search_runs([client.get_experiment_by_name("test-train").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags[ERROR_TAG] == "RuntimeError: disk on fire"

    monkeypatch.setattr(driver, "build_datasets", interrupted)
    assert main(train_args(shards, tmp_path, "--name", "broken")) == 130
    assert "nrd-bench train: interrupted; rerun the same command to resume" in capsys.readouterr().err
    assert seen == ["RUNNING"]  # re-opened, not a second run
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED" and run.data.tags[ERROR_TAG] == "interrupted; rerun the same command to resume"


def local_ray_cpus() -> float:
    import ray

    return ray.cluster_resources()["CPU"]


BAD_CONFIGS = {  # name: (config file text or bytes, extra flags, message)
    "lr null": ("schedule:\n  lr: null\n", [], "schedule: lr=None has the wrong type; expected a finite float"),
    "model a word": ("model: nrd\n", [], "section model is 'nrd'; expected a mapping of its keys"),
    "decoder_kwargs a list": ("model:\n  decoder_kwargs: [8]\n", [], "decoder_kwargs=[8] is invalid; expected a map"),
    "aux_head a string": ('model:\n  aux_head: "no"\n', [], "aux_head='no' is invalid; expected a value of type bool"),
    "num_classes a word": ("model:\n  num_classes: six\n", [], "num_classes='six' is invalid; expected a value of"),
    "not UTF-8": (b"\xff\xfe schedule", [], "not UTF-8 text (byte 0); expected a YAML file"),
    "val_limit -1": ("", ["--val-limit", "-1"], "data.val_limit=-1 is invalid; expected a positive integer"),
    "val_limit 0": ("", ["--val-limit", "0"], "data.val_limit=0 is invalid; expected a positive integer"),
    "name escapes": ("", ["--name", "../../escape"], "run.name='../../escape' is invalid; expected a folder name"),
    "name dot dot": ("", ["--name", ".."], "run.name='..' is invalid"),
    "lr inf": ("", ["--lr", "inf"], "lr=inf has the wrong type; expected a finite float"),
    "lr below min_lr": (
        "",
        ["--lr", "0.00001"],
        "expected in [0, schedule.lr=1e-05]; lower it in the schedule section",
    ),
    "decoder arg not YAML": ("", ["--decoder-arg", "k=[8"], "'k=[8': the VALUE '[8' is not a YAML value"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_bad_values_are_named_in_one_line_and_nothing_is_written(shards, tmp_path, capsys, monkeypatch, case):
    """A config file's values, alone (no flag overrides them), or a flag's: exit 2, the key and what was expected."""
    text, flags, message = BAD_CONFIGS[case]
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "run.yaml"
    if isinstance(text, str):
        text = f"data:\n  dataset_dir: {shards}\n{text}".encode()
    config.write_bytes(text)
    store = ["--storage-path", str(tmp_path / "results"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    args = train_args(shards, tmp_path, *flags) if flags else ["train", "--config", str(config), *store]
    with pytest.raises(SystemExit) if flags[:1] == ["--decoder-arg"] else contextlib.nullcontext() as exited:
        code = main(args)
    code = exited.value.code if exited else code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and message in lines[-1] and "Traceback" not in err, err
    assert len(lines) == 1 or lines[0].startswith("usage: ")  # argparse's own errors follow its usage
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.yaml"]


def test_a_dashboard_url_as_ray_address_is_named(shards, tmp_path, capsys, monkeypatch):
    """The README has users set RAY_ADDRESS=http://HEAD:8265 for submit and jobs; train says what to do instead."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert main(train_args(shards, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "RAY_ADDRESS=http://127.0.0.1:8265 is a Ray dashboard (Jobs API) address" in err
    assert "nrd-bench submit -- nrd-bench" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_a_folder_as_config_file_is_named(shards, tmp_path, capsys):
    assert main([*train_args(shards, tmp_path), "--config", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a folder; expected a YAML file" in capsys.readouterr().err


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


def test_config_key_groups_runs_that_differ_only_in_seed(shards):
    """Repeats share a key (seed, log/checkpoint intervals and where results go do not count); any setting that can
    change the result, a decoder hyperparameter included, gives another key."""
    base = TrainConfig().updated({"data.dataset_dir": str(shards), "model.decoder": "nrd"})
    same = {"schedule.seed": 7, "schedule.log_interval": 3, "schedule.checkpoint_interval": 9, "run.name": "b"}
    assert base.updated(same).config_key() == base.config_key()
    for values in (
        {"schedule.lr": 0.02},
        {"nrd.dyn_channels": 8},
        {"model.encoder": "resnet34"},
        {"data.val_limit": 3},
    ):
        assert base.updated(values).config_key() != base.config_key(), values


def test_class_metrics_name_each_class_and_leave_out_absent_ones():
    from pipeline.training.evaluation import class_metrics

    manifest = {"class_names": ["road", "traffic light", "a/b", "sky"]}
    values = {"per_class_iou": [50.0, 12.5, 7.0, float("nan")]}  # sky absent from the val split
    assert class_metrics(values, manifest) == {"iou/road": 50.0, "iou/traffic light": 12.5, "iou/a_b": 7.0}
