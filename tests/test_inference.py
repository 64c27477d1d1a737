"""Inference modes: whole / slide / msflip, checked with small hand-built models whose behaviour is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nrd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ValTransform, ValTransformConfig
from nrd.errors import InvalidHyperparameterError, UnknownNameError
from nrd.inference import (
    MODES,
    predict,
    predict_msflip,
    predict_slide,
    predict_to_label,
    predict_whole,
    restore_to_label,
)
from nrd.model import create_model

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def real_model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("bilinear", "resnet18", NUM_CLASSES, aux_head=False).eval()


def images_of(height: int, width: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height * 1000 + width))


def pointwise_model() -> nn.Module:
    """Each pixel's logits depend on that pixel only, so any window gives the same logits there."""
    torch.manual_seed(1)
    return nn.Conv2d(3, NUM_CLASSES, 1)


class MirrorSymmetricConv(nn.Module):
    """A 3×3 convolution with left-right symmetric kernels and zero padding: exactly flip-equivariant."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, NUM_CLASSES, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_((self.conv.weight + self.conv.weight.flip(-1)) / 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)


class WindowMean(nn.Module):
    """Logits = per-channel mean over the whole input: depends on exactly which window it sees."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()


class LeftRightBiased(nn.Module):
    """A 1×1 convolution plus a left-to-right ramp on the logits: not flip-equivariant."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, NUM_CLASSES, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0, 3, images.shape[-1]) * torch.arange(NUM_CLASSES).view(NUM_CLASSES, 1, 1)
        return self.conv(images) + ramp


def test_slide_with_crop_covering_the_image_equals_whole(real_model: nn.Module) -> None:
    images = images_of(64, 96)
    whole = predict_whole(real_model, images)
    assert whole.shape == (2, NUM_CLASSES, 64, 96)
    assert torch.equal(predict_slide(real_model, images, crop_size=(64, 96)), whole)
    assert torch.equal(predict_slide(real_model, images, crop_size=(128, 128), stride=(64, 64)), whole)


def test_slide_with_overlaps_on_a_pointwise_model_equals_whole() -> None:
    model = pointwise_model()
    images = images_of(65, 97)
    whole = predict_whole(model, images)
    slide = predict_slide(model, images, crop_size=(32, 48), stride=(20, 30))
    assert torch.allclose(slide, whole, atol=1e-6)


def test_slide_window_positions_by_hand() -> None:
    # 10×16 image, 4×6 windows, stride 3×4: rows start 0, 3, 6 (last aligned: 10 − 4); columns 0, 4, 8, 10
    images = images_of(10, 16, batch=1)
    expected = torch.zeros_like(images)
    counts = torch.zeros(10, 16)
    for top in (0, 3, 6):
        for left in (0, 4, 8, 10):
            window = images[..., top : top + 4, left : left + 6]
            expected[..., top : top + 4, left : left + 6] += window.mean(dim=(2, 3), keepdim=True)
            counts[top : top + 4, left : left + 6] += 1
    result = predict_slide(WindowMean(), images, crop_size=(4, 6), stride=(3, 4))
    assert torch.allclose(result, expected / counts, atol=1e-6)
    # a crop taller than the image: one window row covering the full height
    tall = predict_slide(WindowMean(), images, crop_size=(12, 16))
    assert torch.allclose(tall, images.mean(dim=(2, 3), keepdim=True).expand_as(images), atol=1e-6)


def test_msflip_single_scale_without_flip_is_softmax_of_whole(real_model: nn.Module) -> None:
    images = images_of(64, 96)
    expected = torch.softmax(predict_whole(real_model, images), dim=1)
    result = predict_msflip(real_model, images, scales=(1.0,), flip=False)
    assert torch.allclose(result, expected, atol=1e-6)


def test_flip_averaging_on_a_flip_equivariant_model_changes_nothing() -> None:
    model = MirrorSymmetricConv()
    images = images_of(33, 47)
    for scales in [(1.0,), (0.75, 1.0, 1.5)]:
        with_flip = predict_msflip(model, images, scales=scales, flip=True)
        without_flip = predict_msflip(model, images, scales=scales, flip=False)
        assert torch.allclose(with_flip, without_flip, atol=1e-5)


def test_msflip_flips_back_and_resizes_back() -> None:
    model = LeftRightBiased()
    images = images_of(20, 30)
    expected = torch.zeros(2, NUM_CLASSES, 20, 30)
    for scale_size in [(10, 15), (20, 30), (30, 45)]:
        scaled = F.interpolate(images, size=scale_size, mode="bilinear", align_corners=False)
        for logits in (model(scaled), model(scaled.flip(-1)).flip(-1)):
            logits = F.interpolate(logits, size=(20, 30), mode="bilinear", align_corners=False)
            expected += torch.softmax(logits, dim=1) / 6
    with torch.no_grad():
        result = predict_msflip(model, images, scales=(0.5, 1.0, 1.5), flip=True)
    assert torch.allclose(result, expected, atol=1e-5)
    assert torch.allclose(result.sum(dim=1), torch.ones(2, 20, 30), atol=1e-5)


@pytest.mark.parametrize("decoder", ["bilinear", "nrd"])
def test_odd_sizes_in_every_mode(decoder: str) -> None:
    torch.manual_seed(0)
    model = create_model(decoder, "resnet18", NUM_CLASSES, aux_head=False).eval()
    images = images_of(65, 97, batch=1)
    outputs = [
        predict(model, images, "whole"),
        predict(model, images, "slide", crop_size=(48, 64), stride=(24, 40)),
        predict(model, images, "msflip"),
        predict(model, images, "msflip", scales=(0.75, 1.25), base_mode="slide", crop_size=(48, 64)),
    ]
    for output in outputs:
        assert output.shape == (1, NUM_CLASSES, 65, 97) and torch.isfinite(output).all()
    for probabilities in outputs[2:]:
        assert torch.allclose(probabilities.sum(dim=1), torch.ones(1, 65, 97), atol=1e-5)


def test_restore_to_label_by_hand() -> None:
    scores = torch.arange(2 * 4 * 6, dtype=torch.float32).view(1, 2, 4, 6)
    # same size: only the bottom/right padding goes
    assert torch.equal(restore_to_label(scores, (2, 3), (2, 3)), scores[..., :2, :3])
    assert torch.equal(restore_to_label(scores, (4, 6), (4, 6)), scores)
    # valid 1×2 → label 2×4: both rows copy the one source row; columns at source x = -0.25 (clamped), 0.25, 0.75,
    # 1.25 (clamped) of [a, b] give a, 0.75a + 0.25b, 0.25a + 0.75b, b
    scores[0, 0, 0, :2] = torch.tensor([0.0, 4.0])
    scores[0, 1, 0, :2] = torch.tensor([8.0, 0.0])
    restored = restore_to_label(scores, (1, 2), (2, 4))
    assert restored.shape == (1, 2, 2, 4)
    assert restored[0, 0].tolist() == [[0.0, 1.0, 3.0, 4.0]] * 2
    assert restored[0, 1].tolist() == [[8.0, 6.0, 2.0, 0.0]] * 2
    # valid 4×4 → label 2×2: source centres at 0.5 and 2.5, i.e. the mean of each 2×2 block
    block = torch.tensor([[1.0, 3.0, 0.0, 0.0], [5.0, 7.0, 0.0, 8.0], [2.0, 2.0, 9.0, 1.0], [2.0, 2.0, 1.0, 1.0]])
    padded = torch.zeros(1, 1, 8, 8)
    padded[..., :4, :4] = block
    assert restore_to_label(padded, (4, 4), (2, 2))[0, 0].tolist() == [[4.0, 2.0], [2.0, 3.0]]
    with pytest.raises(InvalidHyperparameterError, match="valid_size"):
        restore_to_label(scores, (5, 6), (5, 6))
    with pytest.raises(InvalidHyperparameterError, match="label_size"):
        restore_to_label(scores, (4, 6), (0, 6))


def normalised(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (1, 3, H, W) float32, ImageNet normalisation written out here."""
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float()
    return ((x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1))[None]


