"""IDD-Lite and SIFT Flow readers: on the real files in ../shared/data (counts, label mapping, shards read back equal
to the source) and on small folders built here in the official archive / release layouts (test split, ``.mat``
labels written with SciPy, bad files named and skipped)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, read_png, shared, write_image
from PIL import Image

from nrd.data import (
    CorruptImageError,
    DataError,
    LabelValueError,
    MissingPairError,
    ShardDataset,
    create_dataset,
    prepare_shards,
)
from nrd.data.base import decode_label
from nrd.data.transforms import TrainTransform, default_train_config, sample_rng
from nrd.errors import InvalidHyperparameterError
from pipeline.commands.cli import main

SIFT_IMAGES = "Images/spatial_envelope_256x256_static_8outdoorcategories"
SIFT_MATS = "SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories"


def class_rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as file:
        return list(csv.DictReader(file))


def assert_shards_equal_source(dataset, out: Path, split: str, count: int) -> None:
    """Prepare the first ``count`` samples of ``split`` and read them back: image bytes equal to the files, labels
    equal to the reader's train-id labels."""
    prepare_shards(dataset, out, splits=[split], shard_size=2, limit=count, progress=False)
    shards = ShardDataset(out, split, decode=False)
    assert len(shards) == count
    for index, sample in enumerate(dataset.list_samples(split)[:count]):
        row = shards[index]
        raw = dataset.read_sample(sample)
        assert row["id"] == sample.id
        assert row["image"] == sample.image_path.read_bytes()
        np.testing.assert_array_equal(decode_label(row["label"]), raw.label)
    assert json.loads((out / "manifest.json").read_text())["complete"]


# --- IDD-Lite on the real files ----------------------------------------------------------------------------------


def test_idd_lite_counts_and_pairing():
    root = shared("idd_lite", "idd20k_lite")
    dataset = create_dataset("idd_lite", root)
    sequences = {}
    for split, count in (("train", 1403), ("val", 204)):
        samples = dataset.list_samples(split)
        assert len(samples) == count and len({s.id for s in samples}) == count
        for sample in samples:
            seq, name = sample.id.split("/")
            assert sample.image_path == root / "leftImg8bit" / split / seq / f"{name}_image.jpg"
            assert sample.label_path == root / "gtFine" / split / seq / f"{name}_label.png"
            assert sample.image_path.is_file() and sample.label_path.is_file()
        sequences[split] = {s.id.split("/")[0] for s in samples}
    assert not sequences["train"] & sequences["val"]
    # the parent of idd20k_lite (where the archive is unpacked) reads the same
    assert [s.id for s in create_dataset("idd_lite", root.parent).list_samples("val")] == [
        s.id for s in dataset.list_samples("val")
    ]
    with pytest.raises(MissingPairError, match="leftImg8bit/test"):
        dataset.list_samples("test")  # left out of the shared copy


def test_idd_lite_labels_and_classes():
    root = shared("idd_lite", "idd20k_lite")
    dataset = create_dataset("idd_lite", root)
    rows = [row for row in class_rows(root.parent / "classes.csv") if int(row["id"]) < 255]
    assert dataset.info.class_names == tuple(row["name"] for row in rows)
    assert len(dataset.info.palette) == len(set(dataset.info.palette)) == 7
    seen = set()
    for sample in dataset.list_samples("val")[::20]:
        raw = dataset.read_sample(sample)
        np.testing.assert_array_equal(raw.label, read_png(sample.label_path))  # already train ids
        assert (raw.height, raw.width) == (227, 320)
        seen |= set(np.unique(raw.label).tolist())
    assert seen <= {0, 1, 2, 3, 4, 5, 6, 255} and {0, 5, 6} <= seen


def test_idd_lite_shards_equal_source(tmp_path):
    dataset = create_dataset("idd_lite", shared("idd_lite", "idd20k_lite"))
    assert_shards_equal_source(dataset, tmp_path, "val", 3)


def test_idd_lite_preset_on_a_real_frame():
    dataset = create_dataset("idd_lite", shared("idd_lite", "idd20k_lite"))
    raw = dataset.read_sample(dataset.list_samples("train")[0])
    image = np.asarray(Image.open(dataset.list_samples("train")[0].image_path).convert("RGB"))
    config = default_train_config("idd_lite")
    out_image, out_label = TrainTransform(config)(image, raw.label, sample_rng(0, 0, 0))
    assert tuple(out_image.shape) == (3, *config.crop_size) and tuple(out_label.shape) == config.crop_size
    assert set(out_label.unique().tolist()) <= {0, 1, 2, 3, 4, 5, 6, 255}


# --- IDD-Lite in the archive layout (built here) -----------------------------------------------------------------


