"""The folders ``nrd-bench evaluate`` compares: predicted and ground-truth label PNGs paired by relative path, read
and counted into ``SegmentationMetrics``. Imports torch, so the command imports this module only when it runs."""

from __future__ import annotations

from pathlib import Path

import torch

from nrd.data.base import (
    CorruptImageError,
    DataError,
    LabelValueError,
    MissingPairError,
    SizeMismatchError,
    decode_label,
)
from nrd.metrics import MetricInputError, SegmentationMetrics

LISTED_NAMES = 5  # unmatched file names shown in an error before "and N more"


def list_pngs(folder: Path) -> set[str]:
    if not folder.is_dir():
        raise MissingPairError(folder, "is not a folder")
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.suffix.lower() == ".png"}


def _listing(names: set[str]) -> str:
    shown = sorted(names)[:LISTED_NAMES]
    more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
    return ", ".join(shown) + more


def match_files(pred_dir: Path, label_dir: Path) -> list[str]:
    """Relative paths of the PNGs present in both folders; ``MissingPairError`` listing those on one side only."""
    preds, labels = list_pngs(pred_dir), list_pngs(label_dir)
    only_preds, only_labels = preds - labels, labels - preds
    problems = []
    if only_preds:
        problems.append(f"{len(only_preds)} prediction(s) without a label in {label_dir}: {_listing(only_preds)}")
    if only_labels:
        problems.append(f"{len(only_labels)} label(s) of {label_dir} without a prediction: {_listing(only_labels)}")
    if problems:
        raise MissingPairError(pred_dir, "; ".join(problems))
    if not preds:
        raise MissingPairError(pred_dir, f"no *.png files in it or in {label_dir}")
    return sorted(preds)


def read_png(path: Path) -> torch.Tensor:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CorruptImageError(path, f"cannot read ({error})") from error
    return torch.tensor(decode_label(data, path))


def read_class_names(path: Path, num_classes: int) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read class names ({error})") from error
    if len(names) != num_classes:
        raise DataError(path, f"holds {len(names)} class names; expected {num_classes} (one per line)")
    return names


def count_pairs(metrics: SegmentationMetrics, pred_dir: Path, label_dir: Path, names: list[str]) -> None:
    """Add every pair ``pred_dir/name``, ``label_dir/name`` to ``metrics``; a bad file is a named error that says
    which file it is."""
    for name in names:
        pred_path, label_path = pred_dir / name, label_dir / name
        pred, label = read_png(pred_path), read_png(label_path)
        if pred.shape != label.shape:
            raise SizeMismatchError(
                pred_path,
                f"prediction is {'x'.join(map(str, pred.shape))} but label {label_path} is "
                f"{'x'.join(map(str, label.shape))} (HxW)",
            )
        try:
            metrics.update(pred, label)
        except MetricInputError as error:
            raise LabelValueError(pred_path if error.which == "prediction" else label_path, error.problem) from error
