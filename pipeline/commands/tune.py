"""``nrd-bench tune``: a Ray Tune search (decoders, hyperparameters, encoder sizes) tracked as nested MLflow runs."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="search decoders / hyperparameters / encoder sizes with Ray Tune (one MLflow parent run per sweep)",
        description=(
            "Run the search described by a space file (see tune_spaces/). Each trial is a full training run, logged "
            "as a child of the sweep's MLflow parent run. Re-run with the same --name (or --resume) to continue an "
            "interrupted sweep: finished trials are not rerun. Then `nrd-bench pareto --parent-run ID`."
        ),
    )
    parser.add_argument("--space", required=True, help="search-space YAML file (e.g. tune_spaces/smoke.yaml)")
    parser.add_argument("--dataset-dir", help="prepared shards (overrides data.dataset_dir of the space)")
    parser.add_argument("--name", help="sweep name (default: the space file's name)")
    parser.add_argument("--resume", action="store_true", help="continue the sweep --name; fail if it does not exist")
    parser.add_argument("--storage-path", help="folder where sweeps go (default ./results); on a cluster, a shared one")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite)")
    parser.add_argument("--experiment", help="MLflow experiment (default nrd-bench)")
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.search.tune import tune

    run_settings = {
        key: value
        for key, value in (
            ("storage_path", args.storage_path),
            ("tracking_uri", args.tracking_uri),
            ("experiment", args.experiment),
        )
        if value is not None
    }
    summary = tune(
        args.space,
        dataset_dir=args.dataset_dir,
        name=args.name,
        resume=args.resume,
        base={"run": run_settings} if run_settings else None,
        address=args.address,
    )
    print(json.dumps(summary))
    if summary["errors"]:
        failed = "; ".join(f"{item['trial']}: {item['error']}" for item in summary["failed_trials"])
        print(
            f"nrd-bench tune: error: {summary['errors']} of {summary['trials']} trial(s) failed: {failed}",
            file=sys.stderr,
        )
        return 1
    return 0
