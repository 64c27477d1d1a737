"""Coverage of ``pipeline.results.uncertainty.bootstrap``'s 95% mIoU intervals, by simulation with a known truth.

A population of ``--population`` images with K classes is generated once (each class present with its own
probability and a gamma-distributed pixel count; each image a difficulty). A training seed s shifts the logit of the
per-class pixel accuracy by q_sc ~ Normal(0, ``seed_sd``). An evaluation of seed s on an image draws TP ~ Binomial(n,
accuracy) per present class; its FN pixels become FPs of another class present in the image (or of a random class).
The truth is the mIoU of the expected counts over the whole population, averaged over ``TRUTH_SEEDS`` seed draws: what a
researcher wants to know (the decoder's quality, not the luck of one seed on one validation set).

Each trial draws ``--images`` images without replacement and S fresh seeds, evaluates, bootstraps
(``--resamples``), and checks whether the interval holds the truth. Scenarios: no seed effect with one seed (only
image noise: the interval should cover ~95%), a seed effect with 1, 3 and 5 seeds. Writes ``bootstrap_coverage.csv``
and ``.json`` (settings beside the figures) to ``--out-dir``. Run: ``python benchmarks/bootstrap_coverage.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from nrd.evidence import ImageCounts
from nrd.metrics import scores_from_counts
from pipeline.results.uncertainty import bootstrap

K = 8
SCENARIOS = ((1, 0.0), (1, 0.2), (3, 0.2), (1, 0.5), (3, 0.5), (5, 0.5))  # (seeds, seed_sd)
TRUTH_SEEDS = 4000


def population(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixels per (image, class) (0 = absent), the class each class's misses go to in each image (the next class
    present in it, a random other class when alone), the image difficulty, and the class base logit."""
    present = rng.random((size, K)) < np.linspace(0.25, 0.95, K)
    pixels = np.where(present, rng.gamma(2.0, 2000.0, (size, K)).astype(np.int64) + 1, 0)
    target = np.zeros((size, K), dtype=np.int64)
    for i in range(size):
        classes = np.flatnonzero(present[i])
        target[i] = (np.arange(K) + rng.integers(1, K)) % K
        if classes.size > 1:
            target[i, classes] = np.roll(classes, -1)
    return pixels, target, rng.normal(0.0, 0.6, size), np.linspace(0.0, 2.5, K)


def accuracy(difficulty: np.ndarray, base: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(base + shift - difficulty[:, None])))


def counts(rng, pixels, target, difficulty, base, shift, expected: bool = False) -> np.ndarray:
    """(images, K, 3) TP/FP/FN of one seed; ``expected``: expected counts (no binomial noise)."""
    acc = accuracy(difficulty, base, shift)
    tp = pixels * acc if expected else rng.binomial(pixels, acc)
    fn = pixels - tp
    fp = np.zeros(pixels.shape)
    np.add.at(fp, (np.arange(len(pixels))[:, None], target), fn)
    result = np.stack([tp, fp, fn], axis=-1)
    return result if expected else result.astype(np.int64)


def truth(rng, pixels, target, difficulty, base, seed_sd: float) -> tuple[float, float]:
    """The mean over seeds of the population mIoU, and its standard deviation over seeds (the seed noise)."""
    shifts = rng.normal(0.0, seed_sd, (TRUTH_SEEDS, K)) if seed_sd else np.zeros((1, K))
    values = [scores_from_counts(counts(rng, pixels, target, difficulty, base, s, True).sum(0))["mIoU"] for s in shifts]
    return float(np.mean(values)), float(np.std(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--population", type=int, default=5000)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    pixels, target_of, difficulty, base = population(rng, args.population)
    ids = tuple(f"img{i}" for i in range(args.images))
    classes = tuple(f"class{c}" for c in range(K))
    rows, truths = [], {}
    for seeds, seed_sd in SCENARIOS:
        if seed_sd not in truths:
            truths[seed_sd] = truth(rng, pixels, target_of, difficulty, base, seed_sd)
        target, seed_noise = truths[seed_sd]
        hits, widths, started = 0, [], time.perf_counter()
        for trial in range(args.trials):
            chosen = rng.choice(args.population, args.images, replace=False)
            sample = (pixels[chosen], target_of[chosen], difficulty[chosen], base)
            shifts = [rng.normal(0.0, seed_sd, K) if seed_sd else np.zeros(K) for _ in range(seeds)]
            repeats = [ImageCounts(ids, classes, counts(rng, *sample, shift), 255) for shift in shifts]
            estimate = bootstrap({"c": repeats}, resamples=args.resamples, seed=trial).estimates["c"]["mIoU"]
            hits += estimate.low <= target <= estimate.high
            widths.append(estimate.high - estimate.low)
        coverage = hits / args.trials
        rows.append(
            {
                "seeds": seeds,
                "seed_sd": seed_sd,
                "images": args.images,
                "trials": args.trials,
                "resamples": args.resamples,
                "true_mIoU": round(target, 3),
                "seed_sd_mIoU": round(seed_noise, 3),
                "coverage": coverage,
                "coverage_se": round(math.sqrt(coverage * (1 - coverage) / args.trials), 4),
                "median_width": round(float(np.median(widths)), 3),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(rows[-1], flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "bootstrap_coverage.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    settings |= {"classes": K, "confidence": 0.95, "machine": platform.platform()}
    (args.out_dir / "bootstrap_coverage.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
