"""The ``nrd-bench`` command line. Each sub-command lives in ``pipeline/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` (a function of the parsed args returning an
exit code)."""

from __future__ import annotations

import argparse
import sys

from nrd.errors import NRDBenchError
from pipeline.commands import cost, evaluate, pareto, prepare, replay, train, tune

COMMANDS = (cost, evaluate, pareto, prepare, replay, train, tune)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nrd-bench",
        description="Benchmark semantic-segmentation decoders (NRD and baselines): cost, data, metrics.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except NRDBenchError as error:
        print(f"nrd-bench {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
