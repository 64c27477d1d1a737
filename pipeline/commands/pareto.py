"""``nrd-bench pareto``: the accuracy-vs-cost Pareto front of the finished training runs in MLflow, per data set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nrd.errors import InvalidHyperparameterError
from pipeline.commands.common import output_folder


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pareto",
        help="accuracy-vs-cost Pareto front of finished runs in MLflow: table, plot, CSV, run tags",
        description=(
            "Read the finished training runs of an MLflow experiment (or the trials of one sweep) and, per data set, "
            "rank them by non-dominated sorting on a cost metric (--x, minimised) and an accuracy metric (--y, "
            "maximised). Prints a table per data set, writes a plot and a CSV per data set and a JSON for all, tags "
            "every run pareto_optimal, pareto_rank and pareto_axes, and logs the files under pareto/ to the sweep's "
            "parent run (with --experiment too, when every run is a trial of one sweep; else to the experiment's "
            "run named 'pareto'), with summary metrics (best_<y>, front_size, trials_finished/failed/killed/"
            "running), the front as the run's Markdown description, and prints links into the MLflow UI: the run, "
            "the experiment's runs filtered to the front, the plots. Unless --no-intervals: runs with equal "
            "config_key tags are grouped as repeats (seeds) of one configuration, and each configuration gets its "
            "mean y with a 95% percentile-bootstrap interval (over validation images, from the runs' per-image "
            "counts image_counts.npz, and over seeds) and its front probability (the share of resamples in which it "
            "is on the front), printed, written as <dataset>_<y>_vs_<x>_intervals.csv/.json/.png and tagged "
            "pareto_probability; and its learning curve (mean and min-max band of y over seeds at every "
            "evaluation, flagged when still rising at the end; Kendall's tau-b of the ranking at the last two "
            "evaluations), written as <dataset>_<y>_learning_curves.csv/.json/.png. "
            "Runs without per-image counts get no interval, and the table says so."
        ),
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--experiment", metavar="NAME", help="MLflow experiment to read (default nrd-bench)")
    scope.add_argument("--parent-run", metavar="ID", help="read only the child runs of this (sweep) run")
    parser.add_argument("--dataset", metavar="D", help="only the runs of this data set (their dataset tag)")
    parser.add_argument("--x", default="gmacs_model", metavar="METRIC", help="cost, minimised (default gmacs_model)")
    parser.add_argument("--y", default="mIoU", metavar="METRIC", help="accuracy, maximised (default mIoU)")
    parser.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/pareto"),
        metavar="DIR",
        help="folder for the plots, CSV files and JSON (default ./results/pareto)",
    )
    parser.add_argument(
        "--resamples",
        type=int,
        default=None,
        metavar="N",
        help="bootstrap resamples for the intervals and front probabilities (default 2000, the library's default)",
    )
    parser.add_argument(
        "--no-intervals", action="store_true", help="the front of the point values only: no bootstrap, no repeats"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object instead of the tables (per data set: the front, the points, the intervals, the "
        "learning curves and the MLflow run the front went to, with its links)",
    )
    parser.add_argument(
        "--no-tag", action="store_true", help="leave MLflow untouched: no run tags, no artifacts (local files only)"
    )
    parser.add_argument(
        "--register",
        metavar="NAME",
        help=(
            "register every front run's MLflow model as a version of registered model NAME (logging it from the "
            "run's config and weights where training did not), with aliases pareto-<dataset> (the most accurate "
            "front model) and pareto-<dataset>-1..n (the front by increasing cost); load one with "
            "mlflow.pytorch.load_model('models:/NAME@pareto-<dataset>')"
        ),
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.training.tracking import resolve_tracking_uri

    if args.resamples is not None and args.resamples < 1:
        raise InvalidHyperparameterError("nrd-bench pareto", "--resamples", args.resamples, "a positive integer")
    if args.register is not None:
        from pipeline.results.register import check_name

        check_name(args.register)
        if args.no_tag:
            raise InvalidHyperparameterError(
                "nrd-bench pareto", "--register", args.register, "no --no-tag with it (registering writes to MLflow)"
            )
    uri = resolve_tracking_uri(args.tracking_uri)
    with output_folder("nrd-bench pareto", "--out", args.out) as out:
        return report_fronts(args, uri, out.absolute())


def report_fronts(args: argparse.Namespace, uri: str, out: Path) -> int:
    from pipeline.results import front as pareto  # importing mlflow and matplotlib takes seconds: only when used
    from pipeline.results.plots import write_reports

    groups = pareto.collect_runs(uri, args.experiment, args.parent_run, args.dataset, args.x, args.y)
    paths = write_reports(groups, out)
    fronts, curves = {}, {}
    if not args.no_intervals:
        from pipeline.results.intervals import interval_front, write_interval_reports
        from pipeline.results.uncertainty import RESAMPLES

        resamples = args.resamples or RESAMPLES
        fronts = {name: interval_front(runs, resamples) for name, runs in groups.items()}
        from pipeline.results.curves import learning_curves, write_learning_curves

        for name, front in fronts.items():
            curves[name] = learning_curves(front)
            paths[name] += write_interval_reports(front, out, curves[name].rising())
            paths[name] += write_learning_curves(curves[name], out)
    logged_to = tagged = None
    if not args.no_tag:
        from pipeline.results.intervals import tag_probabilities

        tagged = pareto.tag_runs(groups)
        for front in fronts.values():
            tag_probabilities(front)
        from pipeline.results import publish

        scope = next(iter(groups.values())).scope
        files = [path for paths_of in paths.values() for path in paths_of]
        sweep_run = publish.publication_run(groups)
        logged_to = publish.log_reports(scope, files, sweep_run)
        links = publish.ui_links(scope, logged_to, [path for path in files if path.suffix == ".png"], bool(sweep_run))
        publish.summarize(groups, fronts, logged_to, links, bool(sweep_run))
    registered = []
    if args.register:
        from pipeline.results.register import register_fronts

        registered = register_fronts(groups, args.register)
    if args.json:
        result = pareto.to_json(groups)
        for name, front in fronts.items():
            result[name]["intervals"] = front.to_dict()
            result[name]["learning_curves"] = curves[name].to_dict()
        if logged_to:  # where the front went, as printed without --json
            for name in groups:
                result[name]["mlflow"] = {"run_id": logged_to, "links": links}
        if args.register:
            result["registered"] = {"name": args.register, "versions": [vars(model) for model in registered]}
        print(json.dumps(result, indent=2))
        return 0
    for name, runs in groups.items():
        print(pareto.format_table(runs))
        print(f"plot: {paths[name][0]}\ncsv: {paths[name][1]}\n")
        if name in fronts:
            from pipeline.results.intervals import format_intervals

            print(format_intervals(fronts[name], curves[name].rising()))
            print(f"plot: {paths[name][4]}\ncsv: {paths[name][2]}\njson: {paths[name][3]}\n")
            from pipeline.results.curves import format_convergence

            print(format_convergence(curves[name]))
            print(f"plot: {paths[name][7]}\ncsv: {paths[name][5]}\njson: {paths[name][6]}\n")
    if len(groups) > 1:
        print(pareto.format_summary(groups) + "\n")
    print(f"json: {paths['json'][0]}")
    if logged_to:
        probability_tag = ", pareto_probability" if fronts else ""
        print(
            f"tagged {tagged} runs (pareto_optimal, pareto_rank, pareto_axes{probability_tag}); files, summary "
            f"metrics and the front as its description logged to run {logged_to} (files under pareto/)"
        )
        print("in the MLflow UI" + ("" if scope.tracking_uri.startswith("http") else " (run `mlflow ui` first)") + ":")
        print("\n".join(f"  {name}: {address}" for name, address in links.items()))
    for model in registered:
        print(
            f"registered {model.run_name} ({model.dataset}) as {args.register} version {model.version}, aliases "
            f"{', '.join(model.aliases)}: mlflow.pytorch.load_model('models:/{args.register}@{model.aliases[0]}')"
        )
    return 0
