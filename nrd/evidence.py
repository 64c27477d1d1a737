"""Per-image evidence of one evaluation: per-image, per-class (TP, FP, FN) counts, and their ``.npz`` file.

The counts are small (images x classes x 3 int64: 500 ADE20K-sized images x 150 classes is 1.8 MB) and hold
everything the confusion-matrix metrics need, so that any of aAcc, mIoU, mAcc, mDice or a per-class IoU can be
recomputed, and resampled over images, long after the model is gone (``nrd.metrics.scores_from_counts``).

File format (``IMAGE_COUNTS_FORMAT`` = 1), a NumPy ``.npz`` archive read with ``allow_pickle=False``:

- ``format``: int64 scalar, the format version;
- ``image_ids``: (N,) unicode strings, unique, the data set's image ids (file stems);
- ``class_names``: (K,) unicode strings;
- ``ignore_index``: int64 scalar, the label value that was not counted;
- ``counts``: (N, K, 3) int64, non-negative, last axis ``nrd.metrics.COUNT_FIELDS`` = (TP, FP, FN).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nrd.errors import NRDBenchError
from nrd.metrics import COUNT_FIELDS, scores_from_counts

IMAGE_COUNTS_FORMAT = 1
IMAGE_COUNTS_FILE = "image_counts.npz"  # the artifact's name in a run
_KEYS = ("format", "image_ids", "class_names", "ignore_index", "counts")


class ImageCountsError(NRDBenchError, ValueError):
    """Per-image counts that cannot be used: ``where`` is the file (or ``ImageCounts``), ``problem`` says what was
    found and what was expected."""

    def __init__(self, where: str, problem: str):
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, eq=False)
class ImageCounts:
    """The per-image evidence of one evaluation of one run: ``counts[i, c]`` = (TP, FP, FN) of class
    ``class_names[c]`` in image ``image_ids[i]`` (``nrd.metrics.per_image_counts``). Checked on creation."""

    image_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    counts: np.ndarray
    ignore_index: int

    def __post_init__(self) -> None:
        _check(self.image_ids, self.class_names, self.counts, "ImageCounts")
        object.__setattr__(self, "image_ids", tuple(str(name) for name in self.image_ids))
        object.__setattr__(self, "class_names", tuple(str(name) for name in self.class_names))
        counts = np.array(self.counts, dtype=np.int64)  # a private copy, read-only
        counts.flags.writeable = False
        object.__setattr__(self, "counts", counts)

    def total(self) -> np.ndarray:
        """(K, 3) counts summed over the images: the dataset-level evidence."""
        return self.counts.sum(0)

    def scores(self) -> dict[str, np.ndarray]:
        """The dataset-level metrics, in percent (``scores_from_counts`` of ``total()``)."""
        return scores_from_counts(self.total())

    def in_order(self, image_ids: Sequence[str]) -> np.ndarray:
        """``counts`` with its images in the order of ``image_ids``, which must name the same set of images."""
        if tuple(image_ids) == self.image_ids:
            return self.counts
        position = {name: index for index, name in enumerate(self.image_ids)}
        if len(image_ids) != len(position) or set(image_ids) != set(position):
            missing = sorted(set(image_ids) - set(position))[:5]
            extra = sorted(set(position) - set(image_ids))[:5]
            raise ImageCountsError(
                "ImageCounts", f"the images differ from the ones expected (missing {missing}, extra {extra})"
            )
        return self.counts[[position[name] for name in image_ids]]


def concatenate(parts: Sequence[ImageCounts]) -> ImageCounts:
    """One ``ImageCounts`` from disjoint parts of one evaluation (e.g. one per worker), images in the parts' order."""
    if not parts:
        raise ImageCountsError("ImageCounts", "nothing to concatenate; expected at least one part")
    first = parts[0]
    for part in parts[1:]:
        if (part.class_names, part.ignore_index) != (first.class_names, first.ignore_index):
            raise ImageCountsError("ImageCounts", "parts with different class names or ignore_index")
    ids = tuple(name for part in parts for name in part.image_ids)
    return ImageCounts(ids, first.class_names, np.concatenate([part.counts for part in parts]), first.ignore_index)


def _check(image_ids, class_names, counts, where: str) -> None:
    ids, names = np.asarray(image_ids), np.asarray(class_names)
    for key, value in (("image_ids", ids), ("class_names", names)):
        if value.ndim != 1 or (value.size and value.dtype.kind != "U"):
            raise ImageCountsError(where, f"{key} is a {value.ndim}-d {value.dtype} array; expected 1-d strings")
    if len(set(ids.tolist())) != len(ids):
        raise ImageCountsError(where, "image_ids repeat an image; expected unique ids")
    counts = np.asarray(counts)
    shape = (len(ids), len(names), len(COUNT_FIELDS))
    if counts.dtype.kind not in "iu" or counts.shape != shape:
        raise ImageCountsError(
            where,
            f"counts is a {counts.dtype} array of shape {counts.shape}; expected integers of shape {shape} "
            f"(images, classes, {'/'.join(COUNT_FIELDS)})",
        )
    if counts.size and counts.min() < 0:
        raise ImageCountsError(where, "counts hold negative values; expected counts >= 0")


def write_image_counts(path: str | os.PathLike, evidence: ImageCounts) -> None:
    """Write ``evidence`` to ``path`` (format in the module docstring), through a temporary file in the same
    folder, so the file is never half-written."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        format=np.int64(IMAGE_COUNTS_FORMAT),
        image_ids=np.array(evidence.image_ids, dtype=str),
        class_names=np.array(evidence.class_names, dtype=str),
        ignore_index=np.int64(evidence.ignore_index),
        counts=evidence.counts,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, path)


def read_image_counts(path: str | os.PathLike) -> ImageCounts:
    """Read and check a file of ``write_image_counts``; ``ImageCountsError`` names the file and the problem."""
    where = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ImageCountsError(where, "a single .npy array; expected a .npz archive of per-image counts")
        with archive:
            missing = [key for key in _KEYS if key not in archive.files]
            if missing:
                raise ImageCountsError(where, f"lacks {', '.join(missing)}; expected the keys {', '.join(_KEYS)}")
            arrays = {key: archive[key] for key in _KEYS}
    except ImageCountsError:
        raise
    except FileNotFoundError:
        raise ImageCountsError(where, "no such file") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:  # object arrays, not a .npz, truncated
        raise ImageCountsError(where, f"not a readable .npz archive of per-image counts ({error})") from None
    version = arrays["format"]
    if version.shape != () or version.dtype.kind != "i" or int(version) != IMAGE_COUNTS_FORMAT:
        raise ImageCountsError(where, f"format {version.tolist()!r}; expected {IMAGE_COUNTS_FORMAT}")
    ignore = arrays["ignore_index"]
    if ignore.shape != () or ignore.dtype.kind != "i":
        raise ImageCountsError(where, f"ignore_index {ignore.tolist()!r}; expected an integer")
    _check(arrays["image_ids"], arrays["class_names"], arrays["counts"], where)
    ids, names = arrays["image_ids"].tolist(), arrays["class_names"].tolist()
    return ImageCounts(tuple(ids), tuple(names), arrays["counts"], int(ignore))