def test_val_transform_then_restore_equals_the_model_on_the_unpadded_image(real_model: nn.Module) -> None:
    image = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    label = np.zeros((45, 61), dtype=np.uint8)
    transform = ValTransform()
    padded, _ = transform(image, label)
    assert padded.shape == (3, 64, 64)
    valid = transform.valid_size(45, 61)
    with torch.no_grad():
        reference = real_model(normalised(image))
    result = predict_to_label(real_model, padded[None], valid, (45, 61))
    assert result.shape == (1, NUM_CLASSES, 45, 61)
    assert torch.equal(result, reference)  # the model's own padding is the transform's: the same numbers
    # slide and msflip see the unpadded image: the same as calling them on it
    slide = predict_to_label(real_model, padded[None], valid, (45, 61), "slide", crop_size=(32, 48))
    assert torch.allclose(slide, predict_slide(real_model, normalised(image), (32, 48)), atol=1e-5)
    msflip = predict_to_label(real_model, padded[None], valid, (45, 61), "msflip", scales=(0.5,), flip=False)
    assert torch.allclose(msflip, predict_msflip(real_model, normalised(image), scales=(0.5,), flip=False), atol=1e-5)


def test_val_transform_with_a_test_scale_then_restore(real_model: nn.Module) -> None:
    image = np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    transform = ValTransform(ValTransformConfig(test_scale=(100, 40)))
    padded, _ = transform(image, np.zeros((30, 50), dtype=np.uint8))
    assert padded.shape == (3, 64, 96) and transform.valid_size(30, 50) == (40, 67)
    resized = padded[None, :, :40, :67]
    with torch.no_grad():
        reference = F.interpolate(real_model(resized), size=(30, 50), mode="bilinear", align_corners=False)
    result = predict_to_label(real_model, padded[None], (40, 67), (30, 50))
    assert result.shape == (1, NUM_CLASSES, 30, 50) and torch.allclose(result, reference, atol=1e-5)


