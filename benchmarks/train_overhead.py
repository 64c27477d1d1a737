"""Training overhead benchmark: ``nrd-bench train`` (Ray Train + Ray Data + MLflow) against a plain PyTorch loop.

Both train the same model on the same synthetic Parquet shards (prepared as ``nrd-bench prepare`` does; not timed)
for the same iterations, with the same augmentation (``TrainTransform`` with
``pipeline.training.ingest.transform_config``), optimizer and schedule (``pipeline.training.loop.learning_rate``), and
the same number of torch threads (Ray gives a worker OMP_NUM_THREADS = floor(CPUs per worker); the plain loop calls
``torch.set_num_threads`` with that number):

- ``plain``: one process; each step reads and augments its batch (``ShardDataset`` + ``TrainTransform``) and then
  runs forward, backward and the optimizer step. Data and compute time are timed apart.
- ``ray``: ``pipeline.training.run.train`` with one worker; decoding and augmentation run in Ray Data's tasks on the
  CPUs the worker leaves free, metrics go to MLflow (SQLite). Step times come from the ``images_per_s`` it logs.
- ``ray_data``: Ray Data alone iterating ``pipeline.training.ingest.build_datasets``' train set once, limited to the
  CPUs training leaves it: seconds to the first batch (paid again at every epoch) and images/s over the whole pass,
  start-up included (a lower bound of what ingestion can deliver), to compare with what training consumes. The
  train set (``--train-samples``) is larger than the run needs, so that start-up does not dominate the pass.

The steady-state step time is the median over log windows (``--log-interval`` iterations each) after the first
window, which holds start-up (Ray Data's first blocks, first-iteration allocations) on both sides. Eval and
checkpoints happen only after the last iteration, outside every window. Writes ``train_overhead.json`` (resolved
settings beside the figures) and ``train_overhead.csv`` to ``--out-dir``.
Run: ``python benchmarks/train_overhead.py [--iterations 40] [--batch-size 8] [--size 64]``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from nrd.data import ShardDataset, create_dataset, prepare_shards
from nrd.data.transforms import TrainTransform, sample_rng
from pipeline.config import TrainConfig
from pipeline.resolve import resolve
from pipeline.training.ingest import build_datasets, transform_config
from pipeline.training.loop import learning_rate, seed_everything
from pipeline.training.run import train

STEP_TIME_GOAL = 1.10  # Ray's steady-state step time may exceed the plain loop's by at most 10 %


def make_config(args: argparse.Namespace, dataset_dir: Path, storage: Path) -> TrainConfig:
    """The run both sides train: eval and checkpoint only at the end, so that no log window holds them."""
    schedule = {
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "lr": 0.01,
        "seed": args.seed,
        "log_interval": args.log_interval,
        "eval_interval": args.iterations,
        "checkpoint_interval": args.iterations,
    }
    run = {
        "storage_path": str(storage),
        "name": "overhead",
        "experiment": "train-overhead",
        "tracking_uri": f"sqlite:///{storage / 'mlflow.db'}",
    }
    values = {
        "model": {"decoder": args.decoder, "encoder": args.encoder},
        "data": {"dataset_dir": str(dataset_dir), "crop_size": [args.size, args.size]},
        "schedule": schedule,
        "scaling": {"workers": 1, "cpus_per_worker": args.cpus_per_worker},
        "run": run,
    }
    return TrainConfig.from_dict(values, source="train_overhead.py")


def steady_step_time(window_seconds: list[float], log_interval: int) -> float:
    """Median seconds per iteration over the log windows after the first."""
    return statistics.median(window_seconds[1:]) / log_interval


def run_plain(config: TrainConfig, manifest: dict, threads: int) -> dict:
    """The plain PyTorch loop; returns per-window seconds and the mean data / compute seconds per step."""
    torch.set_num_threads(threads)
    schedule = config.schedule
    seed_everything(schedule.seed)
    model = config.model.build()
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay
    )
    criterion = torch.nn.CrossEntropyLoss(ignore_index=manifest["ignore_index"])
    dataset = ShardDataset(config.data.dataset_dir, "train")
    transform = TrainTransform(transform_config(config, manifest))
    batch_size = config.per_worker_batch_size
    data_seconds, compute_seconds, windows = [], [], []
    window_start = time.perf_counter()
    for iteration in range(schedule.iterations):
        started = time.perf_counter()
        pairs = []
        for index in range(iteration * batch_size, (iteration + 1) * batch_size):
            epoch, position = divmod(index, len(dataset))
            sample = dataset[position]
            pairs.append(transform(sample["image"], sample["label"], sample_rng(schedule.seed, epoch, position)))
        images = torch.stack([image for image, _ in pairs])
        labels = torch.stack([label for _, label in pairs])
        loaded = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(iteration, schedule)
        logits, aux_logits = model(images, with_aux=True)
        loss = criterion(logits, labels)
        if aux_logits is not None and schedule.aux_weight > 0:
            loss = loss + schedule.aux_weight * criterion(aux_logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        done = time.perf_counter()
        data_seconds.append(loaded - started)
        compute_seconds.append(done - loaded)
        if (iteration + 1) % schedule.log_interval == 0:
            windows.append(done - window_start)
            window_start = done
    return {
        "windows": windows,
        "data_s": statistics.mean(data_seconds[schedule.log_interval :]),
        "compute_s": statistics.mean(compute_seconds[schedule.log_interval :]),
    }


def run_ray_data(config: TrainConfig, manifest: dict, cpus: float) -> dict:
    """Ray Data alone over one pass of the train set, limited to ``cpus``: seconds to the first batch, seconds for
    the pass, and images/s over the pass (start-up included: Ray Data decodes ahead while the first batch is made, so
    a rate after the first batch would count prefetched rows)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    limits, bars = context.execution_options.resource_limits, context.enable_progress_bars
    context.execution_options.resource_limits = ray.data.ExecutionResources(cpu=cpus)
    context.enable_progress_bars = False
    try:
        started = time.perf_counter()
        first_batch_s, images = None, 0
        for batch in build_datasets(config, manifest)["train"].iter_torch_batches(
            batch_size=config.per_worker_batch_size, drop_last=True
        ):
            first_batch_s = first_batch_s or time.perf_counter() - started
            images += len(batch["image"])
        pass_s = time.perf_counter() - started
    finally:
        context.execution_options.resource_limits, context.enable_progress_bars = limits, bars
    return {"first_batch_s": first_batch_s, "pass_s": pass_s, "images_per_s": images / pass_s}


