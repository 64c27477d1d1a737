"""Shared pieces of the file-based readers: pairing image and label files, reading and checking one pair, label
look-up tables and a generic palette.

A reader lists every id that has an image *or* a label file, so that a missing partner is reported by
``read_sample`` (and can be skipped by ``prepare_shards(skip_bad=True)``) instead of failing the whole listing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from nrd.data.base import (
    IGNORE_INDEX,
    LabelValueError,
    MissingPairError,
    RawSample,
    Sample,
    SegmentationDataset,
    SizeMismatchError,
    decode_image,
    decode_label,
)
from nrd.errors import InvalidHyperparameterError, UnknownNameError

NOT_IN_SET = -1  # marks raw label values that a look-up table does not accept


def label_lut(mapping: dict[int, int]) -> np.ndarray:
    """256-entry int16 table raw label value → train id; values absent from ``mapping`` map to ``NOT_IN_SET``."""
    lut = np.full(256, NOT_IN_SET, dtype=np.int16)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


def zero_ignored_lut(num_classes: int) -> np.ndarray:
    """Table for labels where 0 means "unlabelled" (→ ignore) and values 1..num_classes are classes (v → v−1)."""
    return label_lut({0: IGNORE_INDEX, **{value: value - 1 for value in range(1, num_classes + 1)}})


def describe_values(values: Iterable[int]) -> str:
    """Compact text of a set of integers, e.g. ``0-33`` or ``0-18, 255``."""
    values = sorted(int(v) for v in values)
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def bit_palette(num_colors: int) -> tuple[tuple[int, int, int], ...]:
    """Well-separated RGB colours by spreading the bits of the index over R, G and B, most significant bit first
    (the scheme of the PASCAL VOC colour maps)."""
    colors = []
    for index in range(num_colors):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
        colors.append((rgb[0], rgb[1], rgb[2]))
    return tuple(colors)


def files_by_id(folder: Path, pattern: str, suffix: str) -> dict[str, Path]:
    """Files matching ``pattern`` under ``folder``, keyed by their name without ``suffix``."""
    return {path.name[: -len(suffix)]: path for path in folder.glob(pattern)}


def check_split(dataset: SegmentationDataset, split: str) -> None:
    if split not in dataset.splits:
        raise UnknownNameError(f"{dataset.info.name} split", split, dataset.splits)


def require_folder(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise MissingPairError(folder, f"{what} folder not found")
    return folder


def pair_samples(
    images: dict[str, Path],
    labels: dict[str, Path],
    image_path_for: Callable[[str], Path],
    label_path_for: Callable[[str], Path],
    split_folder: Path,
) -> list[Sample]:
    """One ``Sample`` per id found among images or labels, sorted by id; a missing partner gets the path where it
    was expected. ``MissingPairError`` when there is no file at all."""
    ids = sorted(images.keys() | labels.keys())
    if not ids:
        raise MissingPairError(split_folder, "no image or label files found in this split")
    return [Sample(id, images.get(id) or image_path_for(id), labels.get(id) or label_path_for(id)) for id in ids]


class FilePairDataset(SegmentationDataset):
    """A dataset stored as one image file and one single-channel label PNG per sample. Subclasses implement
    ``list_samples`` (usually through ``pair_samples``) and set ``lut``, the raw value → train-id table (see
    ``label_lut``), or override ``lut_for`` when it depends on the label file."""

    lut: np.ndarray

    def __init__(self, root: str | Path | None = None):
        if root is None:
            raise InvalidHyperparameterError(
                f"dataset {self.info.name}", "root", None, "the folder holding the dataset's official layout"
            )
        super().__init__(root)

    def lut_for(self, label_path: Path) -> np.ndarray:
        return self.lut

    def read_label(self, label_path: Path) -> np.ndarray:
        """The label file's (H, W) values as stored (before the train-id table); single-channel images here,
        overridden for other label formats."""
        return decode_label(label_path.read_bytes(), label_path)

    def read_sample(self, sample: Sample) -> RawSample:
        """Read and check one pair: image decodes, label decodes, label values are in the dataset's set, sizes
        agree. Returns the image file's bytes and the label in train ids."""
        image_path, label_path = sample.image_path, sample.label_path
        if label_path is None:
            raise MissingPairError(image_path, f"{self.info.name} lists this image without a label (unlabelled split)")
        pair = ((image_path, "image", "label", label_path), (label_path, "label", "image", image_path))
        for path, what, partner_kind, partner in pair:
            if path.is_dir():
                raise MissingPairError(path, f"is a folder; expected the {what} file of {partner}")
            if not path.is_file():
                raise MissingPairError(path, f"{what} not found for {partner_kind} {partner}")
        image_bytes = image_path.read_bytes()
        height, width = decode_image(image_bytes, image_path).shape[:2]
        raw = self.read_label(label_path)
        if raw.shape != (height, width):
            raise SizeMismatchError(
                label_path, f"label is {raw.shape[1]}x{raw.shape[0]} (WxH) but image {image_path} is {width}x{height}"
            )
        lut = self.lut_for(label_path)
        label = lut[raw]
        outside = label == NOT_IN_SET
        if outside.any():
            raise LabelValueError(
                label_path,
                f"label values {describe_values(np.unique(raw[outside]))} are outside the {self.info.name} label set "
                f"{describe_values(np.flatnonzero(lut != NOT_IN_SET))}",
            )
        return RawSample(sample.id, image_bytes, label.astype(np.uint8), int(height), int(width))
