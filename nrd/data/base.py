"""What every dataset reader provides, and the named errors for bad input files.

A reader lists the samples of a split (pairs of files in the dataset's official layout) and reads one sample into
``RawSample``: the image file's encoded bytes as they are on disk (never re-encoded) and the label already mapped to
train ids (uint8, ``ignore_index`` = 255 for pixels that do not count). Shards, transforms and metrics build on it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nrd.constants import IGNORE_INDEX
from nrd.errors import NRDBenchError


class DataError(NRDBenchError, ValueError):
    """A problem with one input file: the message names the file and what was expected."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class CorruptImageError(DataError):
    """An image or label file that cannot be decoded."""


class LabelValueError(DataError):
    """A label map holding values outside the dataset's label set."""


class SizeMismatchError(DataError):
    """An image and its label of different sizes."""


class MissingPairError(DataError):
    """An image without its label, or a label without its image, or a split without files."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset: class names (train-id order), RGB palette, ignore index."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Sample:
    """One entry of a split: a stable id (unique within the split) and the files it comes from (None for
    generated data)."""

    id: str
    image_path: Path | None = None
    label_path: Path | None = None


@dataclass(frozen=True)
class RawSample:
    """A decoded-and-checked sample ready for sharding: original image bytes + train-id label (H, W) uint8."""

    id: str
    image_bytes: bytes
    label: np.ndarray
    height: int
    width: int


def decode_image(data: bytes, source: str | Path = "<bytes>") -> np.ndarray:
    """Encoded image bytes → (H, W, 3) uint8 RGB; ``CorruptImageError`` naming ``source`` when undecodable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as error:  # PIL raises many types for broken files
        raise CorruptImageError(source, f"cannot decode image ({error})") from error


def decode_label(data: bytes, source: str | Path = "<bytes>") -> np.ndarray:
    """Encoded single-channel label PNG → (H, W) uint8 values as stored (no palette conversion)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise CorruptImageError(source, f"label image has mode {image.mode!r}; expected a single channel")
            array = np.asarray(image)
    except CorruptImageError:
        raise
    except Exception as error:
        raise CorruptImageError(source, f"cannot decode label ({error})") from error
    if array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise LabelValueError(source, f"label values {array.min()}..{array.max()} do not fit 0..255")
        array = array.astype(np.uint8)
    return array


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG bytes of a (H, W) uint8 label or (H, W, 3) uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class SegmentationDataset:
    """Base of the readers. Subclasses set ``info`` and ``splits`` (and ``unlabelled_splits``, the splits without
    labels) and implement ``list_samples`` and ``read_sample``; ``root`` is the folder of the dataset's official
    layout (unused by generated data)."""

    info: DatasetInfo
    splits: tuple[str, ...] = ()
    unlabelled_splits: tuple[str, ...] = ()  # listed with images only (label_path None): not for prepare_shards

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else None

    @property
    def params(self) -> dict:
        """What the reader was built from (recorded in shard manifests)."""
        return {"root": None if self.root is None else str(self.root.resolve())}

    def list_samples(self, split: str) -> list[Sample]:
        raise NotImplementedError

    def read_sample(self, sample: Sample) -> RawSample:
        raise NotImplementedError
