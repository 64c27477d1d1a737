"""Training/validation transforms: checked against hand computation, torch's own resizing and ``colorsys``."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nrd.data.base import DataError, SizeMismatchError, decode_image, decode_label
from nrd.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TRAIN_PRESETS,
    TrainTransform,
    TrainTransformConfig,
    ValTransform,
    ValTransformConfig,
    adjust_saturation_hue,
    default_train_config,
    photometric_distortion,
    random_crop_box,
    rescaled_size,
    resize_image,
    resize_label,
    sample_rng,
)
from nrd.errors import InvalidHyperparameterError, UnknownNameError


def random_pair(height: int, width: int, values: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = rng.choice(np.array(values, dtype=np.uint8), size=(height, width))
    return image, label


def fixed_geometry(height: int, width: int, **overrides) -> TrainTransformConfig:
    """No rescale (base scale = image size, ratio 1), crop = whole image, no flip, no colour jitter."""
    settings = dict(
        base_scale=(max(height, width), min(height, width)),
        crop_size=(height, width),
        ratio_range=(1.0, 1.0),
        flip_prob=0.0,
        photometric=False,
    )
    settings.update(overrides)
    return TrainTransformConfig(**settings)


def hand_normalize(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) → (3, H, W) float64 by the formula, channel by channel."""
    out = np.empty((3, *image.shape[:2]))
    for channel in range(3):
        out[channel] = (image[..., channel].astype(np.float64) - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
    return out


def test_rescaled_size_by_hand() -> None:
    assert rescaled_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert rescaled_size(1024, 2048, (1024, 512)) == (512, 1024)
    # ADE20K-like 375×500 with base (2048, 512): the short side limits, factor 512/375
    assert rescaled_size(375, 500, (2048, 512)) == (512, 683)
    # a portrait image: the long side (height) is matched against the long target
    assert rescaled_size(500, 100, (520, 520)) == (520, 104)


def test_resize_image_matches_torch_bilinear_and_box_is_a_crop() -> None:
    image, _ = random_pair(37, 53, (0,))
    reference_input = torch.from_numpy(image).permute(2, 0, 1)[None].double()
    for size in [(74, 106), (20, 31), (37, 53), (90, 41)]:
        reference = F.interpolate(reference_input, size=size, mode="bilinear", align_corners=False)[0]
        full = resize_image(image, size)
        assert full.dtype == torch.float32 and full.shape == (3, *size)
        assert torch.allclose(full.double(), reference, atol=1e-3)
        box = (size[0] // 3, size[1] // 4, size[0] // 2, size[1] // 2)
        part = resize_image(image, size, box)
        assert torch.equal(part, full[:, box[0] : box[0] + box[2], box[1] : box[1] + box[3]])


def test_resize_image_tiny_by_hand() -> None:
    # 1×2 → 1×4: half-pixel centres map outputs to source x = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped)
    image = np.zeros((1, 2, 3), dtype=np.uint8)
    image[0, 1] = 100
    assert resize_image(image, (1, 4))[0, 0].tolist() == [0.0, 25.0, 75.0, 100.0]


def test_resize_label_is_nearest_exact_and_adds_no_values() -> None:
    _, label = random_pair(37, 53, (0, 3, 7, 255))
    for size in [(74, 106), (20, 31), (111, 17), (3, 5)]:
        reference = F.interpolate(torch.from_numpy(label)[None, None], size=size, mode="nearest-exact")[0, 0]
        resized = resize_label(label, size)
        assert np.array_equal(resized, reference.numpy())
        box = (size[0] // 3, 1, size[0] // 2, size[1] - 1)
        assert np.array_equal(resize_label(label, size, box), resized[box[0] : box[0] + box[2], 1:])


def test_train_output_shapes_dtypes_and_label_values() -> None:
    values = (0, 3, 7, 255)
    config = TrainTransformConfig(base_scale=(96, 64), crop_size=(48, 80), cat_max_ratio=0.75)
    transform = TrainTransform(config)
    for seed, (height, width) in enumerate([(64, 96), (30, 50), (200, 120), (47, 93)]):
        image, label = random_pair(height, width, values, seed)
        image_t, label_t = transform(image, label, np.random.default_rng(seed))
        assert image_t.shape == (3, 48, 80) and image_t.dtype == torch.float32 and image_t.is_contiguous()
        assert label_t.shape == (48, 80) and label_t.dtype == torch.int64
        assert set(label_t.unique().tolist()) <= set(values)


def box_label(height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    label = np.zeros((height, width), dtype=np.uint8)
    label[rows, cols] = 1
    return label


def test_random_rescale_by_two_and_by_half_by_hand() -> None:
    # ratio 2 of base scale (8, 6) = the 6×8 image's own size: a 12×16 image, each label pixel a 2×2 block
    image, _ = random_pair(6, 8, (0,))
    label = box_label(6, 8, slice(1, 4), slice(2, 6))
    doubled = TrainTransform(fixed_geometry(6, 8, ratio_range=(2.0, 2.0), crop_size=(12, 16), cat_max_ratio=1.0))
    image_t, label_t = doubled(image, label, np.random.default_rng(0))
    assert image_t.shape == (3, 12, 16)
    assert np.array_equal(label_t.numpy(), box_label(12, 16, slice(2, 8), slice(4, 12)))
    assert np.array_equal(label_t.numpy(), np.kron(label, np.ones((2, 2), dtype=np.uint8)))

    # ratio 0.5 of the 8×12 image's size: 4×6, output pixel i takes source pixel 2i + 1 (centre (i + 0.5) × 2);
    # the 8×12 crop is then padded with ignore
    image, _ = random_pair(8, 12, (0,))
    label = box_label(8, 12, slice(2, 6), slice(4, 10))
    halved = TrainTransform(fixed_geometry(8, 12, ratio_range=(0.5, 0.5), cat_max_ratio=1.0))
    image_t, label_t = halved(image, label, np.random.default_rng(0))
    expected = np.full((8, 12), 255, dtype=np.uint8)
    expected[:4, :6] = box_label(4, 6, slice(1, 3), slice(2, 5))
    assert image_t.shape == (3, 8, 12) and np.array_equal(label_t.numpy(), expected)
    assert np.array_equal(expected[:4, :6], label[1::2, 1::2])
    assert (image_t[:, 4:] == 0).all() and (image_t[:, :, 6:] == 0).all()


def test_random_rescale_factors_stay_in_and_cover_the_ratio_range() -> None:
    # a 50×50 image with base scale (50, 50) and a 100×100 crop (= the largest rescale): the whole rescaled image is
    # in the crop, the rest is ignore, so the labelled rows measure the scale factor (to 1/50)
    image, label = random_pair(50, 50, (0, 1))
    transform = TrainTransform(fixed_geometry(50, 50, ratio_range=(0.5, 2.0), crop_size=(100, 100)))
    factors = []
    for seed in range(200):
        _, label_t = transform(image, label, sample_rng(0, 0, seed))
        labelled = (label_t != 255).numpy()
        rows, cols = int(labelled.any(1).sum()), int(labelled.any(0).sum())
        assert rows == cols and labelled[:rows, :cols].all()
        factors.append(rows / 50)
    assert min(factors) >= 0.5 and max(factors) <= 2.0
    counts = np.histogram(factors, bins=6, range=(0.5, 2.0))[0]
    assert (counts >= 10).all(), counts  # every quarter-unit of the range is drawn (uniform: 33 each on average)
    assert min(factors) <= 0.6 and max(factors) >= 1.9


def test_crop_respects_cat_max_ratio_when_achievable() -> None:
    # class 1 fills the top-left 50×50 quadrant of a 100×100 label, class 0 the rest; a random 50×50 crop passes the
    # 0.75 test with probability ≈ 0.36, ten attempts with ≈ 0.99
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    label = np.zeros((100, 100), dtype=np.uint8)
    label[:50, :50] = 1

    def passing_fraction(cat_max_ratio: float) -> float:
        transform = TrainTransform(fixed_geometry(100, 100, crop_size=(50, 50), cat_max_ratio=cat_max_ratio))
        passed = 0
        for seed in range(200):
            _, crop = transform(image, label, np.random.default_rng(seed))
            counts = np.bincount(crop.numpy().ravel(), minlength=2)
            passed += counts.max() < 0.75 * counts.sum()
        return passed / 200

    assert passing_fraction(0.75) >= 0.95
    assert passing_fraction(1.0) <= 0.5


def test_ignore_pixels_do_not_count_for_cat_max_ratio() -> None:
    # every 4×4 block holds one pixel of class 1, one of class 2 and 14 ignore pixels: each 32×32 crop passes when
    # ignore is left out (50% / 50%) and would fail if it counted (87.5%), so the first position drawn is kept, the
    # same one as for a label that passes everywhere
    balanced = np.tile(np.array([[1, 2], [2, 1]], dtype=np.uint8), (50, 50))
    block = np.full((4, 4), 255, dtype=np.uint8)
    block[0, 0], block[2, 2] = 1, 2
    mostly_ignore = np.tile(block, (25, 25))
    for seed in range(20):
        boxes = [
            random_crop_box(label, (100, 100), (32, 32), 0.75, 255, np.random.default_rng(seed))
            for label in (balanced, mostly_ignore)
        ]
        assert boxes[0] == boxes[1]


def test_flip_mirrors_image_and_label() -> None:
    image, label = random_pair(24, 36, (0, 1, 2, 255))
    flipped_image, flipped_label = TrainTransform(fixed_geometry(24, 36, flip_prob=1.0))(
        image, label, np.random.default_rng(0)
    )
    assert np.allclose(flipped_image.numpy(), hand_normalize(np.fliplr(image)), atol=1e-5)
    assert np.array_equal(flipped_label.numpy(), np.fliplr(label))
    kept_image, kept_label = TrainTransform(fixed_geometry(24, 36))(image, label, np.random.default_rng(0))
    assert np.allclose(kept_image.numpy(), hand_normalize(image), atol=1e-5)
    assert np.array_equal(kept_label.numpy(), label)


def test_same_seed_same_output_different_seed_different_output() -> None:
    image, label = random_pair(60, 90, (0, 1, 2, 3, 255))
    transform = TrainTransform(TrainTransformConfig(base_scale=(90, 60), crop_size=(32, 48)))
    first = transform(image, label, sample_rng(7, 2, 11))
    again = transform(image, label, sample_rng(7, 2, 11))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    for other in (sample_rng(8, 2, 11), sample_rng(7, 3, 11), sample_rng(7, 2, 12)):
        assert not torch.equal(first[0], transform(image, label, other)[0])


def test_sample_rng_rejects_negative_values() -> None:
    with pytest.raises(InvalidHyperparameterError, match="epoch"):
        sample_rng(0, -1, 0)


def test_padding_uses_zero_image_and_ignore_label() -> None:
    image, label = random_pair(20, 30, (0, 1))
    image_t, label_t = TrainTransform(fixed_geometry(20, 30, crop_size=(32, 40)))(
        image, label, np.random.default_rng(0)
    )
    assert image_t.shape == (3, 32, 40) and label_t.shape == (32, 40)
    assert np.allclose(image_t[:, :20, :30].numpy(), hand_normalize(image), atol=1e-5)
    assert np.array_equal(label_t[:20, :30].numpy(), label)
    assert (image_t[:, 20:] == 0).all() and (image_t[:, :, 30:] == 0).all()
    assert (label_t[20:] == 255).all() and (label_t[:, 30:] == 255).all()


def test_photometric_stays_in_range_and_leaves_the_label_alone() -> None:
    rng = np.random.default_rng(0)
    extremes = torch.from_numpy(rng.choice([0.0, 1.0, 128.0, 254.0, 255.0], size=(3, 16, 16)).astype(np.float32))
    changed = 0
    for seed in range(50):
        out = photometric_distortion(extremes, np.random.default_rng(seed))
        assert out.shape == extremes.shape and out.min() >= 0 and out.max() <= 255
        changed += not torch.equal(out, extremes)
    assert changed > 40  # only (1/2)^4 of the draws leave the image alone

    image, label = random_pair(40, 60, (0, 1, 2, 255))
    base = dict(base_scale=(60, 40), crop_size=(32, 32))
    plain = TrainTransform(TrainTransformConfig(**base, photometric=False))
    jittered = TrainTransform(TrainTransformConfig(**base, photometric=True))
    for seed in range(5):
        plain_image, plain_label = plain(image, label, np.random.default_rng(seed))
        jittered_image, jittered_label = jittered(image, label, np.random.default_rng(seed))
        assert torch.equal(plain_label, jittered_label)
    assert not torch.equal(plain_image, jittered_image)


def test_saturation_and_hue_match_colorsys() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (3, 8, 8)).astype(np.float32)
    pixels[:, 0, 0] = 128  # grey: hue undefined, must stay grey
    for saturation, hue in [(1.4, -13), (0.5, 18), (1.0, 7), (1.5, 0)]:
        out = adjust_saturation_hue(torch.from_numpy(pixels), saturation, hue).numpy()
        expected = np.empty_like(pixels)
        for y in range(8):
            for x in range(8):
                h, s, v = colorsys.rgb_to_hsv(*(pixels[:, y, x] / 255))
                expected[:, y, x] = np.array(colorsys.hsv_to_rgb((h + hue / 180) % 1, min(s * saturation, 1), v))
        assert np.allclose(out, expected * 255, atol=1e-3)


def test_normalisation_by_hand() -> None:
    image = np.array([[[0, 128, 255], [123, 116, 103]]], dtype=np.uint8)
    label = np.array([[1, 255]], dtype=np.uint8)
    image_t, label_t = ValTransform(ValTransformConfig(size_divisor=None))(image, label)
    expected = [
        [[(0 - 123.675) / 58.395, (123 - 123.675) / 58.395]],
        [[(128 - 116.28) / 57.12, (116 - 116.28) / 57.12]],
        [[(255 - 103.53) / 57.375, (103 - 103.53) / 57.375]],
    ]
    assert image_t.dtype == torch.float32 and np.allclose(image_t.numpy(), expected, atol=1e-6)
    assert label_t.dtype == torch.int64 and label_t.tolist() == [[1, 255]]
    padded, _ = ValTransform()(image, label)  # default: padded to 32×32, the content unchanged
    assert padded.shape == (3, 32, 32) and torch.equal(padded[:, :1, :2], image_t)


@pytest.mark.parametrize("size", [(30, 50), (64, 96), (33, 65), (1, 1)])
def test_validation_pads_the_image_to_a_multiple_of_32_and_leaves_the_label(size: tuple[int, int]) -> None:
    image, label = random_pair(*size, (0, 4, 255))
    transform = ValTransform()
    image_t, label_t = transform(image, label)
    padded = tuple(-(-side // 32) * 32 for side in size)  # next multiple of 32, by ceiling division
    assert image_t.shape == (3, *padded) and image_t.dtype == torch.float32 and image_t.is_contiguous()
    assert transform.valid_size(*size) == size
    height, width = size
    assert np.allclose(image_t[:, :height, :width].numpy(), hand_normalize(image), atol=1e-5)
    assert (image_t[:, height:] == 0).all() and (image_t[:, :, width:] == 0).all()
    assert label_t.dtype == torch.int64 and label_t.numpy().astype(np.uint8).tobytes() == label.tobytes()
    assert label_t.shape == size


def test_validation_resizes_then_pads_the_image_only() -> None:
    image, label = random_pair(30, 50, (0, 4, 255))
    transform = ValTransform(ValTransformConfig(test_scale=(100, 40)))
    image_t, label_t = transform(image, label)
    assert transform.valid_size(30, 50) == (40, 67)  # factor min(100/50, 40/30) = 4/3
    assert image_t.shape == (3, 64, 96)
    reference = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].double(), size=(40, 67), mode="bilinear", align_corners=False
    )[0]
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(image_t[:, :40, :67].double(), (reference - mean) / std, atol=1e-4)
    assert (image_t[:, 40:] == 0).all() and (image_t[:, :, 67:] == 0).all()
    assert np.array_equal(label_t.numpy(), label)
    unpadded, _ = ValTransform(ValTransformConfig(test_scale=(100, 40), size_divisor=None))(image, label)
    assert unpadded.shape == (3, 40, 67) and torch.equal(unpadded, image_t[:, :40, :67])


def test_bad_inputs_raise_named_errors() -> None:
    image, label = random_pair(20, 30, (0,))
    transform = TrainTransform(default_train_config("synthetic"))
    with pytest.raises(SizeMismatchError, match="label is"):
        transform(image, label[:, :-1], np.random.default_rng(0))
    with pytest.raises(DataError, match=r"expected a \(H, W, 3\) uint8"):
        ValTransform()(image.astype(np.float32), label)
    with pytest.raises(DataError, match=r"expected a \(H, W\) uint8"):
        ValTransform()(image, label[..., None])


def test_presets_and_config_checks() -> None:
    assert default_train_config("cityscapes").crop_size == (512, 1024)
    assert default_train_config("ade20k").base_scale == (2048, 512)
    assert default_train_config("pascal_context").crop_size == (480, 480)
    with pytest.raises(UnknownNameError) as error:
        default_train_config("cityscape")
    for name in TRAIN_PRESETS:
        assert name in str(error.value)
    assert "did you mean 'cityscapes'" in str(error.value)
    from_lists = TrainTransformConfig(base_scale=[64, 32], crop_size=[16, 16], ratio_range=[1, 1])
    assert from_lists.base_scale == (64, 32) and from_lists.ratio_range == (1.0, 1.0)
    for bad in [
        dict(crop_size=(0, 16)),
        dict(crop_size=(16.5, 16)),
        dict(ratio_range=(2.0, 0.5)),
        dict(cat_max_ratio=0.0),
        dict(flip_prob=1.5),
        dict(std=(1.0, 0.0, 1.0)),
        dict(mean=(1.0, 2.0)),
    ]:
        with pytest.raises(InvalidHyperparameterError, match=next(iter(bad))):
            TrainTransformConfig(**{"base_scale": (64, 32), "crop_size": (16, 16), **bad})
    with pytest.raises(InvalidHyperparameterError, match="test_scale"):
        ValTransformConfig(test_scale=(100,))
    for bad in (0, 32.0, True):
        with pytest.raises(InvalidHyperparameterError, match="size_divisor"):
            ValTransformConfig(size_divisor=bad)


def test_camvid_preset_on_a_real_frame() -> None:
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
    if not root.is_dir():
        pytest.skip(f"CamVid data not found: {root}")
    image = decode_image((root / "train" / "0001TP_006690.png").read_bytes())
    label = decode_label((root / "trainannot" / "0001TP_006690.png").read_bytes())
    transform = TrainTransform(default_train_config("camvid"))
    for index in range(4):
        image_t, label_t = transform(image, label, sample_rng(0, 0, index))
        assert image_t.shape == (3, 360, 480) and label_t.shape == (360, 480)
        assert set(label_t.unique().tolist()) <= set(np.unique(label).tolist()) | {255}
