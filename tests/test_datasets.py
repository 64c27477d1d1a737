"""Dataset readers on the real fixtures (../shared/data), on layouts built in tmp_path, and the synthetic data."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_png, shared, write_image

from nrd.data import (
    DATASETS,
    CorruptImageError,
    LabelValueError,
    MissingPairError,
    SizeMismatchError,
    SyntheticDataset,
    create_dataset,
)
from nrd.data.base import decode_image
from nrd.data.cityscapes import LABELS
from nrd.errors import InvalidHyperparameterError, UnknownNameError

FRAME = "frankfurt_000000_000294"


# --- Cityscapes --------------------------------------------------------------------------------------------------


def official_cityscapes_table() -> list[dict]:
    with open(shared("cityscapes_fixture", "cityscapes_labels.csv"), newline="") as file:
        return list(csv.DictReader(file))


def test_cityscapes_table_equals_official_csv():
    rows = official_cityscapes_table()
    expected = [(r["name"], int(r["id"]), int(r["trainId"]), (int(r["r"]), int(r["g"]), int(r["b"]))) for r in rows]
    assert list(LABELS) == expected
    evaluated = sorted((int(r["trainId"]), r["name"]) for r in rows if 0 <= int(r["trainId"]) < 255)
    info = DATASETS["cityscapes"].info
    assert info.class_names == tuple(name for _, name in evaluated)
    assert info.num_classes == 19 and info.palette[0] == (128, 64, 128) and info.palette[18] == (119, 11, 32)


def test_cityscapes_reader_uses_train_id_file_when_present():
    root = shared("cityscapes_fixture")
    dataset = create_dataset("cityscapes", root)
    [sample] = dataset.list_samples("val")
    raw = dataset.read_sample(sample)
    assert raw.id == FRAME
    image_path = root / "leftImg8bit" / "val" / "frankfurt" / f"{FRAME}_leftImg8bit.png"
    assert raw.image_bytes == image_path.read_bytes()
    train_ids = read_png(root / "gtFine" / "val" / "frankfurt" / f"{FRAME}_gtFine_labelTrainIds.png")
    np.testing.assert_array_equal(raw.label, train_ids)
    assert (raw.height, raw.width) == (128, 256)


def test_cityscapes_label_id_mapping(tmp_path):
    root = shared("cityscapes_fixture")
    for part in (f"leftImg8bit/val/frankfurt/{FRAME}_leftImg8bit", f"gtFine/val/frankfurt/{FRAME}_gtFine_labelIds"):
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / f"{part}.png", tmp_path / f"{part}.png")  # no labelTrainIds file in the copy
    dataset = create_dataset("cityscapes", tmp_path)
    label = dataset.read_sample(dataset.list_samples("val")[0]).label

    label_ids = read_png(root / "gtFine" / "val" / "frankfurt" / f"{FRAME}_gtFine_labelIds.png")
    official = {int(r["id"]): int(r["trainId"]) for r in official_cityscapes_table() if int(r["id"]) >= 0}
    expected = np.vectorize(official.__getitem__)(label_ids)
    np.testing.assert_array_equal(label, expected)
    # The fixture's labelTrainIds file was downscaled separately: its README counts 77 differing boundary pixels.
    train_ids = read_png(root / "gtFine" / "val" / "frankfurt" / f"{FRAME}_gtFine_labelTrainIds.png")
    assert int((label != train_ids).sum()) == 77


# --- ADE20K ------------------------------------------------------------------------------------------------------


def test_ade20k_class_names_equal_object_info(tmp_path):
    root = shared("ade20k_fixture", "ADEChallengeData2016")
    rows = [line.split("\t") for line in (root / "objectInfo150.txt").read_text().splitlines()[1:]]
    names = tuple(row[4].split(",")[0].strip() for row in rows)  # first synonym
    assert len(names) == 150
    assert create_dataset("ade20k", root).info.class_names == names  # read from objectInfo150.txt
    assert create_dataset("ade20k", tmp_path).info.class_names == names  # built-in list


def test_ade20k_reader_reduces_zero_label():
    root = shared("ade20k_fixture", "ADEChallengeData2016")
    dataset = create_dataset("ade20k", root)
    samples = dataset.list_samples("val")
    assert [s.id for s in samples] == ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]
    for sample in samples:
        raw = dataset.read_sample(sample)
        annotation = read_png(root / "annotations" / "validation" / f"{sample.id}.png").astype(np.int64)
        np.testing.assert_array_equal(raw.label, np.where(annotation == 0, 255, annotation - 1))
        assert raw.image_bytes == (root / "images" / "validation" / f"{sample.id}.jpg").read_bytes()
        assert (raw.height, raw.width) == annotation.shape
    with pytest.raises(MissingPairError, match="images/training"):
        dataset.list_samples("train")


# --- CamVid ------------------------------------------------------------------------------------------------------


def test_camvid_lists_match_split_files():
    root = shared("camvid")
    dataset = create_dataset("camvid", root)
    for split, count in (("train", 367), ("val", 101)):
        pairs = sorted(tuple(line.split()) for line in (root / f"{split}.txt").read_text().splitlines())
        samples = dataset.list_samples(split)
        assert len(samples) == count
        assert [(str(s.image_path.relative_to(root)), str(s.label_path.relative_to(root))) for s in samples] == pairs
    with pytest.raises(MissingPairError, match=re.escape(str(root / "test"))):
        dataset.list_samples("test")


def test_camvid_void_is_ignored():
    root = shared("camvid")
    dataset = create_dataset("camvid", root)
    with open(root / "classes.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["ignore"] == "0"]
    assert dataset.info.class_names == tuple(row["name"] for row in rows)
    assert dataset.info.palette == tuple((int(row["r"]), int(row["g"]), int(row["b"])) for row in rows)
    void_seen = False
    for sample in dataset.list_samples("val")[:4]:
        raw = dataset.read_sample(sample)
        stored = read_png(sample.label_path)
        void_seen |= bool((stored == 11).any())
        np.testing.assert_array_equal(raw.label, np.where(stored == 11, 255, stored))
        assert raw.image_bytes == sample.image_path.read_bytes()
        assert (raw.height, raw.width) == (360, 480)
    assert void_seen


# --- PASCAL Context (fixture built here in the official layout) --------------------------------------------------


@pytest.fixture
def pascal_context_root(tmp_path) -> Path:
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    rng = np.random.default_rng(0)
    lists = {"train": ["2008_000002", "2008_000003", "2008_000007"], "val": ["2008_000008", "2008_000009"]}
    for split, ids in lists.items():
        for id in ids:
            write_image(voc / "JPEGImages" / f"{id}.jpg", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
            write_image(voc / "SegmentationClassContext" / f"{id}.png", rng.integers(0, 60, (30, 40), dtype=np.uint8))
        (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("\n".join(reversed(ids)) + "\n")
    write_image(voc / "JPEGImages" / "2008_000099.jpg", np.zeros((30, 40, 3), np.uint8))  # in no list: not read
    return tmp_path


@pytest.mark.parametrize("name, num_classes", [("pascal_context", 60), ("pascal_context59", 59)])
def test_pascal_context_variants(pascal_context_root, name, num_classes):
    dataset = create_dataset(name, pascal_context_root)
    assert dataset.info.num_classes == num_classes
    assert dataset.info.class_names[-1] == "wood"
    assert (dataset.info.class_names[0] == "background") == (num_classes == 60)
    samples = dataset.list_samples("train")
    assert [s.id for s in samples] == ["2008_000002", "2008_000003", "2008_000007"]
    assert len(dataset.list_samples("val")) == 2
    for sample in samples:
        raw = dataset.read_sample(sample)
        stored = read_png(sample.label_path).astype(np.int64)
        expected = stored if num_classes == 60 else np.where(stored == 0, 255, stored - 1)
        np.testing.assert_array_equal(raw.label, expected)
        assert raw.image_bytes == sample.image_path.read_bytes()


def test_pascal_context_missing_list_file(tmp_path):
    with pytest.raises(MissingPairError, match=re.escape("SegmentationContext/val.txt")):
        create_dataset("pascal_context", tmp_path).list_samples("val")


@pytest.mark.parametrize("missing", ["JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"])
def test_pascal_context_missing_folder_points_to_the_conversion(pascal_context_root, missing):
    voc = pascal_context_root / "VOCdevkit" / "VOC2010"
    shutil.rmtree(voc / missing)
    with pytest.raises(MissingPairError) as error:
        create_dataset("pascal_context59", pascal_context_root).list_samples("train")
    assert error.value.path == str(voc)
    message = str(error.value)
    assert f"missing {missing}" in message
    assert "tools/dataset_converters/pascal_context.py" in message and "trainval_merged.json" in message


@pytest.mark.parametrize("name", ["pascal_context", "pascal_context59"])
def test_pascal_context_rejects_label_60(pascal_context_root, name):
    dataset = create_dataset(name, pascal_context_root)
    sample = dataset.list_samples("val")[0]
    values = np.full((30, 40), 59, np.uint8)
    values[3, 4] = 60
    write_image(sample.label_path, values)
    with pytest.raises(LabelValueError) as error:
        dataset.read_sample(sample)
    assert error.value.path == str(sample.label_path)
    assert "values 60 are outside" in error.value.problem and "0-59" in error.value.problem


def test_pascal_context59_names_order_and_palette(pascal_context_root):
    full, reduced = (create_dataset(name, pascal_context_root).info for name in ("pascal_context", "pascal_context59"))
    assert full.num_classes == len(full.palette) == 60 and reduced.num_classes == len(reduced.palette) == 59
    assert reduced.class_names == full.class_names[1:] and reduced.palette == full.palette[1:]
    # stored value v is class v - 1 of the 59 (the benchmark's order: 1 aeroplane ... 59 wood)
    assert reduced.class_names[:3] == ("aeroplane", "bag", "bed") and reduced.class_names[-1] == "wood"
    assert reduced.class_names.index("person") == 36 and reduced.class_names.index("tvmonitor") == 54
    # the VOC colour map: background black, then (128, 0, 0), (0, 128, 0), (128, 128, 0), ...
    assert full.palette[:4] == ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0))
    assert len(set(full.palette)) == 60
    dataset = create_dataset("pascal_context59", pascal_context_root)
    sample = dataset.list_samples("val")[0]
    stored = np.zeros((30, 40), np.uint8)
    stored[0, :3] = (1, 37, 59)
    write_image(sample.label_path, stored)
    label = dataset.read_sample(sample).label
    assert label[0, :4].tolist() == [0, 36, 58, 255]


# --- bad input, on a small CamVid-layout folder ------------------------------------------------------------------


@pytest.fixture
def camvid_root(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    for index in range(3):
        write_image(tmp_path / "train" / f"f{index}.png", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        write_image(tmp_path / "trainannot" / f"f{index}.png", rng.integers(0, 12, (12, 16), dtype=np.uint8))
    return tmp_path


def read_only_sample(root: Path):
    dataset = create_dataset("camvid", root)
    [sample] = [s for s in dataset.list_samples("train") if s.id == "f0"]
    return dataset.read_sample(sample)


def test_corrupt_image_and_label(camvid_root):
    image = camvid_root / "train" / "f0.png"
    image.write_bytes(image.read_bytes()[:40])
    with pytest.raises(CorruptImageError) as error:
        read_only_sample(camvid_root)
    assert error.value.path == str(image)

    write_image(image, np.zeros((12, 16, 3), np.uint8))
    label = camvid_root / "trainannot" / "f0.png"
    label.write_bytes(b"not a png at all")
    with pytest.raises(CorruptImageError) as error:
        read_only_sample(camvid_root)
    assert error.value.path == str(label)

    write_image(label, np.zeros((12, 16, 3), np.uint8))  # an RGB label
    with pytest.raises(CorruptImageError, match="single channel"):
        read_only_sample(camvid_root)


def test_label_values_outside_the_set(camvid_root):
    values = np.full((12, 16), 3, np.uint8)
    values[0, :3] = (12, 200, 12)
    label = write_image(camvid_root / "trainannot" / "f0.png", values)
    with pytest.raises(LabelValueError) as error:
        read_only_sample(camvid_root)
    assert error.value.path == str(label)
    assert "12, 200" in error.value.problem and "0-11" in error.value.problem


def test_size_mismatch(camvid_root):
    label = write_image(camvid_root / "trainannot" / "f0.png", np.zeros((10, 16), np.uint8))
    with pytest.raises(SizeMismatchError) as error:
        read_only_sample(camvid_root)
    assert error.value.path == str(label)
    assert "16x10" in error.value.problem and "16x12" in error.value.problem


def test_missing_pairs(camvid_root):
    (camvid_root / "trainannot" / "f0.png").unlink()
    (camvid_root / "train" / "f2.png").unlink()
    dataset = create_dataset("camvid", camvid_root)
    samples = {s.id: s for s in dataset.list_samples("train")}
    assert sorted(samples) == ["f0", "f1", "f2"]
    with pytest.raises(MissingPairError) as error:
        dataset.read_sample(samples["f0"])
    assert error.value.path == str(camvid_root / "trainannot" / "f0.png")
    assert str(camvid_root / "train" / "f0.png") in error.value.problem
    with pytest.raises(MissingPairError) as error:
        dataset.read_sample(samples["f2"])
    assert error.value.path == str(camvid_root / "train" / "f2.png")
    dataset.read_sample(samples["f1"])

    (camvid_root / "val").mkdir()
    (camvid_root / "valannot").mkdir()
    with pytest.raises(MissingPairError, match="no image or label files"):
        dataset.list_samples("val")


def test_names_and_arguments_are_checked(tmp_path):
    with pytest.raises(UnknownNameError, match="camvid"):
        create_dataset("camvd", tmp_path)
    with pytest.raises(UnknownNameError, match="num_samples"):
        create_dataset("synthetic", num_sample={"train": 1})
    with pytest.raises(UnknownNameError, match="valid: test, train, val"):
        create_dataset("camvid", tmp_path).list_samples("training")
    with pytest.raises(InvalidHyperparameterError, match="root"):
        create_dataset("cityscapes")
    for bad in ({"num_classes": 1}, {"size": (8, 64)}, {"num_samples": {"train": -1}}):
        with pytest.raises(InvalidHyperparameterError):
            create_dataset("synthetic", **bad)


# --- synthetic ---------------------------------------------------------------------------------------------------


def test_synthetic_is_deterministic():
    settings = {"num_samples": {"train": 4, "val": 2}, "size": (40, 72), "num_classes": 5}
    first, second = SyntheticDataset(**settings, seed=7), SyntheticDataset(**settings, seed=7)
    later = second.read_sample(second.list_samples("train")[3])  # read out of order
    raws = [first.read_sample(s) for s in first.list_samples("train")]
    assert raws[3].image_bytes == later.image_bytes
    np.testing.assert_array_equal(raws[3].label, later.label)
    assert len({raw.image_bytes for raw in raws}) == 4
    other_seed = SyntheticDataset(**settings, seed=8).read_sample(first.list_samples("train")[0])
    val = first.read_sample(first.list_samples("val")[0])
    assert other_seed.image_bytes != raws[0].image_bytes and val.image_bytes != raws[0].image_bytes
    for raw in raws:
        assert decode_image(raw.image_bytes).shape == (40, 72, 3)
        assert (raw.height, raw.width) == (40, 72) and raw.label.shape == (40, 72)
        assert raw.label.max() < 5 and len(np.unique(raw.label)) >= 2
    assert first.info.num_classes == 5 and len(first.info.palette) == 5


def mean_iou(prediction: np.ndarray, label: np.ndarray, num_classes: int) -> float:
    confusion = np.bincount(label.ravel() * num_classes + prediction.ravel(), minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    return float(np.mean(np.diag(confusion)[union > 0] / union[union > 0]))


@pytest.mark.slow  # 80 training steps
def test_synthetic_is_learnable_by_a_small_cnn():
    num_classes = 4
    dataset = SyntheticDataset(num_samples={"train": 64, "val": 16}, size=(64, 64), num_classes=num_classes, seed=0)

    def tensors(split):
        pairs = [dataset.generate(split, index) for index in range(dataset.num_samples[split])]
        images = torch.tensor(np.stack([image for image, _ in pairs])).permute(0, 3, 1, 2).float() / 255
        return images, torch.tensor(np.stack([label for _, label in pairs])).long()

    (train_images, train_labels), (val_images, val_labels) = tensors("train"), tensors("val")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=2, dilation=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=4, dilation=4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, num_classes, 1),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(80):
        batch = torch.randint(0, len(train_images), (8,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(train_images[batch]), train_labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        prediction = model(val_images).argmax(1).numpy()
    labels = val_labels.numpy()
    background_share = float((labels == 0).mean())
    accuracy = float((prediction == labels).mean())
    assert accuracy > background_share + 0.5 * (1 - background_share)  # beats "all background" by a wide margin
    assert mean_iou(prediction, labels, num_classes) > 0.6  # chance (uniform guessing) is far below 0.25
