"""PASCAL Context on VOC2010, in the layout mmsegmentation's converter produces (not the official ``.mat`` release):

    VOCdevkit/VOC2010/JPEGImages/{id}.jpg                            the VOC2010 images
    VOCdevkit/VOC2010/SegmentationClassContext/{id}.png              8-bit labels, values 0-59 (0 = background)
    VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt  the image ids of each split

The official annotations cover the full label set (459 categories) in ``trainval_merged.json`` (or ``.mat`` files);
the benchmark keeps 59 of them plus background. To get the layout above: unpack ``VOCtrainval_03-May-2010.tar``,
download ``trainval_merged.json`` from the PASCAL Context page, install the Detail API
(github.com/zhanghang1989/detail-api) and run, from an mmsegmentation checkout,
``python tools/dataset_converters/pascal_context.py VOCdevkit path/to/trainval_merged.json``: it writes both the
label PNGs and the split lists. Two variants: 60 classes with background, or 59 with background ignored.
"""

from __future__ import annotations

from pathlib import Path

from nrd.data.base import DatasetInfo, MissingPairError, Sample
from nrd.data.readers import FilePairDataset, bit_palette, check_split, label_lut, zero_ignored_lut

# The 59 object/stuff classes, in label-value order 1-59.
CLASS_NAMES_59 = (
    "aeroplane",
    "bag",
    "bed",
    "bedclothes",
    "bench",
    "bicycle",
    "bird",
    "boat",
    "book",
    "bottle",
    "building",
    "bus",
    "cabinet",
    "car",
    "cat",
    "ceiling",
    "chair",
    "cloth",
    "computer",
    "cow",
    "cup",
    "curtain",
    "dog",
    "door",
    "fence",
    "floor",
    "flower",
    "food",
    "grass",
    "ground",
    "horse",
    "keyboard",
    "light",
    "motorbike",
    "mountain",
    "mouse",
    "person",
    "plate",
    "platform",
    "pottedplant",
    "road",
    "rock",
    "sheep",
    "shelves",
    "sidewalk",
    "sign",
    "sky",
    "snow",
    "sofa",
    "table",
    "track",
    "train",
    "tree",
    "truck",
    "tvmonitor",
    "wall",
    "water",
    "window",
    "wood",
)
_PALETTE_60 = bit_palette(len(CLASS_NAMES_59) + 1)
CONVERSION_HINT = (
    "the labels (SegmentationClassContext/*.png, values 0-59) and split lists come from converting "
    "trainval_merged.json with mmsegmentation's tools/dataset_converters/pascal_context.py "
    "(see the docstring of nrd.data.pascal_context)"
)


class PascalContextDataset(FilePairDataset):
    """PASCAL Context, 60 classes (0 = background, labels kept as stored). ``root`` is the folder holding
    ``VOCdevkit``; sample ids are the VOC image ids (e.g. ``2008_000002``)."""

    info = DatasetInfo(name="pascal_context", class_names=("background", *CLASS_NAMES_59), palette=_PALETTE_60)
    splits = ("train", "val")
    lut = label_lut({value: value for value in range(len(CLASS_NAMES_59) + 1)})

    def list_samples(self, split: str) -> list[Sample]:
        check_split(self, split)
        voc = self.root / "VOCdevkit" / "VOC2010"
        list_file = voc / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        expected = [
            (voc / "JPEGImages", Path.is_dir),
            (voc / "SegmentationClassContext", Path.is_dir),
            (list_file, Path.is_file),
        ]
        missing = [path.relative_to(voc).as_posix() for path, exists in expected if not exists(path)]
        if missing:
            raise MissingPairError(
                voc, f"PASCAL Context layout incomplete, missing {', '.join(missing)}; {CONVERSION_HINT}"
            )
        ids = sorted({line.strip() for line in list_file.read_text().splitlines() if line.strip()})
        if not ids:
            raise MissingPairError(list_file, "the list file names no image")
        return [
            Sample(id, voc / "JPEGImages" / f"{id}.jpg", voc / "SegmentationClassContext" / f"{id}.png") for id in ids
        ]


class PascalContext59Dataset(PascalContextDataset):
    """PASCAL Context, 59 classes: background (0) is ignored and v → v−1."""

    info = DatasetInfo(name="pascal_context59", class_names=CLASS_NAMES_59, palette=_PALETTE_60[1:])
    lut = zero_ignored_lut(len(CLASS_NAMES_59))
