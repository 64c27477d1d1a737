"""``nrd-bench prepare``: read a dataset in its official layout (or generate the synthetic one), check every sample
and write Parquet shards + manifest.json; rerunning resumes an interrupted run."""

from __future__ import annotations

import argparse
import os

from nrd.constants import DATASET_NAMES
from nrd.errors import InvalidHyperparameterError
from pipeline.commands.common import output_folder, parse_size

SYNTHETIC_FLAGS = {
    "num_train": "--num-train",
    "num_val": "--num-val",
    "size": "--size",
    "num_classes": "--num-classes",
    "seed": "--seed",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="check a dataset and write it as Parquet shards",
        description=(
            "Read every sample of the chosen splits, check it (decodable image and label, label values in the "
            "dataset's set, equal sizes, no missing partner), and write Parquet shards (original image bytes, PNG "
            "train-id labels) with a manifest.json. Rerun the same command to resume an interrupted run."
        ),
    )
    parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASET_NAMES)}")
    parser.add_argument("--root", help="folder of the dataset's official layout (not for synthetic)")
    parser.add_argument("--out", required=True, help="output folder for the shards and manifest.json")
    parser.add_argument("--splits", default="train,val", help="comma-separated splits (default: train,val)")
    parser.add_argument("--shard-size", type=int, default=256, help="rows per shard (default 256)")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad samples (recorded in the manifest)")
    parser.add_argument("--limit", type=int, help="keep only the first N samples of each split")
    parser.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="reader threads (default: up to 4)"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress (a line updated per sample on a terminal, else one per shard)"
    )
    synthetic = parser.add_argument_group("synthetic dataset")
    synthetic.add_argument("--num-train", type=int, help="train samples (default 512)")
    synthetic.add_argument("--num-val", type=int, help="val samples (default 128)")
    synthetic.add_argument("--size", type=parse_size, metavar="HxW", help="image size (default 128x128)")
    synthetic.add_argument("--num-classes", type=int, help="classes including background (default 6)")
    synthetic.add_argument("--seed", type=int, help="generator seed (default 0)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from nrd.data import create_dataset, prepare_shards  # importing torch takes seconds: only when run
    from nrd.data.synthetic import DEFAULT_NUM_SAMPLES

    options = {key: getattr(args, key) for key in SYNTHETIC_FLAGS if getattr(args, key) is not None}
    if args.dataset == "synthetic":
        if args.root is not None:
            raise InvalidHyperparameterError("nrd-bench prepare", "--root", args.root, "no --root for synthetic")
        num_samples = {
            "train": options.pop("num_train", DEFAULT_NUM_SAMPLES["train"]),
            "val": options.pop("num_val", DEFAULT_NUM_SAMPLES["val"]),
        }
        dataset = create_dataset("synthetic", num_samples=num_samples, **options)
    else:
        dataset = create_dataset(args.dataset, args.root)
        if options:
            key, value = next(iter(options.items()))
            raise InvalidHyperparameterError("nrd-bench prepare", SYNTHETIC_FLAGS[key], value, "only with synthetic")
    splits = [split.strip() for split in args.splits.split(",") if split.strip()]
    if not splits:
        expected = f"comma-separated splits of {args.dataset} ({', '.join(dataset.splits)})"
        raise InvalidHyperparameterError("nrd-bench prepare", "--splits", args.splits, expected)
    with output_folder("nrd-bench prepare", "--out", args.out, args.root) as out:
        manifest = prepare_shards(
            dataset,
            out,
            splits=splits,
            shard_size=args.shard_size,
            skip_bad=args.skip_bad,
            limit=args.limit,
            workers=args.workers,
            progress=not args.quiet,
        )
    counts = ", ".join(f"{split} {entry['count']}" for split, entry in manifest["splits"].items())
    print(f"prepared {manifest['dataset']} in {args.out}: {counts} samples")
    if manifest["skipped"]:
        print(f"skipped {len(manifest['skipped'])} bad samples (files and reasons in {args.out}/manifest.json)")
    return 0
