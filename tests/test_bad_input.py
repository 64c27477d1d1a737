"""Bad input to the result and orchestration commands (report, pareto, compare, demo, tune, submit, prepare), each
given as a user would type it: exit code 2, one line that names the flag or file at fault and what was expected, no
traceback, nothing written (no output folder, no run folder) and no MLflow run left RUNNING. The bad values of
``train``, ``predict``, ``evaluate``, ``cost``, ``jobs`` and ``replay`` are in those commands' own test modules."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import shared

from pipeline.commands.cli import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "tune_spaces" / "smoke.yaml")

CASES = {  # name: (argv; "{out}" is a folder that must not appear, "{shards}" the session's shards; message)
    "report out under /proc": (
        ["report", "--out", "/proc/nrd/out"],
        "--out='/proc/nrd/out' is invalid; expected a folder that can be created",
    ),
    "report out through a file": (
        ["report", "--out", "{file}/out"],
        "/out' is invalid; expected a folder that can be created",
    ),
    "report resamples 0": (
        ["report", "--out", "{out}", "--resamples", "0"],
        "nrd-bench report: error: --resamples=0 is invalid; expected a positive integer",
    ),
    "report unknown experiment": (
        ["report", "--out", "{out}", "--experiment", "nope"],
        "unknown experiment at sqlite:",
    ),
    "pareto out under /proc": (["pareto", "--out", "/proc/nrd/out"], "--out='/proc/nrd/out' is invalid"),
    "pareto unknown parent": (
        ["pareto", "--out", "{out}", "--parent-run", "deadbeef"],
        "unknown parent run at sqlite:",
    ),
    "pareto resamples -3": (
        ["pareto", "--out", "{out}", "--resamples", "-3"],
        "nrd-bench pareto: error: --resamples=-3 is invalid",
    ),
    "compare unknown experiment": (["compare", "--experiment", "nope", "a", "b"], "unknown experiment at sqlite:"),
    "compare resamples 0": (
        ["compare", "--resamples", "0", "a", "b"],
        "--resamples=0 is invalid; expected a positive integer",
    ),
    "demo workdir under /proc": (["demo", "--workdir", "/proc/nrd/demo"], "--workdir='/proc/nrd/demo' is invalid"),
    "demo name escapes": (
        ["demo", "--workdir", "{out}", "--name", "../x"],
        "--name='../x' is invalid; expected a folder name",
    ),
    "demo unknown dataset": (
        ["demo", "--workdir", "{out}", "--dataset", "nope"],
        "unknown dataset 'nope'; valid: ade20k",
    ),
    "demo real data without root": (
        ["demo", "--workdir", "{out}", "--dataset", "camvid"],
        "--data-root=None is invalid",
    ),
    "demo val limit 0": (["demo", "--workdir", "{out}", "--val-limit", "0"], "--val-limit=0 is invalid"),
    "tune name escapes": (
        ["tune", "--space", SMOKE, "--dataset-dir", "{shards}", "--name", "../x", "--storage-path", "{out}"],
        "nrd-bench tune: error: --name='../x' is invalid; expected a folder name",
    ),
    "submit no entrypoint": (["submit", "--address", "http://127.0.0.1:1"], "no entrypoint: give the command after --"),
    "submit not nrd-bench": (
        ["submit", "--address", "http://127.0.0.1:1", "--", "python", "x.py"],
        "is not an nrd-bench command",
    ),
    "submit bad address": (
        ["submit", "--address", "http://[::1", "--", "nrd-bench", "cost"],
        "--address='http://[::1' is not a valid URL",
    ),
}


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """An empty SQLite store outside the folder that must stay untouched; no shell address or URI leaks in."""
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).search_experiments()  # creates the store's tables and its Default experiment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def assert_refused(argv: list[str], message: str, work: Path, store: str, capsys) -> None:
    before = sorted(path.relative_to(work) for path in work.rglob("*"))
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert sorted(path.relative_to(work) for path in work.rglob("*")) == before  # nothing written, nothing left
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    experiments = [item.experiment_id for item in client.search_experiments()]
    assert not client.search_runs(experiments, "attributes.status = 'RUNNING'")


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_named_in_one_line_and_leaves_nothing(case, tmp_path, store, shards, capsys, monkeypatch):
    argv, message = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    (work / "a-file").write_text("")
    monkeypatch.chdir(work)
    names = {"{out}": str(work / "out"), "{file}": str(work / "a-file"), "{shards}": str(shards)}
    argv = [next((arg.replace(key, value) for key, value in names.items() if key in arg), arg) for arg in argv]
    assert_refused(argv, message, work, store, capsys)


def test_prepare_names_a_folder_where_an_image_should_be_and_removes_the_output(tmp_path, store, capsys, monkeypatch):
    """A sample's image path that is a folder is named as a folder (not as a missing image), and the output folder
    that prepare created for the run is gone again, since nothing was prepared in it."""
    source = shared("camvid")
    root = tmp_path / "work" / "camvid"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        name = sorted(path.name for path in (source / split).iterdir())[0]
        shutil.copy(source / split / name, root / split / name)
        shutil.copy(source / f"{split}annot" / name, root / f"{split}annot" / name)
    (root / "train" / "x.png").mkdir()
    shutil.copy(next((root / "trainannot").iterdir()), root / "trainannot" / "x.png")
    monkeypatch.chdir(tmp_path / "work")
    argv = ["prepare", "--dataset", "camvid", "--root", str(root), "--out", str(tmp_path / "work" / "out" / "camvid")]
    assert_refused(argv, "train/x.png: is a folder; expected the image file of", tmp_path / "work", store, capsys)
