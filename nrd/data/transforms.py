"""Training and validation transforms: the NRD / mmsegmentation recipe written with numpy and torch.

Training (``TrainTransform``), in this order:

1. random rescale: a ratio r ~ U(ratio_range) scales the base scale (long side, short side); the image is resized
   with its aspect ratio kept so that it fits inside r × base scale (factor = min(long target / long side,
   short target / short side)). Image bilinear (half-pixel centres, no anti-aliasing, like OpenCV's INTER_LINEAR),
   label nearest (half-pixel centres, so it stays aligned with the image and gains no new values). Only the crop
   chosen in step 2 is ever computed, and the image stays float32 from here on (no rounding back to uint8);
2. random crop of ``crop_size`` (H, W): up to 10 crop positions are drawn until no class covers
   ``cat_max_ratio`` or more of the crop's labelled pixels (an all-ignore crop is rejected too); when none passes,
   the last one is used;
3. horizontal flip with probability ``flip_prob``;
4. photometric distortion (``photometric_distortion``);
5. normalisation ((x − mean) / std per RGB channel on the 0–255 scale) → float32 (3, H, W);
6. padding at the bottom/right up to ``crop_size`` when the rescaled image is smaller: image 0 (after
   normalisation, i.e. the mean colour), label ``ignore_index``.

Randomness comes only from the ``np.random.Generator`` passed in (see ``sample_rng``), drawn in a fixed order:
geometry (ratio, crop positions, flip) first, then the photometric parameters. So the same generator state gives the
same output, and turning the photometric distortion on or off leaves the label unchanged.

Validation (``ValTransform``): normalisation, an optional keep-ratio resize of the image to a test scale, then
zero padding at the bottom/right up to a multiple of ``size_divisor`` (32). The label is never touched. The padding
is the one the models from ``create_model`` apply themselves, so a whole-image prediction on the padded image equals
the model's prediction on the unpadded one once cropped; ``nrd.inference.restore_to_label`` crops the scores to
``ValTransform.valid_size`` and resizes them to the label's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nrd.data.base import IGNORE_INDEX, DataError, SizeMismatchError
from nrd.errors import InvalidHyperparameterError, UnknownNameError

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

CROP_ATTEMPTS = 10
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18  # on OpenCV's 0–180 hue scale (2 degrees per unit)
DISTORTION_PROB = 0.5

Box = tuple[int, int, int, int]  # top, left, height, width


def _check_pair(values: Sequence[object], owner: str, name: str, expected: str) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 2:
        raise InvalidHyperparameterError(owner, name, values, expected)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        raise InvalidHyperparameterError(owner, name, values, expected)
    return tuple(values)


def _check_channels(values: Sequence[float], owner: str, name: str, positive: bool) -> tuple[float, ...]:
    expected = "three " + ("positive " if positive else "") + "numbers (R, G, B) on the 0–255 scale"
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 3:
        raise InvalidHyperparameterError(owner, name, values, expected)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 or not positive) for v in values):
        raise InvalidHyperparameterError(owner, name, values, expected)
    return tuple(float(v) for v in values)


def _check_int_pair(values: Sequence[int], owner: str, name: str, expected: str) -> tuple[int, int]:
    pair = _check_pair(values, owner, name, expected)
    if not all(isinstance(v, int) for v in pair):
        raise InvalidHyperparameterError(owner, name, values, expected)
    return pair


@dataclass(frozen=True)
class TrainTransformConfig:
    """Settings of ``TrainTransform``. Sizes: ``base_scale`` is (long side, short side), ``crop_size`` is
    (height, width). Lists (e.g. from YAML) are accepted and stored as tuples."""

    base_scale: tuple[int, int]
    crop_size: tuple[int, int]
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        owner = type(self).__name__
        base_scale = _check_int_pair(self.base_scale, owner, "base_scale", "two positive integers (long, short)")
        crop_size = _check_int_pair(self.crop_size, owner, "crop_size", "two positive integers (height, width)")
        ratio_range = _check_pair(self.ratio_range, owner, "ratio_range", "two positive numbers (low, high)")
        if ratio_range[0] > ratio_range[1]:
            raise InvalidHyperparameterError(owner, "ratio_range", self.ratio_range, "low <= high")
        if not 0 < self.cat_max_ratio <= 1:
            raise InvalidHyperparameterError(owner, "cat_max_ratio", self.cat_max_ratio, "a number in (0, 1]")
        if not 0 <= self.flip_prob <= 1:
            raise InvalidHyperparameterError(owner, "flip_prob", self.flip_prob, "a probability in [0, 1]")
        if not isinstance(self.photometric, bool):
            raise InvalidHyperparameterError(owner, "photometric", self.photometric, "true or false")
        if not isinstance(self.ignore_index, int) or not 0 <= self.ignore_index <= 255:
            raise InvalidHyperparameterError(owner, "ignore_index", self.ignore_index, "an integer in 0..255")
        object.__setattr__(self, "base_scale", base_scale)
        object.__setattr__(self, "crop_size", crop_size)
        object.__setattr__(self, "ratio_range", tuple(float(v) for v in ratio_range))
        object.__setattr__(self, "mean", _check_channels(self.mean, owner, "mean", positive=False))
        object.__setattr__(self, "std", _check_channels(self.std, owner, "std", positive=True))


@dataclass(frozen=True)
class ValTransformConfig:
    """Settings of ``ValTransform``: an optional test scale (long side, short side) the image is resized to fit
    (keeping its aspect ratio; None keeps the original size), the multiple the image's height and width are padded
    to (None: no padding), and the normalisation."""

    test_scale: tuple[int, int] | None = None
    size_divisor: int | None = 32
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.test_scale is not None:
            expected = "None or two positive integers (long, short)"
            object.__setattr__(self, "test_scale", _check_int_pair(self.test_scale, owner, "test_scale", expected))
        divisor = self.size_divisor
        if divisor is not None and (not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 1):
            raise InvalidHyperparameterError(owner, "size_divisor", divisor, "None or a positive integer")
        object.__setattr__(self, "mean", _check_channels(self.mean, owner, "mean", positive=False))
        object.__setattr__(self, "std", _check_channels(self.std, owner, "std", positive=True))


TRAIN_PRESETS: dict[str, TrainTransformConfig] = {
    "cityscapes": TrainTransformConfig(base_scale=(2048, 1024), crop_size=(512, 1024)),
    "ade20k": TrainTransformConfig(base_scale=(2048, 512), crop_size=(512, 512)),
    "pascal_context": TrainTransformConfig(base_scale=(520, 520), crop_size=(480, 480)),
    # CamVid (SegNet version) frames are 480×360: base scale = native size, crop = the full native frame, so
    # ratios below 1 give padded crops (as the 480×480 crop does for small PASCAL Context images).
    "camvid": TrainTransformConfig(base_scale=(480, 360), crop_size=(360, 480)),
    # IDD-Lite frames are 320×227 and SIFT Flow images 256×256: the same rule (base scale = native size); IDD-Lite's
    # crop is 224×320, the largest multiple of 32 inside the frame.
    "idd_lite": TrainTransformConfig(base_scale=(320, 227), crop_size=(224, 320)),
    "siftflow": TrainTransformConfig(base_scale=(256, 256), crop_size=(256, 256)),
    "synthetic": TrainTransformConfig(base_scale=(128, 128), crop_size=(64, 64)),
}


def default_train_config(dataset_name: str) -> TrainTransformConfig:
    """The training transform settings of the official recipe for ``dataset_name`` (see ``TRAIN_PRESETS``)."""
    if dataset_name not in TRAIN_PRESETS:
        raise UnknownNameError("dataset", dataset_name, TRAIN_PRESETS)
    return TRAIN_PRESETS[dataset_name]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A generator for one sample of one epoch: independent streams for every (seed, epoch, index) triple, the same
    stream every time for the same triple, whichever worker or process draws it."""
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise InvalidHyperparameterError("sample_rng", name, value, "a non-negative integer")
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def rescaled_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(height, width) after a keep-ratio resize that fits the image inside ``scale`` = (long side, short side)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def _linear_taps(out_size: int, in_size: int, start: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # for output pixels start..start+length-1: the two source pixels and the weight of the second (half-pixel centres)
    source = np.maximum((np.arange(start, start + length) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(source.astype(np.int64), in_size - 1)
    return low, np.minimum(low + 1, in_size - 1), (source - low).astype(np.float32)


def resize_image(image: np.ndarray, size: tuple[int, int], box: Box | None = None) -> torch.Tensor:
    """(H, W, 3) uint8 → float32 (3, h, w) resized to ``size`` = (h, w), bilinear with half-pixel centres and no
    anti-aliasing. With ``box`` = (top, left, height, width) only that part of the resized image is computed, so a
    crop of a 2× upscaled image costs no more than the crop itself."""
    top, left, box_h, box_w = box or (0, 0, *size)
    rows_low, rows_high, rows_weight = _linear_taps(size[0], image.shape[0], top, box_h)
    cols_low, cols_high, cols_weight = _linear_taps(size[1], image.shape[1], left, box_w)
    row0, col0 = rows_low[0], cols_low[0]
    region = np.ascontiguousarray(image[row0 : rows_high[-1] + 1, col0 : cols_high[-1] + 1].transpose(2, 0, 1))
    west = region.take(cols_low - col0, axis=2).astype(np.float32)
    east = region.take(cols_high - col0, axis=2).astype(np.float32)
    columns = west + (east - west) * cols_weight
    north = columns.take(rows_low - row0, axis=1)
    south = columns.take(rows_high - row0, axis=1)
    return torch.from_numpy(north + (south - north) * rows_weight[:, None])


def _nearest_indices(out_size: int, in_size: int, start: int, length: int) -> np.ndarray:
    # source pixel under each output pixel's centre, in exact integer arithmetic: floor((i + 0.5) * in / out)
    return (2 * np.arange(start, start + length, dtype=np.int64) + 1) * in_size // (2 * out_size)


def resize_label(label: np.ndarray, size: tuple[int, int], box: Box | None = None) -> np.ndarray:
    """(H, W) label → (h, w) = ``size``, nearest neighbour with half-pixel centres, so every output value is an input
    value; ``box`` = (top, left, height, width) computes only that part of the result."""
    top, left, box_h, box_w = box or (0, 0, *size)
    rows = _nearest_indices(size[0], label.shape[0], top, box_h)
    cols = _nearest_indices(size[1], label.shape[1], left, box_w)
    return label.take(rows, axis=0).take(cols, axis=1)


def _crop_passes(label: np.ndarray, cat_max_ratio: float, ignore_index: int) -> bool:
    counts = np.bincount(label.ravel(), minlength=256)
    counts[ignore_index] = 0
    total = counts.sum()
    return total > 0 and counts.max() < cat_max_ratio * total


def random_crop_box(
    label: np.ndarray,
    size: tuple[int, int],
    crop_size: tuple[int, int],
    cat_max_ratio: float,
    ignore_index: int,
    rng: np.random.Generator,
) -> Box:
    """A random (top, left, height, width) crop of ``label`` resized to ``size``; height and width are
    ``crop_size`` clipped to ``size``. With ``cat_max_ratio`` < 1, up to ``CROP_ATTEMPTS`` positions are drawn until
    no class reaches that share of the crop's labelled pixels; if none passes, the last one is used."""
    box_h, box_w = min(crop_size[0], size[0]), min(crop_size[1], size[1])
    for _ in range(CROP_ATTEMPTS if cat_max_ratio < 1 else 1):
        box = (int(rng.integers(0, size[0] - box_h + 1)), int(rng.integers(0, size[1] - box_w + 1)), box_h, box_w)
        if cat_max_ratio >= 1 or _crop_passes(resize_label(label, size, box), cat_max_ratio, ignore_index):
            break
    return box


def adjust_saturation_hue(image: torch.Tensor, saturation_factor: float, hue_delta: float) -> torch.Tensor:
    """Scale the HSV saturation by ``saturation_factor`` (clipped to 1) and rotate the hue by ``hue_delta`` units of
    OpenCV's 0–180 scale, value kept: (3, H, W) float RGB on 0–255 → same. Works on the HSV hexagon directly (chroma
    C = max − min, hue in sixths of a turn) without building an HSV image."""
    red, green, blue = image.unbind(0)
    value = image.amax(0)
    chroma = value - image.amin(0)
    safe_chroma = chroma.clamp_min(1e-6)
    hue = torch.where(
        value == red,
        (green - blue) / safe_chroma,
        torch.where(value == green, (blue - red) / safe_chroma + 2, (red - green) / safe_chroma + 4),
    )
    hue += hue_delta / 30.0  # 30 units of the 0–180 scale per sixth of a turn
    new_chroma = torch.minimum(chroma * saturation_factor, value)
    # channel c = V − C·clip(min(k, 4 − k), 0, 1) with k = (n + H) mod 6, n = 5, 3, 1 for R, G, B
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=image.dtype, device=image.device).view(3, 1, 1)
    k = (offsets + hue).remainder_(6)
    k = torch.minimum(k, 4 - k).clamp_(0, 1)
    return value - new_chroma * k


def photometric_distortion(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The recipe's colour jitter on a (3, H, W) float RGB image on 0–255; returns a new image, clipped to 0–255.

    Each step is applied with probability 0.5: brightness (add U(−32, 32)), contrast (multiply by U(0.5, 1.5), the
    recipe's definition), saturation (HSV saturation × U(0.5, 1.5)), hue (rotate by an integer in [−18, 18] on the
    0–180 scale). Contrast comes first or last (probability 0.5 each); saturation and hue share one HSV pass.
    """
    image = image.clone()
    if rng.random() < DISTORTION_PROB:
        image.add_(rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)).clamp_(0, 255)
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(*CONTRAST_RANGE) if rng.random() < DISTORTION_PROB else None
    saturation = rng.uniform(*SATURATION_RANGE) if rng.random() < DISTORTION_PROB else 1.0
    hue = int(rng.integers(-HUE_DELTA, HUE_DELTA + 1)) if rng.random() < DISTORTION_PROB else 0
    if contrast is not None and contrast_first:
        image.mul_(contrast).clamp_(0, 255)
    if saturation != 1.0 or hue != 0:
        image = adjust_saturation_hue(image, saturation, hue).clamp_(0, 255)
    if contrast is not None and not contrast_first:
        image.mul_(contrast).clamp_(0, 255)
    return image


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(3, H, W) RGB on 0–255 (any dtype) → contiguous float32 (x − mean) / std per channel."""
    out = image.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    out.sub_(torch.tensor(mean).view(3, 1, 1)).div_(torch.tensor(std).view(3, 1, 1))
    return out


def pad_to_multiple(image: torch.Tensor, divisor: int) -> torch.Tensor:
    """(C, H, W) → (C, H', W') zero-padded at the bottom/right, H' and W' the next multiples of ``divisor`` (the
    padding ``SegmentationModel`` applies to its input); the same tensor when nothing needs padding."""
    pad_h, pad_w = -image.shape[-2] % divisor, -image.shape[-1] % divisor
    return F.pad(image, (0, pad_w, 0, pad_h)) if pad_h or pad_w else image


def _check_inputs(image: np.ndarray, label: np.ndarray, owner: str) -> None:
    source = f"{owner} input"
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        found = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(source, f"image is {found}; expected a (H, W, 3) uint8 RGB array")
    if not isinstance(label, np.ndarray) or label.dtype != np.uint8 or label.ndim != 2:
        found = f"{label.dtype} {label.shape}" if isinstance(label, np.ndarray) else type(label).__name__
        raise DataError(source, f"label is {found}; expected a (H, W) uint8 array")
    if image.shape[:2] != label.shape:
        raise SizeMismatchError(source, f"image is {image.shape[:2]} but label is {label.shape} (height, width)")


class TrainTransform:
    """(image (H, W, 3) uint8 RGB, label (H, W) uint8, rng) → (float32 (3, h, w), int64 (h, w)) with (h, w) =
    ``config.crop_size``; see the module docstring for the steps."""

    def __init__(self, config: TrainTransformConfig):
        self.config = config

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        _check_inputs(image, label, type(self).__name__)
        ratio = rng.uniform(*config.ratio_range)
        target = (int(config.base_scale[0] * ratio + 0.5), int(config.base_scale[1] * ratio + 0.5))
        size = rescaled_size(*label.shape, target)
        box = random_crop_box(label, size, config.crop_size, config.cat_max_ratio, config.ignore_index, rng)
        image_t = resize_image(image, size, box)
        label_t = torch.from_numpy(resize_label(label, size, box).astype(np.int64))
        if rng.random() < config.flip_prob:
            image_t, label_t = image_t.flip(-1), label_t.flip(-1)
        if config.photometric:
            image_t = photometric_distortion(image_t, rng)
        image_t = normalize(image_t, config.mean, config.std)
        pad_h, pad_w = config.crop_size[0] - box[2], config.crop_size[1] - box[3]
        if pad_h or pad_w:
            image_t = F.pad(image_t, (0, pad_w, 0, pad_h), value=0.0)
            label_t = F.pad(label_t, (0, pad_w, 0, pad_h), value=config.ignore_index)
        return image_t, label_t


class ValTransform:
    """(image (H, W, 3) uint8 RGB, label (H, W) uint8) → (float32 (3, h', w'), int64 (H, W)).

    The image is normalised, resized to fit ``config.test_scale`` keeping its aspect ratio when one is set, and
    zero-padded at the bottom/right so that h' and w' are multiples of ``config.size_divisor``. The image content
    (before padding) is ``valid_size(H, W)``; the label keeps its original size and values. Scores predicted on the
    image are mapped back to the label with ``nrd.inference.restore_to_label`` (crop to the valid size, resize to the
    label's). ``rng`` is ignored; it is accepted so that callers can treat both transforms alike.
    """

    def __init__(self, config: ValTransformConfig | None = None):
        self.config = config or ValTransformConfig()

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the image content, before padding, for an (``height``, ``width``) input: the test-scale size,
        or the input size when no test scale is set."""
        if self.config.test_scale is None:
            return height, width
        return rescaled_size(height, width, self.config.test_scale)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        _check_inputs(image, label, type(self).__name__)
        if config.test_scale is None:
            image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        else:
            image_t = resize_image(image, self.valid_size(*label.shape))
        image_t = normalize(image_t, config.mean, config.std)
        if config.size_divisor is not None:
            image_t = pad_to_multiple(image_t, config.size_divisor)
        return image_t, torch.from_numpy(label.astype(np.int64))
