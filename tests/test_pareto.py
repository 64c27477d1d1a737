"""The Pareto front and ranks against a brute-force dominance check, and ``nrd-bench pareto`` end to end against real
MLflow: a SQLite store and an ``mlflow server`` (the ``mlflow_server`` fixture of conftest.py)."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from PIL import Image

from pipeline.commands.cli import main
from pipeline.names import KIND_PARETO, KIND_SWEEP, KIND_TAG
from pipeline.results.front import collect_runs, pareto_front, pareto_ranks

NAN = float("nan")


# ------------------------------------------------------------------------------------------------- brute force
def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def brute_force_ranks(xs: list, ys: list) -> list[int | None]:
    """Peel fronts one by one: O(n²) dominance checks per front."""
    points = {
        i: (x, y)
        for i, (x, y) in enumerate(zip(xs, ys, strict=True))
        if x is not None and y is not None and not math.isnan(x) and not math.isnan(y)
    }
    ranks: list[int | None] = [None] * len(xs)
    rank = 0
    while points:
        front = [i for i in points if not any(dominates(points[j], points[i]) for j in points)]
        for i in front:
            ranks[i] = rank
            del points[i]
        rank += 1
    return ranks


def random_points(seed: int) -> tuple[list, list]:
    rng = random.Random(seed)
    n = rng.randint(0, 40)
    grid = rng.choice([3, 6, None])  # small grids: many ties in one coordinate and exact duplicates; None: reals

    def value():
        roll = rng.random()
        if roll < 0.05:
            return NAN
        if roll < 0.08:
            return None
        return rng.uniform(-5, 5) if grid is None else float(rng.randint(0, grid))

    xs, ys = [value() for _ in range(n)], [value() for _ in range(n)]
    for _ in range(n // 4):  # exact duplicates of earlier points
        i = rng.randrange(n)
        xs.append(xs[i])
        ys.append(ys[i])
    return xs, ys


@pytest.mark.parametrize("seed", range(300))
def test_ranks_match_brute_force(seed):
    xs, ys = random_points(seed)
    expected = brute_force_ranks(xs, ys)
    assert pareto_ranks(xs, ys) == expected
    assert pareto_front(xs, ys) == [i for i, rank in enumerate(expected) if rank == 0]


def test_ranks_by_hand():
    xs = [1.0, 1.0, 1.0, 2.0, 0.0, 2.0, NAN, 1.0]
    ys = [1.0, 1.0, 0.5, 1.0, 0.0, 3.0, 5.0, None]
    # (1,1) twice: no other point has x <= 1 and y >= 1, so both are on the front; (1,0.5) (same x, lower y) and
    # (2,1) (same y, higher x) are dominated by (1,1) only; (0,0) has the lowest x; (2,3) the highest y.
    assert pareto_ranks(xs, ys) == [0, 0, 1, 1, 0, 0, None, None]
    assert pareto_front(xs, ys) == [0, 1, 4, 5]
    assert pareto_ranks([], []) == [] and pareto_front([], []) == []
    with pytest.raises(ValueError, match="3 x values but 2 y values"):
        pareto_ranks([1, 2, 3], [1, 2])


# ------------------------------------------------------------------------------------------------- MLflow store
#      name, dataset, decoder, encoder, decoder kwargs, output stride, eval input, metrics, status
RUNS = [
    (
        "c-nrd-r18-d16",
        "cityscapes",
        "nrd",
        "resnet18",
        {"dyn_channels": 16},
        32,
        "1x3x512x1024",
        {"gmacs_model": 20.0, "mIoU": 70.0},
        "FINISHED",
    ),
    (
        "c-nrd-r18-d32",
        "cityscapes",
        "nrd",
        "resnet18",
        {"dyn_channels": 32},
        32,
        "1x3x512x1024",
        {"gmacs_model": 25.0, "mIoU": 72.0},
        "FINISHED",
    ),
    (
        "c-bilinear-r18",
        "cityscapes",
        "bilinear",
        "resnet18",
        {},
        32,
        "1x3x512x1024",
        {"gmacs_model": 20.0, "mIoU": 65.0},
        "FINISHED",
    ),  # same cost as c-nrd-r18-d16, lower mIoU
    (
        "c-dup-r18",
        "cityscapes",
        "dupsampling",
        "resnet18",
        {},
        32,
        "1x3x512x1024",
        {"gmacs_model": 40.0, "mIoU": 72.0},
        "FINISHED",
    ),  # same mIoU as c-nrd-r18-d32, higher cost
    (
        "c-nrd-r50",
        "cityscapes",
        "nrd",
        "resnet50_v1c",
        {"dyn_channels": 32},
        32,
        "1x3x512x1024",
        {"gmacs_model": 60.0, "mIoU": 75.0},
        "FINISHED",
    ),
    (
        "c-dlv3-r50",
        "cityscapes",
        "deeplabv3",
        "resnet50_v1c",
        {},
        8,
        "1x3x512x1024",
        {"gmacs_model": 270.0, "mIoU": 78.0},
        "FINISHED",
    ),
    (
        "c-no-miou",
        "cityscapes",
        "nrd",
        "resnet34",
        {"dyn_channels": 16},
        32,
        "1x3x512x1024",
        {"gmacs_model": 30.0},
        "FINISHED",
    ),
    (
        "c-running",
        "cityscapes",
        "nrd",
        "resnet101",
        {"dyn_channels": 16},
        32,
        "1x3x512x1024",
        {"gmacs_model": 1.0, "mIoU": 99.0},
        "RUNNING",
    ),
    (
        "v-nrd-r18",
        "camvid",
        "nrd",
        "resnet18",
        {"dyn_channels": 16},
        32,
        "1x3x360x480",
        {"gmacs_model": 5.0, "mIoU": 60.0},
        "FINISHED",
    ),
    (
        "v-dlv3p-r18",
        "camvid",
        "deeplabv3plus",
        "resnet18",
        {},
        32,
        "1x3x720x960",
        {"gmacs_model": 8.0, "mIoU": 58.0},
        "FINISHED",
    ),
    (
        "v-dlv3-r50",
        "camvid",
        "deeplabv3",
        "resnet50_v1c",
        {},
        8,
        "1x3x360x480",
        {"gmacs_model": 50.0, "mIoU": 65.0},
        "FINISHED",
    ),
]


def populate(uri: str, experiment: str, artifact_location: str | None) -> dict:
    """An experiment with one sweep parent run (it has an mIoU of its own, and must not count) and the RUNS as its
    children; returns the ids."""
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
    parent = client.create_run(experiment_id, tags={KIND_TAG: KIND_SWEEP}, run_name="sweep").info.run_id
    client.log_metric(parent, "mIoU", 100.0)
    client.set_terminated(parent, "FINISHED")
    ids = {}
    for name, dataset, decoder, encoder, kwargs, stride, eval_input, metrics, status in RUNS:
        tags = {
            "dataset": dataset,
            "dataset_dir": f"/data/{dataset}",
            "decoder": decoder,
            "encoder": encoder,
            "eval_input": eval_input,
            "cost_convention": "MACs (FLOPs = 2 x MACs)",
            "mlflow.parentRunId": parent,
        }
        run_id = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
        params = {
            "model.decoder": decoder,
            "model.encoder": encoder,
            "model.output_stride": str(stride),
            "schedule.lr": "0.01",
        } | {f"model.decoder_kwargs.{k}": str(v) for k, v in kwargs.items()}
        metrics = [Metric(key, value, 0, 0) for key, value in {**metrics, "params_m": 12.0}.items()]
        client.log_batch(run_id, metrics=metrics, params=[Param(key, value) for key, value in params.items()])
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        ids[name] = run_id
    return {"experiment_id": experiment_id, "parent": parent, "runs": ids}


def expected_ranks(ids: dict) -> dict[str, dict[str, int | None]]:
    """Brute-force ranks of the finished RUNS per data set, by run id."""
    by_dataset: dict[str, dict[str, int | None]] = {}
    for dataset in ("cityscapes", "camvid"):
        rows = [row for row in RUNS if row[1] == dataset and row[8] == "FINISHED"]
        xs = [row[7].get("gmacs_model") for row in rows]
        ys = [row[7].get("mIoU") for row in rows]
        ranks = brute_force_ranks(xs, ys)
        by_dataset[dataset] = {ids[row[0]]: rank for row, rank in zip(rows, ranks, strict=True)}
    return by_dataset


def check_tags(client: MlflowClient, store: dict) -> None:
    for ranks in expected_ranks(store["runs"]).values():
        for run_id, rank in ranks.items():
            data = client.get_run(run_id).data
            tags = data.tags
            assert tags["pareto_optimal"] == ("true" if rank == 0 else "false")
            assert tags["pareto_rank"] == ("none" if rank is None else str(rank))
            assert data.metrics["pareto_optimal"] == (1.0 if rank == 0 else 0.0)  # metrics sort as numbers
            assert data.metrics.get("pareto_rank") == (None if rank is None else float(rank))
            assert tags["pareto_axes"] == "gmacs_model min, mIoU max"
    assert "pareto_rank" not in client.get_run(store["runs"]["c-running"]).data.tags
    assert "pareto_rank" not in client.get_run(store["parent"]).data.tags


def check_json(report: dict, store: dict) -> None:
    assert set(report) == {"camvid", "cityscapes"}
    for dataset, ranks in expected_ranks(store["runs"]).items():
        assert set(report[dataset]["front"]) == {run_id for run_id, rank in ranks.items() if rank == 0}
        points = {point["run_id"]: point for point in report[dataset]["points"]}
        assert {run_id: point["rank"] for run_id, point in points.items()} == ranks
        assert all(point["on_front"] == (point["rank"] == 0) for point in points.values())
    missing = next(p for p in report["cityscapes"]["points"] if p["run_id"] == store["runs"]["c-no-miou"])
    assert missing["y"] is None and missing["x"] == 30.0 and missing["run_name"] == "c-no-miou"


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> tuple[str, dict]:
    root = tmp_path_factory.mktemp("pareto-sqlite")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return uri, populate(uri, "bench", (root / "artifacts").as_uri())


def test_parent_run_on_sqlite(sqlite_store, tmp_path, capsys):
    uri, store = sqlite_store
    out = tmp_path / "out"
    assert main(["pareto", "--parent-run", store["parent"], "--tracking-uri", uri, "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    check_json(report, store)
    for dataset in ("camvid", "cityscapes"):  # the run the front went to, and its links, as printed without --json
        published = report[dataset]["mlflow"]
        assert published["run_id"] == store["parent"]
        assert published["links"]["run"].endswith(f"/#/experiments/{store['experiment_id']}/runs/{store['parent']}")
        assert f"plot {dataset}_mIoU_vs_gmacs_model.png" in published["links"]
    client = MlflowClient(uri)
    check_tags(client, store)
    check_summary(client, store)
    logged = sorted(artifact.path for artifact in client.list_artifacts(store["parent"], "pareto"))
    kinds = (".csv", ".json", ".png", "_intervals.csv", "_intervals.json", "_intervals.png")
    files = [
        f"{dataset}_mIoU_vs_gmacs_model{kind}"
        for dataset in ("camvid", "cityscapes")
        for kind in kinds
        if kind != ".json"
    ]
    files += [f"{dataset}_mIoU_learning_curves{kind}" for dataset in ("camvid", "cityscapes") for kind in kinds[:3]]
    files = sorted([*files, "pareto_mIoU_vs_gmacs_model.json"])
    assert logged == [f"pareto/{name}" for name in files]
    assert sorted(path.name for path in out.iterdir()) == files  # no temporary files left
    with Image.open(out / "cityscapes_mIoU_vs_gmacs_model.png") as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 500
    with open(out / "cityscapes_mIoU_vs_gmacs_model.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    ranks = expected_ranks(store["runs"])["cityscapes"]
    assert {row["run_id"]: row["rank"] for row in rows} == {k: "" if v is None else str(v) for k, v in ranks.items()}
    assert rows[-1]["run_name"] == "c-no-miou" and rows[-1]["mIoU"] == "" and rows[-1]["on_front"] == "false"
    assert {row["nrd.dyn_channels"] for row in rows} == {"16", "32", ""}  # varies among the runs: a column


def check_summary(client: MlflowClient, store: dict, output: str | None = None) -> None:
    """The sweep's parent run as the place to read the front: summary metrics, the front as its description, and
    (when printed) links into the MLflow UI to the run, the front and the plots."""
    parent = client.get_run(store["parent"])
    metrics, statuses = parent.data.metrics, [row[8] for row in RUNS]
    assert metrics["trials_finished"] == statuses.count("FINISHED") and metrics["trials_running"] == 1
    assert metrics["trials_failed"] == statuses.count("FAILED") and metrics["trials_killed"] == statuses.count("KILLED")
    names = {run_id: name for name, run_id in store["runs"].items()}
    note = parent.data.tags["mlflow.note.content"]
    for dataset, ranks in expected_ranks(store["runs"]).items():
        finished = [row[7]["mIoU"] for row in RUNS if row[1] == dataset and row[8] == "FINISHED" and "mIoU" in row[7]]
        assert metrics[f"best_mIoU_{dataset}"] == max(finished)
        front = [names[run_id] for run_id, rank in ranks.items() if rank == 0]
        assert metrics[f"front_size_{dataset}"] == len(front)
        section = note[note.index(f"## {dataset}: gmacs_model") :]
        rows = [line.split(" | ")[0].removeprefix("| ") for line in section.splitlines() if line.startswith("| ")]
        assert set(front) <= set(rows[1:])  # every front run in the table (below its header)
        assert not {names[run_id] for run_id, rank in ranks.items() if rank != 0} & set(rows)
    experiment = f"http://127.0.0.1:5000/#/experiments/{store['experiment_id']}"
    assert f"- run: {experiment}/runs/{store['parent']}" in note
    assert "runs?searchFilter=metrics.pareto_optimal%20%3D%201%20AND%20tags.%60mlflow.parentRunId%60" in note
    assert f"/runs/{store['parent']}/artifactPath/pareto/camvid_mIoU_vs_gmacs_model.png" in note
    if output is not None:
        assert f"  run: {experiment}/runs/{store['parent']}" in output


def test_experiment_table_on_sqlite_goes_to_its_one_sweep(sqlite_store, tmp_path, capsys):
    """Every run of the experiment is a trial of one sweep: the front of the whole experiment is that sweep's, and
    goes to its parent run as with --parent-run, not to a separate run."""
    uri, store = sqlite_store
    client = MlflowClient(uri)
    command = ["pareto", "--experiment", "bench", "--tracking-uri", uri, "--out", str(tmp_path)]
    for _ in range(2):
        assert main(command) == 0
        output = capsys.readouterr().out
        assert not client.search_runs([store["experiment_id"]], f"tags.`{KIND_TAG}` = '{KIND_PARETO}'")
    logged = sorted(item.path.removeprefix("pareto/") for item in client.list_artifacts(store["parent"], "pareto"))
    assert logged == sorted(path.name for path in tmp_path.iterdir())  # every file written to --out, logged once
    check_summary(client, store, output)
    for data_set in ("camvid", "cityscapes"):  # front, intervals and learning curves for each data set
        assert {f"{data_set}_mIoU_vs_gmacs_model.csv", f"{data_set}_mIoU_learning_curves.png"} <= set(logged)
    check_tags(client, store)  # the pareto run itself is not a point: the ranks are the same

    ranks = expected_ranks(store["runs"])
    names = {run_id: name for name, run_id in store["runs"].items()}
    table_rows = {}
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] in store["runs"]:
            table_rows[cells[0]] = cells
    for dataset_ranks in ranks.values():
        for run_id, rank in dataset_ranks.items():
            if rank is not None:
                row = table_rows[names[run_id]]
                assert row[-1] == str(rank) and (row[-2] == "*") == (rank == 0)
    assert "not ranked, lacks mIoU: c-no-miou" in output
    assert "not counted, not finished: c-running (RUNNING)" in output
    assert "camvid: 3 runs" in output and "MIXED input sizes 1x3x360x480, 1x3x720x960" in output
    assert "sweep" not in table_rows and "pareto" not in table_rows
    assert f"plot: {tmp_path / 'cityscapes_mIoU_vs_gmacs_model.png'}" in output
    summary = output[output.index("pairs on each data set's Pareto front") :].splitlines()
    rows = {" ".join(line.split()) for line in summary}
    assert "decoder encoder camvid cityscapes" in rows
    assert "nrd resnet18 front front" in rows
    assert "dupsampling resnet18 - rank 1" in rows  # (40, 72) is dominated by (25, 72) only
    assert "nrd resnet34 - no metric" in rows  # its one run lacks mIoU


def test_pagination_and_dataset_filter(sqlite_store):
    uri, store = sqlite_store
    everything = collect_runs(uri, parent_run_id=store["parent"])
    paged = collect_runs(uri, parent_run_id=store["parent"], page_size=2)
    for dataset, runs in everything.items():
        assert [p.run_id for p in paged[dataset].points] == [p.run_id for p in runs.points]
        assert [p.run_id for p in paged[dataset].missing] == [p.run_id for p in runs.missing]
    only = collect_runs(uri, experiment="bench", dataset="camvid", page_size=3)
    assert list(only) == ["camvid"] and len(only["camvid"].points) == 3


def test_errors(sqlite_store, tmp_path, capsys):
    uri, store = sqlite_store
    base = ["pareto", "--tracking-uri", uri, "--out", str(tmp_path), "--no-tag"]
    assert main([*base, "--experiment", "bnch"]) == 2
    error = capsys.readouterr().err
    assert "unknown experiment" in error and "did you mean 'bench'" in error and "Default" in error

    assert main([*base, "--parent-run", "0" * 32]) == 2
    error = capsys.readouterr().err
    assert "unknown parent run" in error and f"{store['parent']} (sweep)" in error

    assert main([*base, "--experiment", "bench", "--x", "gflops"]) == 2
    error = capsys.readouterr().err
    assert "unknown --x metric 'gflops'" in error and "gmacs_model, mIoU, params_m" in error

    assert main([*base, "--experiment", "bench", "--dataset", "ade20k"]) == 2
    error = capsys.readouterr().err
    assert "unknown dataset" in error and "camvid, cityscapes" in error

    client = MlflowClient(uri)
    client.create_run(client.create_experiment("empty"), run_name="still-running")
    assert main([*base, "--experiment", "empty"]) == 2
    error = capsys.readouterr().err
    assert "no finished training run in experiment 'empty'" in error and uri in error and "1 RUNNING" in error
    nowhere = tmp_path / "elsewhere" / "mlflow.db"
    assert main(["pareto", "--tracking-uri", f"sqlite:///{nowhere}", "--out", str(tmp_path)]) == 2
    assert f"no MLflow store at {nowhere}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written, no empty store created


# ------------------------------------------------------------------------------------------------- mlflow server
def test_against_an_mlflow_server(mlflow_server, tmp_path, capsys):
    store = populate(mlflow_server.uri, "served", None)
    capsys.readouterr()  # MLflow prints the URL of each run it ends
    out = tmp_path / "out"
    command = ["pareto", "--experiment", "served", "--tracking-uri", mlflow_server.uri, "--out", str(out), "--json"]
    assert main(command) == 0
    check_json(json.loads(capsys.readouterr().out), store)
    client = MlflowClient(mlflow_server.uri)
    check_tags(client, store)
    assert main(command) == 0
    capsys.readouterr()
    assert not client.search_runs([store["experiment_id"]], f"tags.`{KIND_TAG}` = '{KIND_PARETO}'")  # one sweep's
    note = client.get_run(store["parent"]).data.tags["mlflow.note.content"]  # links to the server's own UI
    assert f"- run: {mlflow_server.uri}/#/experiments/{store['experiment_id']}/runs/{store['parent']}" in note
    artifacts = mlflow_server.root / "artifacts" / store["experiment_id"]  # the server is shared by the session
    uploaded = sorted(path.name for path in artifacts.rglob("*") if path.is_file())
    assert uploaded == sorted(path.name for path in out.iterdir())

    assert main(["pareto", "--parent-run", store["runs"]["v-nrd-r18"][::-1], "--tracking-uri", mlflow_server.uri]) == 2
    assert f"unknown parent run at {mlflow_server.uri}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- intervals and repeats
def test_intervals_group_repeats_and_front_probability_is_certain_where_dominance_is(tmp_path, capsys):
    """Three configurations of one sweep on SQLite: ``best`` (two repeats sharing a config_key, the cheapest, a
    perfect prediction on every image), ``worse`` (costlier, IoU 1/3 on every image: dominated in every resample)
    and ``old`` (no per-image counts, as runs logged before them). ``best`` is on the front in every resample
    (probability 1), ``worse`` in none (0); ``old`` gets its logged value, no interval and no probability, said so."""
    from nrd.evidence import IMAGE_COUNTS_FILE, ImageCounts, write_image_counts
    from pipeline.names import CONFIG_KEY_TAG, PARETO_PROBABILITY_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("intervals", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment_id, tags={KIND_TAG: KIND_SWEEP}, run_name="sweep").info.run_id
    client.set_terminated(parent, "FINISHED")
    images = [f"frame{i}" for i in range(6)]
    perfect = [[10, 0, 0], [10, 0, 0]]  # (TP, FP, FN) of both classes: IoU 100
    third = [[5, 5, 5], [5, 5, 5]]  # IoU 5 / 15
    runs = [  # name, config key, GMACs, logged mIoU, per-image counts (None: kept none)
        ("best-s0", "key-best", 1.0, 100.0, perfect),
        ("best-s1", "key-best", 1.0, 100.0, perfect),
        ("worse", "key-worse", 2.0, 100 / 3, third),
        ("old", "key-old", 0.5, 10.0, None),
    ]
    ids = {}
    for name, key, gmacs, miou, counts in runs:
        tags = {"dataset": "camvid", "decoder": "nrd", "encoder": "resnet18", CONFIG_KEY_TAG: key}
        run_id = client.create_run(experiment_id, tags=tags | {"mlflow.parentRunId": parent}, run_name=name).info
        run_id = run_id.run_id
        # learning curves: best still rising at its end (+250 points per 1k iterations), worse flat
        curve = [(100, miou - 50), (200, miou - 25), (300, miou)] if key == "key-best" else [(200, miou), (300, miou)]
        history = [Metric("mIoU", value, 0, step) for step, value in curve]
        client.log_batch(run_id, metrics=[Metric("gmacs_model", gmacs, 0, 0), *history])
        if counts is not None:
            path = tmp_path / name / IMAGE_COUNTS_FILE
            write_image_counts(path, ImageCounts(images, ("road", "sky"), [counts] * len(images), 255))
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")
        ids[name] = run_id
    out = tmp_path / "out"
    command = ["pareto", "--parent-run", parent, "--tracking-uri", uri, "--out", str(out), "--resamples", "200"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "percentile bootstrap, 200 resamples over validation images and seeds" in printed
    (table,) = out.glob("camvid_*_intervals.csv")
    with open(table, newline="") as file:
        rows = {row["config_key"]: row for row in csv.DictReader(file)}
    assert rows.keys() == {"key-best", "key-worse", "key-old"}
    assert rows["key-best"]["seeds"] == "2" and set(rows["key-best"]["run_ids"].split()) == {
        ids["best-s0"],
        ids["best-s1"],
    }
    assert float(rows["key-best"]["front_probability"]) == 1.0
    assert [rows[key]["still_rising"] for key in ("key-best", "key-worse")] == ["true", "false"]
    (best_line,) = [line for line in printed.splitlines() if line.startswith("nrd/resnet18") and "1.00" in line]
    assert best_line.split()[-1] == "yes"  # the front table's "still rising" column
    assert float(rows["key-worse"]["front_probability"]) == 0.0
    assert float(rows["key-worse"]["low"]) == float(rows["key-worse"]["high"]) == pytest.approx(100 / 3)
    assert rows["key-old"]["front_probability"] == "" and rows["key-old"]["low"] == ""
    assert float(rows["key-old"]["mIoU"]) == 10.0 and rows["key-old"]["scheme"] == "none"
    assert "10.00 (no interval: no per-image counts)" in printed
    tags = {name: client.get_run(run_id).data.tags[PARETO_PROBABILITY_TAG] for name, run_id in ids.items()}
    assert tags == {"best-s0": "1.000", "best-s1": "1.000", "worse": "0.000", "old": "none"}
    metrics = {name: client.get_run(run_id).data.metrics.get(PARETO_PROBABILITY_TAG) for name, run_id in ids.items()}
    assert metrics == {"best-s0": 1.0, "best-s1": 1.0, "worse": 0.0, "old": None}
    curves = json.loads((out / "camvid_mIoU_learning_curves.json").read_text())
    by_key = {entry["config_key"]: entry for entry in curves["configurations"]}
    assert by_key["key-best"]["iterations"] == [100, 200, 300] and by_key["key-best"]["seeds"] == [2, 2, 2]
    assert by_key["key-best"]["convergence"]["slope_per_1k"] == pytest.approx(250.0)
    assert by_key["key-best"]["convergence"]["rising"] is True and by_key["key-worse"]["convergence"]["rising"] is False
    assert set(by_key["key-best"]["runs"]) == {ids["best-s0"], ids["best-s1"]}
    assert curves["ranking_at_last_evaluation"]["iterations"] == [200, 300]  # the last two all three evaluated
    assert "still rising at the end: nrd/resnet18" in printed and "some of its members are still learning" in printed
    assert main([*command, "--resamples", "0"]) == 2
    assert "--resamples=0 is invalid" in capsys.readouterr().err

    # nrd-bench compare: A - B with its paired interval (the same on every image here) and the cost ratio
    pair = ["compare", "--parent-run", parent, "--tracking-uri", uri, "--cost", "gmacs_model", "--resamples", "200"]
    assert main([*pair, "key-best", "key-worse", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["difference"]["value"] == pytest.approx(200 / 3)
    assert result["difference"]["low"] == pytest.approx(200 / 3) == result["difference"]["high"]
    assert result["cost_ratio"] == 0.5 and result["a"]["seeds"] == 2
    assert main([*pair, "key-best", "key-old"]) == 0
    assert "(no interval: no per-image counts for" in capsys.readouterr().out
    assert main([*pair, "key-best", "nrd/resnet18"]) == 2  # every configuration here is nrd/resnet18
    error = capsys.readouterr().err
    assert "'nrd/resnet18' matches several configurations" in error and "key-worse" in error
    assert main([*pair, "--metric", "miou", "key-best", "key-worse"]) == 2  # named by compare's own flag
    assert "unknown --metric metric 'miou' (did you mean 'mIoU'?)" in capsys.readouterr().err


def test_runs_of_several_sweeps_or_none_put_the_front_on_one_reused_pareto_run(tmp_path, capsys):
    """An experiment holding a run outside any sweep: the front is nobody's sweep, so its files go to the one run
    named ``pareto`` (created once, reused, FINISHED), which gets the description but no trial counts."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = populate(uri, "mixed", (tmp_path / "artifacts").as_uri())
    client = MlflowClient(uri)
    tags = {"dataset": "camvid", "decoder": "bilinear", "encoder": "resnet18", "eval_input": "1x3x360x480"}
    alone = client.create_run(store["experiment_id"], tags=tags, run_name="alone").info.run_id
    client.log_batch(alone, metrics=[Metric("gmacs_model", 1.0, 0, 0), Metric("mIoU", 1.0, 0, 0)])
    client.set_terminated(alone, "FINISHED")
    command = ["pareto", "--experiment", "mixed", "--tracking-uri", uri, "--out", str(tmp_path / "out")]
    for _ in range(2):
        assert main(command) == 0
        output = capsys.readouterr().out
        pareto_runs = client.search_runs([store["experiment_id"]], f"tags.`{KIND_TAG}` = '{KIND_PARETO}'")
        assert len(pareto_runs) == 1 and pareto_runs[0].info.run_name == "pareto"
        assert pareto_runs[0].info.status == "FINISHED"
    (run,) = pareto_runs
    logged = sorted(item.path.removeprefix("pareto/") for item in client.list_artifacts(run.info.run_id, "pareto"))
    assert logged == sorted(path.name for path in (tmp_path / "out").iterdir())
    assert "| alone | bilinear | resnet18 | 1.00 | 1.00 |" in run.data.tags["mlflow.note.content"]
    assert "trials_finished" not in run.data.metrics and run.data.metrics["front_size_camvid"] >= 1
    assert "artifactPath/pareto/camvid_mIoU_vs_gmacs_model.png" in output
    assert "mlflow.note.content" not in client.get_run(store["parent"]).data.tags
