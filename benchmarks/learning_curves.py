"""Learning curves: every decoder on the same encoder, data and schedule, evaluated every N iterations.

Trains NRD (official init), NRD with ``static_base`` (the labelled saddle fix), DeepLabV3+, bilinear and DUpsampling
on a ResNet-18 trained from scratch, in a plain PyTorch loop that uses ``nrd`` only (no Ray, no MLflow):

- data: the project's synthetic generator and/or CamVid (``--camvid-root``, default ``../shared/data/camvid``
  relative to the repository root; skipped with a message when absent). The training split is decoded once into
  memory; every step draws a batch in a seeded per-epoch order and augments it with ``nrd.data.transforms``'
  ``TrainTransform`` (the official recipe: rescale 0.5-2.0 of ``base_scale``, crop with cat_max_ratio 0.75, flip,
  photometric distortion), seeded per (seed, epoch, sample). CamVid runs at half its native scale (base scale
  240x180, validation at the same test scale, predictions resized back to the full-size label) to fit the CPU budget.
- schedule: SGD (momentum 0.9, weight decay 5e-4), linear warm-up from 0.01 x lr over ``--warmup`` iterations then
  poly 0.9 down to 1e-4 (the official shape, scaled to the budget), auxiliary FCN loss weight 0.4, cross-entropy
  with mmseg's reduction (``nrd.losses``, ``official``).
- evaluation every ``--eval-interval`` iterations (and at 0) on a fixed subset of the val split (the first
  ``--val-images``), whole images, mIoU/aAcc from ``nrd.metrics``. For NRD variants also the within-patch share of
  the variance of g_θ's logits (stride 4, before the final up-sampling) on the first val batch: sum over classes of
  the squared deviations from each patch's mean, over the squared deviations from the global mean. About 0 means
  every patch is one constant vector (a stride-32 block classifier: the saddle).

Writes ``learning_curves_<dataset>.csv`` (one row per evaluation), ``learning_curves_<dataset>.json`` (settings,
seeds, versions, git commit, wall times, decoder GMACs per variant at the training crop, the iteration at which
each NRD variant first beats the bilinear decoder, per seed) and ``learning_curves_<dataset>.png`` (mIoU vs
iteration, one line per variant and seed) into ``--out-dir`` (``benchmarks/results``). Rows are written as they
come, so an interrupted run keeps what it measured.

Run: ``python benchmarks/learning_curves.py --dataset synthetic --iterations 400 --threads 1``; ``--quick`` is a
seconds-long smoke test (tiny images, a few iterations). ``--measure-steps N`` only times N steps per variant.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nrd import create_model  # noqa: E402
from nrd.cost import CONVENTION, COUNTER, measure_cost  # noqa: E402
from nrd.data.base import IGNORE_INDEX, decode_image  # noqa: E402
from nrd.data.camvid import CamVidDataset  # noqa: E402
from nrd.data.synthetic import SyntheticDataset  # noqa: E402
from nrd.data.transforms import (  # noqa: E402
    TrainTransform,
    TrainTransformConfig,
    ValTransform,
    ValTransformConfig,
    sample_rng,
)
from nrd.decoders.nrd import dynamic_mlp  # noqa: E402
from nrd.inference import predict_to_label  # noqa: E402
from nrd.losses import segmentation_loss  # noqa: E402
from nrd.metrics import SegmentationMetrics  # noqa: E402

# name → (decoder, decoder keyword arguments); the order is the order of training (the most telling first).
VARIANTS: dict[str, tuple[str, dict]] = {
    "nrd": ("nrd", {}),
    "nrd_static_base": ("nrd", {"static_base": True}),
    "deeplabv3plus": ("deeplabv3plus", {}),
    "bilinear": ("bilinear", {}),
    "dupsampling": ("dupsampling", {}),
}
NRD_VARIANTS = ("nrd", "nrd_static_base")
DEFAULT_CAMVID = REPO.parent / "shared" / "data" / "camvid"


@dataclass(frozen=True)
class Settings:
    dataset: str
    encoder: str
    iterations: int
    warmup: int
    eval_interval: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_ratio: float
    power: float
    min_lr: float
    aux_weight: float
    loss_reduction: str
    base_scale: tuple[int, int]
    crop_size: tuple[int, int]
    test_scale: tuple[int, int] | None
    val_images: int
    train_images: int
    threads: int
    seeds: tuple[int, ...]
    variants: tuple[str, ...]


def learning_rate(iteration: int, s: Settings) -> float:
    """Poly decay from lr to min_lr, scaled during warm-up by a factor rising linearly from warmup_ratio to 1 (mmseg's
    ``poly`` with ``warmup='linear'``)."""
    poly = (s.lr - s.min_lr) * (1 - min(1.0, iteration / s.iterations)) ** s.power + s.min_lr
    if iteration < s.warmup:
        return poly * (1 - (1 - iteration / s.warmup) * (1 - s.warmup_ratio))
    return poly


def load_split(dataset, split: str, limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    samples = dataset.list_samples(split)[:limit]
    pairs = []
    for sample in samples:
        raw = dataset.read_sample(sample)
        pairs.append((decode_image(raw.image_bytes, sample.id), raw.label))
    return pairs


def build_data(args) -> tuple[list, list, int, TrainTransformConfig, ValTransformConfig]:
    if args.dataset == "synthetic":
        size = (32, 32) if args.quick else (128, 128)
        counts = {"train": 16, "val": 4} if args.quick else {"train": 512, "val": 128}
        dataset = SyntheticDataset(num_samples=counts, size=size, seed=0)
        crop = size if args.quick else (args.crop, args.crop)
        train_cfg = TrainTransformConfig(base_scale=(size[1], size[0]), crop_size=crop)
        val_cfg = ValTransformConfig()
    else:
        dataset = CamVidDataset(args.camvid_root)
        train_cfg = TrainTransformConfig(base_scale=(240, 180), crop_size=(args.crop, args.crop))
        val_cfg = ValTransformConfig(test_scale=(240, 180))
    train = load_split(dataset, "train", 16 if args.quick else None)
    val = load_split(dataset, "val", args.val_images)
    return train, val, dataset.info.num_classes, train_cfg, val_cfg


class Batches:
    """Seeded batches: a new permutation of the training set every epoch, each sample augmented with its own
    (seed, epoch, index) generator."""

    def __init__(self, pairs, transform: TrainTransform, batch_size: int, seed: int):
        self.pairs, self.transform, self.batch_size, self.seed = pairs, transform, batch_size, seed
        self.epoch, self.order, self.position = 0, self._order(0), 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 7]).permutation(len(self.pairs))

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for _ in range(self.batch_size):
            if self.position == len(self.order):
                self.epoch += 1
                self.order, self.position = self._order(self.epoch), 0
            index = int(self.order[self.position])
            self.position += 1
            image, label = self.transform(*self.pairs[index], sample_rng(self.seed, self.epoch, index))
            images.append(image)
            labels.append(label)
        return torch.stack(images), torch.stack(labels)


def within_patch_share(model, images: torch.Tensor) -> float:
    """Share of the variance of g_θ's logits (stride f grid, before up-sampling) that lies inside the patches; 0 when
    the logits do not vary at all (then nothing varies inside a patch either: the degenerate end of the saddle)."""
    decoder = model.decoder
    with torch.no_grad():
        padded = model.pad(images)
        features = model.encoder(padded)
        context = decoder.context(features[-1])
        logits = dynamic_mlp(
            decoder.mlp_inputs(features, context.shape[-2:]), decoder.controller(context), decoder.layer_shapes
        ).double()
    batch, classes, height, width = logits.shape
    f = decoder.patch_factor
    patches = logits.reshape(batch, classes, height // f, f, width // f, f)
    within = (patches - patches.mean(dim=(3, 5), keepdim=True)).square().sum()
    total = (logits - logits.mean(dim=(0, 2, 3), keepdim=True)).square().sum()
    return float(within / total) if total > 0 else 0.0


def evaluate(model, val_batches, num_classes: int) -> dict[str, float]:
    metrics = SegmentationMetrics(num_classes, IGNORE_INDEX, boundary_iou=False)
    for image, label, valid_size in val_batches:
        scores = predict_to_label(model, image.unsqueeze(0), valid_size, tuple(label.shape))
        metrics.update(scores.argmax(1)[0], label)
    result = metrics.compute()
    return {"mIoU": result["mIoU"], "aAcc": result["aAcc"]}


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit.stdout.strip() + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def decoder_gmacs(variant: str, s: Settings, num_classes: int) -> dict[str, float]:
    decoder, kwargs = VARIANTS[variant]
    model = create_model(decoder, s.encoder, num_classes, aux_head=False, **kwargs)
    report = measure_cost(model, (1, 3, *s.crop_size))
    return {
        "decoder_gmacs": report.gmacs["decoder"],
        "head_gmacs": report.gmacs["head"],
        "model_gmacs": report.gmacs["model"],
        "decoder_params_m": report.params_m["decoder"],
    }


class Run:
    """One variant and seed: its model, optimiser and seeded batch stream, trained in chunks so that all variants
    advance in lockstep (at any stopping point every curve has reached the same iteration)."""

    def __init__(self, variant, seed, s: Settings, train, val_batches, num_classes, train_cfg, on_eval):
        self.variant, self.seed, self.s = variant, seed, s
        self.decoder, kwargs = VARIANTS[variant]
        torch.manual_seed(seed)  # the encoder is built first: every variant starts from the same encoder weights
        self.model = create_model(self.decoder, s.encoder, num_classes, **kwargs)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
        )
        self.batches = Batches(train, TrainTransform(train_cfg), s.batch_size, seed)  # the same batches for all
        self.val_batches, self.num_classes, self.on_eval = val_batches, num_classes, on_eval
        self.iteration, self.train_time, self.window_loss, self.window_steps = 0, 0.0, 0.0, 0
        self.step_times: list[float] = []

    def train_until(self, target: int) -> None:
        model, s = self.model.train(), self.s
        # Dropout draws from the global RNG: reseed per chunk so a curve does not depend on the other variants.
        torch.manual_seed(1_000_003 * self.seed + 1009 * list(VARIANTS).index(self.variant) + self.iteration)
        while self.iteration < target:
            start = time.perf_counter()
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.iteration, s)
            images, labels = self.batches.next()
            logits, aux_logits = model(images, with_aux=True)
            loss = segmentation_loss(logits, labels, IGNORE_INDEX, s.loss_reduction)
            loss = loss + s.aux_weight * segmentation_loss(aux_logits, labels, IGNORE_INDEX, s.loss_reduction)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"{self.variant} seed {self.seed}: loss {loss.item()} at {self.iteration}")
            self.step_times.append(time.perf_counter() - start)
            self.train_time += self.step_times[-1]
            self.window_loss += loss.item()
            self.window_steps += 1
            self.iteration += 1

    def log(self) -> None:
        start = time.perf_counter()
        evaluation = evaluate(self.model, self.val_batches, self.num_classes)
        probe = self.val_batches[0][0].unsqueeze(0)
        share = within_patch_share(self.model.eval(), probe) if self.variant in NRD_VARIANTS else math.nan
        self.on_eval(
            {
                "dataset": self.s.dataset,
                "variant": self.variant,
                "decoder": self.decoder,
                "seed": self.seed,
                "iteration": self.iteration,
                "lr": learning_rate(max(self.iteration - 1, 0), self.s),
                "train_loss": self.window_loss / self.window_steps if self.window_steps else math.nan,
                "mIoU": evaluation["mIoU"],
                "aAcc": evaluation["aAcc"],
                "within_patch_share": share,
                "train_s": self.train_time,
                "eval_s": time.perf_counter() - start,
                "median_step_s": float(np.median(self.step_times)) if self.step_times else math.nan,
            }
        )
        self.window_loss, self.window_steps = 0.0, 0


def first_beats(rows: list[dict], variant: str, seed: int) -> int | None:
    """The first evaluated iteration at which ``variant``'s mIoU is above the bilinear decoder's (same seed)."""
    bilinear = {r["iteration"]: r["mIoU"] for r in rows if r["variant"] == "bilinear" and r["seed"] == seed}
    for row in sorted((r for r in rows if r["variant"] == variant and r["seed"] == seed), key=lambda r: r["iteration"]):
        if row["iteration"] in bilinear and row["mIoU"] > bilinear[row["iteration"]]:
            return row["iteration"]
    return None


def plot(rows: list[dict], s: Settings, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(figure)
    ax_miou, ax_share = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    colours = dict(zip(VARIANTS, ["tab:red", "tab:purple", "tab:blue", "tab:green", "tab:orange"], strict=True))
    styles = ["-", "--", ":", "-."]
    for variant in s.variants:
        for k, seed in enumerate(s.seeds):
            points = sorted(
                (r["iteration"], r["mIoU"], r["within_patch_share"])
                for r in rows
                if r["variant"] == variant and r["seed"] == seed
            )
            if not points:
                continue
            its, miou, share = zip(*points, strict=True)
            label = f"{variant} (seed {seed})"
            ax_miou.plot(its, miou, styles[k % 4], color=colours[variant], marker="o", ms=3, label=label)
            if variant in NRD_VARIANTS:
                ax_share.semilogy(
                    its, np.maximum(share, 1e-16), styles[k % 4], color=colours[variant], marker="o", ms=3, label=label
                )
    ax_miou.set(
        xlabel="iteration",
        ylabel="val mIoU (%)",
        title=f"{s.dataset}: {s.encoder} from scratch, batch {s.batch_size}, crop {s.crop_size}, "
        f"{s.val_images} val images",
    )
    ax_miou.grid(alpha=0.3)
    ax_miou.legend(fontsize=7)
    ax_share.set(xlabel="iteration", ylabel="within-patch share of logit variance", title="NRD's g_θ logits")
    ax_share.grid(alpha=0.3)
    ax_share.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def markdown_table(csv_path: Path) -> str:
    """mIoU per variant (rows) at each evaluated iteration (columns), one table per seed, from a results CSV."""
    rows = list(csv.DictReader(csv_path.open()))
    lines = []
    for seed in sorted({int(r["seed"]) for r in rows}):
        mine = [r for r in rows if int(r["seed"]) == seed]
        iterations = sorted({int(r["iteration"]) for r in mine})
        lines += [
            f"seed {seed}",
            "",
            "| variant | " + " | ".join(str(i) for i in iterations) + " |",
            "|---|" + "---:|" * len(iterations),
        ]
        for variant in dict.fromkeys(r["variant"] for r in mine):
            values = {int(r["iteration"]): float(r["mIoU"]) for r in mine if r["variant"] == variant}
            lines.append(
                f"| {variant} | " + " | ".join(f"{values[i]:.1f}" if i in values else "" for i in iterations) + " |"
            )
        shares = {(r["variant"], int(r["iteration"])): float(r["within_patch_share"]) for r in mine}
        for variant in NRD_VARIANTS:
            if any(v == variant for v, _ in shares):
                cells = [f"{shares[(variant, i)]:.1e}" if (variant, i) in shares else "" for i in iterations]
                lines.append(f"| {variant} within-patch share | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("synthetic", "camvid"), help="required unless --summarize")
    parser.add_argument("--camvid-root", type=Path, default=DEFAULT_CAMVID)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up iterations (default: iterations / 21, the official 4k of 84k)"
    )
    parser.add_argument("--eval-interval", type=int, default=None, help="default: iterations / 8")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128, help="training crop side (a multiple of 32)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--val-images", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (set explicitly)")
    parser.add_argument("--loss-reduction", choices=("official", "valid"), default="official")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--tag", default="", help="suffix of the output file names")
    parser.add_argument("--measure-steps", type=int, default=0, help="only time this many steps per variant")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="stop (all variants at the same iteration) "
        "when the next evaluation round would end after this many seconds; 0: no limit",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    parser.add_argument("--summarize", type=Path, default=None, help="print a results CSV's mIoU tables and exit")
    args = parser.parse_args(argv)
    if args.dataset is None and args.summarize is None:
        parser.error("--dataset is required")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summarize:
        print(markdown_table(args.summarize))
        return 0
    torch.set_num_threads(args.threads)
    if args.quick:
        args.iterations, args.batch_size, args.val_images = 2, 2, 2
        args.eval_interval = args.eval_interval or 1
    if args.dataset == "camvid" and not (args.camvid_root / "train").is_dir():
        print(f"CamVid not found under {args.camvid_root} (expected train/, trainannot/, val/, valannot/): skipped")
        return 0
    wall_start = time.perf_counter()
    train, val, num_classes, train_cfg, val_cfg = build_data(args)
    iterations = args.iterations
    settings = Settings(
        dataset=args.dataset,
        encoder=args.encoder,
        iterations=iterations,
        warmup=args.warmup if args.warmup is not None else max(1, round(iterations / 21)),
        eval_interval=args.eval_interval or max(1, iterations // 8),
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=0.9,
        weight_decay=5e-4,
        warmup_ratio=0.01,
        power=0.9,
        min_lr=1e-4,
        aux_weight=0.4,
        loss_reduction=args.loss_reduction,
        base_scale=train_cfg.base_scale,
        crop_size=train_cfg.crop_size,
        test_scale=val_cfg.test_scale,
        val_images=len(val),
        train_images=len(train),
        threads=args.threads,
        seeds=tuple(args.seeds),
        variants=tuple(args.variants),
    )
    val_transform = ValTransform(val_cfg)
    val_batches = []
    for image, label in val:
        image_t, label_t = val_transform(image, label)
        val_batches.append((image_t, label_t, val_transform.valid_size(*label.shape)))

    if args.measure_steps:
        for variant in settings.variants:
            run = Run(variant, 0, settings, train, val_batches, num_classes, train_cfg, None)
            run.train_until(args.measure_steps)
            times = run.step_times[1:] or run.step_times
            print(
                f"{variant}: median step {np.median(times):.3f} s over {len(times)} steps ({args.threads} "
                f"threads, batch {settings.batch_size}, crop {settings.crop_size})",
                flush=True,
            )
        return 0

    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"learning_curves_{args.dataset}{'_' + args.tag if args.tag else ''}"
    csv_path, json_path, png_path = (args.out_dir / f"{stem}.{ext}" for ext in ("csv", "json", "png"))
    fields = [
        "dataset",
        "variant",
        "decoder",
        "seed",
        "iteration",
        "lr",
        "train_loss",
        "mIoU",
        "aAcc",
        "within_patch_share",
        "train_s",
        "eval_s",
        "median_step_s",
        "wall_s",
    ]
    rows: list[dict] = []
    cost = {variant: decoder_gmacs(variant, settings, num_classes) for variant in settings.variants}
    summary = {
        "benchmark": "learning_curves",
        "settings": asdict(settings),
        "num_classes": num_classes,
        "git_commit": git_commit(),
        "versions": versions(),
        "command": " ".join(sys.argv),
        "cost": {
            "input": [1, 3, *settings.crop_size],
            "convention": CONVENTION,
            "counter": COUNTER,
            "per_variant": cost,
        },
        "variant_kwargs": {v: VARIANTS[v][1] for v in settings.variants},
        "wall_s": {},
        "median_step_s": {},
        "first_beats_bilinear": {},
        "last_iteration": {},
        "stopped": None,
        "complete": False,
    }

    def write_summary() -> None:
        summary["wall_s"]["total"] = time.perf_counter() - wall_start
        json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")

    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()

        def on_eval(row: dict) -> None:
            row["wall_s"] = time.perf_counter() - wall_start
            rows.append(row)
            writer.writerow(row)
            handle.flush()
            print(
                f"{row['variant']:16s} seed {row['seed']} it {row['iteration']:5d}  mIoU {row['mIoU']:6.2f}  "
                f"share {row['within_patch_share']:.2e}  loss {row['train_loss']:.3f}  wall {row['wall_s']:.0f}s",
                flush=True,
            )

        targets = [*range(settings.eval_interval, settings.iterations, settings.eval_interval), settings.iterations]
        stopped = False
        for seed in settings.seeds:
            runs = [
                Run(v, seed, settings, train, val_batches, num_classes, train_cfg, on_eval) for v in settings.variants
            ]
            for run in runs:
                run.log()
            for target in targets:
                round_start = time.perf_counter()
                for run in runs:
                    run.train_until(target)
                    run.log()
                round_s = time.perf_counter() - round_start
                summary["last_iteration"][f"seed{seed}"] = target
                for run in runs:
                    summary["wall_s"][f"{run.variant}/seed{seed}/train"] = run.train_time
                    summary["median_step_s"][f"{run.variant}/seed{seed}"] = float(np.median(run.step_times))
                for nrd_variant in NRD_VARIANTS:
                    if nrd_variant in settings.variants and "bilinear" in settings.variants:
                        summary["first_beats_bilinear"][f"{nrd_variant}/seed{seed}"] = first_beats(
                            rows, nrd_variant, seed
                        )
                write_summary()
                plot(rows, settings, png_path)
                elapsed = time.perf_counter() - wall_start
                if args.time_limit and elapsed + 1.2 * round_s > args.time_limit and target != targets[-1]:
                    summary["stopped"] = (
                        f"time limit {args.time_limit:.0f} s: stopped after iteration {target} of "
                        f"{settings.iterations} (seed {seed})"
                    )
                    print(summary["stopped"], flush=True)
                    stopped = True
                    break
            if stopped:
                break
    summary["complete"] = not stopped
    write_summary()
    print(f"wrote {csv_path}, {json_path}, {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
