"""nrd.metrics against plain numpy reference implementations (pixel loops, brute-force distances, per-class
erosion by shifting) and against hand-computed tiny cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nrd.errors import InvalidHyperparameterError
from nrd.metrics import MetricInputError, SegmentationMetrics, to_json

IGNORE = 255
K = 6  # class 5 never appears (excluded from means); class 3 is predicted but never in the labels


# --- independent reference implementation --------------------------------------------------------------------------


def reference_confusion(preds: list[np.ndarray], labels: list[np.ndarray], k: int, masks=None) -> np.ndarray:
    """confusion[label, pred] built pixel by pixel; ``masks`` (optional) selects the pixels that count."""
    confusion = np.zeros((k, k), dtype=np.int64)
    for index, (pred, label) in enumerate(zip(preds, labels, strict=True)):
        for y in range(label.shape[0]):
            for x in range(label.shape[1]):
                if label[y, x] != IGNORE and (masks is None or masks[index][y, x]):
                    confusion[label[y, x], pred[y, x]] += 1
    return confusion


def reference_scores(confusion: np.ndarray) -> dict:
    """IoU, Acc, Dice per class (NaN when excluded) and their means, in percent, by the textbook formulas."""
    iou, acc, dice = [], [], []
    for c in range(len(confusion)):
        tp = confusion[c, c]
        fn = confusion[c, :].sum() - tp
        fp = confusion[:, c].sum() - tp
        present = tp + fp + fn > 0
        iou.append(100.0 * tp / (tp + fp + fn) if present else math.nan)
        acc.append(100.0 * tp / (tp + fn) if tp + fn > 0 else math.nan)
        dice.append(100.0 * 2 * tp / (2 * tp + fp + fn) if present else math.nan)
    return {
        "aAcc": 100.0 * np.trace(confusion) / confusion.sum(),
        "mIoU": np.nanmean(iou),
        "mAcc": np.nanmean(acc),
        "mDice": np.nanmean(dice),
        "per_class_iou": iou,
        "per_class_acc": acc,
    }


def reference_trimap_masks(label: np.ndarray, width: int) -> np.ndarray:
    """Pixels at Chebyshev distance < width from a pixel whose value differs from a 4-neighbour (brute force)."""
    h, w = label.shape
    boundary = []
    for y in range(h):
        for x in range(w):
            neighbours = [(y + dy, x + dx) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
            if any(0 <= ny < h and 0 <= nx < w and label[ny, nx] != label[y, x] for ny, nx in neighbours):
                boundary.append((y, x))
    if not boundary:
        return np.zeros((h, w), dtype=bool)
    by, bx = np.array(boundary).T
    ys, xs = np.mgrid[:h, :w]
    distance = np.maximum(np.abs(ys[..., None] - by), np.abs(xs[..., None] - bx)).min(-1)
    return distance < width


def reference_inner_band(mask: np.ndarray, d: int) -> np.ndarray:
    """mask minus its erosion by a (2d+1)-square, with zeros outside the image."""
    h, w = mask.shape
    padded = np.pad(mask, d, constant_values=False)
    eroded = np.ones_like(mask)
    for dy in range(-d, d + 1):
        for dx in range(-d, d + 1):
            eroded &= padded[d + dy : d + dy + h, d + dx : d + dx + w]
    return mask & ~eroded


def reference_boundary_counts(preds, labels, k: int) -> tuple[np.ndarray, np.ndarray]:
    intersection, union = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
    for pred, label in zip(preds, labels, strict=True):
        d = max(1, round(0.02 * math.sqrt(label.shape[0] ** 2 + label.shape[1] ** 2)))
        counted = label != IGNORE
        for c in range(k):
            gt_band = reference_inner_band(label == c, d) & counted
            pred_band = reference_inner_band(pred == c, d) & counted
            intersection[c] += (gt_band & pred_band).sum()
            union[c] += (gt_band | pred_band).sum()
    return intersection, union


def reference_results(preds, labels, k: int, widths) -> dict:
    """The whole ``compute()`` dict by the reference implementation (also used by test_evaluate_cli)."""
    result = reference_scores(reference_confusion(preds, labels, k))
    result["trimap_mIoU"] = {}
    for width in widths:
        masks = [reference_trimap_masks(label, width) for label in labels]
        result["trimap_mIoU"][width] = reference_scores(reference_confusion(preds, labels, k, masks))["mIoU"]
    intersection, union = reference_boundary_counts(preds, labels, k)
    result["mBIoU"] = 100.0 * np.mean([i / u for i, u in zip(intersection, union, strict=True) if u > 0])
    return result


def random_pair(rng: np.random.Generator, shape: tuple[int, int], cell: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Blocky label map of classes {0, 1, 2, 4} with ignore pixels, and a prediction of classes 0..4 that mostly
    agrees with it, as uint8 (pred, label)."""
    grid = (-(-shape[0] // cell), -(-shape[1] // cell))
    blocks = rng.choice([0, 1, 2, 4, IGNORE], p=[0.3, 0.25, 0.2, 0.15, 0.1], size=grid)
    label = np.kron(blocks, np.ones((cell, cell), dtype=np.int64))[: shape[0], : shape[1]]
    pred = np.where(label == IGNORE, rng.integers(0, 5, size=shape), label)
    flip = rng.random(shape) < 0.15
    pred = np.where(flip, rng.integers(0, 5, size=shape), pred)
    pred = np.roll(pred, 1, axis=1)  # shift so that errors concentrate along boundaries
    return pred.astype(np.uint8), label.astype(np.uint8)


@pytest.fixture(scope="module")
def data() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    # (48, 64): diagonal 80, Boundary IoU d = 2; (37, 29): diagonal 47, d = 1
    pairs = [random_pair(rng, (48, 64)), random_pair(rng, (48, 64)), random_pair(rng, (37, 29), cell=3)]
    return [p for p, _ in pairs], [lab for _, lab in pairs]


def accumulate(preds, labels, **kwargs) -> SegmentationMetrics:
    """Feed the two 48x64 images as one (2, H, W) batch and the third as (H, W)."""
    metrics = SegmentationMetrics(K, **kwargs)
    metrics.update(torch.from_numpy(np.stack(preds[:2])), torch.from_numpy(np.stack(labels[:2])))
    metrics.update(torch.from_numpy(preds[2]).long(), torch.from_numpy(labels[2]).int())
    return metrics


def assert_same_values(actual, expected) -> None:
    np.testing.assert_allclose(np.array(actual, dtype=float), np.array(expected, dtype=float), rtol=1e-12, atol=0)


# --- against the reference ----------------------------------------------------------------------------------------


def test_confusion_metrics_match_reference(data):
    preds, labels = data
    metrics = accumulate(preds, labels, trimap_widths=(), boundary_iou=False)
    confusion = reference_confusion(preds, labels, K)
    np.testing.assert_array_equal(metrics.confusion.numpy(), confusion)
    expected = reference_scores(confusion)
    result = metrics.compute()
    for key in ("aAcc", "mIoU", "mAcc", "mDice", "per_class_iou", "per_class_acc"):
        assert_same_values(result[key], expected[key])  # NaN positions must match too
    assert math.isnan(result["per_class_iou"][5]) and math.isnan(result["per_class_acc"][5])
    assert result["per_class_iou"][3] == 0 and math.isnan(result["per_class_acc"][3])
    assert result["trimap_mIoU"] == {} and result["mBIoU"] is None


def test_trimap_and_boundary_iou_match_reference(data):
    preds, labels = data
    widths = (1, 2, 3, 5, 8)
    metrics = accumulate(preds, labels, trimap_widths=(8, 1, 3, 2, 5))  # any order
    for index, width in enumerate(widths):
        masks = [reference_trimap_masks(label, width) for label in labels]
        expected = reference_confusion(preds, labels, K, masks)
        np.testing.assert_array_equal(metrics.trimap_confusion[index].numpy(), expected)
    intersection, union = reference_boundary_counts(preds, labels, K)
    np.testing.assert_array_equal(metrics.boundary_intersection.numpy(), intersection)
    np.testing.assert_array_equal(metrics.boundary_union.numpy(), union)
    result, expected = metrics.compute(), reference_results(preds, labels, K, widths)
    assert list(result["trimap_mIoU"]) == list(widths)
    assert_same_values(list(result["trimap_mIoU"].values()), list(expected["trimap_mIoU"].values()))
    assert_same_values(result["mBIoU"], expected["mBIoU"])


def test_merge_equals_one_accumulator(data):
    preds, labels = data
    whole = accumulate(preds, labels)
    first, second = SegmentationMetrics(K), SegmentationMetrics(K)
    first.update(torch.from_numpy(preds[0]), torch.from_numpy(labels[0]))
    second.update(torch.from_numpy(preds[1]), torch.from_numpy(labels[1]))
    second.update(torch.from_numpy(preds[2]), torch.from_numpy(labels[2]))
    from_state = SegmentationMetrics(K).merge(first.state()).merge({k: v.clone() for k, v in second.state().items()})
    for merged in (first + second, from_state):
        for key, tensor in whole.state().items():
            assert torch.equal(merged.state()[key], tensor), key
        assert json.dumps(to_json(merged.compute())) == json.dumps(to_json(whole.compute()))
    with pytest.raises(InvalidHyperparameterError, match="merge"):
        first.merge(SegmentationMetrics(K + 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_counts_equal_cpu_counts(data):
    preds, labels = data
    on_cpu = accumulate(preds, labels)
    on_gpu = SegmentationMetrics(K, device="cuda")
    for pred, label in zip(preds, labels, strict=True):
        on_gpu.update(torch.from_numpy(pred).cuda(), torch.from_numpy(label).cuda())
    for key, tensor in on_gpu.state().items():
        assert tensor.is_cuda and torch.equal(tensor.cpu(), on_cpu.state()[key]), key


# --- hand-computed cases ------------------------------------------------------------------------------------------


def test_trimap_two_regions_by_hand():
    # columns 0-2 are class 0, 3-5 class 1: the boundary is columns 2 and 3.
    label = torch.zeros(6, 6, dtype=torch.long)
    label[:, 3:] = 1
    pred = label.clone()
    pred[:, 0] = 1  # 6 errors far from the boundary (in the w >= 3 bands only)
    pred[0, 3] = 0  # 1 error on the boundary
    metrics = SegmentationMetrics(2, trimap_widths=(1, 2, 3, 4))
    metrics.update(pred, label)
    expected = [[[6, 0], [1, 5]], [[12, 0], [1, 11]], [[12, 6], [1, 17]], [[12, 6], [1, 17]]]
    assert metrics.trimap_confusion.tolist() == expected
    result = metrics.compute()
    assert result["trimap_mIoU"][1] == pytest.approx(100 * (6 / 7 + 5 / 6) / 2, rel=1e-12)
    assert result["trimap_mIoU"][2] == pytest.approx(100 * (12 / 13 + 11 / 12) / 2, rel=1e-12)
    assert result["trimap_mIoU"][3] == result["trimap_mIoU"][4] == result["mIoU"]
    assert result["mIoU"] == pytest.approx(100 * (12 / 19 + 17 / 24) / 2, rel=1e-12)


def test_trimap_ignore_pixel_marks_a_boundary_by_hand():
    # uniform class 0 with one ignore pixel at (2, 2): boundary = that pixel and its 4 neighbours.
    label = torch.zeros(6, 6, dtype=torch.long)
    label[2, 2] = IGNORE
    pred = torch.zeros(6, 6, dtype=torch.long)
    pred[0, 0] = 1  # at Chebyshev distance 2 from the boundary pixel (1, 2): only in bands w >= 3
    metrics = SegmentationMetrics(2, trimap_widths=(1, 2, 3))
    metrics.update(pred, label)
    # w=1: 5 boundary pixels - the ignore one; w=2: plus-shape dilated by 1 = 21 pixels - 1;
    # w=3: dilated by 2 = every pixel but (5, 5), 35 - 1.
    assert metrics.trimap_confusion.tolist() == [[[4, 0], [0, 0]], [[20, 0], [0, 0]], [[33, 1], [0, 0]]]
    result = metrics.compute()
    assert result["trimap_mIoU"][1] == result["trimap_mIoU"][2] == 100  # class 1 absent from both: excluded
    assert result["trimap_mIoU"][3] == pytest.approx(100 * (33 / 34 + 0) / 2, rel=1e-12)
    assert result["mIoU"] == pytest.approx(100 * (34 / 35) / 2, rel=1e-12)
    assert result["per_class_acc"][0] == pytest.approx(100 * 34 / 35, rel=1e-12)
    assert math.isnan(result["per_class_acc"][1]) and result["mAcc"] == result["per_class_acc"][0]


def test_boundary_iou_shifted_square_by_hand():
    # 30x30 image: diagonal 42.4, d = round(0.85) = 1. A 20x20 square (rows/cols 5..24) predicted 2 px to the right.
    label = torch.zeros(30, 30, dtype=torch.long)
    label[5:25, 5:25] = 1
    pred = torch.zeros(30, 30, dtype=torch.long)
    pred[5:25, 7:27] = 1
    metrics = SegmentationMetrics(2)
    metrics.update(pred, label)
    # square: rings of 76 px; they share the top and bottom rows over columns 7..24 (2 x 18).
    # background: the image border ring (116 px) plus the 84-px ring around the square; shared: the border ring and
    # rows 4 and 25 over columns 6..25 (2 x 20).
    assert metrics.boundary_intersection.tolist() == [116 + 40, 36]
    assert metrics.boundary_union.tolist() == [200 + 200 - 156, 76 + 76 - 36]
    result = metrics.compute()
    # region IoU: square 360 / 440, background 460 / 540
    assert result["mIoU"] == pytest.approx(100 * (360 / 440 + 460 / 540) / 2, rel=1e-12)
    assert result["mBIoU"] == pytest.approx(100 * (36 / 116 + 156 / 244) / 2, rel=1e-12)
    assert result["mIoU"] > 80 and result["mBIoU"] < 50


def test_ignore_pixels_are_removed_from_boundary_bands():
    # an ignore stripe over column 5 cuts the predicted square's band there; the label band never includes it.
    label = torch.zeros(30, 30, dtype=torch.long)
    label[5:25, 5:25] = 1
    pred = label.clone()
    label[:, 5] = IGNORE
    metrics = SegmentationMetrics(2)
    metrics.update(pred, label)
    # class 1: GT square is now rows 5..24 x cols 6..24, its ring (d=1) has 2*19 + 2*18 = 74 px; the predicted ring
    # minus column 5 has 76 - 20 = 56 px, all inside the GT ring.
    assert metrics.boundary_intersection[1].item() == 56
    assert metrics.boundary_union[1].item() == 74


# --- errors ----------------------------------------------------------------------------------------------------


def test_ignore_index_inside_class_range_is_rejected():
    with pytest.raises(InvalidHyperparameterError, match="ignore_index=3"):
        SegmentationMetrics(5, ignore_index=3)
    with pytest.raises(InvalidHyperparameterError, match="trimap_widths"):
        SegmentationMetrics(5, trimap_widths=(0, 2))


@pytest.mark.parametrize("bad", [5, -1])
def test_prediction_out_of_range_is_rejected(bad):
    pred = torch.zeros(4, 4, dtype=torch.long)
    pred[1, 2] = bad
    with pytest.raises(MetricInputError, match=rf"prediction: values \[{bad}\] outside the class range \[0, 5\)"):
        SegmentationMetrics(5).update(pred, torch.zeros(4, 4, dtype=torch.long))


def test_label_out_of_range_is_rejected():
    label = torch.full((4, 4), IGNORE, dtype=torch.uint8)
    label[0, 0], label[3, 3] = 7, 0
    with pytest.raises(MetricInputError, match=r"label: values \[7\] are neither a class in \[0, 5\)"):
        SegmentationMetrics(5).update(torch.zeros(4, 4, dtype=torch.long), label)


def test_bad_shapes_and_dtypes_are_rejected():
    metrics = SegmentationMetrics(5)
    with pytest.raises(MetricInputError, match="differs from label"):
        metrics.update(torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 5, dtype=torch.long))
    with pytest.raises(MetricInputError, match="integer class indices"):
        metrics.update(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.long))


def test_to_json_replaces_nan():
    result = SegmentationMetrics(3).compute()  # nothing counted: everything undefined
    safe = to_json(result)
    json.dumps(safe, allow_nan=False)
    assert safe["mIoU"] is None and safe["per_class_iou"] == [None, None, None]
