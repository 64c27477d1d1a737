"""``nrd-bench evaluate`` on PNG folders written in tmp_path, checked against the reference implementation of
test_metrics.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_metrics import random_pair, reference_results

from nrd.data.base import encode_png
from pipeline.commands.cli import main

K = 6
NAMES = ("a.png", "b.png", "city/c.png")


def write_pngs(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    for name, array in arrays.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(array))


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(1)
    pairs = [random_pair(rng, shape) for shape in ((40, 52), (33, 45), (40, 52))]
    preds, labels = [p for p, _ in pairs], [lab for _, lab in pairs]
    write_pngs(tmp_path / "pred", dict(zip(NAMES, preds, strict=True)))
    write_pngs(tmp_path / "label", dict(zip(NAMES, labels, strict=True)))
    return tmp_path / "pred", tmp_path / "label", preds, labels


def evaluate(pred: Path, label: Path, *extra: str) -> int:
    return main(["evaluate", "--pred", str(pred), "--label", str(label), "--num-classes", str(K), *extra])


def test_json_matches_reference(folders, capsys):
    pred_dir, label_dir, preds, labels = folders
    assert evaluate(pred_dir, label_dir, "--json") == 0
    result = json.loads(capsys.readouterr().out)  # exactly one JSON object
    expected = reference_results(preds, labels, K, (1, 2, 4, 8, 16, 32))
    assert {"aAcc", "mIoU", "mAcc", "mDice", "per_class_iou", "trimap_mIoU", "mBIoU"} <= set(result)
    assert result["num_images"] == 3
    for key in ("aAcc", "mIoU", "mAcc", "mDice", "mBIoU"):
        assert result[key] == pytest.approx(expected[key], rel=1e-12), key
    assert result["per_class_iou"][5] is None and result["per_class_acc"][3] is None  # NaN -> null
    for key in ("per_class_iou", "per_class_acc"):
        got = [math.nan if value is None else value for value in result[key]]
        np.testing.assert_allclose(got, expected[key], rtol=1e-12)
    assert list(result["trimap_mIoU"]) == ["1", "2", "4", "8", "16", "32"]
    np.testing.assert_allclose(list(result["trimap_mIoU"].values()), list(expected["trimap_mIoU"].values()), rtol=1e-12)


def test_table_with_class_names(folders, tmp_path, capsys):
    pred_dir, label_dir, preds, labels = folders
    names_file = tmp_path / "classes.txt"
    names_file.write_text("road\nsky\ncar\nboat\ntree\nkite\n")
    assert evaluate(pred_dir, label_dir, "--class-names", str(names_file), "--trimap-widths", "1,3") == 0
    out = capsys.readouterr().out
    expected = reference_results(preds, labels, K, (1, 3))
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line[:5].strip().isdigit()}
    assert list(rows) == ["road", "sky", "car", "boat", "tree", "kite"]
    assert rows["sky"][2:] == [f"{expected['per_class_iou'][1]:.2f}", f"{expected['per_class_acc'][1]:.2f}"]
    assert rows["kite"][2:] == ["-", "-"] and rows["boat"][2:] == ["0.00", "-"]
    assert f"mIoU {expected['mIoU']:.2f}" in out
    assert f"trimap mIoU: w=1: {expected['trimap_mIoU'][1]:.2f}, w=3: {expected['trimap_mIoU'][3]:.2f}" in out
    assert f"mBIoU {expected['mBIoU']:.2f}" in out


def test_unmatched_files_are_listed(folders, capsys):
    pred_dir, label_dir, preds, _ = folders
    write_pngs(pred_dir, {"extra.png": preds[0]})
    (label_dir / "b.png").unlink()
    assert evaluate(pred_dir, label_dir) == 2
    err = capsys.readouterr().err
    assert "2 prediction(s) without a label" in err and "b.png, extra.png" in err


def test_size_mismatch_names_both_files(folders, capsys):
    pred_dir, label_dir, preds, _ = folders
    write_pngs(pred_dir, {"b.png": preds[0]})  # 40x52 over a 33x45 label
    assert evaluate(pred_dir, label_dir) == 2
    err = capsys.readouterr().err
    assert f"{pred_dir / 'b.png'}: prediction is 40x52 but label {label_dir / 'b.png'} is 33x45" in err


def test_unreadable_png_is_named(folders, capsys):
    pred_dir, label_dir, _, _ = folders
    (label_dir / "city" / "c.png").write_bytes(b"not a png")
    assert evaluate(pred_dir, label_dir) == 2
    assert f"{label_dir / 'city' / 'c.png'}: cannot decode label" in capsys.readouterr().err


def test_label_value_out_of_range_is_named(folders, capsys):
    pred_dir, label_dir, _, labels = folders
    bad = labels[0].copy()
    bad[0, 0] = 9
    write_pngs(label_dir, {"a.png": bad})
    assert evaluate(pred_dir, label_dir) == 2
    err = capsys.readouterr().err
    assert f"{label_dir / 'a.png'}: values [9] are neither a class in [0, 6) nor ignore_index 255" in err


@pytest.mark.parametrize("widths", ["100000", "0,2", ""])
def test_trimap_widths_outside_what_is_useful_are_refused(folders, capsys, widths):
    pred_dir, label_dir, _, _ = folders
    with pytest.raises(SystemExit) as exited:
        evaluate(pred_dir, label_dir, "--trimap-widths", widths)
    assert exited.value.code == 2
    assert "expected band widths from 1 to 256 px" in capsys.readouterr().err
