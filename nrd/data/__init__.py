"""Dataset readers (official layouts → image bytes + train-id labels), Parquet shards and their reader."""

from __future__ import annotations

import inspect
from pathlib import Path

from nrd.data.ade20k import ADE20KDataset
from nrd.data.base import (
    IGNORE_INDEX,
    CorruptImageError,
    DataError,
    DatasetInfo,
    LabelValueError,
    MissingPairError,
    RawSample,
    Sample,
    SegmentationDataset,
    SizeMismatchError,
)
from nrd.data.camvid import CamVidDataset
from nrd.data.cityscapes import CityscapesDataset
from nrd.data.idd_lite import IDDLiteDataset
from nrd.data.pascal_context import PascalContext59Dataset, PascalContextDataset
from nrd.data.shards import NotPreparedError, ShardChecksumError, ShardDataset, prepare_shards, read_manifest
from nrd.data.siftflow import SiftFlowDataset
from nrd.data.synthetic import SyntheticDataset
from nrd.errors import UnknownNameError

DATASETS: dict[str, type[SegmentationDataset]] = {
    "cityscapes": CityscapesDataset,
    "ade20k": ADE20KDataset,
    "pascal_context": PascalContextDataset,
    "pascal_context59": PascalContext59Dataset,
    "camvid": CamVidDataset,
    "idd_lite": IDDLiteDataset,
    "siftflow": SiftFlowDataset,
    "synthetic": SyntheticDataset,
}


def create_dataset(name: str, root: str | Path | None = None, **kwargs) -> SegmentationDataset:
    """The reader ``name`` (a key of ``DATASETS``) over ``root``; ``kwargs`` go to its constructor (only
    ``synthetic`` takes any: ``num_samples``, ``size``, ``num_classes``, ``seed``)."""
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, DATASETS)
    dataset_class = DATASETS[name]
    accepted = [p for p in inspect.signature(dataset_class).parameters if p != "root"]
    for key in kwargs:
        if key not in accepted:
            raise UnknownNameError(f"{name} dataset argument", key, accepted)
    return dataset_class(root, **kwargs)


__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "ADE20KDataset",
    "CamVidDataset",
    "CityscapesDataset",
    "CorruptImageError",
    "DataError",
    "DatasetInfo",
    "IDDLiteDataset",
    "LabelValueError",
    "MissingPairError",
    "NotPreparedError",
    "PascalContext59Dataset",
    "PascalContextDataset",
    "RawSample",
    "Sample",
    "SegmentationDataset",
    "ShardChecksumError",
    "ShardDataset",
    "SiftFlowDataset",
    "SizeMismatchError",
    "SyntheticDataset",
    "create_dataset",
    "prepare_shards",
    "read_manifest",
]
