"""``nrd-bench compare``: the paired difference of two configurations of a sweep, with its bootstrap interval and
the ratio of their costs."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="difference of two configurations (mean over seeds) with its bootstrap interval and cost ratio",
        description=(
            "A minus B in --metric, for two configurations of the finished runs of a sweep (or experiment): the "
            "difference of their means over their repeats, a 95%% percentile-bootstrap interval of it (paired: "
            "one draw of validation images for both, from the runs' per-image counts, and their seeds drawn per "
            "configuration) and the ratio of their --cost. A and B are config_key tags (or a unique prefix), or "
            "decoder/encoder when only one configuration has it, e.g. nrd/resnet50 deeplabv3plus/resnet50."
        ).replace("%%", "%"),
    )
    parser.add_argument("a", metavar="A", help="configuration A")
    parser.add_argument("b", metavar="B", help="configuration B")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--experiment", metavar="NAME", help="MLflow experiment to read (default nrd-bench)")
    scope.add_argument("--parent-run", metavar="ID", help="read only the child runs of this (sweep) run")
    parser.add_argument("--dataset", metavar="D", help="the data set (needed when the runs hold several)")
    parser.add_argument("--metric", default="mIoU", help="accuracy metric compared (default mIoU)")
    parser.add_argument("--cost", default="gmacs_decoder", help="cost metric of the ratio (default gmacs_decoder)")
    parser.add_argument("--resamples", type=int, default=None, metavar="N", help="bootstrap resamples (default 2000)")
    parser.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from nrd.errors import InvalidHyperparameterError
    from pipeline.results.front import collect_runs
    from pipeline.results.intervals import interval_front
    from pipeline.results.uncertainty import RESAMPLES, compare
    from pipeline.training.tracking import resolve_tracking_uri

    if args.resamples is not None and args.resamples < 1:
        raise InvalidHyperparameterError("nrd-bench compare", "--resamples", args.resamples, "a positive integer")
    uri = resolve_tracking_uri(args.tracking_uri)
    groups = collect_runs(
        uri, args.experiment, args.parent_run, args.dataset, args.cost, args.metric, flags=("--cost", "--metric")
    )
    if len(groups) > 1:
        raise InvalidHyperparameterError("nrd-bench compare", "--dataset", None, f"one of {sorted(groups)}")
    front = interval_front(next(iter(groups.values())), args.resamples or RESAMPLES)
    a, b = front.find(args.a), front.find(args.b)
    costs = {c.key: c.x for c in front.configurations}
    labels = {a.key: a.label, b.key: b.label}
    result = compare(front.boot, a.key, b.key, costs, args.metric, args.cost, labels)
    if args.json:
        summary = {"a": a.to_dict(), "b": b.to_dict(), "difference": result.difference.to_dict()}
        print(json.dumps(summary | {"cost": args.cost, "cost_ratio": result.cost_ratio}))
    else:
        print(f"{result}  ({a.key}: {len(a.runs)} seed(s); {b.key}: {len(b.runs)} seed(s); {front.note})")
    return 0
