"""NRD specifics: the batched dynamic MLP against a plain per-patch loop, parameter count, init, coordinates."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nrd import create_model
from nrd.cost import count_macs, count_params
from nrd.decoders.nrd import NRDDecoder, dynamic_mlp, mlp_layer_shapes, patch_coordinates, split_dynamic_params
from nrd.errors import InvalidHyperparameterError


def reference_dynamic_mlp(inputs, params, in_channels, hidden, num_classes, layers, factor):
    """Plain loop: for every coarse cell, rebuild its MLP from the flat parameter vector (layout w0, b0, w1, b1, …,
    weights output-major) and apply it to each pixel of its f×f patch, one pixel at a time."""
    batch, _, height, width = inputs.shape
    widths = [in_channels] + [hidden] * (layers - 1) + [num_classes]
    output = torch.zeros(batch, num_classes, height, width, dtype=inputs.dtype)
    for b in range(batch):
        for i in range(height // factor):
            for j in range(width // factor):
                vector = params[b, :, i, j]
                weights, offset = [], 0
                for n_in, n_out in itertools.pairwise(widths):
                    w = torch.stack([vector[offset + o * n_in : offset + (o + 1) * n_in] for o in range(n_out)])
                    offset += n_in * n_out
                    weights.append((w, vector[offset : offset + n_out]))
                    offset += n_out
                assert offset == params.shape[1]
                for y in range(i * factor, (i + 1) * factor):
                    for x in range(j * factor, (j + 1) * factor):
                        value = inputs[b, :, y, x]
                        for index, (w, bias) in enumerate(weights):
                            value = w @ value + bias
                            if index < len(weights) - 1:
                                value = value.clamp(min=0)
                        output[b, :, y, x] = value
    return output


@pytest.mark.parametrize(("layers", "factor", "num_classes"), [(2, 4, 3), (3, 8, 5), (4, 2, 7)])
def test_batched_dynamic_mlp_equals_per_patch_loop(layers, factor, num_classes):
    torch.manual_seed(0)
    in_channels, hidden = 6, 5
    shapes = mlp_layer_shapes(in_channels, hidden, num_classes, layers)
    num_params = sum(o * (i + 1) for o, i in shapes)
    params = 0.3 * torch.randn(2, num_params, 3, 2)  # generated weights are small (scaled init)
    inputs = torch.randn(2, in_channels, 3 * factor, 2 * factor)
    fast = dynamic_mlp(inputs, params, shapes)
    slow = reference_dynamic_mlp(inputs, params, in_channels, hidden, num_classes, layers, factor)
    assert fast.shape == slow.shape
    assert (fast - slow).abs().max().item() <= 1e-5


def hand_coordinates(height, width, factor, mode):
    """NRD_NOTES §2, one pixel at a time: channel 0 is x (along the width), channel 1 is y; top-left gives
    {0, 1/f, …, (f−1)/f} from the patch's top-left corner, centred puts the pixel centres around the patch centre."""
    coords = torch.zeros(2, height, width)
    for row in range(height):
        for col in range(width):
            if mode == "topleft":
                x, y = (col % factor) / factor, (row % factor) / factor
            else:
                x, y = (col % factor + 0.5) / factor - 0.5, (row % factor + 0.5) / factor - 0.5
            coords[0, row, col], coords[1, row, col] = x, y
    return coords


