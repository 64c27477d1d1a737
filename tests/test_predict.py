"""``nrd-bench predict``: label PNGs equal the argmax of the model applied in the test (its own normalisation),
overlays blend the manifest's colours, bad input is named. The end-to-end check (predict on a real training run's
weights reproduces the metrics it logged) is in test_train.py, on the run the two-worker test makes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from nrd import create_model
from nrd.data import create_dataset, prepare_shards
from nrd.inference import predict_msflip, predict_slide
from pipeline.commands.cli import main

K = 5
MEAN = (123.675, 116.28, 103.53)  # ImageNet, 0–255 scale
STD = (58.395, 57.12, 57.375)
IMAGES = {"a.png": (70, 90), "sub/b.jpg": (45, 61)}  # relative path → (H, W)


def reference_logits(model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    """Logits (1, K, H, W) of ``model`` in eval mode on an (H, W, 3) uint8 image, normalised here."""
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float()
    x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    with torch.no_grad():
        return model.eval()(x[None])


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def read_gray(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A tiny trained-model stand-in (random bilinear/ResNet-18, K classes) saved as config.yaml + model.pt, a
    prepared synthetic data set with K classes for its manifest, and a folder of images (one nested JPEG)."""
    root = tmp_path_factory.mktemp("predict")
    prepare_shards(
        create_dataset("synthetic", num_samples={"train": 1, "val": 1}, size=(32, 32), num_classes=K),
        root / "shards",
        progress=False,
    )
    torch.manual_seed(0)
    model = create_model("bilinear", "resnet18", K, aux_head=False)
    with torch.no_grad():  # at initialisation the classifier's bias decides alone: make the features count
        model.decoder.classifier.bias.zero_()
        model.decoder.classifier.weight.normal_(0, 1)
    run = root / "run"
    run.mkdir()
    torch.save(model.state_dict(), run / "model.pt")
    config = {
        "model": {"decoder": "bilinear", "encoder": "resnet18", "num_classes": K, "aux_head": False},
        "data": {"dataset_dir": str(root / "shards")},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rng = np.random.default_rng(0)
    for name, (height, width) in IMAGES.items():
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        smooth = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)  # blobs, not noise
        Image.fromarray(smooth).resize((width, height), Image.BILINEAR).save(path, quality=90)
    return {"root": root, "run": run, "model": model, "images": root / "images", "config": config}


def predict_args(setup: dict, out: Path, *extra: str) -> list[str]:
    run = setup["run"]
    return [
        "predict",
        "--weights",
        str(run / "model.pt"),
        "--config",
        str(run / "config.yaml"),
        "--input",
        str(setup["images"]),
        "--out",
        str(out),
        *extra,
    ]


def test_labels_are_the_argmax_and_overlays_blend_the_manifest_palette(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(predict_args(setup, out)) == 0
    stdout = capsys.readouterr().out
    assert "palette:  dataset manifest" in stdout and "predicted 2 image(s)" in stdout
    palette = np.array(json.loads((setup["root"] / "shards" / "manifest.json").read_text())["palette"])
    seen = set()
    for name in IMAGES:
        png = Path(name).with_suffix(".png")
        image = read_rgb(setup["images"] / name)
        expected = reference_logits(setup["model"], image).argmax(1)[0].numpy()
        label = read_gray(out / "labels" / png)
        np.testing.assert_array_equal(label, expected)
        seen |= set(np.unique(label).tolist())
        blend = np.rint(0.5 * image + 0.5 * palette[expected]).astype(np.uint8)
        np.testing.assert_array_equal(read_rgb(out / "overlays" / png), blend)
    assert len(seen) > 1  # the check means something: not a constant map
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "labels/a.png",
        "labels/sub/b.png",
        "overlays/a.png",
        "overlays/sub/b.png",
    ]


