"""SIFT Flow (LMSun subset, Liu, Yuen and Torralba, CVPR 2009): 2688 outdoor scenes at 256x256, 33 classes.

Two layouts are read, both under ``root`` (or ``root/SiftFlowDataset``, the folder the release unpacks to):

    Images/spatial_envelope_256x256_static_8outdoorcategories/<name>.jpg          the images (both layouts)
    SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories/<name>.mat  official release: MATLAB files
                                                                                   holding a uint16 matrix ``S``
    SemanticLabels/labels_png/<name>.png                                          converted: the same values as 8-bit
                                                                                   PNGs (used when this folder exists)
    TestSet1.txt                  official release: the 200 test images (Windows paths); the other 2488 are train
    train.txt, val.txt            optional split lists, one name a line (no extension)

Splits: ``test`` is ``TestSet1.txt``; ``train`` and ``val`` are ``train.txt`` and ``val.txt`` when present. Without
``train.txt``, ``train`` is every image or label not in the test list nor in ``val.txt``; without ``val.txt`` there is
no ``val`` split (the release has none: write one, e.g. names drawn from the train list). A list naming a test image
is refused. Label 0 is "unlabeled" and ignored; v → v−1 gives 33 classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nrd.data.base import CorruptImageError, DataError, DatasetInfo, LabelValueError, MissingPairError, Sample
from nrd.data.readers import FilePairDataset, bit_palette, check_split, zero_ignored_lut

RELEASE_FOLDER = "SiftFlowDataset"
COLLECTION = "spatial_envelope_256x256_static_8outdoorcategories"
IMAGE_FOLDER = f"Images/{COLLECTION}"
MAT_FOLDER = f"SemanticLabels/{COLLECTION}"
PNG_FOLDER = "SemanticLabels/labels_png"
TEST_LIST = "TestSet1.txt"
LABEL_VARIABLE = "S"

# Label values 1-33, in order (the release's classes.mat / classes.csv).
CLASS_NAMES = (
    "awning",
    "balcony",
    "bird",
    "boat",
    "bridge",
    "building",
    "bus",
    "car",
    "cow",
    "crosswalk",
    "desert",
    "door",
    "fence",
    "field",
    "grass",
    "moon",
    "mountain",
    "person",
    "plant",
    "pole",
    "river",
    "road",
    "rock",
    "sand",
    "sea",
    "sidewalk",
    "sign",
    "sky",
    "staircase",
    "streetlight",
    "sun",
    "tree",
    "window",
)


def read_names(list_file: Path) -> list[str]:
    """Image names of a split list: one a line, as a bare name, a file name or a relative path with ``/`` or ``\\``
    separators (``TestSet1.txt`` has Windows paths); the extension is dropped."""
    names = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if line:
            names.append(line.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".jpg"))
    if not names:
        raise MissingPairError(list_file, "the list file names no image")
    return names


def read_mat_label(path: Path) -> np.ndarray:
    """The label matrix ``S`` of a SIFT Flow ``.mat`` file → (H, W) uint8 values as stored."""
    from scipy.io import loadmat  # only the release layout needs SciPy: keep it out of every CLI start

    try:
        content = loadmat(path, variable_names=[LABEL_VARIABLE])
    except Exception as error:  # scipy raises many types for broken files
        raise CorruptImageError(path, f"cannot read MATLAB file ({error})") from error
    matrix = content.get(LABEL_VARIABLE)
    if matrix is None:
        raise CorruptImageError(path, f"no variable {LABEL_VARIABLE!r} (the label matrix) in this MATLAB file")
    if matrix.ndim != 2 or not (np.issubdtype(matrix.dtype, np.integer) or np.issubdtype(matrix.dtype, np.floating)):
        raise CorruptImageError(
            path, f"variable {LABEL_VARIABLE!r} is {matrix.dtype} {matrix.shape}; expected a 2-D integer matrix"
        )
    if np.issubdtype(matrix.dtype, np.floating) and not np.array_equal(matrix, np.round(matrix)):
        raise LabelValueError(path, f"variable {LABEL_VARIABLE!r} holds non-integer values")
    if matrix.size and (matrix.min() < 0 or matrix.max() > 255):
        raise LabelValueError(path, f"label values {matrix.min():g}..{matrix.max():g} do not fit 0..255")
    return matrix.astype(np.uint8)


class SiftFlowDataset(FilePairDataset):
    """SIFT Flow under ``root``, in the release layout (``.mat`` labels, ``TestSet1.txt``) or with PNG labels and
    ``train.txt``/``val.txt`` lists (see the module docstring). Sample ids are the image names (e.g.
    ``coast_bea1``). 33 classes; 0 (unlabeled) → 255, v → v−1."""

    info = DatasetInfo(name="siftflow", class_names=CLASS_NAMES, palette=bit_palette(len(CLASS_NAMES) + 1)[1:])
    splits = ("train", "val", "test")
    lut = zero_ignored_lut(len(CLASS_NAMES))

    def __init__(self, root: str | Path | None = None):
        super().__init__(root)
        if not (self.root / "Images").is_dir() and (self.root / RELEASE_FOLDER).is_dir():
            self.root = self.root / RELEASE_FOLDER

    def read_label(self, label_path: Path) -> np.ndarray:
        return read_mat_label(label_path) if label_path.suffix == ".mat" else super().read_label(label_path)

    def list_samples(self, split: str) -> list[Sample]:
        check_split(self, split)
        image_folder = self.root / IMAGE_FOLDER
        if not image_folder.is_dir():
            raise MissingPairError(image_folder, "SIFT Flow image folder not found")
        png_folder = self.root / PNG_FOLDER
        label_folder, label_suffix = (png_folder, ".png") if png_folder.is_dir() else (self.root / MAT_FOLDER, ".mat")
        if not label_folder.is_dir():
            raise MissingPairError(self.root / MAT_FOLDER, f"SIFT Flow label folder not found (nor {png_folder})")
        names = self.split_names(split, image_folder, label_folder, label_suffix)
        return [
            Sample(name, image_folder / f"{name}.jpg", label_folder / f"{name}{label_suffix}") for name in sorted(names)
        ]

    def split_names(self, split: str, image_folder: Path, label_folder: Path, label_suffix: str) -> set[str]:
        test_file = self.root / TEST_LIST
        test = set(read_names(test_file)) if test_file.is_file() else set()
        if split == "test":
            if not test:
                raise MissingPairError(test_file, "official test list not found (this copy holds no test split)")
            return test
        list_file = self.root / f"{split}.txt"
        if list_file.is_file():
            names = set(read_names(list_file))
            if names & test:
                example = sorted(names & test)[0]
                raise DataError(list_file, f"names {len(names & test)} images of {TEST_LIST} (e.g. {example})")
            return names
        if split == "val":
            raise MissingPairError(
                list_file,
                f"no val split: the release has train and test only; write {list_file.name} (one image name a "
                f"line, e.g. drawn from the train images) and train uses the rest",
            )
        if not test:
            raise MissingPairError(self.root, f"neither {list_file.name} nor the official {TEST_LIST} found")
        val_file = self.root / "val.txt"
        val = set(read_names(val_file)) if val_file.is_file() else set()
        found = {path.stem for path in image_folder.glob("*.jpg")}
        found |= {path.name[: -len(label_suffix)] for path in label_folder.glob(f"*{label_suffix}")}
        return found - test - val
