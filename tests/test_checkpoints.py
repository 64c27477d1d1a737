"""A training checkpoint on disk (``pipeline.training.checkpoints``): one file, read back whole by a resumed run and
by ``nrd-bench predict --weights`` (whose loader takes the file's ``model`` entry)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import torch

from nrd import ModelConfig, load_encoder_weights
from pipeline.names import CHECKPOINT_STATE
from pipeline.training.checkpoints import load_checkpoint_state, report_checkpoint


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
    report_checkpoint(session, model, optimizer, 7, {"loss": 0.5, "mIoU": None})
    assert session.reports == [{"iteration": 7, "loss": 0.5}]
    assert [path.name for path in session.target.iterdir()] == [CHECKPOINT_STATE]

    state = load_checkpoint_state(FolderCheckpoint(session.target))
    assert set(state) == {"model", "optimizer", "iteration", "rng"} and state["iteration"] == 7
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
