"""``nrd-bench report``: per data set, the best finished run per decoder x encoder as CSV and Markdown tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="results tables: best finished run per decoder x encoder, per data set (CSV + Markdown)",
        description=(
            "Read the finished training runs of an MLflow experiment and write, per data set (the runs' dataset "
            "tag), report_<dataset>.csv and report_<dataset>.md: one row per decoder x encoder, the run with the "
            "highest val mIoU, with mIoU, mIoU ms+flip (metric mIoU_msflip, empty when not evaluated), trimap mIoU "
            "at 4 px, mBIoU, model and decoder GMACs with the input size they were counted at, params, latency "
            "p50, device, commit and run id. Missing values are empty cells. The selection rules as applied go to "
            "report_criteria.json. Prints the Markdown tables."
        ),
    )
    parser.add_argument("--experiment", metavar="NAME", help="MLflow experiment to read (default nrd-bench)")
    parser.add_argument("--dataset", metavar="D", help="only the runs of this data set (their dataset tag)")
    parser.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the tables and JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.results import report  # importing mlflow takes seconds: only when used
    from pipeline.training.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    scope, reports = report.collect_report(uri, args.experiment, args.dataset)
    paths = report.write_report(scope, reports, args.out.absolute(), args.dataset)
    print("\n".join(report.to_markdown(item, scope) for item in reports.values()), end="")
    print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0
