"""The README's main command on a fresh clone in a fresh virtual environment, as a newcomer runs it.

`make demo` runs whole: a new `.venv` (torch==2.13.0 first, then the project), synthetic data, a Ray Tune sweep on a
local Ray, the Pareto front from a SQLite MLflow store. The sweep is the demo's own (tune_spaces/smoke.yaml: four
decoders on ResNet-18) on a shorter budget, through the Makefile's documented DEMO_ARGS (tests/demo_quick_space.yaml,
checked below to differ from smoke.yaml only in its iteration counts): every step still runs, in fewer minutes.
The other command, `make test`, is this very suite, which CI runs from a clean clone through `.ci/run`: running it
again inside itself would only add minutes to CI without checking anything new.

The demo runs once for the module (the ``demo`` fixture); a second test then opens its store the way the demo tells a
newcomer to: the `mlflow ui` command it printed (on another port) and the links `pareto` printed, in Debian's headless
Chromium (``tests/mlflow_ui.py``; installed with apt-get when missing and run as root, else that test is skipped),
screenshots of each page under the test's tmp_path/mlflow-ui/.

Opt out with NRD_BENCH_SKIP_FRESH_CLONE=1 (e.g. offline, without the package registry).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
from pathlib import Path

import mlflow_ui as ui
import pytest
import yaml
from conftest import free_port

from pipeline.names import (
    DECODER_TAG,
    ENCODER_TAG,
    GMACS_MODEL,
    MIOU,
    NOTE_TAG,
    PARENT_RUN_TAG,
    PARETO_OPTIMAL_TAG,
    PARETO_PROBABILITY_TAG,
    PARETO_RANK_TAG,
    TRIAL_ID_TAG,
)
from pipeline.results.publish import LOCAL_UI

REPO = Path(__file__).resolve().parents[1]
QUICK_SPACE = "tests/demo_quick_space.yaml"  # relative to the clone's root, where make runs
BUDGET = {
    "iterations",
    "schedule.warmup_iterations",
    "schedule.log_interval",
    "schedule.eval_interval",
    "schedule.checkpoint_interval",
}


def test_the_quick_demo_space_is_the_demo_sweep_on_a_smaller_budget():
    smoke = yaml.safe_load((REPO / "tune_spaces" / "smoke.yaml").read_text())
    quick = yaml.safe_load((REPO / QUICK_SPACE).read_text())
    assert quick["space"] == smoke["space"]  # both NRDs and both baselines
    for section in ("search", "fixed"):
        keys = set(smoke[section]) | set(quick[section])
        differing = {key for key in keys if smoke[section].get(key) != quick[section].get(key)}
        assert differing <= BUDGET, (section, differing)
    assert quick["search"]["iterations"] < smoke["search"]["iterations"]


def run(command: list[str], cwd: Path, log: Path, timeout: int, env: dict | None = None) -> str:
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=env)
    text = log.read_text()
    assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}); end of {log}:\n{text[-4000:]}"
    return text


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if os.environ.get("NRD_BENCH_SKIP_FRESH_CLONE") == "1":
        pytest.skip("NRD_BENCH_SKIP_FRESH_CLONE=1")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip(f"needs git and the repository's history at {REPO}")
    target = tmp_path_factory.mktemp("fresh") / "nrd-bench"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(target)], check=True, timeout=120)
    return target


@pytest.fixture(scope="module")
def demo(clone: Path) -> str:
    """What `make demo` printed in the fresh clone: run once for this module's tests (its store is
    ``clone / "demo" / "mlflow.db"``)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "MLFLOW_", "PYTEST_"))}
    env["NRD_BENCH_SKIP_FRESH_CLONE"] = "1"
    return run(
        ["make", "demo", f"DEMO_ARGS=--space {QUICK_SPACE}"], clone, clone.parent / "demo.log", timeout=1500, env=env
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_make_demo_on_a_fresh_clone(clone: Path, demo: str):
    output = demo
    assert (clone / ".venv" / "bin" / "nrd-bench").exists()
    pip_list = subprocess.run(
        [str(clone / ".venv" / "bin" / "python"), "-m", "pip", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"^torch\s+2\.13\.0", pip_list, re.MULTILINE), "the fresh .venv must hold torch 2.13.0"
    assert "torchvision" not in pip_list
    plot = Path(re.search(r"^plot: (\S+\.png)", output, re.MULTILINE).group(1))
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.is_relative_to(clone / "demo")
    assert "mlflow ui --backend-store-uri sqlite:///" in output and "--host 127.0.0.1" in output
    table = output[output.index("[demo 3/3]") :]
    for configuration in (
        "nrd/resnet18",
        "nrd/resnet18 (nrd.static_base=True)",
        "deeplabv3plus/resnet18",
        "bilinear/resnet18",
    ):
        assert re.search(rf"^{re.escape(configuration)}\s+1\s", table, re.MULTILINE), configuration  # 1 seed
    with sqlite3.connect(clone / "demo" / "mlflow.db") as db:
        statuses = [
            status
            for (status,) in db.execute(
                "SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'trial_id'"
            )
        ]
        front = db.execute("SELECT COUNT(*) FROM tags WHERE key = 'pareto_optimal' AND value = 'true'").fetchone()[0]
    assert len(statuses) == 4 and set(statuses) == {"FINISHED"}  # 4 decoders on ResNet-18, all trained to the end
    assert front >= 1


@pytest.fixture(scope="module")
def chromium() -> tuple[Path, Path]:
    """Debian's Chromium and chromedriver, installed here when missing and possible; else the test is skipped."""
    return ui.chromium()


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the demo too when this test runs alone, and Chromium's install
def test_the_demo_in_the_mlflow_ui(chromium: tuple[Path, Path], clone: Path, demo: str, tmp_path: Path):
    """The demo's store in the real `mlflow ui`, started with the command the demo printed, through the links it
    printed, in a browser: the trials by name with their metrics, the front, the sweep run's description."""
    check_the_demo_in_the_ui(demo, clone / ".venv" / "bin" / "mlflow", clone, chromium, tmp_path)


UI_METRICS = [MIOU, GMACS_MODEL, PARETO_OPTIMAL_TAG, PARETO_RANK_TAG, PARETO_PROBABILITY_TAG]  # tags of these names too


def printed_ui(output: str, mlflow: Path, port: int) -> tuple[list[str], dict[str, str], str]:
    """The `mlflow ui` command the demo printed (with ``mlflow``, and ``port`` for 5000), the links into the UI that
    `pareto` printed (run, front, plots; their address on that port) and the sweep's parent run id."""
    command = shlex.split(re.search(r"^  (mlflow ui .+)$", output, re.MULTILINE).group(1))
    assert command[command.index("--port") + 1] == LOCAL_UI.rsplit(":", 1)[1], command
    command[0], command[command.index("--port") + 1] = str(mlflow), str(port)
    links = dict(re.findall(r"^  (run|front|plot \S+): (\S+)$", output, re.MULTILINE))
    assert {"run", "front"} <= links.keys() and any(name.startswith("plot ") for name in links), links
    assert all(address.startswith(f"{LOCAL_UI}/#/experiments/") for address in links.values()), links
    links = {name: f"http://127.0.0.1:{port}{address.removeprefix(LOCAL_UI)}" for name, address in links.items()}
    parent_id = json.loads(re.search(r"^results: (\{.*\})$", output, re.MULTILINE).group(1))["parent_run_id"]
    return command, links, parent_id


def check_the_demo_in_the_ui(output: str, mlflow: Path, cwd: Path, chromium: tuple[Path, Path], out: Path) -> None:
    """Run the printed `mlflow ui` in ``cwd`` and check, in Chromium, what the demo's store holds (read with
    MlflowClient) against what the pages at the printed links show; screenshots in ``out``/mlflow-ui/."""
    from mlflow import MlflowClient

    port = free_port()
    command, links, parent_id = printed_ui(output, mlflow, port)
    assert links["run"].endswith(f"/runs/{parent_id}"), links  # the sweep's run holds the front
    experiment_id = re.search(r"/#/experiments/([^/]+)/runs/", links["run"]).group(1)
    client = MlflowClient(command[command.index("--backend-store-uri") + 1])
    experiment = client.get_experiment(experiment_id).name
    parent = client.get_run(parent_id)
    query = f"tags.`{PARENT_RUN_TAG}` = '{parent_id}'"
    trials = {run.info.run_id: run for run in client.search_runs([experiment_id], query)}
    assert len(trials) == 4, sorted(run.info.run_name for run in trials.values())
    for run in trials.values():
        tags = run.data.tags
        name = re.escape(f"{tags[DECODER_TAG]}-{tags[ENCODER_TAG]}-{tags[TRIAL_ID_TAG]}")
        assert re.fullmatch(rf"{name}(-seed\d+)?", run.info.run_name), run.info.run_name
        assert set(UI_METRICS) <= run.data.metrics.keys(), (run.info.run_name, sorted(run.data.metrics))
    front = {run_id for run_id, run in trials.items() if run.data.metrics[PARETO_OPTIMAL_TAG] == 1}
    assert front

    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "PYTEST_"))}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    shots = out / "mlflow-ui"
    shots.mkdir()
    base = f"http://127.0.0.1:{port}"
    with (
        ui.mlflow_ui(command, cwd, base, out / "mlflow-ui.log", env),
        ui.browser(*chromium, out / "chromedriver.log") as chrome,
    ):
        # first the experiment's runs as a newcomer finds them (a fresh profile: the UI's defaults, no filter), at
        # the address of the front link less its filter; then the front link, the UI remembering rows expanded
        # and columns shown
        check_runs_table(chrome, links["front"].split("?", 1)[0], experiment, parent, trials, shots)
        check_front_link(chrome, links["front"], parent, {run_id: trials[run_id] for run_id in front})
        chrome.save_screenshot(shots / "front.png")
        check_sweep_run(chrome, links["run"], parent, [trials[run_id] for run_id in front])
        chrome.save_screenshot(shots / "run.png")
        for name, address in links.items():
            if name.startswith("plot "):
                ui.open_page(chrome, address)  # the plot, shown from the sweep run's artifacts
                ui.wait(chrome, lambda c: [src for src in ui.shown_images(c) if src.startswith("blob:")], name)
                chrome.save_screenshot(shots / name.removeprefix("plot "))


