"""The README's main command on a fresh clone in a fresh virtual environment, as a newcomer runs it.

`make demo` runs whole: a new `.venv` (torch==2.13.0 first, then the project), synthetic data, a Ray Tune sweep on a
local Ray, the Pareto front from a SQLite MLflow store. The sweep is the demo's own (tune_spaces/smoke.yaml: four
decoders on ResNet-18) on a shorter budget, through the Makefile's documented DEMO_ARGS (tests/demo_quick_space.yaml,
checked below to differ from smoke.yaml only in its iteration counts): every step still runs, in fewer minutes.
The other command, `make test`, is this very suite, which CI runs from a clean clone through `.ci/run`: running it
again inside itself would only add minutes to CI without checking anything new.

Opt out with NRD_BENCH_SKIP_FRESH_CLONE=1 (e.g. offline, without the package registry).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

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


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_make_demo_on_a_fresh_clone(clone: Path):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "MLFLOW_", "PYTEST_"))}
    env["NRD_BENCH_SKIP_FRESH_CLONE"] = "1"
    output = run(
        ["make", "demo", f"DEMO_ARGS=--space {QUICK_SPACE}"], clone, clone.parent / "demo.log", timeout=1500, env=env
    )

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
