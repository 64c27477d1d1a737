"""Publish a decoder study (``tune_spaces/study_<dataset>.yaml``, README "What the study shows") from its MLflow store.

Runs the documented commands on the finished sweep and keeps what they print and write, under
``benchmarks/results/study/<dataset>/``:

- ``nrd-bench pareto --parent-run ID``: the front table with 95% bootstrap intervals (over validation images and
  seeds) and front probabilities, the learning curves with still-rising flags (``pareto.txt`` and the CSV/JSON/PNG
  files it writes);
- ``nrd-bench report``: the best run per decoder x encoder (``report.txt``, ``report_<dataset>.csv/.md``);
- ``nrd-bench compare``: each NRD variant minus DeepLabV3+ in mIoU with its paired interval and the decoder-MACs ratio
  (``compare.json``, ``compare.txt``);
- ``per_class_iou.csv``: per configuration, each class's IoU (mean over seeds) from the runs' ``per_class_iou.csv``;
- ``study.json``: the resolved space, the sweep, versions, the commit each run was trained at and the one it was
  published at, and the study's wall time.

Then ``summary.csv``/``summary.md``/``summary.png`` across every data set published so far; ``budget.csv`` per data
set holds each variant's mean mIoU minus DeepLabV3+'s at every evaluation. Usage (after ``nrd-bench tune``)::

    python benchmarks/study.py --dataset camvid --storage-path study/camvid/results \
        --tracking-uri sqlite:///study/camvid/mlflow.db [--wall-s 1800]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "study"
BASELINE = "deeplabv3plus"


def nrd_bench(*args: str) -> str:
    command = [str(Path(sys.executable).parent / "nrd-bench"), *args]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return result.stdout


def variant_name(label: str) -> str:
    decoder = label.split("/")[0]
    return f"{decoder}+static_base" if "static_base=True" in label else decoder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--storage-path", type=Path, required=True, help="the --storage-path of nrd-bench tune")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--name", help="sweep name (default study_<dataset>)")
    parser.add_argument("--wall-s", type=float, help="the sweep's measured wall time, recorded in study.json")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args()
    name = args.name or f"study_{args.dataset}"
    sweep = json.loads((args.storage_path / name / "sweep.json").read_text())
    out = OUT / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    uri, parent = args.tracking_uri, sweep["run_id"]

    pareto = nrd_bench(
        "pareto", "--parent-run", parent, "--tracking-uri", uri, "--out", str(out), "--resamples", str(args.resamples)
    )
    (out / "pareto.txt").write_text(pareto.replace(str(out) + "/", ""))
    (out / "report.txt").write_text(nrd_bench("report", "--tracking-uri", uri, "--out", str(out)))
    intervals = json.loads(next(out.glob(f"{args.dataset}_mIoU_vs_gmacs_model_intervals.json")).read_text())
    keys = {variant_name(c["label"]): c for c in intervals["configurations"]}
    comparisons, lines = {}, []
    for variant in ("nrd", "nrd+static_base", "bilinear"):
        if variant in keys and BASELINE in keys:
            pair = [keys[variant]["config_key"], keys[BASELINE]["config_key"]]
            text = nrd_bench(
                "compare",
                "--parent-run",
                parent,
                "--tracking-uri",
                uri,
                *pair,
                "--json",
                "--resamples",
                str(args.resamples),
            )
            comparisons[f"{variant} - {BASELINE}"] = json.loads(text)
            lines.append(
                nrd_bench(
                    "compare", "--parent-run", parent, "--tracking-uri", uri, *pair, "--resamples", str(args.resamples)
                ).strip()
            )
    (out / "compare.json").write_text(json.dumps(comparisons, indent=2) + "\n")
    (out / "compare.txt").write_text("\n".join(lines) + "\n")
    write_budget(out, args.dataset)

    from mlflow import MlflowClient

    from pipeline.names import COMMIT_TAG

    client = MlflowClient(uri)
    rows, classes, commits = [], None, {}
    for variant, configuration in keys.items():
        for run_id in configuration["run_ids"]:
            commits[run_id] = client.get_run(run_id).data.tags.get(COMMIT_TAG)
        values: dict[str, list[float]] = {}
        for run_id in configuration["run_ids"]:
            path = client.download_artifacts(run_id, "per_class_iou.csv", str(out / ".download" / run_id))
            for row in csv.DictReader(io.StringIO(Path(path).read_text())):
                values.setdefault(row["class_name"], []).append(float(row["iou_percent"]))
        classes = classes or list(values)
        rows.append([variant, len(configuration["run_ids"]), *(round(sum(v) / len(v), 2) for v in values.values())])
    shutil.rmtree(out / ".download", ignore_errors=True)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["variant", "seeds", *(classes or [])])
    writer.writerows(rows)
    (out / "per_class_iou.csv").write_text(table.getvalue())

    shutil.copy(REPO / "tune_spaces" / f"{name}.yaml", out / f"{name}.yaml")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    import mlflow
    import ray
    import torch

    study = {
        "dataset": args.dataset,
        "space": f"{name}.yaml",  # tune_spaces/ at the publishing commit; each run's resolved config.yaml is in MLflow
        "sweep": {"name": name, "parent_run_id": parent},
        "wall_s": args.wall_s,
        "resamples": args.resamples,
        "published_at_commit": commit,
        "trained_at_commits": commits,  # per run, its git_commit tag (a resumed sweep's later trials may differ)
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "mlflow": mlflow.__version__,
            "platform": platform.platform(),
        },
        "machine": "2 CPU cores (no GPU)",
        "commands": [
            f"nrd-bench prepare --dataset {args.dataset} --root ../shared/data/{args.dataset} "
            f"--out shards/{args.dataset}",
            f"nrd-bench tune --space tune_spaces/{name}.yaml --dataset-dir shards/{args.dataset} --name {name} "
            f"--storage-path study/{args.dataset}/results --tracking-uri sqlite:///study/{args.dataset}/mlflow.db",
            f"python benchmarks/study.py --dataset {args.dataset} --storage-path study/{args.dataset}/results "
            f"--tracking-uri sqlite:///study/{args.dataset}/mlflow.db --wall-s SECONDS",
        ],
    }
    (out / "study.json").write_text(json.dumps(study, indent=2) + "\n")
    write_summary()
    print((OUT / "summary.md").read_text())
    return 0


def write_budget(out: Path, dataset: str) -> None:
    """``budget.csv``: at every evaluation, each variant's mean mIoU over seeds and its difference from DeepLabV3+'s
    (learning curves: means only, the per-image counts that give intervals exist for the last evaluation only)."""
    curves = json.loads((out / f"{dataset}_mIoU_learning_curves.json").read_text())
    means = {
        variant_name(c["label"]): dict(zip(c["iterations"], c["mean"], strict=True)) for c in curves["configurations"]
    }
    baseline = means.get(BASELINE, {})
    rows = [["iteration", "variant", "mean_mIoU", "minus_deeplabv3plus"]]
    for variant, curve in means.items():
        for iteration, value in curve.items():
            other = baseline.get(iteration)
            rows.append([int(iteration), variant, round(value, 2), "" if other is None else round(value - other, 2)])
    table = io.StringIO()
    csv.writer(table).writerows(rows)
    (out / "budget.csv").write_text(table.getvalue())


def write_summary() -> None:
    """One row per data set and variant: mIoU mean [95% CI], decoder GMACs, front probability, difference vs
    DeepLabV3+ [CI] and its decoder-MACs ratio."""
    header = ["dataset", "variant", "seeds", "mIoU", "low", "high", "gmacs_model", "front_probability"]
    header += ["minus_deeplabv3plus", "diff_low", "diff_high", "decoder_macs_ratio"]
    rows = []
    for folder in sorted(path for path in OUT.iterdir() if (path / "study.json").exists()):
        intervals = json.loads(next(folder.glob("*_mIoU_vs_gmacs_model_intervals.json")).read_text())
        comparisons = json.loads((folder / "compare.json").read_text())
        for configuration in intervals["configurations"]:
            variant = variant_name(configuration["label"])
            y = configuration["y"]
            row = [folder.name, variant, configuration["seeds"], y["value"], y["low"], y["high"], configuration["x"]]
            row.append(configuration["front_probability"])
            pair = comparisons.get(f"{variant} - {BASELINE}")
            difference = (pair or {}).get("difference") or {}
            row += [difference.get("value"), difference.get("low"), difference.get("high")]
            row.append((pair or {}).get("cost_ratio"))
            rows.append(row)
    table = io.StringIO()
    csv.writer(table).writerows([header, *rows])
    (OUT / "summary.csv").write_text(table.getvalue())

    def number(value, digits=2):
        return "" if value is None else f"{value:.{digits}f}"

    lines = [
        "| data set | decoder | seeds | mIoU [95% CI] | model GMACs | P(front) | minus DeepLabV3+ [95% CI] "
        "| decoder MACs ratio |",
        "|---|---|---:|---|---:|---:|---|---:|",
    ]
    for row in rows:
        dataset, variant, seeds, value, low, high, gmacs, probability, diff, dlow, dhigh, ratio = row
        difference = f"{diff:+.2f} [{dlow:+.2f}, {dhigh:+.2f}]" if diff is not None and dlow is not None else ""
        ratio_text = "" if ratio is None else f"{ratio:.3g}"
        lines.append(
            f"| {dataset} | {variant} | {seeds} | {number(value)} [{number(low)}, {number(high)}] | {number(gmacs)} "
            f"| {number(probability)} | {difference} | {ratio_text} |"
        )
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")
    plot_summary(rows)


def plot_summary(rows: list[list]) -> None:
    """``summary.png``: one panel per data set, mIoU with its 95% interval against model GMACs, one colour per
    variant, the marker's fill the front probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({row[0] for row in rows})
    variants = sorted({row[1] for row in rows})
    colours = dict(zip(variants, plt.get_cmap("tab10").colors, strict=False))
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.8), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=True):
        for _, variant, _seeds, value, low, high, gmacs, probability, *_ in (r for r in rows if r[0] == dataset):
            colour = colours[variant]
            error = [[value - low], [high - value]] if low is not None else None
            axis.errorbar(gmacs, value, yerr=error, fmt="none", ecolor=colour, capsize=4)
            fill = colour if (probability or 0) >= 0.5 else "white"
            axis.plot(
                gmacs,
                value,
                "o",
                color=colour,
                markerfacecolor=fill,
                markersize=8,
                label=f"{variant} (P(front) {probability:.2f})" if probability is not None else variant,
            )
        axis.set_title(dataset)
        axis.set_xlabel("model GMACs (MACs, ResNet-18)")
        axis.set_ylabel("val mIoU (%), mean [95% CI]")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    figure.suptitle("Decoder study on 2 CPU cores: ResNet-18 from scratch, short budgets (README)", fontsize=10)
    figure.tight_layout()
    figure.savefig(OUT / "summary.png", dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
