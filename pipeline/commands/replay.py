"""``nrd-bench replay``: send the operations kept in a tracking buffer file (MLflow was unreachable) to MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="send a tracking buffer file left by an unreachable MLflow server to MLflow",
        description=(
            "When MLflow stays unreachable, training keeps its params, metrics, tags and artifacts in a JSONL buffer "
            "file and names it in the error. This sends them, in order, into the runs they belong to, skipping metric "
            "steps already present (replaying twice logs nothing new), then deletes the file."
        ),
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="the buffer file (JSONL) named by the error")
    parser.add_argument(
        "--tracking-uri", metavar="URI", help="send to this MLflow instead of the one recorded in the file"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.training.logger import replay
    from pipeline.training.tracking import resolve_tracking_uri  # importing mlflow takes seconds: only when used

    uri = resolve_tracking_uri(args.tracking_uri) if args.tracking_uri else None
    counts = replay(args.file, uri)
    done = ", ".join(f"{name} {count}" for name, count in sorted(counts.items()) if count) or "nothing"
    print(f"replayed {args.file} into {uri or 'the recorded tracking URI'}: {done}; the file is deleted")
    return 0
