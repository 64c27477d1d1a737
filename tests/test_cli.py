"""The CLI reference and the README stay true to the real command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import readme_commands

from pipeline.commands.cli import build_parser, cli_reference

ROOT = Path(__file__).resolve().parents[1]


def test_docs_cli_reference_is_the_current_help():
    assert (ROOT / "docs" / "cli.md").read_text() == cli_reference(), (
        "docs/cli.md is out of date: python -m pipeline.cli --reference > docs/cli.md"
    )


def test_every_nrd_bench_command_in_the_readme_parses():
    parser = build_parser()
    commands = [words for words in readme_commands(ROOT / "README.md") if words and words[0] == "nrd-bench"]
    parsed = {parser.parse_args(words[1:]).command for words in commands}
    documented = {"demo", "prepare", "train", "tune", "pareto", "predict", "report", "evaluate", "cost", "submit"}
    assert documented <= parsed, f"README lacks an example of: {sorted(documented - parsed)}"


def test_every_command_has_a_section_in_the_reference():
    parser = build_parser()
    reference = cli_reference()
    for name in parser._subparsers._group_actions[0].choices:
        assert f"## nrd-bench {name}\n" in reference


def test_version_is_the_projects(capsys):
    import re

    expected = re.search(r'^version = "([^"]+)"', (Path(__file__).parents[1] / "pyproject.toml").read_text(), re.M)[1]
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"nrd-bench {expected}"


HEAVY_MODULES = ("torch", "ray", "mlflow")


@pytest.mark.parametrize(
    "argv", [["--help"], ["--version"], ["cost", "--help"], ["train", "--help"], ["report", "--help"]]
)
def test_help_imports_neither_torch_ray_nor_mlflow(argv):
    """Building the parser stays light: the command modules import torch, Ray and MLflow in their handlers."""
    program = (
        "import sys\n"
        "from pipeline.commands.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('imported:', *[name for name in {HEAVY_MODULES!r} if name in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    imported = done.stdout.splitlines()[-1].removeprefix("imported:").split()
    assert not imported, f"nrd-bench {' '.join(argv)} imported {', '.join(imported)}"
