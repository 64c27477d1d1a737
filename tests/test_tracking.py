"""pipeline.tracking and ``nrd-bench replay`` against real MLflow: a SQLite store, and an ``mlflow server`` (the
``mlflow_server`` fixture of conftest.py) that the tests stop and start again to cut the logger off."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from pipeline.commands.cli import main
from pipeline.names import PARENT_RUN_TAG
from pipeline.training.logger import RunLogger
from pipeline.training.tracking import (
    TrackingRejectedError,
    TrackingUnavailableError,
    create_run,
    ensure_experiment,
    resolve_tracking_uri,
)


def loss(step: int) -> float:
    return 1.0 / (step + 1)


def metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite-store') / 'mlflow.db'}"


def test_resolve_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_tracking_uri() == "http://tracking:5000"
    assert resolve_tracking_uri("sqlite:///runs/m.db") == f"sqlite:///{tmp_path}/runs/m.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"


def test_experiment_and_nested_run(sqlite_uri, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    experiment_id = ensure_experiment(sqlite_uri, "nested")
    assert ensure_experiment(sqlite_uri, "nested") == experiment_id
    client = MlflowClient(sqlite_uri)
    assert client.get_experiment(experiment_id).artifact_location == (tmp_path / "mlartifacts" / "nested").as_uri()
    parent = create_run(sqlite_uri, experiment_id, "sweep")
    child = create_run(sqlite_uri, experiment_id, "trial-0", tags={"lr": 0.1}, parent_run_id=parent)
    run = client.get_run(child)
    assert run.info.run_name == "trial-0"
    assert run.data.tags[PARENT_RUN_TAG] == parent
    assert run.data.tags["lr"] == "0.1"
    assert PARENT_RUN_TAG not in client.get_run(parent).data.tags


def test_logger_logs_everything(sqlite_uri, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    run_id = create_run(sqlite_uri, ensure_experiment(sqlite_uri, "everything"), "run")
    buffer = tmp_path / "buffer.jsonl"
    logger = RunLogger(sqlite_uri, run_id, buffer)
    assert logger.last_step() is None
    logger.log_params({"lr": 0.01, "decoder": "nrd"})
    logger.set_tags({"attempt": 1})
    for step in range(3):
        logger.log_metrics({"loss": loss(step), "lr": 0.01 * step}, step)
    (tmp_path / "notes.txt").write_text("weights")
    logger.log_artifact(tmp_path / "notes.txt", "checkpoints")
    logger.log_text("hello", "text/hello.txt")
    logger.log_dict({"b": [1, 2], "a": "x"}, "config.yaml")
    logger.log_dict({"k": 3}, "summary.json")
    assert logger.last_step("loss") == 2 and logger.last_step() == 2
    logger.close()
    assert not buffer.exists()

    run = MlflowClient(sqlite_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.01", "decoder": "nrd"}
    assert run.data.tags["attempt"] == "1"
    history = MlflowClient(sqlite_uri).get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(step, loss(step)) for step in range(3)]
    artifacts = tmp_path / "mlartifacts" / "everything" / run_id / "artifacts"
    assert (artifacts / "checkpoints" / "notes.txt").read_text() == "weights"
    assert (artifacts / "text" / "hello.txt").read_text() == "hello"
    assert yaml.safe_load((artifacts / "config.yaml").read_text()) == {"b": [1, 2], "a": "x"}
    assert json.loads((artifacts / "summary.json").read_text()) == {"k": 3}


def test_resumed_logger_never_repeats_a_step(sqlite_uri, tmp_path):
    run_id = create_run(sqlite_uri, ensure_experiment(sqlite_uri, "resume"), "run")
    first = RunLogger(sqlite_uri, run_id, tmp_path / "buffer.jsonl")
    for step in range(5):
        first.log_metrics({"loss": loss(step)}, step)
    first.log_metrics({"miou": 50.0}, 3)
    # the attempt dies; the next one restarts from a checkpoint at step 2 and redoes steps 2..7
    second = RunLogger(sqlite_uri, run_id, tmp_path / "buffer.jsonl")
    assert second.last_step("loss") == 4 and second.last_step("miou") == 3 and second.last_step() == 4
    for step in range(2, 8):
        second.log_metrics({"loss": -1.0 if step <= 4 else loss(step), "miou": 60.0}, step)
    second.close()
    client = MlflowClient(sqlite_uri)
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(step, loss(step)) for step in range(8)]
    assert metric_steps(client, run_id, "miou") == [3, 4, 5, 6, 7]


def test_changing_a_param_raises_at_once(sqlite_uri, tmp_path):
    run_id = create_run(sqlite_uri, ensure_experiment(sqlite_uri, "params"), "run")
    logger = RunLogger(sqlite_uri, run_id, tmp_path / "buffer.jsonl")
    logger.log_params({"lr": 0.1})
    logger.log_params({"lr": 0.1})  # the same value again is fine
    with pytest.raises(TrackingRejectedError, match=r"INVALID_PARAMETER_VALUE|lr"):
        logger.log_params({"lr": 0.2})
    assert logger.pending == 0 and not (tmp_path / "buffer.jsonl").exists()


def test_outage_is_buffered_then_sent(mlflow_server, tmp_path):
    run_id = create_run(mlflow_server.uri, ensure_experiment(mlflow_server.uri, "outage"), "drain")
    buffer = tmp_path / "buffer.jsonl"
    logger = RunLogger(mlflow_server.uri, run_id, buffer, retry_interval=0.2)
    for step in range(3):
        logger.log_metrics({"loss": loss(step)}, step)
    mlflow_server.stop()
    artifact = tmp_path / "checkpoint.txt"
    artifact.write_text("weights")
    for step in range(3, 8):
        start = time.monotonic()
        logger.log_metrics({"loss": loss(step), "acc": float(step)}, step)
        assert time.monotonic() - start < 3
    logger.log_params({"lr": 0.01})
    logger.log_artifact(artifact)
    artifact.unlink()  # a temporary file that is gone before the server is back
    assert logger.pending == 7
    records = [json.loads(line) for line in buffer.read_text().splitlines()]
    assert [record["op"] for record in records] == ["log_metrics"] * 5 + ["log_params", "log_artifact"]
    assert {record["run_id"] for record in records} == {run_id}
    assert {record["tracking_uri"] for record in records} == {mlflow_server.uri}
    assert [record["seq"] for record in records] == sorted({record["seq"] for record in records})

    mlflow_server.start()
    assert logger.flush()
    assert logger.pending == 0 and not buffer.exists() and not Path(f"{buffer}.artifacts").exists()
    logger.log_metrics({"loss": loss(8)}, 8)
    logger.close()

    client = MlflowClient(mlflow_server.uri)
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(step, loss(step)) for step in range(9)]
    assert metric_steps(client, run_id, "acc") == [3, 4, 5, 6, 7]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.01"}
    uploaded = [path for path in (mlflow_server.root / "artifacts").rglob("checkpoint.txt") if run_id in path.parts]
    assert [path.read_text() for path in uploaded] == ["weights"]


def test_buffer_left_by_a_dead_attempt_is_sent_first(mlflow_server, unused_port, tmp_path):
    run_id = create_run(mlflow_server.uri, ensure_experiment(mlflow_server.uri, "crash"), "run")
    buffer = tmp_path / "buffer.jsonl"
    nowhere = f"http://127.0.0.1:{unused_port}"  # nothing listens there: every call is buffered
    dead = RunLogger(nowhere, run_id, buffer)
    for step in range(3):
        dead.log_metrics({"loss": loss(step)}, step)
    assert dead.pending == 3 and len(buffer.read_text().splitlines()) == 3
    del dead  # the attempt crashes without closing

    logger = RunLogger(mlflow_server.uri, run_id, buffer)
    assert logger.pending == 0 and not buffer.exists()
    assert logger.last_step("loss") == 2
    logger.log_metrics({"loss": loss(3)}, 3)
    logger.close()
    history = MlflowClient(mlflow_server.uri).get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(step, loss(step)) for step in range(4)]


def test_server_never_returns_then_replay(mlflow_server, tmp_path, capsys):
    experiment_id = ensure_experiment(mlflow_server.uri, "replay")
    run_id = create_run(mlflow_server.uri, experiment_id, "run")
    buffer = tmp_path / "kept" / "buffer.jsonl"
    logger = RunLogger(mlflow_server.uri, run_id, buffer, retry_interval=0.5)
    logger.log_metrics({"loss": loss(0)}, 0)
    mlflow_server.stop()
    for step in range(1, 4):
        logger.log_metrics({"loss": loss(step)}, step)
    logger.log_params({"decoder": "nrd"})
    logger.log_text("done", "notes/summary.txt")
    start = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as raised:
        logger.close(timeout=3)
    assert 3 <= time.monotonic() - start < 10
    message = str(raised.value)
    assert str(buffer) in message and f"nrd-bench replay {buffer}" in message and mlflow_server.uri in message

    assert main(["replay", str(buffer)]) == 2  # still down: the file is kept
    assert "cannot reach" in capsys.readouterr().err and buffer.exists()
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(buffer.read_bytes())

    mlflow_server.start()
    assert main(["replay", str(buffer)]) == 0
    assert "metric_values 3" in capsys.readouterr().out
    assert not buffer.exists()
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"decoder": "nrd"}
    assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/summary.txt"]
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(step, loss(step)) for step in range(4)]

    assert main(["replay", str(copy), "--tracking-uri", mlflow_server.uri]) == 0
    output = capsys.readouterr().out
    assert "skipped_metric_values 3" in output and not re.search(r"(?<!skipped_)metric_values", output)
    assert metric_steps(client, run_id, "loss") == [0, 1, 2, 3]


def test_replay_bad_files(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["replay", str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder; expected a tracking buffer file" in capsys.readouterr().err
    record = {"seq": 1, "tracking_uri": "http://127.0.0.1:9", "run_id": "r", "op": "set_tags", "payload": {"tags": {}}}
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text(json.dumps(record) + "\n" + '{"seq": 2, "op": \n')
    assert main(["replay", str(corrupt)]) == 2
    assert f"{corrupt} line 2" in capsys.readouterr().err
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps(record) + "\n\n" + json.dumps({**record, "op": "log_model"}) + "\n")
    assert main(["replay", str(unknown)]) == 2
    error = capsys.readouterr().err
    assert "line 3" in error and "unknown op 'log_model'" in error
    assert corrupt.exists() and unknown.exists()
