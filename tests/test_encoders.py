"""ResNet encoders: stage shapes, dilation, the well-known MAC counts, and pretrained weights in torchvision layout."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nrd import ENCODERS, create_encoder, create_model, load_encoder_weights
from nrd.cost import COUNTER, count_macs
from nrd.errors import (
    InvalidHyperparameterError,
    NRDBenchError,
    UnknownNameError,
    WeightsFileNotFoundError,
    WeightsMismatchError,
)

CHANNELS = {"resnet18": 64, "resnet34": 64, "resnet50": 256, "resnet101": 256}


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize(("output_stride", "strides"), [(32, (4, 8, 16, 32)), (16, (4, 8, 16, 16)), (8, (4, 8, 8, 8))])
def test_stage_shapes_match_what_the_encoder_declares(name, output_stride, strides):
    with torch.device("meta"):  # shapes only
        encoder = create_encoder(name, output_stride=output_stride)
        features = encoder(torch.empty(1, 3, 64, 96))
    base = CHANNELS[name.removesuffix("_v1c")]
    assert encoder.out_channels == (base, 2 * base, 4 * base, 8 * base)
    assert encoder.out_strides == strides
    for feature, channels, stride in zip(features, encoder.out_channels, strides, strict=True):
        assert feature.shape == (1, channels, 64 // stride, 96 // stride)


def test_dilated_stages_keep_resolution_on_real_tensors():
    encoder = create_encoder("resnet18", output_stride=8).eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [16, 8, 8, 8]
    dilations = [
        m.dilation for m in encoder.layer4.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert dilations == [(2, 2), (2, 2), (4, 4), (4, 4)]  # the first block keeps the previous dilation


def encoder_gmacs(name: str) -> float:
    with torch.device("meta"):
        encoder = create_encoder(name).eval()
        counter = FlopCounterMode(display=False)
        with counter:
            encoder(torch.empty(1, 3, 224, 224))
    return counter.get_total_flops() / 2e9


@pytest.mark.parametrize(("name", "expected"), [("resnet50", 4.1), ("resnet18", 1.8)])
def test_well_known_mac_counts(name, expected):
    # The published figures include the ImageNet classifier (2048·1000 MACs for R50: 0.05%), which encoders drop.
    assert encoder_gmacs(name) == pytest.approx(expected, rel=0.02), COUNTER
    # The same figure through the cost accounting's encoder level of a whole segmentation model.
    model = create_model("bilinear", name, 19, aux_head=False)
    assert count_macs(model, (1, 3, 224, 224))["encoder"] == pytest.approx(expected, rel=0.02), COUNTER


def test_deep_stem_costs_more_than_the_7x7_stem():
    assert encoder_gmacs("resnet50_v1c") > encoder_gmacs("resnet50")


TORCHVISION_KEYS = (  # names as torchvision's resnet50 state dict spells them
    "conv1.weight",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.0.bn3.bias",
    "layer1.0.downsample.0.weight",
    "layer1.0.downsample.1.running_mean",
    "layer3.5.conv2.weight",
    "layer4.2.bn3.weight",
)


def torchvision_style_checkpoint(name: str, path, seed: int = 0, extra_prefix: str = "") -> dict:
    torch.manual_seed(seed)
    state = {f"{extra_prefix}{k}": v for k, v in create_encoder(name).state_dict().items()}
    state[f"{extra_prefix}fc.weight"] = torch.randn(1000, create_encoder(name).out_channels[-1])
    state[f"{extra_prefix}fc.bias"] = torch.randn(1000)
    torch.save(state, path)
    return state


def test_torchvision_key_layout():
    keys = set(create_encoder("resnet50").state_dict())
    assert set(TORCHVISION_KEYS) <= keys
    stem = {k for k in create_encoder("resnet50_v1c").state_dict() if k.startswith("stem.")}
    assert {
        "stem.0.weight",
        "stem.1.weight",
        "stem.3.weight",
        "stem.4.weight",
        "stem.6.weight",
        "stem.7.weight",
    } <= stem


# Published torchvision figures, fc included: state-dict keys (fc.weight and fc.bias among them) and parameters
# (resnet18 11,689,512 with a 512·1000 + 1000 fc; resnet34 21,797,672, same fc; resnet50 25,557,032 with a
# 2048·1000 + 1000 fc; resnet101 44,549,160, same fc). Our encoders have no fc.
TORCHVISION_KEY_COUNTS = {"resnet18": 122, "resnet34": 218, "resnet50": 320, "resnet101": 626}
TORCHVISION_PARAMS_WITHOUT_FC = {
    "resnet18": 11_689_512 - 513_000,
    "resnet34": 21_797_672 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "resnet101": 44_549_160 - 2_049_000,
}


@pytest.mark.parametrize("name", list(TORCHVISION_KEY_COUNTS))
def test_key_and_parameter_counts_are_torchvisions(name):
    encoder = create_encoder(name)
    assert len(encoder.state_dict()) + 2 == TORCHVISION_KEY_COUNTS[name]
    assert sum(p.numel() for p in encoder.parameters()) == TORCHVISION_PARAMS_WITHOUT_FC[name]


def test_deep_stem_counts():
    # V1c swaps the 7×7 stem (conv 3·64·49 + BN 2·64; 6 keys) for 3×3 convs 3→32→32→64 with BNs (18 keys).
    seven = 3 * 64 * 49 + 2 * 64
    deep = 9 * (3 * 32 + 32 * 32 + 32 * 64) + 2 * (32 + 32 + 64)
    v1c, v1b = create_encoder("resnet50_v1c"), create_encoder("resnet50")
    assert len(v1c.state_dict()) == len(v1b.state_dict()) - 6 + 18
    assert sum(p.numel() for p in v1c.parameters()) == TORCHVISION_PARAMS_WITHOUT_FC["resnet50"] - seven + deep


@pytest.mark.parametrize("name", ["resnet50", "resnet50_v1c", "resnet18"])
def test_pretrained_round_trip(tmp_path, name):
    path = tmp_path / f"{name}.pth"
    saved = torchvision_style_checkpoint(name, path, seed=1)
    torch.manual_seed(2)
    encoder = create_encoder(name, weights=path)
    loaded = encoder.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded)
    # The same tensors through the mmcv-style wrapper and a DataParallel prefix.
    torch.save({"state_dict": {f"module.{k}": v for k, v in saved.items()}}, tmp_path / "wrapped.pth")
    torch.manual_seed(3)
    again = create_encoder(name, weights=tmp_path / "wrapped.pth").state_dict()
    assert all(torch.equal(again[k], saved[k]) for k in again)


def test_checkpoint_without_batchnorm_counters_loads_strictly(tmp_path):
    # Older torchvision checkpoints (e.g. resnet50-19c8e357.pth) predate BatchNorm's num_batches_tracked.
    path = tmp_path / "old.pth"
    saved = torchvision_style_checkpoint("resnet50", path, seed=4)
    old = {k: v for k, v in saved.items() if not k.endswith("num_batches_tracked")}
    assert len(saved) - len(old) == 53  # one per BatchNorm: stem 1 + 16 blocks × 3 + 4 downsamples
    torch.save(old, path)
    torch.manual_seed(5)
    encoder = create_encoder("resnet50", weights=path)
    loaded = encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in old.items() if not k.startswith("fc."))
    report = load_encoder_weights(create_encoder("resnet50"), path, strict=False)
    assert report == {"missing": [], "unexpected": [], "shape_mismatch": []}


def test_missing_weights_file_is_a_named_error(tmp_path):
    path = tmp_path / "nowhere" / "resnet50.pth"
    with pytest.raises(WeightsFileNotFoundError, match="not found") as info:
        create_encoder("resnet50", weights=path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, NRDBenchError)


def test_mismatched_weights_list_every_problem(tmp_path):
    path = tmp_path / "r18.pth"
    torchvision_style_checkpoint("resnet18", path)
    with pytest.raises(WeightsMismatchError) as info:
        create_encoder("resnet34", weights=path)
    message = str(info.value)
    # resnet34 has 8 more BasicBlocks: 2 convs + 2 BNs × 4 tensors each (num_batches_tracked is never missing).
    assert str(path) in message and "missing (80)" in message and "layer1.2.conv1.weight" in message
    with pytest.raises(WeightsMismatchError, match=r"shape_mismatch.*layer1\.0\.conv1\.weight"):
        create_encoder("resnet50", weights=path)
    report = load_encoder_weights(create_encoder("resnet34"), path, strict=False)
    assert "layer3.5.conv1.weight" in report["missing"] and not report["unexpected"]


def test_weights_file_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightsMismatchError, match="expected a state dict"):
        create_encoder("resnet18", weights=path)


def test_weights_are_loaded_with_weights_only(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": Payload()}, protocol=2))
    with pytest.raises(WeightsMismatchError, match="not a loadable weights file"):
        create_encoder("resnet18", weights=path)


def test_bad_encoder_arguments():
    with pytest.raises(UnknownNameError, match="resnet101_v1c"):
        create_encoder("resnet152")
    with pytest.raises(InvalidHyperparameterError, match="output_stride=4"):
        create_encoder("resnet18", output_stride=4)
    with pytest.raises(InvalidHyperparameterError, match=r"output_stride=16\.0"):
        create_encoder("resnet18", output_stride=16.0)
