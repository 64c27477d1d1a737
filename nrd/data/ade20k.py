"""ADE20K / SceneParse150 (``ADEChallengeData2016``): ``images/{training,validation}/*.jpg`` with
``annotations/{training,validation}/*.png``; annotation 0 ("other") is ignored and v → v−1 gives 150 classes."""

from __future__ import annotations

from pathlib import Path

from nrd.data.base import DataError, DatasetInfo, Sample
from nrd.data.readers import (
    FilePairDataset,
    bit_palette,
    check_split,
    files_by_id,
    pair_samples,
    require_folder,
    zero_ignored_lut,
)

# objectInfo150 order (annotation value − 1), first synonym of each entry.
CLASS_NAMES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)

SPLIT_FOLDERS = {"train": "training", "val": "validation"}


def read_object_info(path: Path) -> tuple[str, ...]:
    """Class names (first synonym) from the devkit's tab-separated ``objectInfo150.txt`` (Idx Ratio Train Val
    Name), in annotation-value order."""
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]
    if len(rows) != len(CLASS_NAMES) or any(len(row) != 5 for row in rows):
        raise DataError(path, f"expected {len(CLASS_NAMES)} tab-separated rows 'Idx Ratio Train Val Name'")
    by_index = {int(row[0]): row[4].split(",")[0].strip() for row in rows}
    if sorted(by_index) != list(range(1, len(CLASS_NAMES) + 1)):
        raise DataError(path, f"expected Idx values 1-{len(CLASS_NAMES)}")
    return tuple(by_index[index] for index in sorted(by_index))


class ADE20KDataset(FilePairDataset):
    """SceneParse150 under ``root`` (the folder holding ``images/`` and ``annotations/``, i.e.
    ``ADEChallengeData2016``). Class names come from ``root/objectInfo150.txt`` when present, else the built-in
    list. Splits ``train`` and ``val`` read ``training`` and ``validation``."""

    info = DatasetInfo(name="ade20k", class_names=CLASS_NAMES, palette=bit_palette(len(CLASS_NAMES)))
    splits = tuple(SPLIT_FOLDERS)
    lut = zero_ignored_lut(len(CLASS_NAMES))

    def __init__(self, root: str | Path | None = None):
        super().__init__(root)
        object_info = self.root / "objectInfo150.txt"
        if object_info.is_file():
            self.info = DatasetInfo(name="ade20k", class_names=read_object_info(object_info), palette=self.info.palette)

    def list_samples(self, split: str) -> list[Sample]:
        check_split(self, split)
        folder = SPLIT_FOLDERS[split]
        image_folder = require_folder(self.root / "images" / folder, f"ADE20K {split} image")
        label_folder = require_folder(self.root / "annotations" / folder, f"ADE20K {split} annotation")
        return pair_samples(
            files_by_id(image_folder, "*.jpg", ".jpg"),
            files_by_id(label_folder, "*.png", ".png"),
            lambda id: image_folder / f"{id}.jpg",
            lambda id: label_folder / f"{id}.png",
            image_folder,
        )