def check_front_link(chrome, address: str, parent, front: dict) -> None:
    """The experiment's runs filtered to the sweep's front: the front's trials (only them), nested under the sweep's
    run, which the table shows collapsed."""
    ui.open_page(chrome, address)
    ui.show_child_rows(chrome, parent.info.run_id, set(front))
    expected = {parent.info.run_id: parent.info.run_name} | {key: run.info.run_name for key, run in front.items()}
    ui.wait(chrome, lambda c: ui.table_run_names(c) == expected, f"exactly the runs {sorted(expected.values())}")


def check_runs_table(chrome, address: str, experiment: str, parent, trials: dict, shots: Path) -> None:
    """The experiment's runs: every trial by name under the sweep's run (collapsed at first) and, once ticked in the
    Columns menu (the table shows no metric column by default), mIoU, GMACs and the Pareto metrics with the store's
    values. Screenshots: runs-default.png as the page opens, runs.png with the trials and their metrics."""
    ui.open_page(chrome, address)
    ui.wait(chrome, lambda c: parent.info.run_id in ui.table_run_names(c), f"the row of run {parent.info.run_id}")
    ui.wait(chrome, lambda c: experiment in ui.page_text(c), f"the experiment's name {experiment!r}")
    chrome.save_screenshot(shots / "runs-default.png")
    shown = ui.show_child_rows(chrome, parent.info.run_id, set(trials))
    assert shown == {parent.info.run_id: parent.info.run_name} | {key: run.info.run_name for key, run in trials.items()}
    ui.show_metric_columns(chrome, UI_METRICS)
    columns = {metric: ui.metric_column(metric) for metric in UI_METRICS}

    def every_cell(chrome) -> dict | None:
        cells = ui.table_cells(chrome)
        return cells if all(set(columns.values()) <= cells.get(run_id, {}).keys() for run_id in trials) else None

    cells = ui.wait(chrome, every_cell, f"the columns {UI_METRICS} of every trial")
    for run_id, run in trials.items():
        for metric, column in columns.items():
            shown = cells[run_id][column]
            assert float(shown) == pytest.approx(run.data.metrics[metric], rel=1e-6), (run.info.run_name, metric, shown)
    chrome.save_screenshot(shots / "runs.png")


