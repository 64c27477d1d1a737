"""``nrd-bench report`` on a real SQLite MLflow store filled with MlflowClient; the expected tables are computed in
the test from the run descriptions below."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402

from pipeline.commands.cli import main  # noqa: E402
from pipeline.names import KIND_SWEEP, KIND_TAG  # noqa: E402

EXPERIMENT = "bench"
COST_METRICS = ("gmacs_model", "gmacs_decoder", "params_m", "latency_p50_ms")
ACCURACY_METRICS = ("trimap_mIoU_4px", "mBIoU")


def run_spec(name, dataset, decoder, encoder, miou, status="FINISHED", drop=(), **extra) -> dict:
    """A training run: ``miou`` is a value or a list of (step, value) (the last step counts); every other metric
    is derived from the name so that each run has its own values; ``drop`` lists metrics the run lacks."""
    seed = sum(map(ord, name))
    metrics = {
        "trimap_mIoU_4px": 30 + seed % 17 + 0.125,
        "mBIoU": 20 + seed % 13 + 0.0625,
        "gmacs_model": 10 + seed % 7 + 1 / 3,
        "gmacs_decoder": 1 + seed % 5 + 2 / 7,
        "params_m": 11 + seed % 3 + 0.5,
        "latency_p50_ms": 40 + seed % 11 + 0.25,
        **extra,
    }
    if miou is not None:
        metrics["mIoU"] = miou
    metrics = {key: value for key, value in metrics.items() if key not in drop}
    tags = {
        "dataset": dataset,
        "decoder": decoder,
        "encoder": encoder,
        "git_commit": hashlib.sha1(name.encode()).hexdigest(),
        "device_type": "cuda" if seed % 2 else "cpu",
        "eval_input": "1x3x360x480" if dataset == "camvid" else "1x3x64x64",
    }
    return {"name": name, "status": status, "metrics": metrics, "tags": tags}


RUNS = [
    run_spec("cv-nrd-r18-a", "camvid", "nrd", "resnet18", 61.25),
    run_spec("cv-nrd-r18-b", "camvid", "nrd", "resnet18", 63.5, mIoU_msflip=65.75),
    run_spec("cv-nrd-r18-failed", "camvid", "nrd", "resnet18", 90.0, status="FAILED"),  # best value, not finished
    run_spec("cv-nrd-r18-running", "camvid", "nrd", "resnet18", 95.0, status="RUNNING"),
    run_spec("cv-bilinear-r18", "camvid", "bilinear", "resnet18", 50.0, drop=("mBIoU", "latency_p50_ms")),
    run_spec("cv-bilinear-r50-no-miou", "camvid", "bilinear", "resnet50", None),  # finished without mIoU
    run_spec("cv-nrd-r50-early", "camvid", "nrd", "resnet50", [(10, 70.0), (20, 55.5)]),  # final value counts
    run_spec("cv-nrd-r50-late", "camvid", "nrd", "resnet50", [(10, 40.0), (20, 58.5)]),
    run_spec("cs-nrd-r18-b", "cityscapes", "nrd", "resnet18", 70.125),  # tie: the run name decides
    run_spec("cs-nrd-r18-a", "cityscapes", "nrd", "resnet18", 70.125),
    run_spec("cs-dlv3p-r50", "cityscapes", "deeplabv3plus", "resnet50", 72.0, mIoU_msflip=73.5),
]


def final(value):
    return value[-1][1] if isinstance(value, list) else value


def expected_rows() -> dict[str, list[dict]]:
    """The best finished run with mIoU per (dataset, decoder, encoder), independently of the code under test."""
    pairs: dict[tuple[str, str, str], list[dict]] = {}
    for spec in RUNS:
        if spec["status"] == "FINISHED" and "mIoU" in spec["metrics"]:
            tags = spec["tags"]
            pairs.setdefault((tags["dataset"], tags["decoder"], tags["encoder"]), []).append(spec)
    rows: dict[str, list[dict]] = {}
    for (dataset, _, _), specs in sorted(pairs.items()):
        best = sorted(specs, key=lambda spec: (-final(spec["metrics"]["mIoU"]), spec["name"]))[0]
        rows.setdefault(dataset, []).append({"spec": best, "competing": len(specs)})
    return rows


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """A SQLite store with RUNS (plus a sweep parent with one of them as its child); returns the URI and the run
    ids by name."""
    root = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    client.create_experiment("empty", artifact_location=(root / "artifacts-empty").as_uri())
    sweep = client.create_run(experiment_id, run_name="sweep", tags={KIND_TAG: KIND_SWEEP, "dataset": "camvid"})
    client.log_metric(sweep.info.run_id, "mIoU", 99.0)
    client.set_terminated(sweep.info.run_id, "FINISHED")
    ids = {}
    for spec in RUNS:
        tags = dict(spec["tags"])
        if spec["name"] == "cv-nrd-r18-a":
            tags["mlflow.parentRunId"] = sweep.info.run_id
        run_id = client.create_run(experiment_id, run_name=spec["name"], tags=tags).info.run_id
        for key, value in spec["metrics"].items():
            for step, item in value if isinstance(value, list) else [(0, value)]:
                client.log_metric(run_id, key, item, step=step)
        if spec["status"] != "RUNNING":
            client.set_terminated(run_id, spec["status"])
        ids[spec["name"]] = run_id
    return uri, ids


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def markdown_rows(text: str) -> list[dict[str, str]]:
    """The body rows of the (single) Markdown table in ``text``: header -> stripped cell."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header, *rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[:1] + lines[2:]]
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_best_run_per_decoder_and_encoder(store, tmp_path, capsys):
    uri, ids = store
    out = tmp_path / "results"
    assert main(["report", "--experiment", EXPERIMENT, "--tracking-uri", uri, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    expected = expected_rows()
    assert sorted(expected) == ["camvid", "cityscapes"]
    assert sorted(path.name for path in out.iterdir()) == [
        "report_camvid.csv",
        "report_camvid.md",
        "report_cityscapes.csv",
        "report_cityscapes.md",
        "report_criteria.json",
    ]
    sections = []
    for dataset, rows in expected.items():
        table = read_csv(out / f"report_{dataset}.csv")
        assert [(row["decoder"], row["encoder"]) for row in table] == [
            (item["spec"]["tags"]["decoder"], item["spec"]["tags"]["encoder"]) for item in rows
        ]
        for row, item in zip(table, rows, strict=True):
            spec, metrics, tags = item["spec"], item["spec"]["metrics"], item["spec"]["tags"]
            assert row["dataset"] == dataset and row["run_id"] == ids[spec["name"]] and row["run_name"] == spec["name"]
            assert float(row["mIoU"]) == final(metrics["mIoU"])
            for key in ("mIoU_msflip", *ACCURACY_METRICS, *COST_METRICS):
                assert row[key] == ("" if key not in metrics else repr(metrics[key])), key
            assert row["eval_input"] == tags["eval_input"]
            assert row["device"] == tags["device_type"] and row["commit"] == tags["git_commit"]
            assert int(row["competing_runs"]) == item["competing"]
        text = (out / f"report_{dataset}.md").read_text()
        sections.append(text)
        cells = markdown_rows(text)
        assert len(cells) == len(rows)
        for row, item in zip(cells, rows, strict=True):
            metrics, tags = item["spec"]["metrics"], item["spec"]["tags"]
            assert [row["decoder"], row["encoder"]] == [tags["decoder"], tags["encoder"]]
            assert row["mIoU"] == f"{final(metrics['mIoU']):.2f}" and row["seeds"] == "1"
            assert row["95% low"] == row["95% high"] == ""  # no per-image counts: no interval, never a made-up one
            assert row["mIoU ms+flip"] == (f"{metrics['mIoU_msflip']:.2f}" if "mIoU_msflip" in metrics else "")
            assert row["mBIoU"] == (f"{metrics['mBIoU']:.2f}" if "mBIoU" in metrics else "")
            assert row["input (NxCxHxW)"] == tags["eval_input"]
            latency = f"{metrics['latency_p50_ms']:.1f}" if "latency_p50_ms" in metrics else ""
            assert row["latency p50 (ms)"] == latency
            assert row["commit"] == tags["git_commit"][:12] and row["run id"] == ids[item["spec"]["name"]]
    assert stdout == "\n".join(sections)  # the tables printed are the tables written

    camvid = {(row["decoder"], row["encoder"]): row for row in read_csv(out / "report_camvid.csv")}
    assert camvid["nrd", "resnet18"]["run_name"] == "cv-nrd-r18-b"  # not the FAILED or RUNNING ones
    assert camvid["nrd", "resnet50"]["run_name"] == "cv-nrd-r50-late"  # 58.5 at the last step beats 55.5
    assert ("bilinear", "resnet50") not in camvid  # its only run has no mIoU
    assert camvid["bilinear", "resnet18"]["mBIoU"] == "" and camvid["bilinear", "resnet18"]["latency_p50_ms"] == ""
    cityscapes = {(row["decoder"], row["encoder"]): row for row in read_csv(out / "report_cityscapes.csv")}
    assert cityscapes["nrd", "resnet18"]["run_name"] == "cs-nrd-r18-a"

    criteria = json.loads((out / "report_criteria.json").read_text())
    assert criteria["experiment"] == EXPERIMENT and criteria["rank_by"]["metric"] == "mIoU"
    assert criteria["columns"]["latency_p50_ms"] == {"metric": "latency_p50_ms"}
    assert criteria["columns"]["commit"] == {"tag": "git_commit"}
    camvid_criteria = criteria["datasets"]["camvid"]
    assert camvid_criteria["lacking_rank_metric"] == [ids["cv-bilinear-r50-no-miou"]]
    assert sorted((item["run_id"], item["status"]) for item in camvid_criteria["not_finished"]) == sorted(
        [(ids["cv-nrd-r18-failed"], "FAILED"), (ids["cv-nrd-r18-running"], "RUNNING")]
    )
    finished = [s for s in RUNS if s["status"] == "FINISHED" and s["tags"]["dataset"] == "camvid"]
    assert camvid_criteria["finished_runs"] == len(finished)


def test_dataset_filter(store, tmp_path, capsys):
    uri, _ = store
    args = ["report", "--experiment", EXPERIMENT, "--tracking-uri", uri, "--out", str(tmp_path), "--dataset"]
    assert main([*args, "cityscapes"]) == 0
    assert "## cityscapes" in capsys.readouterr().out
    assert not (tmp_path / "report_camvid.csv").exists()
    assert main([*args, "kitti"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset" in err and "camvid" in err and "cityscapes" in err


def test_unknown_or_empty_experiment_is_named(store, tmp_path, capsys):
    uri, _ = store
    assert main(["report", "--experiment", "benhc", "--tracking-uri", uri, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment" in err and "did you mean 'bench'" in err
    assert main(["report", "--experiment", "empty", "--tracking-uri", uri, "--out", str(tmp_path)]) == 2
    assert "no finished training run" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_repeats_give_the_mean_over_seeds_with_its_interval_and_the_steadiest_configuration_wins(tmp_path, capsys):
    """Two configurations of nrd/resnet18, two seeds each, with per-image counts: ``lucky`` has the best single run
    (a perfect seed and a hopeless one, mean 50) and ``steady`` the best mean (two seeds near 67). The row is
    ``steady``'s, with its mean over seeds, the interval the bootstrap gives for the same evidence, and 2 seeds; a
    run without counts or a key is a configuration of its own and gets no interval."""
    from nrd.evidence import IMAGE_COUNTS_FILE, ImageCounts, write_image_counts
    from pipeline.names import CONFIG_KEY_TAG
    from pipeline.results.uncertainty import bootstrap

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("repeats", artifact_location=str(tmp_path / "artifacts"))
    images = [f"frame{i}" for i in range(8)]
    perfect, hopeless, third = [[10, 0, 0]] * 2, [[0, 5, 5]] * 2, [[5, 5, 5]] * 2
    runs = {  # name: (config key, per-image counts)
        "lucky-s0": ("key-lucky", [perfect] * 8),
        "lucky-s1": ("key-lucky", [hopeless] * 8),
        "steady-s0": ("key-steady", [perfect, third] * 4),
        "steady-s1": ("key-steady", [perfect] * 3 + [third] * 5),
    }
    evidence: dict[str, list[ImageCounts]] = {}
    for name, (key, counts) in runs.items():
        tags = {"dataset": "camvid", "decoder": "nrd", "encoder": "resnet18", CONFIG_KEY_TAG: key}
        run_id = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
        image_counts = ImageCounts(images, ("road", "sky"), counts, 255)
        evidence.setdefault(key, []).append(image_counts)
        client.log_metric(run_id, "mIoU", float(image_counts.scores()["mIoU"]))
        write_image_counts(tmp_path / name / IMAGE_COUNTS_FILE, image_counts)
        client.log_artifact(run_id, str(tmp_path / name / IMAGE_COUNTS_FILE))
        client.set_terminated(run_id, "FINISHED")
    plain = client.create_run(experiment_id, run_name="bilinear", tags={"dataset": "camvid", "decoder": "bilinear"})
    client.log_metric(plain.info.run_id, "mIoU", 20.0)
    client.set_terminated(plain.info.run_id, "FINISHED")

    out = tmp_path / "out"
    assert main(["report", "--experiment", "repeats", "--tracking-uri", uri, "--out", str(out)]) == 0
    rows = {row["decoder"]: row for row in read_csv(out / "report_camvid.csv")}
    expected = bootstrap(evidence | {f"run-{plain.info.run_id}": []}, ("mIoU",), logged=None).estimates["key-steady"]
    steady = rows["nrd"]
    assert steady["run_name"] == "steady-s0" and steady["seeds"] == "2" and steady["competing_runs"] == "4"
    assert float(steady["mIoU"]) == pytest.approx(expected["mIoU"].value)
    assert float(steady["mIoU_low"]) == pytest.approx(expected["mIoU"].low)
    assert float(steady["mIoU_high"]) == pytest.approx(expected["mIoU"].high)
    assert float(steady["mIoU_low"]) < float(steady["mIoU"]) < float(steady["mIoU_high"])
    assert rows["bilinear"]["seeds"] == "1" and rows["bilinear"]["mIoU_low"] == rows["bilinear"]["mIoU_high"] == ""
    (cells,) = [row for row in markdown_rows((out / "report_camvid.md").read_text()) if row["decoder"] == "nrd"]
    assert cells["seeds"] == "2" and cells["95% low"] == f"{expected['mIoU'].low:.2f}"
    assert "percentile bootstrap, 2000 resamples over validation images and seeds" in capsys.readouterr().out
