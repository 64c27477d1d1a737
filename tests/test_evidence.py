"""Per-image counts (nrd.metrics.per_image_counts, scores_from_counts) against the dataset-level confusion matrix and
a pixel-loop reference, and their .npz file (nrd.evidence) read back with its checks."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from test_metrics import K, accumulate, random_pair, reference_confusion, reference_scores

from nrd.evidence import (
    IMAGE_COUNTS_FILE,
    ImageCounts,
    ImageCountsError,
    concatenate,
    read_image_counts,
    write_image_counts,
)
from nrd.metrics import MetricInputError, counts_from_confusion, per_image_counts, scores_from_counts

CLASSES = tuple(f"class{c}" for c in range(K))


@pytest.fixture(scope="module")
def images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(1)
    pairs = [random_pair(rng, (48, 64)), random_pair(rng, (48, 64)), random_pair(rng, (37, 29), cell=3)]
    return [p for p, _ in pairs], [lab for _, lab in pairs]


def all_counts(preds, labels) -> np.ndarray:
    """(N, K, 3): the two 48x64 images as one batch, the third alone."""
    batch = per_image_counts(torch.from_numpy(np.stack(preds[:2])), torch.from_numpy(np.stack(labels[:2])), K, 255)
    single = per_image_counts(torch.from_numpy(preds[2]).long(), torch.from_numpy(labels[2]).int(), K, 255)
    assert batch.dtype == torch.int64 and batch.shape == (2, K, 3) and single.shape == (1, K, 3)
    return torch.cat([batch, single]).numpy()


def test_per_image_counts_match_pixel_loop(images):
    preds, labels = images
    counts = all_counts(preds, labels)
    for index, (pred, label) in enumerate(zip(preds, labels, strict=True)):
        confusion = reference_confusion([pred], [label], K)
        for c in range(K):
            tp = confusion[c, c]
            expected = [tp, confusion[:, c].sum() - tp, confusion[c, :].sum() - tp]
            assert counts[index, c].tolist() == expected, (index, c)


def test_summed_counts_reproduce_the_dataset_metrics_exactly(images):
    preds, labels = images
    counts = all_counts(preds, labels)
    metrics = accumulate(preds, labels, trimap_widths=(), boundary_iou=False)
    np.testing.assert_array_equal(counts.sum(0), counts_from_confusion(metrics.confusion))
    result, scores = metrics.compute(), scores_from_counts(counts.sum(0))
    for key in ("aAcc", "mIoU", "mAcc", "mDice"):
        assert float(scores[key]) == result[key], key  # bit for bit
    np.testing.assert_array_equal(scores["per_class_iou"], np.array(result["per_class_iou"]))
    np.testing.assert_array_equal(scores["per_class_acc"], np.array(result["per_class_acc"]))
    # and the textbook formulas on the pixel-loop confusion matrix agree
    expected = reference_scores(reference_confusion(preds, labels, K))
    for key in ("aAcc", "mIoU", "mAcc", "mDice"):
        assert math.isclose(float(scores[key]), expected[key], rel_tol=1e-12), key


def test_scores_from_counts_by_hand_and_vectorised():
    # class 0: TP 8, FP 1, FN 1 -> IoU 0.8, Acc 8/9, Dice 16/18; class 1: TP 3, FP 1, FN 2 -> IoU 0.5, Acc 0.6;
    # class 2: only predicted (FP 2) -> IoU 0, Acc undefined; class 3: absent -> excluded
    counts = np.array([[8, 1, 1], [3, 1, 2], [0, 2, 0], [0, 0, 0]])
    scores = scores_from_counts(counts)
    assert math.isclose(float(scores["mIoU"]), 100 * (0.8 + 0.5 + 0) / 3)
    assert math.isclose(float(scores["mAcc"]), 100 * (8 / 9 + 0.6) / 2)
    assert math.isclose(float(scores["mDice"]), 100 * (16 / 18 + 6 / 9 + 0) / 3)
    assert math.isclose(float(scores["aAcc"]), 100 * 11 / 14)  # counted pixels = sum of TP + FN
    assert math.isnan(scores["per_class_iou"][3]) and math.isnan(scores["per_class_acc"][2])
    stacked = scores_from_counts(np.stack([counts, counts * 2, np.zeros_like(counts)]))
    assert stacked["mIoU"].shape == (3,) and stacked["mIoU"][0] == stacked["mIoU"][1] == scores["mIoU"]
    assert math.isnan(stacked["mIoU"][2]) and math.isnan(stacked["aAcc"][2])  # nothing counted: undefined


def test_per_image_counts_check_their_inputs():
    with pytest.raises(MetricInputError, match="outside the class range"):
        per_image_counts(torch.tensor([[0, 7]]), torch.tensor([[0, 1]]), 3, 255)
    with pytest.raises(MetricInputError, match="integer"):
        per_image_counts(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), 3, 255)


def make_evidence(images) -> ImageCounts:
    preds, labels = images
    return ImageCounts(("a", "b", "c"), CLASSES, all_counts(preds, labels), 255)


def test_file_round_trip(images, tmp_path):
    evidence = make_evidence(images)
    path = tmp_path / "run" / IMAGE_COUNTS_FILE
    write_image_counts(path, evidence)
    assert [p.name for p in path.parent.iterdir()] == [IMAGE_COUNTS_FILE]  # no temporary file left
    back = read_image_counts(path)
    assert back.image_ids == evidence.image_ids and back.class_names == CLASSES and back.ignore_index == 255
    np.testing.assert_array_equal(back.counts, evidence.counts)
    assert back.counts.dtype == np.int64 and not back.counts.flags.writeable
    assert float(back.scores()["mIoU"]) == float(evidence.scores()["mIoU"])


def test_in_order_and_concatenate(images):
    evidence = make_evidence(images)
    np.testing.assert_array_equal(evidence.in_order(["c", "a", "b"]), evidence.counts[[2, 0, 1]])
    with pytest.raises(ImageCountsError, match="missing"):
        evidence.in_order(["a", "b", "z"])
    first = ImageCounts(("a",), CLASSES, evidence.counts[:1], 255)
    rest = ImageCounts(("b", "c"), CLASSES, evidence.counts[1:], 255)
    joined = concatenate([first, rest])
    assert joined.image_ids == ("a", "b", "c")
    np.testing.assert_array_equal(joined.counts, evidence.counts)
    with pytest.raises(ImageCountsError, match="repeat"):
        concatenate([first, first])


def save(path, **arrays) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def good_arrays(images) -> dict:
    evidence = make_evidence(images)
    return {
        "format": np.int64(1),
        "image_ids": np.array(evidence.image_ids),
        "class_names": np.array(CLASSES),
        "ignore_index": np.int64(255),
        "counts": evidence.counts,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": np.int64(2)}, "format 2; expected 1"),
        ({"counts": None}, "lacks counts"),
        ({"counts": "negative"}, "negative"),
        ({"counts": "float"}, "float64 array"),
        ({"counts": "short"}, r"shape \(2, 6, 3\); expected integers of shape \(3, 6, 3\)"),
        ({"image_ids": np.array(["a", "a", "b"])}, "repeat"),
        ({"class_names": np.array([1, 2, 3, 4, 5, 6])}, "class_names is a 1-d int64 array"),
        ({"image_ids": np.array(["a", None, "c"], dtype=object)}, "not a readable .npz"),  # would need pickle
    ],
)
def test_bad_files_are_named_errors(images, tmp_path, change, message):
    arrays = good_arrays(images)
    for key, value in change.items():
        if value is None:
            del arrays[key]
        elif isinstance(value, str):
            counts = arrays["counts"].copy()
            counts[0, 0, 0] = -1 if value == "negative" else counts[0, 0, 0]
            arrays[key] = {"negative": counts, "float": counts.astype(float), "short": counts[:2]}[value]
        else:
            arrays[key] = value
    path = tmp_path / "bad.npz"
    save(path, **arrays)
    with pytest.raises(ImageCountsError, match=message) as error:
        read_image_counts(path)
    assert str(path) in str(error.value)


def test_unreadable_files_are_named_errors(images, tmp_path):
    with pytest.raises(ImageCountsError, match="no such file"):
        read_image_counts(tmp_path / "absent.npz")
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"counts": 1}))
    with pytest.raises(ImageCountsError, match="not a readable"):
        read_image_counts(pickled)
    truncated = tmp_path / "truncated.npz"
    write_image_counts(truncated, make_evidence(images))
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ImageCountsError, match="not a readable"):
        read_image_counts(truncated)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ImageCountsError, match=r"single \.npy"):
        read_image_counts(single)
