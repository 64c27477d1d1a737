"""Search-space files: the shipped ones load, every bad space is a named error naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from nrd.errors import NRDBenchError, UnknownNameError
from pipeline.search.spaces import load_space

SPACES = sorted((Path(__file__).resolve().parents[1] / "tune_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_spaces_load(path):
    space = load_space(path)
    assert space.space
    assert {"smoke.yaml", "nrd_decoder.yaml", "encoder_sizes.yaml", "decoders.yaml"} <= {p.name for p in SPACES}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_trial_overrides_keep_only_the_trials_decoder_hyperparameters(tmp_path):
    space = load_space(
        write(
            tmp_path,
            """
search: {iterations: 30, resources: {workers: 2, cpus_per_worker: 0.5}}
fixed: {batch_size: 8, nrd.dyn_channels: 8}
space:
  decoder: {grid: [nrd, deeplabv3plus]}
  deeplabv3plus.decoder_channels: {choice: [128, 256]}
  lr: {loguniform: [0.001, 0.1]}
""",
        )
    )
    nrd = space.trial_overrides({"model.decoder": "nrd", "deeplabv3plus.decoder_channels": 128, "schedule.lr": 0.01})
    assert nrd["model"] == {"decoder": "nrd", "decoder_kwargs": {"dyn_channels": 8}}
    assert nrd["schedule"] == {"batch_size": 8, "lr": 0.01, "iterations": 30}
    assert nrd["scaling"] == {"workers": 2, "cpus_per_worker": 0.5}
    other = space.trial_overrides({"model.decoder": "deeplabv3plus", "deeplabv3plus.decoder_channels": 128})
    assert other["model"] == {"decoder": "deeplabv3plus", "decoder_kwargs": {"decoder_channels": 128}}


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("space: {decodr: {choice: [nrd]}}", UnknownNameError, "did you mean 'decoder'"),
        ("space: {nrd.dyn_chanels: {choice: [8]}}", UnknownNameError, "did you mean 'dyn_channels'"),
        ("space: {schedule.lrr: {choice: [0.1]}}", UnknownNameError, "did you mean 'lr'"),
        ("space: {decoder: {choice: [nrd, deeplabv4]}}", UnknownNameError, "deeplabv4"),
        ("space: {encoder: {grid: [resnet19]}}", UnknownNameError, "resnet18"),
        ("space: {decoder: {choice: []}}", NRDBenchError, "decoder: choice needs a non-empty list"),
        ("space: {lr: {loguniform: [0, 0.1]}}", NRDBenchError, "lr: loguniform needs low > 0"),
        ("space: {lr: {uniform: [0.1, 0.01]}}", NRDBenchError, "lr: uniform needs low < high"),
        ("space: {lr: {normal: [0, 1]}}", UnknownNameError, "distribution"),
        ("space: {lr: {choice: [fast]}}", NRDBenchError, "schedule.lr: 'fast' has the wrong type; expected a finite"),
        ("space: {lr: {choice: [.nan]}}", NRDBenchError, "schedule.lr: nan has the wrong type; expected a finite"),
        ("space: {lr: {choice: [-0.1, 0.01]}}", NRDBenchError, "schedule.lr=-0.1 is invalid; expected > 0"),
        ("space: {nrd.dyn_channels: {choice: [eight]}}", NRDBenchError, "'eight' cannot build the nrd decoder"),
        ("fixed: {nrd.patch_factor: 12}\nspace: {lr: 0.1}", NRDBenchError, "12 cannot build the nrd decoder"),
        ("search: {objectives: {miou: max}}\nspace: {lr: 0.1}", UnknownNameError, "objective metric"),
        ("space: {iterations: {uniform: [10, 20]}}", NRDBenchError, "use randint or choice"),
        ("search: {scheduler: hyperband}\nspace: {lr: 0.1}", UnknownNameError, "scheduler"),
        ("search: {objectives: {mIoU: maximise}}\nspace: {lr: 0.1}", UnknownNameError, "mode of objective"),
        (
            "search: {objectives: {mIoU: max, gmacs_model: min}, scheduler: asha}\nspace: {lr: 0.1}",
            NRDBenchError,
            "use fifo with several objectives",
        ),
        ("search: {num_samples: 0}\nspace: {lr: 0.1}", NRDBenchError, "search.num_samples"),
        ("search: {resources: {gpus: 1}}\nspace: {lr: 0.1}", UnknownNameError, "gpus_per_worker"),
        ("search: {budget: 3}\nspace: {lr: 0.1}", UnknownNameError, "search setting"),
        ("serach: {}\nspace: {lr: 0.1}", UnknownNameError, "did you mean 'search'"),
        ("fixed: {lr: 0.1}", NRDBenchError, "nothing varies"),
        ("space: {variants: {uniform: [0, 1]}}", NRDBenchError, "space.variants: expected {grid"),
        ("space: {variants: {grid: [nrd]}}", NRDBenchError, "non-empty mappings"),
        ("space: {variants: {grid: [{decoder: deeplabv4}]}}", UnknownNameError, "deeplabv4"),
        ("space: {variants: {grid: [{lr: {choice: [1]}}]}}", NRDBenchError, "not distributions"),
        ("space: {variants: {grid: [{decoder: nrd}, {model.decoder: nrd}]}}", NRDBenchError, "listed twice"),
    ],
)
def test_bad_spaces_are_named_errors(tmp_path, text, error, message):
    path = write(tmp_path, text)
    with pytest.raises(error) as info:
        load_space(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_impossible_resources_are_refused_against_the_cluster(tmp_path):
    path = write(tmp_path, "search: {resources: {workers: 2, cpus_per_worker: 1.0}}\nspace: {lr: 0.1}")
    load_space(path)  # fine without a cluster to compare with
    with pytest.raises(NRDBenchError, match=r"need 2\.01 CPUs plus 1 for Ray Data"):
        load_space(path, available_cpus=2.5)
    load_space(path, available_cpus=3.01)


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(NRDBenchError, match="not valid YAML"):
        load_space(write(tmp_path, "space: [unclosed"))
    with pytest.raises(NRDBenchError, match="config file not found"):
        load_space(tmp_path / "nope.yaml")


def test_variants_apply_whole_and_without_repeating_other_decoders(tmp_path):
    from pipeline.search.tune import SAMPLED, flat_values, param_space

    path = write(
        tmp_path,
        """
search: {seeds: 2}
space:
  variants: {grid: [{decoder: nrd}, {decoder: nrd, nrd.static_base: true}, {decoder: bilinear}]}
  lr: {choice: [0.01, 0.02]}
""",
    )
    space = load_space(path)
    kind, variants = space.space["variants"]
    assert kind == "grid"
    assert variants[1] == {"model.decoder": "nrd", "nrd.static_base": True}  # short names resolved
    params = param_space(space)
    assert params["variants"] == {"grid_search": variants}
    sampled = {SAMPLED: {"schedule.lr": 0.02}, "variants": variants[1], "schedule.seed": 1}
    values = flat_values(sampled)
    assert values == {"schedule.lr": 0.02, "model.decoder": "nrd", "nrd.static_base": True, "schedule.seed": 1}
    overrides = space.trial_overrides(values)
    assert overrides["model"] == {"decoder": "nrd", "decoder_kwargs": {"static_base": True}}
    assert space.trial_overrides(flat_values({"variants": variants[2]}))["model"] == {"decoder": "bilinear"}