def run_ray(config: TrainConfig, manifest: dict) -> dict:
    """``nrd-bench train`` with one worker; per-window seconds from the ``images_per_s`` it logged to MLflow."""
    from mlflow import MlflowClient

    result = train(config, manifest)
    history = MlflowClient(config.run.tracking_uri).get_metric_history(result["run_id"], "images_per_s")
    per_image = {metric.step: 1 / metric.value for metric in history}
    interval, batch = config.schedule.log_interval, config.schedule.batch_size
    windows = [per_image[step] * batch * interval for step in sorted(per_image) if step % interval == 0]
    return {"windows": windows, "final_metrics": result["metrics"]}


def ray_worker_threads(cpus: float) -> int:
    """torch's thread count inside a Ray task holding ``cpus`` CPUs, as a Train worker with them gets."""
    import ray

    return ray.get(ray.remote(num_cpus=cpus)(torch_threads).remote())


def torch_threads() -> int:
    return torch.get_num_threads()


def write_results(out_dir: Path, config: dict, rows: list[dict], summary: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / "train_overhead"
    fields = sorted({key for row in rows for key in row}, key=lambda key: (key != "measurement", key))
    with open(f"{stem}.csv.tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(f"{stem}.csv.tmp", f"{stem}.csv")
    with open(f"{stem}.json.tmp", "w") as handle:
        json.dump({"config": config, "results": rows, "summary": summary}, handle, indent=2)
    os.replace(f"{stem}.json.tmp", f"{stem}.json")
    return stem


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", default="deeplabv3plus")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=64, help="synthetic image size and training crop (default 64)")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-samples", type=int, default=1024, help="train split size (default 1024)")
    parser.add_argument("--log-interval", type=int, default=5, help="iterations per timed window (default 5)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="Ray Data gets the other CPUs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.iterations < 2 * args.log_interval:
        parser.error("--iterations must cover at least two log windows (the first one is start-up)")
    if args.train_samples < args.iterations * args.batch_size:
        parser.error("--train-samples must cover --iterations x --batch-size: no epoch boundary inside the windows")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    threads = max(1, math.floor(args.cpus_per_worker))
    data_cpus = (os.cpu_count() or 1) - args.cpus_per_worker
    if data_cpus <= 0:
        parser.error(f"--cpus-per-worker {args.cpus_per_worker} leaves Ray Data no CPU on {os.cpu_count()} cores")

    import ray

    with tempfile.TemporaryDirectory(prefix="nrd-overhead-") as scratch:
        scratch = Path(scratch)
        load_before = [round(value, 2) for value in os.getloadavg()]
        dataset = create_dataset(
            "synthetic",
            num_samples={"train": args.train_samples, "val": 8},
            size=(args.size, args.size),
            num_classes=6,
            seed=args.seed,
        )
        prepare_shards(dataset, scratch / "data", progress=False)
        config, manifest = resolve(make_config(args, scratch / "data", scratch / "runs"))

        print(f"plain PyTorch loop, {threads} torch thread(s) ...", file=sys.stderr, flush=True)
        plain = run_plain(config, manifest, threads)
        ray.init(include_dashboard=False, log_to_driver=False)
        previous_cwd = Path.cwd()
        os.chdir(scratch)  # MLflow puts a SQLite store's artifacts under the working directory
        try:
            worker_threads = ray_worker_threads(args.cpus_per_worker)
            print(f"Ray Data alone, {data_cpus:g} CPU(s) ...", file=sys.stderr, flush=True)
            ingest = run_ray_data(config, manifest, data_cpus)
            print("nrd-bench train, 1 worker ...", file=sys.stderr, flush=True)
            ray_run = run_ray(config, manifest)
        finally:
            os.chdir(previous_cwd)
            ray.shutdown()
        load_after = [round(value, 2) for value in os.getloadavg()]

    rows, summary = summarise(plain, ray_run, ingest, config)
    settings = {
        **config.to_dict(),
        "train_samples": args.train_samples,
        "train_transform": dataclasses.asdict(transform_config(config, manifest)),
        "torch_threads_plain": threads,
        "torch_threads_ray_worker": worker_threads,
        "ray_data_cpus": data_cpus,
        "torch": torch.__version__,
        "ray": ray.__version__,
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15min": {"before": load_before, "after": load_after},
    }
    del settings["run"]  # temporary paths
    settings["data"] = {key: value for key, value in settings["data"].items() if key != "dataset_dir"}
    stem = write_results(args.out_dir, settings, rows, summary)
    print_report(rows, summary, settings, data_cpus)
    print(f"\nwrote {stem}.csv and {stem}.json")
    return 0


def summarise(plain: dict, ray_run: dict, ingest: dict, config: TrainConfig) -> tuple[list[dict], dict]:
    """CSV rows (one per measurement) and the ratios."""
    interval, batch = config.schedule.log_interval, config.per_worker_batch_size
    plain_step = steady_step_time(plain["windows"], interval)
    ray_step = steady_step_time(ray_run["windows"], interval)
    rows = [
        {
            "measurement": "plain",
            "step_s": round(plain_step, 4),
            "images_per_s": round(batch / plain_step, 2),
            "data_s": round(plain["data_s"], 4),
            "compute_s": round(plain["compute_s"], 4),
            "windows_s": " ".join(f"{s:.3f}" for s in plain["windows"]),
        },
        {
            "measurement": "ray",
            "step_s": round(ray_step, 4),
            "images_per_s": round(batch / ray_step, 2),
            "windows_s": " ".join(f"{s:.3f}" for s in ray_run["windows"]),
        },
        {
            "measurement": "ray_data",
            "images_per_s": round(ingest["images_per_s"], 2),
            "first_batch_s": round(ingest["first_batch_s"], 3),
            "pass_s": round(ingest["pass_s"], 3),
        },
    ]
    summary = {
        "step_time_ratio": round(ray_step / plain_step, 3),
        "step_time_ratio_vs_plain_compute": round(ray_step / plain["compute_s"], 3),
        "step_time_goal": STEP_TIME_GOAL,
        "meets_goal": ray_step / plain_step <= STEP_TIME_GOAL,
        "ingest_over_consumption": round(ingest["images_per_s"] * ray_step / batch, 3),
    }
    return rows, summary


def print_report(rows: list[dict], summary: dict, settings: dict, data_cpus: float) -> None:
    plain, ray_run, ingest = rows
    schedule, crop = settings["schedule"], "x".join(map(str, settings["data"]["crop_size"]))
    print(
        f"\n{settings['model']['decoder']}/{settings['model']['encoder']}, {schedule['iterations']} iterations of "
        f"batch {schedule['batch_size']} at {crop}, {settings['torch_threads_plain']} torch thread(s) (Ray worker: "
        f"{settings['torch_threads_ray_worker']}); steady state = median of {schedule['log_interval']}-iteration "
        "windows after the first"
    )
    print(f"{'':<24}{'plain PyTorch':>15}{'nrd-bench train':>17}{'ratio':>8}")
    verdict = "met" if summary["meets_goal"] else "NOT met"
    print(
        f"{'step time (s)':<24}{plain['step_s']:>15.3f}{ray_run['step_s']:>17.3f}{summary['step_time_ratio']:>8.3f}"
        f"   goal <= {summary['step_time_goal']:.2f}: {verdict}"
    )
    print(f"{'  data (s)':<24}{plain['data_s']:>15.3f}{'in Ray Data':>17}")
    compute_ratio = summary["step_time_ratio_vs_plain_compute"]
    print(f"{'  compute (s)':<24}{plain['compute_s']:>15.3f}{'':>17}{compute_ratio:>8.3f}")
    print(f"{'images/s':<24}{plain['images_per_s']:>15.1f}{ray_run['images_per_s']:>17.1f}")
    print(
        f"\nRay Data alone on {data_cpus:g} CPU(s): {settings['train_samples']} images in {ingest['pass_s']:.1f} s "
        f"(first batch at {ingest['first_batch_s']:.1f} s) = {ingest['images_per_s']:.1f} images/s with start-up; "
        f"training consumes {ray_run['images_per_s']:.1f} images/s: ingest / consumption = "
        f"{summary['ingest_over_consumption']:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
