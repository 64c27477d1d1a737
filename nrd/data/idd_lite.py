"""IDD-Lite (the reduced Indian Driving Dataset of the NCVPRIPG 2019 / AutoNUE challenge) in its archive layout:

    idd20k_lite/leftImg8bit/{train,val,test}/<seq>/<id>_image.jpg    RGB JPEG, 320x227
    idd20k_lite/gtFine/{train,val}/<seq>/<id>_label.png              8-bit labels, 0-6 = IDD's level-1 classes, 255
    idd20k_lite/gtFine/{train,val}/<seq>/<id>_inst_label.png         (in the archive; not read)

Labels are already train ids (255 = void, ignored). ``<id>`` has no fixed format (``024541``, ``frame0059``), so
images and labels are paired by ``<seq>/<id>``. The ``test`` split has no labels: it is listed (images only) but
cannot be prepared for training.
"""

from __future__ import annotations

from pathlib import Path

from nrd.data.base import IGNORE_INDEX, DatasetInfo, MissingPairError, Sample
from nrd.data.readers import FilePairDataset, check_split, label_lut, pair_samples, require_folder

ARCHIVE_FOLDER = "idd20k_lite"
IMAGE_SUFFIX = "_image.jpg"
LABEL_SUFFIX = "_label.png"
INSTANCE_SUFFIX = "_inst_label.png"  # instance copies of the labels in the archive: not read

# The 7 level-1 classes; each colour is the Cityscapes colour of the group's main member (road, sidewalk, person,
# car, pole, building, sky).
CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("drivable", (128, 64, 128)),
    ("non-drivable", (244, 35, 232)),
    ("living-things", (220, 20, 60)),
    ("vehicles", (0, 0, 142)),
    ("roadside-objects", (153, 153, 153)),
    ("far-objects", (70, 70, 70)),
    ("sky", (70, 130, 180)),
)


def files_by_sequence(folder: Path, suffix: str) -> dict[str, Path]:
    """``<seq>/<name><suffix>`` files under ``folder``, keyed ``<seq>/<name>`` (instance label files left out)."""
    return {
        f"{path.parent.name}/{path.name[: -len(suffix)]}": path
        for path in folder.glob(f"*/*{suffix}")
        if not path.name.endswith(INSTANCE_SUFFIX)
    }


class IDDLiteDataset(FilePairDataset):
    """IDD-Lite under ``root``: the ``idd20k_lite`` folder of the archive, or the folder holding it. Sample ids are
    ``<seq>/<id>`` (e.g. ``0/024541``). 7 classes (IDD level 1), 255 = void."""

    info = DatasetInfo(
        name="idd_lite",
        class_names=tuple(name for name, _ in CLASSES),
        palette=tuple(color for _, color in CLASSES),
    )
    splits = ("train", "val", "test")
    unlabelled_splits = ("test",)
    lut = label_lut({**{value: value for value in range(len(CLASSES))}, IGNORE_INDEX: IGNORE_INDEX})

    def __init__(self, root: str | Path | None = None):
        super().__init__(root)
        if not (self.root / "leftImg8bit").is_dir() and (self.root / ARCHIVE_FOLDER).is_dir():
            self.root = self.root / ARCHIVE_FOLDER

    def list_samples(self, split: str) -> list[Sample]:
        check_split(self, split)
        image_folder = require_folder(self.root / "leftImg8bit" / split, f"IDD-Lite {split} image")
        images = files_by_sequence(image_folder, IMAGE_SUFFIX)
        if split in self.unlabelled_splits:
            if not images:
                raise MissingPairError(image_folder, "no image files found in this split")
            return [Sample(id, images[id], None) for id in sorted(images)]
        label_folder = require_folder(self.root / "gtFine" / split, f"IDD-Lite {split} label")
        return pair_samples(
            images,
            files_by_sequence(label_folder, LABEL_SUFFIX),
            lambda id: image_folder / f"{id}{IMAGE_SUFFIX}",
            lambda id: label_folder / f"{id}{LABEL_SUFFIX}",
            image_folder,
        )
