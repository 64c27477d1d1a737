"""``nrd-bench report``: per data set, the best configuration per decoder x encoder (mean over seeds with a 95%
interval) as CSV and Markdown tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nrd.errors import InvalidHyperparameterError
from pipeline.commands.common import output_folder


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="results tables: best configuration per decoder x encoder with mean, 95%% CI and seeds (CSV + Markdown)",
        description=(
            "Read the finished training runs of an MLflow experiment and write, per data set (the runs' dataset "
            "tag), report_<dataset>.csv and report_<dataset>.md: one row per decoder x encoder, the configuration "
            "(runs with equal config_key tags are its seeds) with the highest mean val mIoU over its seeds, with that "
            "mean, its 95%% percentile-bootstrap interval over validation images and seeds (empty when the runs "
            "kept no per-image counts), the number of seeds, the means of mIoU ms+flip (metric mIoU_msflip, empty "
            "when not evaluated), trimap mIoU at 4 px and mBIoU, and from the configuration's best run: model and "
            "decoder GMACs with the input size they were counted at, params, latency p50, device, commit and run "
            "id. Missing values are empty cells. The selection rules as applied go to "
            "report_criteria.json. Prints the Markdown tables."
        ),
    )
    parser.add_argument("--experiment", metavar="NAME", help="MLflow experiment to read (default nrd-bench)")
    parser.add_argument("--dataset", metavar="D", help="only the runs of this data set (their dataset tag)")
    parser.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the tables and JSON")
    parser.add_argument(
        "--resamples", type=int, default=None, metavar="N", help="bootstrap resamples for the intervals (default 2000)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.resamples is not None and args.resamples < 1:
        raise InvalidHyperparameterError("nrd-bench report", "--resamples", args.resamples, "a positive integer")
    from pipeline.results import report  # importing mlflow takes seconds: only when used
    from pipeline.results.uncertainty import RESAMPLES
    from pipeline.training.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    with output_folder("nrd-bench report", "--out", args.out) as out:
        scope, reports = report.collect_report(uri, args.experiment, args.dataset, args.resamples or RESAMPLES)
        paths = report.write_report(scope, reports, out.absolute(), args.dataset)
    print("\n".join(report.to_markdown(item, scope) for item in reports.values()), end="")
    print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0
