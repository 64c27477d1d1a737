"""CamVid in the SegNet layout: ``{split}/*.png`` images with same-named ``{split}annot/*.png`` labels; 11 classes
(0-10) and 11 = void, which is ignored."""

from __future__ import annotations

from nrd.data.base import IGNORE_INDEX, DatasetInfo, Sample
from nrd.data.readers import FilePairDataset, check_split, files_by_id, label_lut, pair_samples, require_folder

VOID = 11


class CamVidDataset(FilePairDataset):
    """CamVid-11 (SegNet version) under ``root``; sample ids are the file names without ``.png``
    (e.g. ``0001TP_006690``). Class names and colours are SegNet's."""

    info = DatasetInfo(
        name="camvid",
        class_names=(
            "Sky",
            "Building",
            "Pole",
            "Road",
            "Pavement",
            "Tree",
            "SignSymbol",
            "Fence",
            "Car",
            "Pedestrian",
            "Bicyclist",
        ),
        palette=(
            (128, 128, 128),
            (128, 0, 0),
            (192, 192, 128),
            (128, 64, 128),
            (60, 40, 222),
            (128, 128, 0),
            (192, 128, 128),
            (64, 64, 128),
            (64, 0, 128),
            (64, 64, 0),
            (0, 128, 192),
        ),
    )
    splits = ("train", "val", "test")
    lut = label_lut({**{value: value for value in range(VOID)}, VOID: IGNORE_INDEX})

    def list_samples(self, split: str) -> list[Sample]:
        check_split(self, split)
        image_folder = require_folder(self.root / split, f"CamVid {split} image")
        label_folder = require_folder(self.root / f"{split}annot", f"CamVid {split} label")
        return pair_samples(
            files_by_id(image_folder, "*.png", ".png"),
            files_by_id(label_folder, "*.png", ".png"),
            lambda id: image_folder / f"{id}.png",
            lambda id: label_folder / f"{id}.png",
            image_folder,
        )