def check_sweep_run(chrome, address: str, parent, front: list) -> None:
    """The sweep's run: its description (the note) rendered with the front's table (a row per front run: name,
    decoder, encoder, GMACs, mIoU), and its summary metrics."""
    ui.open_page(chrome, address)
    heading = parent.data.tags[NOTE_TAG].splitlines()[0].lstrip("# ")
    ui.wait(chrome, lambda c: heading in ui.page_text(c), f"the description's heading {heading!r}")
    ui.click_text(chrome, "Show more")  # the page shows the description's first lines, faded, until then

    def front_rows(chrome) -> list | None:
        rows = [row for table in ui.page_tables(chrome) for row in table]
        names = {run.info.run_name for run in front}
        return rows if names <= {row[0] for row in rows if row} else None

    rows = ui.wait(chrome, front_rows, "the front's table in the sweep run's description")
    for run in front:
        tags, metrics = run.data.tags, run.data.metrics
        expected = [run.info.run_name, tags[DECODER_TAG], tags[ENCODER_TAG]]
        expected += [f"{metrics[GMACS_MODEL]:.2f}", f"{metrics[MIOU]:.2f}"]
        assert expected in rows, (expected, rows)
    text = ui.page_text(chrome)
    for metric in parent.data.metrics:  # best_mIoU, front_size, the trials by status
        assert metric in text, metric
