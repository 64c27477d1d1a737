"""Cityscapes (fine annotations): ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
``gtFine/{split}/{city}/*_gtFine_labelIds.png``; 19 evaluated classes (train ids 0-18), everything else ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nrd.data.base import IGNORE_INDEX, DatasetInfo, Sample
from nrd.data.readers import FilePairDataset, check_split, files_by_id, label_lut, pair_samples, require_folder

# The official label table: (name, label id, train id, colour). Train id 255 = not evaluated (ignored).
LABELS: tuple[tuple[str, int, int, tuple[int, int, int]], ...] = (
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
    ("license plate", -1, -1, (0, 0, 142)),
)

_EVALUATED = sorted((train_id, name, color) for name, _, train_id, color in LABELS if 0 <= train_id < IGNORE_INDEX)

# labelIds files hold ids 0-33 (license plate, -1, only exists in the instance files); train-id files 0-18 and 255.
LABEL_ID_LUT = label_lut({label_id: train_id for _, label_id, train_id, _ in LABELS if label_id >= 0})
TRAIN_ID_LUT = label_lut({**{train_id: train_id for train_id, _, _ in _EVALUATED}, IGNORE_INDEX: IGNORE_INDEX})

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_ID_SUFFIX = "_gtFine_labelIds.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"


class CityscapesDataset(FilePairDataset):
    """Cityscapes fine annotations in the official layout under ``root``. Labels come from
    ``*_gtFine_labelTrainIds.png`` when present (cityscapesScripts' output), else from ``*_gtFine_labelIds.png``
    through the official id → train-id table. Sample ids are ``{city}_{seq}_{frame}``."""

    info = DatasetInfo(
        name="cityscapes",
        class_names=tuple(name for _, name, _ in _EVALUATED),
        palette=tuple(color for _, _, color in _EVALUATED),
    )
    splits = ("train", "val", "test")

    def list_samples(self, split: str) -> list[Sample]:
        check_split(self, split)
        image_folder = require_folder(self.root / "leftImg8bit" / split, f"Cityscapes {split} image")
        label_folder = require_folder(self.root / "gtFine" / split, f"Cityscapes {split} label")
        images = files_by_id(image_folder, f"*/*{IMAGE_SUFFIX}", IMAGE_SUFFIX)
        labels = files_by_id(label_folder, f"*/*{LABEL_ID_SUFFIX}", LABEL_ID_SUFFIX)
        labels.update(files_by_id(label_folder, f"*/*{TRAIN_ID_SUFFIX}", TRAIN_ID_SUFFIX))
        return pair_samples(
            images,
            labels,
            lambda id: image_folder / city_of(id) / f"{id}{IMAGE_SUFFIX}",
            lambda id: label_folder / city_of(id) / f"{id}{LABEL_ID_SUFFIX}",
            image_folder,
        )

    def lut_for(self, label_path: Path) -> np.ndarray:
        return TRAIN_ID_LUT if label_path.name.endswith(TRAIN_ID_SUFFIX) else LABEL_ID_LUT


def city_of(sample_id: str) -> str:
    """``frankfurt_000000_000294`` → ``frankfurt``: ids end in sequence and frame numbers."""
    return sample_id.rsplit("_", 2)[0]
