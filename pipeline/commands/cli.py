"""The ``nrd-bench`` command line. Each sub-command lives in ``pipeline/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` (a function of the parsed args returning an
exit code). Handlers get the top-level ``parser`` and ``run_command`` (this ``main``) in their args, so that no
command imports this module back (``submit`` checks its entrypoint with the parser, ``demo`` runs ``pareto``).
Command modules import only the standard library and light modules (``nrd.constants``, ``nrd.errors``) at the top,
torch, Ray and MLflow in their handlers, so that ``--help`` is quick; tests/test_cli.py checks that."""

from __future__ import annotations

import argparse
import os
import sys

from nrd.errors import NRDBenchError
from pipeline.commands import (
    compare,
    cost,
    demo,
    evaluate,
    jobs,
    pareto,
    predict,
    prepare,
    replay,
    report,
    submit,
    train,
    tune,
)

COMMANDS = (demo, compare, cost, evaluate, jobs, pareto, predict, prepare, replay, report, submit, train, tune)


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's), or "unknown" when run from an uninstalled tree."""
    from importlib import metadata

    try:
        return metadata.version("nrd-bench")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nrd-bench",
        description=(
            "Benchmark semantic-segmentation decoders (NRD and baselines): data, training, search, the "
            "accuracy-vs-cost Pareto front in MLflow, cluster jobs. Start with `nrd-bench demo`."
        ),
    )
    parser.add_argument("--version", action="version", version=f"nrd-bench {package_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def cli_reference(width: int = 100) -> str:
    """The Markdown CLI reference (docs/cli.md): every sub-command's ``--help`` at a fixed width. Regenerate with
    ``python -m pipeline.cli --reference > docs/cli.md``; a test keeps the file equal to this."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)  # argparse wraps to the terminal's width
    try:
        parser = build_parser()
        subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
        sections = [
            "# nrd-bench command reference",
            "",
            "Generated from `--help`; do not edit by hand.",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
        ]
        for name, subparser in subparsers.choices.items():
            sections += ["", f"## nrd-bench {name}", "", "```text", subparser.format_help().rstrip(), "```"]
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(sections) + "\n"


INTERRUPTED = 130  # the shell's exit code for a process ended by SIGINT
TRACEBACK_VARIABLE = "NRD_BENCH_TRACEBACK"


def main(argv: list[str] | None = None) -> int:
    # MLflow draws a progress bar per artifact download on stderr: a command's errors stay one line without them
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.parser, args.run_command = parser, main
    try:
        return int(args.handler(args) or 0)
    except NRDBenchError as error:
        prefix = f"nrd-bench {args.command}: "
        message = str(error).removeprefix(prefix)  # errors that name the command already
        print(f"{prefix}error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nrd-bench {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
    except Exception as error:  # not a bad input we know of: one line, the traceback only when asked for
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        first = (str(error).strip().splitlines() or [""])[0]
        print(
            f"nrd-bench {args.command}: error: unexpected {type(error).__name__}: {first} (set "
            f"{TRACEBACK_VARIABLE}=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    if sys.argv[1:] == ["--reference"]:
        sys.stdout.write(cli_reference())
        sys.exit(0)
    sys.exit(main())