@pytest.fixture
def idd_archive(tmp_path) -> Path:
    """The archive as unpacked: idd20k_lite/ with instance label copies and an unlabelled test split; real ids
    of different formats in two sequences."""
    root = tmp_path / "idd20k_lite"
    rng = np.random.default_rng(0)
    ids = {
        "train": [("0", "024541"), ("0", "024703"), ("7", "frame0059"), ("7", "frame0060")],
        "val": [("3", "0014750")],
        "test": [("9", "frame0001"), ("9", "000123")],
    }
    for split, pairs in ids.items():
        for seq, name in pairs:
            write_image(
                root / "leftImg8bit" / split / seq / f"{name}_image.jpg",
                rng.integers(0, 256, (9, 12, 3), dtype=np.uint8),
            )
            if split != "test":
                label = rng.choice(np.array([0, 1, 2, 3, 4, 5, 6, 255], np.uint8), (9, 12))
                write_image(root / "gtFine" / split / seq / f"{name}_label.png", label)
                write_image(root / "gtFine" / split / seq / f"{name}_inst_label.png", label)
    return tmp_path


def test_idd_archive_layout_and_test_split(idd_archive):
    dataset = create_dataset("idd_lite", idd_archive)  # the folder holding idd20k_lite
    train = dataset.list_samples("train")
    assert [s.id for s in train] == ["0/024541", "0/024703", "7/frame0059", "7/frame0060"]  # no *_inst ids
    for sample in train:
        np.testing.assert_array_equal(dataset.read_sample(sample).label, read_png(sample.label_path))
    test = dataset.list_samples("test")
    assert [s.id for s in test] == ["9/000123", "9/frame0001"]
    assert all(s.label_path is None and s.image_path.is_file() for s in test)
    with pytest.raises(MissingPairError, match="without a label") as error:
        dataset.read_sample(test[0])
    assert error.value.path == str(test[0].image_path)
    with pytest.raises(InvalidHyperparameterError, match="'test' has images only"):
        prepare_shards(dataset, idd_archive / "out", splits=["train", "test"], progress=False)
    assert not (idd_archive / "out").exists()  # refused before anything was written


