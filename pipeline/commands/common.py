"""What several sub-commands share: argument types (sizes, KEY=VALUE), the cluster flag, following a Ray job."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from nrd.errors import InvalidHyperparameterError


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX×,]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size HxW such as 1024x2048")
    return int(match[1]), int(match[2])


def parse_key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. dyn_channels=32)")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the VALUE {value!r} is not a YAML value (a number, true/false, a word, [a, list])"
        ) from None


def decoder_args(pairs: list[tuple[str, object]], decoder: str) -> dict[str, object]:
    """``--decoder-arg`` values as ``{argument: value}``: ``DECODER.ARG=VALUE`` (the spelling of spaces and MLflow
    params) for the chosen ``decoder``, or a bare ``ARG=VALUE``; another decoder's hyperparameter is an error."""
    arguments = {}
    for key, value in pairs:
        named, dot, argument = key.rpartition(".")
        if dot and named != decoder:
            raise InvalidHyperparameterError("--decoder-arg", key, value, f"a hyperparameter of {decoder}, not {named}")
        arguments[argument] = value
    return arguments


@contextlib.contextmanager
def output_folder(command: str, flag: str, out: str | Path, root: str | Path | None = None) -> Iterator[Path]:
    """``out`` created (with its parents) and checked writable before any work, and not the raw data's folder
    ``root``; the folders this created are removed again if the command then fails while they are still empty."""
    out = Path(out)
    if root is not None and out.resolve() == Path(root).resolve():
        expected = "a folder other than --root (the outputs would mix with the raw files)"
        raise InvalidHyperparameterError(command, flag, str(out), expected)
    created = [folder for folder in (out, *out.absolute().parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        remove_empty(created)
        expected = f"a folder that can be created and written ({error.strerror or error})"
        raise InvalidHyperparameterError(command, flag, str(out), expected) from None
    try:
        yield out
    except BaseException:
        remove_empty(created)
        raise


def remove_empty(folders: list[Path]) -> None:
    """Remove each folder (deepest first) and the empty folders under it; any file, and so its folders, stays."""
    for folder in folders:
        inner = [Path(path) for path, _, _ in os.walk(folder, topdown=False)]
        for path in [*inner, folder]:
            with contextlib.suppress(OSError):
                path.rmdir()


def add_address_argument(parser: argparse.ArgumentParser) -> None:
    """The cluster flag shared by ``submit`` and ``jobs``."""
    parser.add_argument(
        "--address",
        help="HTTP address of the cluster's Ray dashboard, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)",
    )


def follow_to_end(client, job_id: str) -> int:
    """Stream the job's logs until it ends, then say how it ended: 0 if it succeeded, 1 if not, 130 on Ctrl-C
    (which only stops following: the job goes on)."""
    from pipeline.jobs.submit import follow_logs, wait_until_done

    try:
        follow_logs(client, job_id)
    except KeyboardInterrupt:
        print(
            f"\nstopped following; the job goes on. Stop it with: nrd-bench jobs stop {job_id} --address "
            f"{client.get_address()}",
            file=sys.stderr,
        )
        return 130
    info = wait_until_done(client, job_id)
    print(f"job {job_id} {info.status}" + (f": {info.message}" if info.message else ""), file=sys.stderr)
    return 0 if info.status == "SUCCEEDED" else 1
