"""``nrd-bench demo``: the main job end to end on one machine: data → Ray Tune sweep → Pareto front in MLflow."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from nrd.constants import DATASET_NAMES
from nrd.errors import InvalidHyperparameterError, UnknownNameError
from pipeline.commands.common import output_folder
from pipeline.values import SWEEP_NAME_EXPECTED, is_folder_name

SMOKE_SPACE = Path(__file__).resolve().parents[2] / "tune_spaces" / "smoke.yaml"
SYNTHETIC = {"num_samples": {"train": 256, "val": 32}, "size": (128, 128), "num_classes": 6, "seed": 0}
EXPERIMENT = "nrd-bench-demo"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job on this machine: data, a Ray Tune sweep (NRD vs baselines), the Pareto front in MLflow",
        description=(
            "Everything in one folder (--workdir): a local Ray bound to 127.0.0.1, a SQLite MLflow store "
            "(mlflow.db, artifacts in mlartifacts/), prepared shards (shards/), the sweep's checkpoints (results/) "
            "and the front's table, plot and CSV (pareto/). By default the data set is synthetic, generated on the "
            "fly; --dataset with --data-root runs the same on a real data set in its official layout. The sweep is "
            "tune_spaces/smoke.yaml unless --space says otherwise. Running the demo again continues (or, when "
            "done, just re-reads) the same sweep; pass another --name for a new one."
        ),
    )
    parser.add_argument("--workdir", type=Path, default=Path("demo"), help="folder for everything (default ./demo)")
    parser.add_argument(
        "--dataset", default="synthetic", help=f"one of: {', '.join(DATASET_NAMES)} (default synthetic)"
    )
    parser.add_argument("--data-root", type=Path, help="the data set's official layout (not for synthetic)")
    parser.add_argument("--space", type=Path, default=SMOKE_SPACE, help="search space (default tune_spaces/smoke.yaml)")
    parser.add_argument("--name", default="smoke", help="sweep name (default smoke)")
    parser.add_argument("--val-limit", type=int, help="evaluate on the first N validation images only")
    parser.set_defaults(handler=run)


def check_arguments(args: argparse.Namespace) -> None:
    if args.dataset not in DATASET_NAMES:
        raise UnknownNameError("dataset", args.dataset, DATASET_NAMES)
    if args.dataset == "synthetic" and args.data_root is not None:
        raise InvalidHyperparameterError("nrd-bench demo", "--data-root", str(args.data_root), "none for synthetic")
    if args.dataset != "synthetic" and args.data_root is None:
        raise InvalidHyperparameterError(
            "nrd-bench demo", "--data-root", None, f"the folder holding {args.dataset} in its official layout"
        )
    if args.data_root is not None and not args.data_root.is_dir():
        raise InvalidHyperparameterError("nrd-bench demo", "--data-root", str(args.data_root), "an existing folder")
    if not args.space.is_file():
        raise InvalidHyperparameterError("nrd-bench demo", "--space", str(args.space), "an existing search-space file")
    if not is_folder_name(args.name):
        raise InvalidHyperparameterError("nrd-bench demo", "--name", args.name, SWEEP_NAME_EXPECTED)
    if args.val_limit is not None and args.val_limit < 1:
        raise InvalidHyperparameterError("nrd-bench demo", "--val-limit", args.val_limit, "a positive integer")


def step(number: int, text: str) -> None:
    print(f"\n[demo {number}/3] {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    workdir = args.workdir.absolute()
    space, data_root = args.space.absolute(), args.data_root.absolute() if args.data_root else None
    with output_folder("nrd-bench demo", "--workdir", workdir):
        return run_in(args, workdir, space, data_root)


def run_in(args: argparse.Namespace, workdir: Path, space: Path, data_root: Path | None) -> int:
    from nrd.data import create_dataset, prepare_shards
    from pipeline.search.tune import tune

    os.chdir(workdir)  # MLflow's artifacts (mlartifacts/) and Ray Tune's files land in the demo's folder
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    started = time.perf_counter()

    shards = workdir / "shards" / args.dataset
    step(1, f"preparing {args.dataset} shards in {shards}")
    if args.dataset == "synthetic":
        dataset = create_dataset("synthetic", **SYNTHETIC)
    else:
        dataset = create_dataset(args.dataset, data_root)
    prepare_shards(dataset, shards)  # resumes, or does nothing, when run again

    step(2, f"Ray Tune sweep {args.name!r} of {space} (a local Ray on 127.0.0.1; trials log to {tracking_uri})")
    base = {"run": {"storage_path": str(workdir / "results"), "tracking_uri": tracking_uri, "experiment": EXPERIMENT}}
    if args.val_limit:
        base["data"] = {"val_limit": args.val_limit}
    summary = tune(str(space), dataset_dir=str(shards), name=args.name, base=base)
    if summary["errors"]:
        print(
            f"warning: {summary['errors']} trial(s) failed; their logs are under {workdir / 'results'}", file=sys.stderr
        )

    step(3, "the accuracy-vs-cost Pareto front of the sweep's finished trials")
    pareto_dir = workdir / "pareto"
    status = args.run_command(
        ["pareto", "--parent-run", summary["parent_run_id"], "--tracking-uri", tracking_uri, "--out", str(pareto_dir)]
    )
    if status:
        return status
    plots = sorted(pareto_dir.glob("*.png"))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    print(f"plot: {', '.join(str(plot) for plot in plots)}")
    print(f"results: {json.dumps({'parent_run_id': summary['parent_run_id'], 'trials': summary['trials']})}")
    print("see the same runs in the MLflow UI (then open http://127.0.0.1:5000):")
    print(f"  mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --host 127.0.0.1 --port 5000")
    return 0