def test_idd_bad_files_are_named_and_skipped(idd_archive, capsys):
    root = idd_archive / "idd20k_lite"
    image = root / "leftImg8bit" / "train" / "0" / "024703_image.jpg"
    image.write_bytes(image.read_bytes()[:50])
    label = root / "gtFine" / "train" / "7" / "frame0059_label.png"
    write_image(label, np.full((9, 12), 7, np.uint8))
    dataset = create_dataset("idd_lite", root)
    samples = {s.id: s for s in dataset.list_samples("train")}
    with pytest.raises(CorruptImageError) as error:
        dataset.read_sample(samples["0/024703"])
    assert error.value.path == str(image)
    with pytest.raises(LabelValueError, match="values 7 are outside the idd_lite label set 0-6, 255"):
        dataset.read_sample(samples["7/frame0059"])
    missing = root / "gtFine" / "train" / "7" / "frame0060_label.png"
    missing.unlink()
    with pytest.raises(MissingPairError) as error:
        dataset.read_sample(samples["7/frame0060"])
    assert error.value.path == str(missing)

    out = idd_archive / "out"
    args = ["prepare", "--dataset", "idd_lite", "--root", str(root), "--out", str(out), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(image) in err and "cannot decode image" in err and "Traceback" not in err
    assert not (out / "manifest.json").exists() or not json.loads((out / "manifest.json").read_text())["complete"]
    assert main([*args, "--skip-bad"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"]
    assert manifest["splits"]["train"]["count"] == 1 and manifest["splits"]["val"]["count"] == 1
    skipped = {entry["id"]: entry["file"] for entry in manifest["skipped"]}
    assert skipped == {"0/024703": str(image), "7/frame0059": str(label), "7/frame0060": str(missing)}
    assert ShardDataset(out, "train", decode=False)[0]["id"] == "0/024541"


# --- SIFT Flow on the real files ---------------------------------------------------------------------------------


def test_siftflow_counts_and_lists():
    root = shared("siftflow")
    dataset = create_dataset("siftflow", root)
    for split, count in (("train", 1400), ("val", 200)):
        names = sorted((root / f"{split}.txt").read_text().split())
        samples = dataset.list_samples(split)
        assert len(samples) == count and [s.id for s in samples] == names
        for sample in samples:
            assert sample.image_path == root / SIFT_IMAGES / f"{sample.id}.jpg" and sample.image_path.is_file()
            assert sample.label_path == root / "SemanticLabels" / "labels_png" / f"{sample.id}.png"
            assert sample.label_path.is_file()
    with pytest.raises(MissingPairError, match=r"TestSet1\.txt"):
        dataset.list_samples("test")  # held out of the shared copy


def test_siftflow_labels_and_classes():
    root = shared("siftflow")
    dataset = create_dataset("siftflow", root)
    rows = [row for row in class_rows(root / "classes.csv") if int(row["id"]) > 0]
    assert [int(row["id"]) for row in rows] == list(range(1, 34))
    assert dataset.info.class_names == tuple(row["name"] for row in rows)
    assert len(dataset.info.palette) == len(set(dataset.info.palette)) == 33
    void_seen = False
    for sample in dataset.list_samples("train")[::100]:
        raw = dataset.read_sample(sample)
        stored = read_png(sample.label_path).astype(np.int64)
        void_seen |= bool((stored == 0).any())
        np.testing.assert_array_equal(raw.label, np.where(stored == 0, 255, stored - 1))
        assert raw.label.max() == 255 or raw.label.max() <= 32
        assert (raw.height, raw.width) == (256, 256)
    assert void_seen


def test_siftflow_shards_equal_source(tmp_path):
    assert_shards_equal_source(create_dataset("siftflow", shared("siftflow")), tmp_path, "train", 3)


# --- SIFT Flow in the release layout (.mat labels written here with SciPy) --------------------------------------


@pytest.fixture
def siftflow_release(tmp_path) -> Path:
    """SiftFlowDataset/ with five real images, their labels as binary MATLAB files (uint16 ``S``) and a
    TestSet1.txt naming two of them with Windows paths and CRLF line ends."""
    from scipy.io import savemat

    source = shared("siftflow")
    names = (source / "train.txt").read_text().split()[:5]
    release = tmp_path / "SiftFlowDataset"
    (release / SIFT_IMAGES).mkdir(parents=True)
    (release / SIFT_MATS).mkdir(parents=True)
    for name in names:
        shutil.copy(source / SIFT_IMAGES / f"{name}.jpg", release / SIFT_IMAGES / f"{name}.jpg")
        stored = read_png(source / "SemanticLabels" / "labels_png" / f"{name}.png").astype(np.uint16)
        savemat(release / SIFT_MATS / f"{name}.mat", {"S": stored})
    test_lines = [f"Images\\spatial_envelope_256x256_static_8outdoorcategories\\{name}.jpg" for name in names[3:]]
    (release / "TestSet1.txt").write_bytes(("\r\n".join(test_lines) + "\r\n").encode())
    return tmp_path


def test_siftflow_release_layout(siftflow_release):
    release = siftflow_release / "SiftFlowDataset"
    names = sorted(path.stem for path in (release / SIFT_IMAGES).glob("*.jpg"))
    test_names = sorted(line.rsplit("\\", 1)[-1][:-4] for line in (release / "TestSet1.txt").read_text().split())
    dataset = create_dataset("siftflow", siftflow_release)  # the folder holding SiftFlowDataset
    test = dataset.list_samples("test")
    train = dataset.list_samples("train")
    assert [s.id for s in test] == test_names and len(test) == 2
    assert [s.id for s in train] == sorted(set(names) - set(test_names))
    source = SHARED_DATA / "siftflow" / "SemanticLabels" / "labels_png"
    for sample in train + test:
        assert sample.label_path == release / SIFT_MATS / f"{sample.id}.mat"
        stored = read_png(source / f"{sample.id}.png").astype(np.int64)
        raw = dataset.read_sample(sample)
        np.testing.assert_array_equal(raw.label, np.where(stored == 0, 255, stored - 1))
        assert raw.image_bytes == sample.image_path.read_bytes()
    with pytest.raises(MissingPairError, match="no val split") as error:
        dataset.list_samples("val")
    assert error.value.path == str(release / "val.txt")

    (release / "val.txt").write_text(f"{train[0].id}\n")
    assert [s.id for s in dataset.list_samples("val")] == [train[0].id]
    assert [s.id for s in dataset.list_samples("train")] == [s.id for s in train[1:]]
    (release / "val.txt").write_text(f"{test[0].id}\n")
    with pytest.raises(DataError, match=r"images of TestSet1\.txt"):
        dataset.list_samples("val")


def test_siftflow_bad_mat_files_are_named_and_skipped(siftflow_release, capsys):
    from scipy.io import savemat

    release = siftflow_release / "SiftFlowDataset"
    dataset = create_dataset("siftflow", release)
    train = dataset.list_samples("train")
    broken, no_s, out_of_set = (sample.label_path for sample in train)
    broken.write_bytes(broken.read_bytes()[:100])
    savemat(no_s, {"L": np.zeros((256, 256), np.uint16)})
    savemat(out_of_set, {"S": np.full((256, 256), 34, np.uint16)})
    for sample, error_type, problem in zip(
        train,
        (CorruptImageError, CorruptImageError, LabelValueError),
        ("cannot read MATLAB file", "no variable 'S'", "values 34 are outside the siftflow label set 0-33"),
        strict=True,
    ):
        with pytest.raises(error_type, match=problem) as error:
            dataset.read_sample(sample)
        assert error.value.path == str(sample.label_path)

    out = siftflow_release / "out"
    args = ["prepare", "--dataset", "siftflow", "--root", str(release), "--out", str(out), "--splits", "train,test"]
    assert main([*args, "--quiet"]) == 2
    assert str(broken) in capsys.readouterr().err
    assert main([*args, "--quiet", "--skip-bad"]) == 2  # every train sample is bad: an empty split is an error
    savemat(out_of_set, {"S": np.full((256, 256), 33, np.uint16)})
    assert main([*args, "--quiet", "--skip-bad"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"]
    assert manifest["splits"]["train"]["count"] == 1 and manifest["splits"]["test"]["count"] == 2
    assert sorted(entry["file"] for entry in manifest["skipped"]) == sorted([str(broken), str(no_s)])