@pytest.mark.parametrize("coord_mode", ["topleft", "centred"])
def test_nrd_decoder_equals_per_patch_reference_end_to_end(coord_mode):
    torch.manual_seed(1)
    model = create_model("nrd", "resnet18", 4, aux_head=False, coord_mode=coord_mode).eval()
    decoder: NRDDecoder = model.decoder
    norm = decoder.input_norm  # give the shared BatchNorm distinct statistics per channel, so order matters
    with torch.no_grad():
        # Generated MLP weights ~0.2 instead of the tiny initial ones, so that every input channel shows.
        decoder.controller[-1].weight.normal_(std=0.05)
        decoder.controller[-1].bias.normal_(std=0.2)
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = model.encoder(images)
        params = decoder.controller(decoder.context(features[-1]))  # (1, P, 2, 3)
        guidance = decoder.guidance(features[0])  # stride 4 = 32 / factor 8: already the MLP's grid
        assert guidance.shape[-2:] == (16, 24)
        coords = hand_coordinates(16, 24, 8, coord_mode).unsqueeze(0)
        inputs = norm(torch.cat([coords, guidance], dim=1))
        reference = reference_dynamic_mlp(inputs, params, 18, 16, 4, 3, 8)
        reference = torch.nn.functional.interpolate(reference, size=(64, 96), mode="bilinear", align_corners=False)
        assert params.std().item() > 0.05 and reference.std().item() > 0.1  # the comparison has something to see
        assert (model(images) - reference).abs().max().item() <= 1e-5


@pytest.mark.parametrize(("num_classes", "expected"), [(19, 899), (150, 3126), (60, 1596), (59, 1579)])
def test_parameters_per_location_for_the_defaults(num_classes, expected):
    decoder = create_model("nrd", "resnet18", num_classes).decoder
    assert decoder.num_dynamic_params == expected == 576 + 17 * num_classes
    assert decoder.controller[-1].out_channels == expected


def test_controller_starts_tiny():
    torch.manual_seed(0)
    generator = create_model("nrd", "resnet50_v1c", 19).decoder.controller[-1]
    fan_in, fan_out = generator.weight.shape[1], generator.weight.shape[0]
    xavier_std = math.sqrt(2.0 / (fan_in + fan_out))
    assert generator.weight.std().item() == pytest.approx(xavier_std / 899, rel=0.02)
    assert torch.count_nonzero(generator.bias) == 0


def test_patch_coordinates():
    top_left = patch_coordinates(16, 24, 8, "topleft", torch.device("cpu"), torch.float32)
    assert top_left.shape == (2, 16, 24)
    assert torch.equal(top_left[0, 3, :8], torch.arange(8) / 8)  # x first, along the width
    assert torch.equal(top_left[1, :8, 5], torch.arange(8) / 8)  # then y, along the height
    assert torch.equal(top_left[:, :8, :8], top_left[:, 8:, 16:])  # the same in every patch
    centred = patch_coordinates(16, 24, 8, "centred", torch.device("cpu"), torch.float32)
    assert torch.allclose(centred[:, :8, :8].mean(dim=(1, 2)), torch.zeros(2), atol=1e-7)
    assert torch.allclose(centred[0, 0, :8], (torch.arange(8) + 0.5) / 8 - 0.5)


