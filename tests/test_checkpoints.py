"""A training checkpoint on disk (``pipeline.training.checkpoints``): one file, read back whole by a resumed run and
by ``nrd-bench predict --weights`` (whose loader takes the file's ``model`` entry)."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nrd import ModelConfig, load_encoder_weights
from pipeline.config import TrainConfig
from pipeline.names import CHECKPOINT_STATE
from pipeline.training.checkpoints import load_checkpoint_state, report_checkpoint
from pipeline.training.loop import train_loop


class FakeSession:
    """What ``report_checkpoint`` needs of a Ray session: rank 0, a report that keeps the checkpoint folder."""

    rank = 0

    def __init__(self, target: Path):
        self.target = target
        self.reports: list[dict] = []

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.reports.append(metrics)
        shutil.copytree(checkpoint_dir, self.target)


class FolderCheckpoint:
    """What ``load_checkpoint_state`` needs of a Ray checkpoint."""

    def __init__(self, path: Path):
        self.path = path

    def as_directory(self):
        return contextlib.nullcontext(str(self.path))


def test_a_checkpoint_holds_the_weights_once_and_restores_the_whole_state(tmp_path):
    """One file, state.pt (no model.pt beside it): model, SGD momentum, iteration and random generators; the
    resume path restores them exactly, and the weights loader predict uses reads the same file."""
    config = ModelConfig(decoder="bilinear", encoder="resnet18", num_classes=4, aux_head=False)
    torch.manual_seed(0)
    model = config.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    optimizer.step()
    session = FakeSession(tmp_path / "checkpoint_000000")
    report_checkpoint(session, model, optimizer, 7, {"loss": np.float64(0.5), "mIoU": None})
    assert session.reports == [{"iteration": 7, "loss": 0.5}]
    assert [path.name for path in session.target.iterdir()] == [CHECKPOINT_STATE]

    state = load_checkpoint_state(FolderCheckpoint(session.target))  # weights_only: plain numbers only
    assert set(state) == {"model", "optimizer", "iteration", "rng", "reported"} and state["iteration"] == 7
    assert state["reported"] == {"iteration": 7, "loss": 0.5} and type(state["reported"]["loss"]) is float
    fresh = config.build()
    fresh.load_state_dict(state["model"])
    resumed = torch.optim.SGD(fresh.parameters(), lr=0.01, momentum=0.9)
    resumed.load_state_dict(state["optimizer"])
    momentum = [resumed.state[p]["momentum_buffer"] for p in fresh.parameters()]
    assert all(
        torch.equal(a, optimizer.state[p]["momentum_buffer"]) for a, p in zip(momentum, model.parameters(), strict=True)
    )

    by_predict = config.build()  # nrd-bench predict --weights checkpoint_*/state.pt loads it so (strict)
    load_encoder_weights(by_predict, session.target / CHECKPOINT_STATE)
    expected = model.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in by_predict.state_dict().items())
    assert load_checkpoint_state(None) is None


class ResumedSession(FakeSession):
    """A one-process session (as a Tune trial's) whose last checkpoint is the folder ``checkpoint``."""

    world, device = 1, torch.device("cpu")

    def __init__(self, checkpoint: Path):
        super().__init__(checkpoint.parent / "unused")
        self.last = FolderCheckpoint(checkpoint)

    def checkpoint(self):
        return self.last

    def prepare_model(self, model):
        return model

    def dataset(self, name: str):
        return None  # nothing left to train: the loop never reads it

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        assert checkpoint_dir is None, "a resumed run with nothing left to train writes no checkpoint"
        self.reports.append(metrics)


@pytest.mark.slow  # start_or_resume names the Ray node it runs on
@pytest.mark.timeout(120)
def test_a_run_killed_after_its_last_checkpoint_reports_its_final_result_again(local_ray, shards, tmp_path):
    """Killed between its last checkpoint and its end (result file, finished marker), a run is restarted from that
    checkpoint with no iteration left: it trains nothing and reports the final result the checkpoint was reported
    with, so a Tune trial's result (and the run's result file) is not empty."""
    from mlflow import MlflowClient

    config = TrainConfig.from_dict(
        {
            "data": {"dataset_dir": str(shards)},
            "model": {"decoder": "bilinear", "encoder": "resnet18", "num_classes": 4, "aux_head": False},
            "schedule": {"iterations": 4, "batch_size": 2, "eval_interval": 4, "checkpoint_interval": 4},
            "run": {"storage_path": str(tmp_path / "results")},
        }
    )
    final = {"loss": 1.25, "mIoU": 31.5, "gmacs_model": 0.75}
    model = config.model.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    report_checkpoint(FakeSession(tmp_path / "checkpoint_000000"), model, optimizer, 4, final)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = MlflowClient(uri).create_run("0").info.run_id
    manifest = json.loads((shards / "manifest.json").read_text())
    session = ResumedSession(tmp_path / "checkpoint_000000")
    loop_config = {"config": config, "manifest": manifest, "tracking_uri": uri, "run_id": run_id}
    train_loop(loop_config | {"buffer_path": str(tmp_path / "buffer.jsonl")}, session)
    assert session.reports == [{"iteration": 4, **final}]
    assert MlflowClient(uri).get_metric_history(run_id, "loss") == []  # nothing trained, nothing logged again
