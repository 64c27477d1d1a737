"""``nrd-bench evaluate``: segmentation metrics of a folder of predicted label PNGs against a folder of labels."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from nrd.data.base import (
    IGNORE_INDEX,
    CorruptImageError,
    DataError,
    LabelValueError,
    MissingPairError,
    SizeMismatchError,
    decode_label,
)
from nrd.metrics import TRIMAP_WIDTHS, MetricInputError, SegmentationMetrics, to_json

LISTED_NAMES = 5  # unmatched file names shown in an error before "and N more"


MAX_TRIMAP_WIDTH = 256  # px: wider bands cover whole images (and the band's kernel grows with the square)


def parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers such as 1,2,4") from None
    if not widths or not all(1 <= width <= MAX_TRIMAP_WIDTH for width in widths):
        raise argparse.ArgumentTypeError(f"{text!r}: expected band widths from 1 to {MAX_TRIMAP_WIDTH} px, e.g. 1,2,4")
    return widths


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="aAcc, mIoU, mAcc, mDice, trimap mIoU and Boundary IoU of predicted label PNGs",
        description=(
            "Compare predicted label maps with ground-truth label maps, matched by their path relative to each "
            "folder (*.png, searched recursively). Both are single-channel 8-bit PNGs of train ids; labels may also "
            "hold the ignore index. Metrics come from counts over the whole set, in percent."
        ),
    )
    parser.add_argument("--pred", type=Path, required=True, metavar="DIR", help="folder of predicted label PNGs")
    parser.add_argument("--label", type=Path, required=True, metavar="DIR", help="folder of ground-truth label PNGs")
    parser.add_argument("--num-classes", type=int, required=True, help="number of classes K")
    parser.add_argument(
        "--ignore-index", type=int, default=IGNORE_INDEX, help=f"label value never counted (default {IGNORE_INDEX})"
    )
    parser.add_argument(
        "--trimap-widths",
        type=parse_widths,
        default=TRIMAP_WIDTHS,
        metavar="W,W,...",
        help=f"trimap band widths in pixels (default {','.join(map(str, TRIMAP_WIDTHS))})",
    )
    parser.add_argument("--class-names", type=Path, metavar="FILE", help="text file with one class name per line")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(handler=run)


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


def run(args: argparse.Namespace) -> int:
    metrics = SegmentationMetrics(args.num_classes, args.ignore_index, args.trimap_widths)
    class_names = read_class_names(args.class_names, args.num_classes) if args.class_names else None
    names = match_files(args.pred, args.label)
    for name in names:
        pred_path, label_path = args.pred / name, args.label / name
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
    result = to_json(metrics.compute()) | {"num_images": len(names)}
    if args.json:
        print(json.dumps(result, indent=2, allow_nan=False))
    else:
        print(format_table(result, class_names, args.ignore_index))
    return 0


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(result: dict, class_names: list[str] | None, ignore_index: int) -> str:
    """Per-class IoU/Acc table then the summary; '-' marks values undefined for lack of pixels."""
    num_classes = len(result["per_class_iou"])
    names = class_names or [""] * num_classes
    width = max(4, *(len(name) for name in names))
    header = f"{'class':>5}  {'name':<{width}}{'IoU':>8}{'Acc':>8}"
    lines = [
        f"{result['num_images']} image(s), {num_classes} classes, ignore index {ignore_index}; values in percent",
        header,
        "-" * len(header),
    ]
    for index, (name, iou, acc) in enumerate(zip(names, result["per_class_iou"], result["per_class_acc"], strict=True)):
        lines.append(f"{index:>5}  {name:<{width}}{_percent(iou):>8}{_percent(acc):>8}")
    lines.append("-" * len(header))
    lines.append("  ".join(f"{key} {_percent(result[key])}" for key in ("aAcc", "mIoU", "mAcc", "mDice")))
    if result["trimap_mIoU"]:
        curve = ", ".join(f"w={width}: {_percent(value)}" for width, value in result["trimap_mIoU"].items())
        lines.append(f"trimap mIoU: {curve}")
    lines.append(f"mBIoU {_percent(result['mBIoU'])}")
    return "\n".join(lines)
