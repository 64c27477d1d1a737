"""Dataset-level segmentation metrics: confusion-matrix metrics, trimap mIoU and Boundary IoU.

Everything is accumulated as integer counts (one confusion matrix for the whole data set, never a mean of per-image
scores), on the device of the inputs, so workers can be merged by summing their counts (``merge`` or
``torch.distributed.all_reduce`` on the tensors of ``state()``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nrd.constants import IGNORE_INDEX, TRIMAP_WIDTHS
from nrd.errors import InvalidHyperparameterError, NRDBenchError

BOUNDARY_DILATION_RATIO = 0.02


class MetricInputError(NRDBenchError, ValueError):
    """A prediction or label map that the metrics cannot count: wrong shape or dtype, or values outside the valid
    set. ``which`` is ``"prediction"`` or ``"label"``; ``problem`` says what was found and what was expected."""

    def __init__(self, which: str, problem: str):
        self.which = which
        self.problem = problem
        super().__init__(f"{which}: {problem}")


def _window_reduce(x: torch.Tensor, size: int, dim: int, reduce=torch.maximum) -> torch.Tensor:
    """``reduce`` (torch.maximum or torch.minimum) over every run of ``size`` consecutive elements along ``dim``,
    without padding (the result is size - 1 shorter), in log2(size) steps of doubling spans: fast for wide windows
    on CPU and GPU alike, and exact for any dtype."""
    span = 1
    while 2 * span <= size:
        length = x.size(dim) - span
        x = reduce(x.narrow(dim, 0, length), x.narrow(dim, span, length))
        span *= 2
    if span < size:
        length = x.size(dim) - (size - span)
        x = reduce(x.narrow(dim, 0, length), x.narrow(dim, size - span, length))
    return x


def _square_reduce(x: torch.Tensor, size: int, reduce=torch.maximum) -> torch.Tensor:
    """``_window_reduce`` over size x size squares of the last two dims (separable)."""
    return _window_reduce(_window_reduce(x, size, -1, reduce), size, -2, reduce)


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels within Chebyshev distance ``radius`` of a True pixel of ``mask`` (B, H, W)."""
    if radius == 0:
        return mask
    return _square_reduce(F.pad(mask, (radius,) * 4), 2 * radius + 1)


def label_boundary(label: torch.Tensor) -> torch.Tensor:
    """Ground-truth boundary of (B, H, W) label maps: pixels whose value differs from one of their 4 neighbours
    inside the image (the image border itself is not a boundary). Ignore pixels are a value like any other, so the
    ignore bands that outline objects in Cityscapes/VOC mark boundaries on both sides."""
    boundary = torch.zeros_like(label, dtype=torch.bool)
    vertical = label[:, 1:, :] != label[:, :-1, :]
    horizontal = label[:, :, 1:] != label[:, :, :-1]
    boundary[:, 1:, :] |= vertical
    boundary[:, :-1, :] |= vertical
    boundary[:, :, 1:] |= horizontal
    boundary[:, :, :-1] |= horizontal
    return boundary


def trimap_bands(label: torch.Tensor, widths: Sequence[int]) -> torch.Tensor:
    """Trimap bands of (B, H, W) label maps, (len(widths), B, H, W) bool: the band of width w holds the pixels
    whose Chebyshev distance to a ``label_boundary`` pixel is < w (the boundary dilated by a (2w-1)x(2w-1) square);
    w = 1 is the boundary itself. ``widths`` must be increasing; each band is grown from the previous one."""
    bands, band, radius = [], label_boundary(label), 0
    for width in widths:
        band = _dilate(band, width - 1 - radius)
        radius = width - 1
        bands.append(band)
    return torch.stack(bands)


def boundary_dilation(height: int, width: int) -> int:
    """Boundary IoU band width d of an image: 2% of its diagonal, rounded, at least 1 pixel."""
    return max(1, round(BOUNDARY_DILATION_RATIO * math.hypot(height, width)))


def inner_boundary(label: torch.Tensor, d: int) -> torch.Tensor:
    """Inner boundary bands of every class at once, (B, H, W) bool. For a class c with mask M = (label == c), its
    band is M minus the erosion of M by a (2d+1)x(2d+1) square (Chebyshev distance d, the same as d erosions by a
    3x3 square), pixels outside the image counting as not in M, so that the image border is a contour as in the
    Boundary IoU authors' code. As each pixel has one value, the union over c of these bands is the set of pixels
    whose (2d+1)-square window holds another value or leaves the image; the band of c is its part where label == c.
    """
    x = F.pad(label.long(), (d,) * 4, value=-1)  # -1: outside the image, unlike any class
    size = 2 * d + 1
    return _square_reduce(x, size) != _square_reduce(x, size, torch.minimum)


