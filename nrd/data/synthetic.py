"""A deterministic, learnable synthetic segmentation dataset for tests and smoke benchmarks.

Each image has a textured, low-saturation background (class 0: a two-colour gradient, soft waves and noise) with
2-5 antialiased shapes drawn over it. Object class ``c`` (1..K−1) has its own shape (disc, square, triangle, ring,
bar, cycling) and its own saturated hue, so a small CNN separates the classes from colour and shape. Later shapes
occlude earlier ones. A sample is generated from ``(seed, split, index)`` alone: same arguments, same bytes.
"""

from __future__ import annotations

import colorsys
import zlib
from pathlib import Path

import numpy as np

from nrd.data.base import DatasetInfo, RawSample, Sample, SegmentationDataset, encode_png
from nrd.data.readers import check_split
from nrd.errors import InvalidHyperparameterError

SHAPES = ("disc", "square", "triangle", "ring", "bar")
DEFAULT_NUM_CLASSES = 6
DEFAULT_NUM_SAMPLES = {"train": 512, "val": 128}


def synthetic_info(num_classes: int) -> DatasetInfo:
    """Class names (``background``, then ``{shape}_{c}``) and palette (grey, then each class's mean colour)."""
    objects = range(1, num_classes)
    return DatasetInfo(
        name="synthetic",
        class_names=("background", *(f"{SHAPES[(c - 1) % len(SHAPES)]}_{c}" for c in objects)),
        palette=((128, 128, 128), *(class_color(c, num_classes) for c in objects)),
    )


def class_color(object_class: int, num_classes: int) -> tuple[int, int, int]:
    """Mean RGB colour of object class ``c``: hues evenly spaced over the colour wheel, saturated and bright."""
    hue = (object_class - 1) / (num_classes - 1)
    return tuple(round(255 * channel) for channel in colorsys.hsv_to_rgb(hue, 0.8, 0.85))


def inside_distance(shape: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Approximate distance (pixels) inside the boundary of a shape centred at u = v = 0; negative outside."""
    if shape == "disc":
        return radius - np.hypot(u, v)
    if shape == "square":
        return 0.85 * radius - np.maximum(np.abs(u), np.abs(v))
    if shape == "triangle":
        normals = np.pi / 2 + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
        sides = [0.6 * radius - (u * np.cos(a) + v * np.sin(a)) for a in normals]
        return np.minimum.reduce(sides)
    if shape == "ring":
        distance = np.hypot(u, v)
        return np.minimum(radius - distance, distance - 0.55 * radius)
    return np.minimum(1.2 * radius - np.abs(u), 0.3 * radius - np.abs(v))  # bar


class SyntheticDataset(SegmentationDataset):
    """Generated data: ``num_samples`` maps split name → count (e.g. ``{"train": 512, "val": 128}``), images are
    ``size`` = (H, W), ``num_classes`` K ≥ 2 (class 0 is the background). Sample ids are ``{split}-{index:06d}``;
    image bytes are PNG."""

    info = synthetic_info(DEFAULT_NUM_CLASSES)
    splits = ("train", "val")

    def __init__(
        self,
        root: str | Path | None = None,
        num_samples: dict[str, int] | None = None,
        size: tuple[int, int] = (128, 128),
        num_classes: int = DEFAULT_NUM_CLASSES,
        seed: int = 0,
    ):
        super().__init__(root)
        num_samples = dict(DEFAULT_NUM_SAMPLES if num_samples is None else num_samples)
        if any(not isinstance(n, int) or n < 0 for n in num_samples.values()):
            raise InvalidHyperparameterError("synthetic", "num_samples", num_samples, "split → count >= 0")
        if len(size) != 2 or min(size) < 16:
            raise InvalidHyperparameterError("synthetic", "size", size, "(H, W), both >= 16")
        if not 2 <= num_classes <= 255:
            raise InvalidHyperparameterError("synthetic", "num_classes", num_classes, "2..255")
        self.num_samples = num_samples
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.splits = tuple(num_samples)
        self.info = synthetic_info(num_classes)

    @property
    def params(self) -> dict:
        """The generator's settings (recorded in shard manifests)."""
        return {
            "num_samples": self.num_samples,
            "size": list(self.size),
            "num_classes": self.info.num_classes,
            "seed": self.seed,
        }

    def list_samples(self, split: str) -> list[Sample]:
        check_split(self, split)
        return [Sample(f"{split}-{index:06d}") for index in range(self.num_samples[split])]

    def read_sample(self, sample: Sample) -> RawSample:
        split, index = sample.id.rsplit("-", 1)
        image, label = self.generate(split, int(index))
        return RawSample(sample.id, encode_png(image), label, *self.size)

    def generate(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W, 3) uint8 and label (H, W) uint8 of sample ``index`` of ``split``."""
        rng = np.random.default_rng([self.seed, zlib.crc32(split.encode()), index])
        height, width = self.size
        y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5

        angle = rng.uniform(0, 2 * np.pi)
        ramp = (x * np.cos(angle) + y * np.sin(angle)) / np.hypot(height, width) + 0.5
        ends = rng.uniform(40, 210, size=(2, 1)) * rng.uniform(0.92, 1.08, size=(2, 3))
        image = ends[0] + (ends[1] - ends[0]) * ramp[..., None]
        frequency = rng.uniform(0.05, 0.3, size=2)
        waves = np.sin(frequency[0] * x + rng.uniform(0, 2 * np.pi)) * np.sin(frequency[1] * y)
        image += rng.uniform(5, 20) * waves[..., None]

        label = np.zeros((height, width), dtype=np.uint8)
        num_classes = self.info.num_classes
        for _ in range(rng.integers(2, 6)):
            object_class = int(rng.integers(1, num_classes))
            radius = rng.uniform(0.1, 0.25) * min(height, width)
            center_y, center_x = rng.uniform(0, height), rng.uniform(0, width)
            theta = rng.uniform(0, 2 * np.pi)
            u = (x - center_x) * np.cos(theta) + (y - center_y) * np.sin(theta)
            v = (y - center_y) * np.cos(theta) - (x - center_x) * np.sin(theta)
            inside = inside_distance(SHAPES[(object_class - 1) % len(SHAPES)], u, v, radius)
            alpha = np.clip(0.5 + inside / rng.uniform(1.0, 2.5), 0.0, 1.0)[..., None]
            color = np.array(class_color(object_class, num_classes)) + rng.normal(0, 10, size=3)
            image = image * (1 - alpha) + color * alpha
            label[inside > 0] = object_class

        image += rng.normal(0, 6, size=image.shape)
        return np.clip(np.rint(image), 0, 255).astype(np.uint8), label