@pytest.mark.parametrize(
    ("kwargs", "mlp_stride"),
    [({"patch_factor": 16}, 2), ({"patch_factor": 32}, 1), ({"guidance_stage": 2}, 4), ({"mlp_layers": 2}, 4)],
)
def test_hyperparameter_variants_run(kwargs, mlp_stride):
    model = create_model("nrd", "resnet18", 3, aux_head=False, coord_mode="centred", **kwargs).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.encoder(images)
        inputs = model.decoder.mlp_inputs(features, features[-1].shape[-2:])
        assert inputs.shape[-2:] == (64 // mlp_stride, 64 // mlp_stride)
        assert model(images).shape == (1, 3, 64, 64)


def test_patch_factor_must_divide_a_dilated_encoder_stride():
    create_model("nrd", "resnet18", 3, output_stride=16, patch_factor=16)
    with pytest.raises(ValueError, match="patch_factor=32"):
        create_model("nrd", "resnet18", 3, output_stride=16, patch_factor=32)


# --------------------------------------------------------------------------------- static_base (the saddle fix)
def g_theta_logits(model, images):
    """g_θ's logits on the patch grid (before the final up-sampling), and the generated parameters."""
    decoder = model.decoder
    features = model.encoder(images)
    context = decoder.context(features[-1])
    params = decoder.controller(context)
    return dynamic_mlp(decoder.mlp_inputs(features, context.shape[-2:]), params, decoder.layer_shapes), params


def within_patch_share(logits, factor):
    batch, classes, height, width = logits.shape
    patches = logits.double().reshape(batch, classes, height // factor, factor, width // factor, factor)
    within = (patches - patches.mean(dim=(3, 5), keepdim=True)).square().sum()
    return (within / (logits.double() - logits.double().mean(dim=(0, 2, 3), keepdim=True)).square().sum()).item()


def test_static_base_is_off_by_default_and_starts_as_an_ordinary_mlp():
    torch.manual_seed(0)
    official = create_model("nrd", "resnet18", 19).decoder
    assert official.static_base is False and torch.count_nonzero(official.controller[-1].bias) == 0
    torch.manual_seed(0)
    fixed = create_model("nrd", "resnet18", 19, static_base=True).decoder
    generator = fixed.controller[-1]
    # Δθ keeps the official small init: the generator's weight is Xavier-normal / P as without the fix.
    fan_out, fan_in = generator.weight.shape[:2]
    assert generator.weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)) / 899, rel=0.02)
    # θ_base (the bias, shared by all locations) holds every layer of g_θ initialised as nn.Linear: U(±1/√fan_in).
    layers = split_dynamic_params(generator.bias.detach().unsqueeze(0), fixed.layer_shapes)
    for (weight, bias), (_, fan_in) in zip(layers, fixed.layer_shapes, strict=True):
        bound = 1 / math.sqrt(fan_in)
        assert weight.abs().max().item() <= bound and bias.abs().max().item() <= bound
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=4 / math.sqrt(2 * weight.numel()))
    with pytest.raises(InvalidHyperparameterError, match="static_base"):
        create_model("nrd", "resnet18", 3, static_base=1)


def test_static_base_leaves_the_saddle_at_step_zero():
    """With the official init g_θ's logits are constant inside each patch to ~1e-10 of their variance (the second
    and third layers' weights are ~1e-3); with static_base the within-patch share is of order one from the start."""
    images = torch.randn(2, 3, 64, 96)
    shares = {}
    for static_base in (False, True):
        torch.manual_seed(0)
        model = create_model("nrd", "resnet18", 5, aux_head=False, static_base=static_base).eval()
        with torch.no_grad():
            logits, _ = g_theta_logits(model, images)
        shares[static_base] = within_patch_share(logits, 8)
    assert shares[False] < 1e-6 < 0.05 < shares[True]


@pytest.mark.parametrize("coord_mode", ["topleft", "centred"])
def test_static_base_fast_path_equals_per_patch_loop(coord_mode):
    """The fix lives in the generated parameters (θ = bias + W·h), so the batched path must still equal the naive
    per-patch loop, here at the fix's own initialisation (no weights tampered with)."""
    torch.manual_seed(2)
    model = create_model("nrd", "resnet18", 4, aux_head=False, coord_mode=coord_mode, static_base=True).eval()
    decoder = model.decoder
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        features = model.encoder(images)
        params = decoder.controller(decoder.context(features[-1]))
        inputs = decoder.mlp_inputs(features, features[-1].shape[-2:])
        reference = reference_dynamic_mlp(inputs, params, 18, 16, 4, 3, 8)
        reference = torch.nn.functional.interpolate(reference, size=(64, 96), mode="bilinear", align_corners=False)
        assert reference.std().item() > 0.05
        assert (model(images) - reference).abs().max().item() <= 1e-5


def test_static_base_costs_nothing_extra():
    """θ_base is the generator's bias, which official NRD already has: the same parameters per level and the same
    MACs (the bias add is not a multiply-accumulate; nrd.cost counts no conv bias, as mmcv's counter)."""
    official = create_model("nrd", "resnet18", 19, aux_head=False)
    fixed = create_model("nrd", "resnet18", 19, aux_head=False, static_base=True)
    assert count_params(official) == count_params(fixed)
    assert count_macs(official, (1, 3, 512, 1024)) == count_macs(fixed, (1, 3, 512, 1024))