def _percent_mean(values: torch.Tensor) -> float:
    return 100.0 * torch.nanmean(values).item()


def _iou(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class IoU of a (K, K) confusion matrix, float64, NaN where the class has neither GT nor prediction."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(union > 0, tp / union, torch.nan)


def _check_maps(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    for which, x in (("prediction", pred), ("label", label)):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool or x.dim() not in (2, 3):
            expected = "(H, W) or (B, H, W) integer class indices"
            raise MetricInputError(which, f"got a {x.dim()}-d {x.dtype} tensor; expected {expected}")
    if pred.shape != label.shape:
        raise MetricInputError("prediction", f"shape {tuple(pred.shape)} differs from label {tuple(label.shape)}")
    k = num_classes
    bad = (pred < 0) | (pred >= k)
    if bad.any():
        values = pred[bad].unique()[:10].tolist()
        raise MetricInputError("prediction", f"values {values} outside the class range [0, {k})")
    bad = ((label < 0) | (label >= k)) & (label != ignore_index)
    if bad.any():
        values = label[bad].unique()[:10].tolist()
        raise MetricInputError(
            "label", f"values {values} are neither a class in [0, {k}) nor ignore_index {ignore_index}"
        )


class SegmentationMetrics:
    """Accumulator of segmentation metrics over a whole data set; all results are in percent.

    ``update(pred, label)`` takes (H, W) or (B, H, W) integer tensors on any device: ``pred`` holds class indices in
    [0, K) (argmax of the logits), ``label`` holds [0, K) or ``ignore_index``. Pixels with label == ignore_index
    are never counted. The counts (``state()``) live on the inputs' device and are merged by summing.

    ``compute()`` returns a dict:

    - ``aAcc``: correctly classified pixels / counted pixels.
    - ``mIoU``, ``mAcc``, ``mDice``: means over classes of IoU = TP / (TP + FP + FN), Acc = TP / (TP + FN) and
      Dice = 2TP / (2TP + FP + FN), from one confusion matrix over the data set. A class with neither a GT pixel
      nor a predicted pixel among the counted pixels is excluded from every mean (its per-class values are NaN).
      A class predicted but absent from the labels has IoU = Dice = 0 and counts in mIoU and mDice, while its Acc
      is undefined (NaN) and left out of mAcc.
    - ``per_class_iou``, ``per_class_acc``: lists of K values, NaN where undefined as above.
    - ``trimap_mIoU``: {w: mIoU over the pixels of the trimap band of width w} for each width (see
      ``trimap_bands``: within Chebyshev distance < w of a GT boundary pixel), one confusion matrix per width.
    - ``mBIoU``: Boundary IoU (Cheng et al., 2021). For each class c and image, G and P are the ``inner_boundary``
      bands of the masks label == c and pred == c with d = ``boundary_dilation`` of that image; ignore pixels are
      removed from both. |G ∩ P| and |G ∪ P| are summed over the data set, and mBIoU is the mean of their ratio
      over the classes with a non-zero union. None when ``boundary_iou`` is False.

    Merging: ``a.merge(b)`` adds b's counts (or a ``state()`` dict) into a; ``a + b`` returns a new accumulator.
    ``state()`` returns the count tensors themselves, so ``for t in m.state().values(): dist.all_reduce(t)``
    merges the workers in place.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        trimap_widths: Sequence[int] = TRIMAP_WIDTHS,
        boundary_iou: bool = True,
        device: torch.device | str = "cpu",
    ):
        owner = type(self).__name__
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise InvalidHyperparameterError(owner, "num_classes", num_classes, "a positive integer")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or 0 <= ignore_index < num_classes:
            raise InvalidHyperparameterError(
                owner, "ignore_index", ignore_index, f"an integer outside the class range [0, {num_classes})"
            )
        widths = tuple(trimap_widths)
        bad_width = any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)
        if bad_width or len(set(widths)) < len(widths):
            raise InvalidHyperparameterError(owner, "trimap_widths", trimap_widths, "distinct positive integers")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.trimap_widths = tuple(sorted(widths))
        self.boundary_iou = boundary_iou
        k = num_classes
        self.confusion = torch.zeros(k, k, dtype=torch.int64, device=device)
        self.trimap_confusion = torch.zeros(len(widths), k, k, dtype=torch.int64, device=device)
        self.boundary_intersection = torch.zeros(k, dtype=torch.int64, device=device)
        self.boundary_union = torch.zeros(k, dtype=torch.int64, device=device)

    def state(self) -> dict[str, torch.Tensor]:
        """The raw counts (the tensors themselves, not copies): confusion[label, pred], trimap_confusion[width
        index, label, pred], boundary_intersection[class], boundary_union[class]."""
        return {
            "confusion": self.confusion,
            "trimap_confusion": self.trimap_confusion,
            "boundary_intersection": self.boundary_intersection,
            "boundary_union": self.boundary_union,
        }

    def _check(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        _check_maps(pred, label, self.num_classes, self.ignore_index)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Count one batch: ``pred`` and ``label`` of the same shape (H, W) or (B, H, W), integer dtypes. A batch
        must hold whole, unpadded images of one size: Boundary IoU's d and image border come from the batch's H × W."""
        self._check(pred, label)
        if pred.dim() == 2:
            pred, label = pred.unsqueeze(0), label.unsqueeze(0)
        if self.confusion.device != pred.device:
            for name, tensor in self.state().items():
                setattr(self, name, tensor.to(pred.device))
        pred, label = pred.long(), label.to(device=pred.device, dtype=torch.long)
        k = self.num_classes
        valid = label != self.ignore_index
        cell = torch.where(valid, label * k + pred, k * k)  # k * k = not counted
        self.confusion += torch.bincount(cell.flatten(), minlength=k * k + 1)[: k * k].view(k, k)
        if self.trimap_widths:
            # Bands are nested: count each pixel once at the first band holding it, then cumulate over widths.
            n = len(self.trimap_widths)
            first_band = (~trimap_bands(label, self.trimap_widths)).sum(0)  # n = in no band
            counts = torch.bincount((first_band * (k * k + 1) + cell).flatten(), minlength=(n + 1) * (k * k + 1))
            self.trimap_confusion += counts.view(n + 1, k * k + 1)[:n, : k * k].cumsum(0).view(n, k, k)
        if self.boundary_iou:
            d = boundary_dilation(*label.shape[-2:])
            gt_band = inner_boundary(label, d) & valid
            pred_band = inner_boundary(pred, d) & valid
            both = gt_band & pred_band & (label == pred)
            intersection = torch.bincount(label[both], minlength=k)
            self.boundary_intersection += intersection
            self.boundary_union += (
                torch.bincount(label[gt_band], minlength=k) + torch.bincount(pred[pred_band], minlength=k)
            ) - intersection

    def _check_compatible(self, other: SegmentationMetrics) -> None:
        mine = (self.num_classes, self.ignore_index, self.trimap_widths, self.boundary_iou)
        theirs = (other.num_classes, other.ignore_index, other.trimap_widths, other.boundary_iou)
        if mine != theirs:
            raise InvalidHyperparameterError(
                type(self).__name__,
                "merge",
                theirs,
                f"an accumulator with the same (num_classes, ignore_index, trimap_widths, boundary_iou) {mine}",
            )

    def merge(self, other: SegmentationMetrics | Mapping[str, torch.Tensor]) -> SegmentationMetrics:
        """Add the counts of ``other`` (an accumulator with the same settings, or a ``state()`` dict) into this
        one, in place; returns self."""
        if isinstance(other, SegmentationMetrics):
            self._check_compatible(other)
            other = other.state()
        mine = self.state()
        if set(other) != set(mine) or any(other[key].shape != mine[key].shape for key in mine):
            shapes = {key: tuple(value.shape) for key, value in mine.items()}
            got = {key: tuple(getattr(value, "shape", ())) for key, value in other.items()}
            raise InvalidHyperparameterError(type(self).__name__, "merge", got, f"count tensors of shapes {shapes}")
        for key, tensor in mine.items():
            tensor += other[key].to(tensor.device)
        return self

    def __add__(self, other: SegmentationMetrics) -> SegmentationMetrics:
        total = SegmentationMetrics(
            self.num_classes, self.ignore_index, self.trimap_widths, self.boundary_iou, self.confusion.device
        )
        return total.merge(self).merge(other)

    def compute(self) -> dict:
        """The metrics in percent (see the class docstring); NaN where undefined. ``to_json`` makes it JSON-safe."""
        # aAcc, mIoU, mAcc, mDice through scores_from_counts: the same formulas as metrics recomputed from
        # per-image counts, so that summed per-image counts give these numbers bit for bit.
        scores = scores_from_counts(counts_from_confusion(self.confusion))
        result = {
            **{name: float(scores[name]) for name in ("aAcc", "mIoU", "mAcc", "mDice")},
            "per_class_iou": scores["per_class_iou"].tolist(),
            "per_class_acc": scores["per_class_acc"].tolist(),
            "trimap_mIoU": {
                width: _percent_mean(_iou(matrix))
                for width, matrix in zip(self.trimap_widths, self.trimap_confusion.cpu(), strict=True)
            },
            "mBIoU": None,
        }
        if self.boundary_iou:
            union = self.boundary_union.cpu().double()
            biou = torch.where(union > 0, self.boundary_intersection.cpu().double() / union, torch.nan)
            result["mBIoU"] = _percent_mean(biou)
        return result


def to_json(value: object) -> object:
    """``value`` with every NaN float replaced by None (recursively through dicts, lists and tuples), so that
    ``json.dumps`` writes valid JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return value


# ------------------------------------------------------------------------------------------- per-image evidence
COUNT_FIELDS = ("tp", "fp", "fn")  # the last axis of per-image counts


@torch.no_grad()
def per_image_counts(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per-image, per-class counts of (H, W) or (B, H, W) integer maps, int64 (B, K, 3) on the inputs' device: the
    last axis is ``COUNT_FIELDS`` = (TP, FP, FN) of each class c among the image's counted pixels (label !=
    ignore_index): TP = label c predicted c, FP = predicted c labelled otherwise, FN = labelled c predicted
    otherwise. These are the rows and columns of the image's own confusion matrix, so summed over the images they
    equal ``counts_from_confusion`` of ``SegmentationMetrics.confusion``, and ``scores_from_counts`` of the sum
    gives ``compute()``'s aAcc, mIoU, mAcc and mDice exactly (counted pixels = sum of TP + FN over classes)."""
    _check_maps(pred, label, num_classes, ignore_index)
    if pred.dim() == 2:
        pred, label = pred.unsqueeze(0), label.unsqueeze(0)
    pred, label = pred.long(), label.to(device=pred.device, dtype=torch.long)
    k, images = num_classes, pred.size(0)
    cell = torch.where(label != ignore_index, label * k + pred, k * k)  # k * k = not counted
    cell = cell + torch.arange(images, device=pred.device).view(-1, 1, 1) * (k * k + 1)
    confusion = torch.bincount(cell.flatten(), minlength=images * (k * k + 1))
    confusion = confusion.view(images, k * k + 1)[:, : k * k].view(images, k, k)  # [image, label, pred]
    tp = confusion.diagonal(dim1=1, dim2=2)
    return torch.stack([tp, confusion.sum(1) - tp, confusion.sum(2) - tp], dim=-1)


def counts_from_confusion(confusion: torch.Tensor | np.ndarray) -> np.ndarray:
    """(K, 3) int64 (TP, FP, FN) per class of a (K, K) confusion[label, pred] matrix."""
    confusion = np.asarray(confusion.cpu() if isinstance(confusion, torch.Tensor) else confusion, dtype=np.int64)
    tp = np.diagonal(confusion)
    return np.stack([tp, confusion.sum(0) - tp, confusion.sum(1) - tp], axis=-1)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (no warning)."""
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def _class_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the last (class) axis leaving NaN out; NaN where every class is NaN (no warning)."""
    defined = ~np.isnan(values)
    return _ratio(np.where(defined, values, 0.0).sum(-1), defined.sum(-1))


def scores_from_counts(counts: np.ndarray) -> dict[str, np.ndarray]:
    """The confusion-matrix metrics of summed counts (..., K, 3) = (TP, FP, FN) per class, in percent, vectorised
    over the leading axes (e.g. bootstrap replicates x seeds): ``aAcc``, ``mIoU``, ``mAcc``, ``mDice`` of shape
    (...) and ``per_class_iou``, ``per_class_acc``, ``per_class_dice`` of shape (..., K), with the rules of
    ``SegmentationMetrics`` (which computes its own through this function): IoU and Dice are NaN for a class
    with TP + FP + FN = 0, Acc for a class with TP + FN = 0, and the means leave NaN classes out. ``counts`` must
    be the dataset-level sum: a metric is never a mean of per-image scores."""
    counts = np.asarray(counts, dtype=np.float64)  # exact for counts below 2**53
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    iou = _ratio(tp, tp + fp + fn)
    acc = _ratio(tp, tp + fn)
    dice = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "aAcc": 100.0 * _ratio(tp.sum(-1), (tp + fn).sum(-1)),
        "mIoU": 100.0 * _class_mean(iou),
        "mAcc": 100.0 * _class_mean(acc),
        "mDice": 100.0 * _class_mean(dice),
        "per_class_iou": 100.0 * iou,
        "per_class_acc": 100.0 * acc,
        "per_class_dice": 100.0 * dice,
    }
