"""Data throughput benchmark: decode + augment, images/s in one process, per data source.

For each source (real CamVid, IDD-Lite and SIFT Flow images from ``../shared/data`` when present, and the synthetic
generator), the samples are first prepared into Parquet shards exactly as ``nrd-bench prepare`` does (not timed),
then read back through ``ShardDataset`` and timed over the same samples in three stages, each the median of
``TIMED_PASSES`` passes:

- ``decode``: Parquet row → decoded image (H, W, 3) and label (H, W);
- ``augment``: the training transform alone on pre-decoded arrays (random rescale 0.5-2.0 of a base scale, crop
  with cat_max_ratio 0.75, flip, photometric distortion, normalisation);
- ``decode+augment``: both, what one data-loading process delivers.

CamVid and synthetic data use the Cityscapes recipe's sizes (base scale (2048, 1024), 512x1024 crops); IDD-Lite and
SIFT Flow, small images, use their training presets (``TRAIN_PRESETS``: 224x320 and 256x256 crops at native scale),
what ``nrd-bench train`` applies to them. The ``crop`` and ``base_scale`` columns say which.

Writes ``data_throughput.csv`` and ``data_throughput.json`` (resolved settings beside the figures) to ``--out-dir``.
Run: ``python benchmarks/data_throughput.py [--samples 48] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from nrd.data import ShardDataset, create_dataset, prepare_shards
from nrd.data.transforms import TRAIN_PRESETS, TrainTransform, TrainTransformConfig, sample_rng

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CROP = TrainTransformConfig(base_scale=(2048, 1024), crop_size=(512, 1024))
# real sources: name → (folder under SHARED_DATA, training transform)
REAL_SOURCES = {
    "camvid": ("camvid", CROP),
    "idd_lite": ("idd_lite/idd20k_lite", TRAIN_PRESETS["idd_lite"]),
    "siftflow": ("siftflow", TRAIN_PRESETS["siftflow"]),
}
TIMED_PASSES = 3


def images_per_second(count: int, fn) -> tuple[float, float]:
    """(images/s, seconds) of the median of ``TIMED_PASSES`` timed calls of ``fn`` over ``count`` images."""
    durations = []
    for _ in range(TIMED_PASSES):
        started = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - started)
    seconds = statistics.median(durations)
    return count / seconds, seconds


def measure(name: str, prepared: Path, samples: int, seed: int, config: TrainTransformConfig) -> dict:
    raw = ShardDataset(prepared, "train", decode=False)
    decoded = ShardDataset(prepared, "train")
    count = min(samples, len(decoded))
    transform = TrainTransform(config)
    arrays = [decoded[i] for i in range(count)]  # also warms the file cache and the transform's code paths
    transform(arrays[0]["image"], arrays[0]["label"], sample_rng(seed, 1, 0))

    def decode():
        for index in range(count):
            decoded[index]

    def augment():
        for index, item in enumerate(arrays):
            transform(item["image"], item["label"], sample_rng(seed, 0, index))

    def decode_augment():
        for index in range(count):
            item = decoded[index]
            transform(item["image"], item["label"], sample_rng(seed, 0, index))

    first = arrays[0]["image"].shape
    result = {
        "source": name,
        "samples": count,
        "source_size": f"{first[0]}x{first[1]}",
        "encoded_mib": round(sum(len(raw[i]["image"]) + len(raw[i]["label"]) for i in range(count)) / 2**20, 2),
        "crop": "x".join(map(str, config.crop_size)),
        "base_scale": "x".join(map(str, config.base_scale)),
    }
    for label, fn in (("decode", decode), ("augment", augment), ("decode_augment", decode_augment)):
        rate, seconds = images_per_second(count, fn)
        result[f"{label}_images_per_s"] = round(rate, 2)
        result[f"{label}_seconds"] = round(seconds, 3)
    print(
        f"{name:<10} {result['source_size']:>10} decode {result['decode_images_per_s']:>7.1f}/s  augment "
        f"{result['augment_images_per_s']:>7.1f}/s  decode+augment {result['decode_augment_images_per_s']:>7.1f}/s",
        file=sys.stderr,
        flush=True,
    )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=48, help="samples per source (default 48)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: one core)")
    parser.add_argument("--synthetic-size", default="1024x2048", help="synthetic image size HxW (default 1024x2048)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    synthetic_size = tuple(int(v) for v in args.synthetic_size.lower().split("x"))

    sources = []
    for name, (folder, transform) in REAL_SOURCES.items():
        if (SHARED_DATA / folder).is_dir():
            sources.append((name, create_dataset(name, SHARED_DATA / folder), transform))
        else:
            print(f"{name} not found at {SHARED_DATA / folder}: not measured", file=sys.stderr)
    synthetic = create_dataset(
        "synthetic", num_samples={"train": args.samples}, size=synthetic_size, seed=args.seed, num_classes=6
    )
    sources.append(("synthetic", synthetic, CROP))

    rows = []
    with tempfile.TemporaryDirectory(prefix="nrd-throughput-") as scratch:
        for name, dataset, transform in sources:
            prepared = Path(scratch) / name
            prepare_shards(dataset, prepared, splits=("train",), limit=args.samples, progress=False)
            rows.append(measure(name, prepared, args.samples, args.seed, transform))

    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / "data_throughput"
    with open(f"{stem}.csv.tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(f"{stem}.csv.tmp", f"{stem}.csv")
    config = {
        "transforms": {name: dataclasses.asdict(transform) for name, _, transform in sources},
        "samples": args.samples,
        "threads": args.threads,
        "synthetic_size": list(synthetic_size),
        "seed": args.seed,
        "processes": 1,
        "timed_passes": TIMED_PASSES,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    with open(f"{stem}.json.tmp", "w") as handle:
        json.dump({"config": config, "results": rows}, handle, indent=2)
    os.replace(f"{stem}.json.tmp", f"{stem}.json")

    print(f"\nDecode + augment throughput, one process, {args.threads} torch thread(s):")
    print(f"{'source':<10}{'size':>11}{'crop':>10}{'decode/s':>11}{'augment/s':>11}{'decode+augment/s':>18}")
    for row in rows:
        print(
            f"{row['source']:<10}{row['source_size']:>11}{row['crop']:>10}{row['decode_images_per_s']:>11.1f}"
            f"{row['augment_images_per_s']:>11.1f}{row['decode_augment_images_per_s']:>18.1f}"
        )
    print(f"\nwrote {stem}.csv and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
