"""The decoder family's base test (every decoder × two encoders) and create_model / ModelConfig."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nrd import DECODERS, ENCODERS, ModelConfig, create_model, decoder_arguments
from nrd.errors import InvalidHyperparameterError, UnknownNameError

ENCODERS_UNDER_TEST = ("resnet18", "resnet50_v1c")
NUM_CLASSES = 5


def build(decoder: str, encoder: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return create_model(decoder, encoder, NUM_CLASSES, **kwargs)


@pytest.mark.parametrize("encoder", ENCODERS_UNDER_TEST)
@pytest.mark.parametrize("decoder", list(DECODERS))
def test_decoder_family(decoder: str, encoder: str):
    model = build(decoder, encoder).train()
    twin = build(decoder, encoder).train()
    images = torch.randn(2, 3, 64, 96)

    # Determinism: the same seed builds the same model, which gives the same output (dropout seeded too).
    torch.manual_seed(1)
    logits, aux = model.forward_with_aux(images)
    torch.manual_seed(1)
    twin_logits, twin_aux = twin.forward_with_aux(images)
    assert torch.equal(logits, twin_logits) and torch.equal(aux, twin_aux)

    assert logits.shape == (2, NUM_CLASSES, 64, 96)
    assert aux is not None and aux.shape == logits.shape
    (logits.square().mean() + 0.4 * aux.square().mean()).backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    assert any(p.grad.abs().sum() > 0 for p in model.decoder.parameters())

    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), model(images))

    # Any input size: padded to a multiple of 32 inside, cropped back.
    with torch.no_grad():
        odd = model(torch.randn(1, 3, 50, 77))
    assert odd.shape == (1, NUM_CLASSES, 50, 77)


def test_odd_sizes_are_zero_padded_to_32_and_cropped_back():
    model = build("nrd", "resnet18").eval()
    images = torch.randn(1, 3, 50, 77)
    padded = torch.zeros(1, 3, 64, 96)
    padded[..., :50, :77] = images
    with torch.no_grad():
        expected = model.decoder(model.encoder(padded), (64, 96))[..., :50, :77]
        assert torch.equal(model(images), expected)


def test_forward_does_not_run_the_aux_head():
    model = build("nrd", "resnet18").eval()
    calls = []
    model.aux_head.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert calls == []
    assert create_model("nrd", "resnet18", 3, aux_head=False).aux_head is None


def test_default_output_strides():
    assert build("deeplabv3", "resnet18").encoder.output_stride == 8
    assert build("nrd", "resnet18").encoder.output_stride == 32
    assert build("deeplabv3plus", "resnet18", output_stride=8).encoder.out_strides == (4, 8, 8, 8)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid: bilinear, deeplabv3, deeplabv3plus, dupsampling, nrd"):
        create_model("nrdd", "resnet18", 3)
    with pytest.raises(UnknownNameError, match="did you mean 'resnet50'") as info:
        create_model("nrd", "resnet05", 3)
    assert set(info.value.valid) == set(ENCODERS)
    with pytest.raises(UnknownNameError, match="dyn_channels"):
        create_model("nrd", "resnet18", 3, dyn_chanels=8)


@pytest.mark.parametrize(
    ("decoder", "kwargs", "name"),
    [
        ("nrd", {"patch_factor": 12}, "patch_factor"),
        ("nrd", {"mlp_layers": 5}, "mlp_layers"),
        ("nrd", {"guidance_stage": 0}, "guidance_stage"),
        ("nrd", {"coord_mode": "center"}, "coord_mode"),
        ("nrd", {"dyn_channels": 0}, "dyn_channels"),
        ("dupsampling", {"upsample_ratio": 3}, "upsample_ratio"),
        ("deeplabv3plus", {"decoder_channels": -1}, "decoder_channels"),
    ],
)
def test_invalid_hyperparameters_raise_a_named_error(decoder, kwargs, name):
    with pytest.raises(InvalidHyperparameterError, match=name):
        create_model(decoder, "resnet18", 3, **kwargs)


def test_invalid_num_classes_and_output_stride():
    with pytest.raises(InvalidHyperparameterError, match="num_classes"):
        create_model("nrd", "resnet18", 0)
    with pytest.raises(InvalidHyperparameterError, match="output_stride"):
        create_model("nrd", "resnet18", 3, output_stride=4)


def test_model_config_maps_onto_create_model():
    config = ModelConfig(decoder="nrd", encoder="resnet18", num_classes=7, decoder_kwargs={"dyn_channels": 8})
    torch.manual_seed(3)
    from_config = config.build()
    torch.manual_seed(3)
    direct = create_model("nrd", "resnet18", 7, dyn_channels=8)
    assert from_config.state_dict().keys() == direct.state_dict().keys()
    pairs = zip(from_config.state_dict().values(), direct.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.decoder = "bilinear"
    with pytest.raises(UnknownNameError, match=r"key in run\.yaml 'decodr'"):
        ModelConfig.from_dict({"decodr": "nrd"}, source="run.yaml")


def test_decoder_arguments_are_the_constructor_keywords():
    assert "patch_factor" in decoder_arguments("nrd")
    assert "num_classes" not in decoder_arguments("nrd")
    assert "compressed_channels" in decoder_arguments("dupsampling")
