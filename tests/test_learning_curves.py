"""benchmarks/learning_curves.py: the --quick smoke run writes its CSV, JSON and PNG; first_beats on a hand case."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "learning_curves.py"


@pytest.fixture(scope="module")
def learning_curves():
    spec = importlib.util.spec_from_file_location("learning_curves", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_csv_json_and_png(learning_curves, tmp_path):
    assert learning_curves.main(["--dataset", "synthetic", "--quick", "--out-dir", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "learning_curves_synthetic.csv").open()))
    variants = list(learning_curves.VARIANTS)
    assert {(row["variant"], int(row["iteration"])) for row in rows} == {(v, i) for v in variants for i in (0, 1, 2)}
    for row in rows:
        assert 0 <= float(row["mIoU"]) <= 100
        share = float(row["within_patch_share"])
        assert (row["variant"] in learning_curves.NRD_VARIANTS) == (share == share)  # NaN only for non-NRD rows
    summary = json.loads((tmp_path / "learning_curves_synthetic.json").read_text())
    assert summary["complete"] and summary["settings"]["iterations"] == 2 and summary["settings"]["seeds"] == [0]
    assert set(summary["first_beats_bilinear"]) == {"nrd/seed0", "nrd_static_base/seed0"}
    assert summary["git_commit"] and summary["versions"]["torch"]
    cost = summary["cost"]["per_variant"]
    assert cost["nrd"]["decoder_gmacs"] == cost["nrd_static_base"]["decoder_gmacs"] > 0
    assert (tmp_path / "learning_curves_synthetic.png").stat().st_size > 1000


def test_missing_camvid_is_skipped_with_a_message(learning_curves, tmp_path, capsys):
    args = ["--dataset", "camvid", "--quick", "--camvid-root", str(tmp_path / "none"), "--out-dir", str(tmp_path)]
    assert learning_curves.main(args) == 0
    assert "CamVid not found" in capsys.readouterr().out
    assert not list(tmp_path.glob("learning_curves_*"))


def test_first_beats_bilinear(learning_curves):
    rows = [
        {"variant": "bilinear", "seed": 0, "iteration": i, "mIoU": m} for i, m in ((0, 5.0), (10, 20.0), (20, 30.0))
    ] + [{"variant": "nrd", "seed": 0, "iteration": i, "mIoU": m} for i, m in ((0, 5.0), (10, 19.0), (20, 31.0))]
    assert learning_curves.first_beats(rows, "nrd", 0) == 20  # a tie at 0 is not a win
    assert learning_curves.first_beats(rows, "nrd", 1) is None