def test_single_file_slide_and_msflip(setup, tmp_path):
    image_path = setup["images"] / "a.png"
    image = read_rgb(image_path)
    x = (torch.from_numpy(image.copy()).permute(2, 0, 1).float() - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(
        STD
    ).view(3, 1, 1)
    cases = {  # 2 x 2 windows of 48x64 over the 70x90 image
        ("--mode", "slide", "--crop-size", "48x64", "--stride", "32x40"): predict_slide(
            setup["model"], x[None], (48, 64), (32, 40)
        ),
        ("--mode", "msflip", "--scales", "0.75,1.25"): predict_msflip(setup["model"], x[None], scales=(0.75, 1.25)),
    }
    for index, (flags, scores) in enumerate(cases.items()):
        out = tmp_path / str(index)
        args = predict_args(setup, out, *flags)
        args[args.index("--input") + 1] = str(image_path)
        assert main(args) == 0
        np.testing.assert_array_equal(read_gray(out / "labels" / "a.png"), scores.argmax(1)[0].numpy())


def test_config_beside_weights_and_fallback_palette(setup, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    shutil.copy(setup["run"] / "model.pt", run / "weights" / "model.pt")
    config = {**setup["config"], "data": {"dataset_dir": str(tmp_path / "gone")}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    args = [
        "predict",
        "--weights",
        str(run / "weights" / "model.pt"),
        "--input",
        str(setup["images"]),
        "--out",
        str(out),
        "--alpha",
        "1",
    ]
    assert main(args) == 0
    assert "palette:  fallback (no dataset manifest" in capsys.readouterr().out
    colours: dict[int, set] = {}
    for name in IMAGES:
        png = Path(name).with_suffix(".png")
        label, overlay = read_gray(out / "labels" / png), read_rgb(out / "overlays" / png)
        for value in np.unique(label):
            colours.setdefault(int(value), set()).update(map(tuple, overlay[label == value]))
    assert all(len(found) == 1 for found in colours.values())  # one colour per class
    assert len({next(iter(found)) for found in colours.values()}) == len(colours)  # distinct across classes

    (run / "config.yaml").unlink()
    assert main(args) == 2
    assert "no config.yaml beside the weights" in capsys.readouterr().err


def test_weights_that_do_not_fit_are_named(setup, tmp_path, capsys):
    other = create_model("bilinear", "resnet18", K + 1, aux_head=False)
    bad = {"wrong_classes.pt": other.state_dict(), "not_a_state_dict.pt": [torch.zeros(2)]}
    for name, content in bad.items():
        torch.save(content, tmp_path / name)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    expected = {
        "wrong_classes.pt": "shape_mismatch",
        "not_a_state_dict.pt": "expected a state dict",
        "garbage.pt": "not a loadable weights file",
        "missing.pt": "weights file not found",
    }
    for name, message in expected.items():
        args = predict_args(setup, tmp_path / "out")
        args[args.index("--weights") + 1] = str(tmp_path / name)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert str(tmp_path / name) in err and message in err, err
        if name == "wrong_classes.pt":
            assert "cannot take these weights" in err and "bilinear decoder, resnet18 encoder, 5 classes" in err
    assert not (tmp_path / "out").exists()


def test_bad_mode_input_and_device_are_named(setup, tmp_path, capsys):
    cases = {
        ("--mode", "tile"): ["unknown inference mode 'tile'", "msflip, slide, whole"],
        ("--device", "gpu0"): ["--device='gpu0' is invalid"],
        ("--mode", "whole", "--crop-size", "32x32"): ["no crop_size: only modes slide, msflip take it"],
        ("--mode", "whole", "--scales", "0.5"): [
            "inference mode 'whole': scales=(0.5,) is invalid; expected no scales"
        ],
    }
    for flags, messages in cases.items():
        assert main(predict_args(setup, tmp_path / "out", *flags)) == 2
        err = capsys.readouterr().err
        assert all(message in err for message in messages), err
    empty = tmp_path / "empty"
    (empty / "nested").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    for source, message in ((tmp_path / "nothing", "no such file or folder"), (empty, "holds no image file")):
        args = predict_args(setup, tmp_path / "out")
        args[args.index("--input") + 1] = str(source)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"{source}: {message}" in err, err
    assert not (tmp_path / "out").exists()


def test_a_corrupt_image_among_good_ones_stops_before_anything_is_written(setup, tmp_path, capsys):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(setup["images"], images)
    corrupt = images / "sub" / "c.jpg"  # third in the folder's order
    corrupt.write_bytes(b"\xff\xd8\xff not really a JPEG")
    args = predict_args(setup, tmp_path / "out")
    args[args.index("--input") + 1] = str(images)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{corrupt}: cannot read image" in err and "nothing was written" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_run_id_downloads_config_and_weights(setup, tmp_path, capsys):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("predict", artifact_location=(tmp_path / "artifacts").as_uri())
    complete, partial = (client.create_run(experiment).info.run_id for _ in range(2))
    for run_id in (complete, partial):
        client.log_artifact(run_id, str(setup["run"] / "config.yaml"))
    client.log_artifact(complete, str(setup["run"] / "model.pt"), "weights")
    by_weights, by_run = tmp_path / "by_weights", tmp_path / "by_run"
    assert main(predict_args(setup, by_weights)) == 0
    base = ["predict", "--input", str(setup["images"]), "--tracking-uri", uri]
    assert main([*base, "--run-id", complete, "--out", str(by_run)]) == 0
    assert f"from run {complete} at {uri}" in capsys.readouterr().out
    for path in (by_weights / "labels").rglob("*.png"):
        assert path.read_bytes() == (by_run / path.relative_to(by_weights)).read_bytes()
    assert main([*base, "--run-id", partial, "--out", str(tmp_path / "x")]) == 2
    assert f"run {partial} at {uri}: has no artifact weights/model.pt (it has: config.yaml)" in capsys.readouterr().err
    assert main([*base, "--run-id", "0" * 32, "--out", str(tmp_path / "x")]) == 2
    assert "0" * 32 in capsys.readouterr().err
