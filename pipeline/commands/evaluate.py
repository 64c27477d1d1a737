"""``nrd-bench evaluate``: segmentation metrics of a folder of predicted label PNGs against a folder of labels."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nrd.constants import IGNORE_INDEX, TRIMAP_WIDTHS

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


def run(args: argparse.Namespace) -> int:
    from nrd.metrics import SegmentationMetrics, to_json  # importing torch takes seconds: only when run
    from pipeline.commands.label_pngs import count_pairs, match_files, read_class_names

    metrics = SegmentationMetrics(args.num_classes, args.ignore_index, args.trimap_widths)
    class_names = read_class_names(args.class_names, args.num_classes) if args.class_names else None
    names = match_files(args.pred, args.label)
    count_pairs(metrics, args.pred, args.label, names)
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
