"""The decoder family's base test (every decoder × two encoders) and create_model / ModelConfig."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from nrd import DECODERS, ENCODERS, ModelConfig, create_model, decoder_arguments
from nrd.errors import InvalidHyperparameterError, UnknownNameError

# ResNet-50 (bottleneck blocks, deep stem) repeats the family checks on a 4x heavier encoder: `slow`, so the fast loop
# (`make test-fast`) keeps every decoder on ResNet-18 only
ENCODERS_UNDER_TEST = ("resnet18", pytest.param("resnet50_v1c", marks=pytest.mark.slow))
NUM_CLASSES = 5
# (input, odd-sized input) per case. The dilated (output stride 8) ResNet-50 with plain ASPP takes ~40 s to run
# forward and backward at 64×96 on 2 CPU cores, so that case runs at 32×32 (4×4 features) and 20×27 (padded to 32).
INPUT_SIZES = {("deeplabv3", "resnet50_v1c"): ((32, 32), (20, 27))}
DEFAULT_INPUT_SIZES = ((64, 96), (50, 77))


def build(decoder: str, encoder: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return create_model(decoder, encoder, NUM_CLASSES, **kwargs)


@pytest.mark.parametrize("encoder", ENCODERS_UNDER_TEST)
@pytest.mark.parametrize("decoder", list(DECODERS))
def test_decoder_family(decoder: str, encoder: str):
    (height, width), odd_size = INPUT_SIZES.get((decoder, encoder), DEFAULT_INPUT_SIZES)
    model = build(decoder, encoder).train()
    twin = build(decoder, encoder).train()
    images = torch.randn(2, 3, height, width)

    # Determinism: the same seed builds the same model, which gives the same output (dropout seeded too).
    torch.manual_seed(1)
    logits, aux = model.forward_with_aux(images)
    torch.manual_seed(1)
    twin_logits, twin_aux = twin.forward_with_aux(images)
    assert torch.equal(logits, twin_logits) and torch.equal(aux, twin_aux)

    assert logits.shape == (2, NUM_CLASSES, height, width)
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
        odd = model(torch.randn(1, 3, *odd_size))
    assert odd.shape == (1, NUM_CLASSES, *odd_size)


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
        # Floats and bools that compare equal to a valid integer (3.0 in (2, 3, 4) is True) are not integers.
        ("nrd", {"mlp_layers": 3.0}, "mlp_layers"),
        ("nrd", {"guidance_stage": 1.0}, "guidance_stage"),
        ("nrd", {"patch_factor": 8.0}, "patch_factor"),
        ("nrd", {"mlp_layers": True}, "mlp_layers"),
        ("nrd", {"dyn_channels": 16.0}, "dyn_channels"),
        ("nrd", {"guidance_channels": True}, "guidance_channels"),
        ("nrd", {"controller_channels": 512.0}, "controller_channels"),
        ("dupsampling", {"upsample_ratio": 32.0}, "upsample_ratio"),
        ("dupsampling", {"upsample_ratio": True}, "upsample_ratio"),
        ("dupsampling", {"compressed_channels": 256.0}, "compressed_channels"),
        ("deeplabv3plus", {"low_level_channels": 48.0}, "low_level_channels"),
        ("bilinear", {"context_channels": 512.0}, "context_channels"),
        # context_dilations: None means the defaults; anything else must be positive integers.
        ("nrd", {"context_dilations": ()}, "context_dilations"),
        ("deeplabv3plus", {"context_dilations": (0,)}, "context_dilations"),
        ("dupsampling", {"context_dilations": (3, -6)}, "context_dilations"),
        ("bilinear", {"context_dilations": (3, 6.0)}, "context_dilations"),
        ("deeplabv3", {"context_dilations": 6}, "context_dilations"),
        ("deeplabv3", {"context_dilations": (True,)}, "context_dilations"),
        ("bilinear", {"dropout": 1.5}, "dropout"),
        ("deeplabv3plus", {"dropout": -0.1}, "dropout"),
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
    with pytest.raises(InvalidHyperparameterError, match="output_stride"):
        create_model("nrd", "resnet18", 3, output_stride=32.0)
    with pytest.raises(InvalidHyperparameterError, match="num_classes"):
        DECODERS["bilinear"](encoder_channels=(8, 16), encoder_strides=(4, 32), num_classes=True)


def dilated_branch_dilations(model) -> list[int]:
    return [
        m.dilation[0]
        for m in model.decoder.context.branches.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]


def test_context_dilations_given_or_default():
    assert dilated_branch_dilations(build("bilinear", "resnet18")) == [3, 6, 9]  # NRD_NOTES §2 at stride 32
    assert dilated_branch_dilations(build("deeplabv3", "resnet18")) == [12, 24, 36]  # the DeepLabV3 setting at 8
    assert dilated_branch_dilations(build("nrd", "resnet18", context_dilations=[2, 4])) == [2, 4]  # YAML gives lists


def test_dupsampling_temperature_stays_positive():
    decoder = build("dupsampling", "resnet18").decoder
    assert decoder.temperature.item() == 1.0  # initial value
    # A gradient step that would take a plain temperature parameter from 1 to 1 − 10 = −9.
    optimiser = torch.optim.SGD(decoder.parameters(), lr=1.0)
    (10 * decoder.temperature).backward()
    optimiser.step()
    assert 0 < decoder.temperature.item() < 1


def test_dupsampling_depth_to_space_layout_by_hand():
    """Reconstruction channel k·r² + dy·r + dx of coarse cell (i, j) is class k at pixel (i·r + dy, j·r + dx),
    divided by the temperature; checked with an explicit loop on the compressed features the decoder produced."""
    torch.manual_seed(0)
    ratio, classes = 4, 2
    decoder = DECODERS["dupsampling"](
        encoder_channels=(4, 4, 4, 8),
        encoder_strides=(4, 8, 16, 32),
        num_classes=classes,
        upsample_ratio=ratio,
        compressed_channels=3,
        low_level_channels=4,
        fuse_channels=8,
        context_channels=8,
    ).eval()
    with torch.no_grad():
        decoder.log_temperature.fill_(math.log(2.0))
    captured = []
    decoder.compress.register_forward_hook(lambda module, args, output: captured.append(output))
    features = [torch.randn(1, 4, 8, 12), torch.randn(1, 4, 4, 6), torch.randn(1, 4, 2, 3), torch.randn(1, 8, 2, 3)]
    context = torch.randn(1, 8, 2, 3)
    with torch.no_grad():
        logits = decoder.decode(features, context, (2 * ratio, 3 * ratio))
    compressed, weight = captured[0][0], decoder.reconstruct.weight[:, :, 0, 0]  # (3, 2, 3), (r·r·K, 3)
    expected = torch.zeros(classes, 2 * ratio, 3 * ratio)
    for k in range(classes):
        for i in range(2):
            for j in range(3):
                for dy in range(ratio):
                    for dx in range(ratio):
                        channel = k * ratio * ratio + dy * ratio + dx
                        value = sum(weight[channel, c] * compressed[c, i, j] for c in range(3))
                        expected[k, i * ratio + dy, j * ratio + dx] = value / 2.0
    assert logits.shape == (1, classes, 8, 12)
    assert torch.allclose(logits[0], expected, atol=1e-6)


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


def test_named_errors_survive_pickling():
    """Ray sends a worker's exception to the driver pickled: our errors must come back whole, whatever arguments
    their constructors take."""
    import pickle

    from nrd.data.base import CorruptImageError
    from nrd.errors import InvalidHyperparameterError, UnknownNameError, WeightsFileNotFoundError
    from nrd.metrics import MetricInputError

    errors = [
        UnknownNameError("decoder", "nrdd", ["nrd", "bilinear"]),
        InvalidHyperparameterError("NRDDecoder", "patch_factor", 12, "one of 8, 16, 32"),
        WeightsFileNotFoundError("/nowhere/r50.pth"),
        CorruptImageError("/data/a.png", "cannot be decoded"),
        MetricInputError("label", "values outside [0, 4)"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and vars(copy) == vars(error)


# ------------------------------------------------------------------------------------------ official initialisation
def classifier_convs(model) -> list[torch.nn.Conv2d]:
    """The convs initialised as mmseg's conv_seg: each decoder's classifier (DUpsampling: its reconstruction), the
    auxiliary head's classifier. NRD has none (its generator has its own init, tested in test_nrd.py)."""
    decoder = model.decoder
    convs = [model.aux_head.classifier]
    if hasattr(decoder, "classifier"):
        convs.append(decoder.classifier)
    if hasattr(decoder, "reconstruct"):
        convs.append(decoder.reconstruct)
    return convs


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_heads_follow_the_official_initialisation(decoder: str):
    """Every conv of every head (decoder and auxiliary FCN head) as mmcv's ConvModule: Kaiming-normal with mode
    fan_out and ReLU gain, std √(2 / (out·kh·kw)), bias 0; BatchNorm weight 1, bias 0; classifier convs N(0, 0.01),
    bias 0; NRD's generator Xavier-normal / P. Checked on the statistics of the initialised weights."""
    torch.manual_seed(0)
    model = create_model(decoder, "resnet18", 19)
    special = {id(conv) for conv in classifier_convs(model)}
    if decoder == "nrd":
        special.add(id(model.decoder.controller[-1]))
    checked = 0
    for head in (model.decoder, model.aux_head):
        for name, module in head.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
            if not isinstance(module, torch.nn.Conv2d) or id(module) in special:
                continue
            weight = module.weight
            out_channels, _, kh, kw = weight.shape
            expected = math.sqrt(2.0 / (out_channels * kh * kw))
            tolerance = 4 / math.sqrt(2 * weight.numel()) + 0.02  # ~4 standard errors of a sample std
            assert weight.std().item() == pytest.approx(expected, rel=tolerance), name
            assert abs(weight.mean().item()) < 4 * expected / math.sqrt(weight.numel()), name
            assert module.bias is None or torch.all(module.bias == 0), name
            checked += 1
    assert checked >= 7  # the context module (at least 5 convs), the decoder convs and the aux head's 3×3
    for conv in classifier_convs(model):
        assert conv.weight.std().item() == pytest.approx(0.01, rel=4 / math.sqrt(2 * conv.weight.numel()))
        assert abs(conv.weight.mean().item()) < 4 * 0.01 / math.sqrt(conv.weight.numel())
        assert conv.bias is None or torch.all(conv.bias == 0)