def test_model_runs_in_eval_mode_and_keeps_its_own_modes(real_model: nn.Module) -> None:
    images = images_of(64, 64, batch=1)
    expected = predict_whole(real_model, images)
    real_model.train()
    real_model.encoder.eval()  # a part deliberately kept in eval mode must stay so
    try:
        stats_before = [buffer.clone() for buffer in real_model.buffers()]
        for mode in MODES:
            predict(real_model, images, mode, **({"crop_size": (64, 64)} if mode == "slide" else {}))
        assert torch.equal(predict(real_model, images), expected)
        assert real_model.training and real_model.decoder.training and not real_model.encoder.training
        assert all(torch.equal(a, b) for a, b in zip(stats_before, real_model.buffers(), strict=True))
    finally:
        real_model.eval()


def test_unknown_names_and_bad_options_raise_named_errors(real_model: nn.Module) -> None:
    images = images_of(32, 32, batch=1)
    with pytest.raises(UnknownNameError) as error:
        predict(real_model, images, mode="sliding")
    assert all(name in str(error.value) for name in ("whole", "slide", "msflip"))
    with pytest.raises(InvalidHyperparameterError, match="no crop_size: only modes slide, msflip take it"):
        predict(real_model, images, mode="whole", crop_size=(32, 32))
    with pytest.raises(UnknownNameError, match="option of inference mode 'whole' 'tile_size'"):
        predict(real_model, images, mode="whole", tile_size=(32, 32))
    with pytest.raises(UnknownNameError, match="slide, whole"):
        predict(real_model, images, mode="msflip", base_mode="tile")
    with pytest.raises(InvalidHyperparameterError, match="crop_size"):
        predict(real_model, images, mode="msflip", base_mode="slide")
    with pytest.raises(InvalidHyperparameterError, match="stride"):
        predict_slide(real_model, images, crop_size=(16, 16), stride=(32, 8))
    with pytest.raises(InvalidHyperparameterError, match="images"):
        predict_whole(real_model, images[0])
    with pytest.raises(InvalidHyperparameterError, match="scales"):
        predict_msflip(real_model, images, scales=())