def last_residual_norms(encoder) -> list[torch.nn.BatchNorm2d]:
    from nrd.encoders import BasicBlock, Bottleneck

    return [
        m.bn3 if isinstance(m, Bottleneck) else m.bn2
        for m in encoder.modules()
        if isinstance(m, BasicBlock | Bottleneck)
    ]


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50_v1c"])
def test_encoder_zero_init_residual_without_weights_only(encoder: str, tmp_path):
    """mmseg's ResNet from scratch: the last BatchNorm of every residual block starts at gamma 0 (the block is the
    identity), every other BatchNorm at 1; loaded weights replace the zeros."""
    model = build("bilinear", encoder)
    norms = last_residual_norms(model.encoder)
    assert len(norms) == (8 if encoder == "resnet18" else 16)
    assert all(torch.all(norm.weight == 0) for norm in norms)
    others = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d) and m not in norms]
    assert others and all(torch.all(norm.weight == 1) for norm in others)

    state = {
        key: torch.rand_like(value) + 0.5 if value.is_floating_point() else value
        for key, value in model.encoder.state_dict().items()
    }
    torch.save(state, tmp_path / "weights.pth")
    loaded = create_model("bilinear", encoder, NUM_CLASSES, encoder_weights=tmp_path / "weights.pth")
    assert all(torch.all(norm.weight >= 0.5) for norm in last_residual_norms(loaded.encoder))
