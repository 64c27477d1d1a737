"""Inference modes for any segmentation model mapping images (B, C, H, W) → logits (B, K, H, W) at input size.

- ``whole``: one forward pass on the full image (the models from ``create_model`` pad to a multiple of 32 and crop
  back themselves);
- ``slide``: overlapping windows, the last one in each direction aligned with the border, logits averaged where
  windows overlap;
- ``msflip``: multi-scale + horizontal flip; returns softmax *probabilities* averaged over all scales and flips (the
  usual choice: probabilities are on the same scale whatever the input size), at the original size.

All three run under ``torch.inference_mode()`` with the model in eval mode: each module's train/eval flag is
restored afterwards, so calling them during training is safe. Tensors stay on the images' device.

Images prepared by ``nrd.data.transforms.ValTransform`` are zero-padded to a multiple of 32 (and maybe resized to a
test scale) while their label keeps its own size: ``predict_to_label`` runs a mode on such a batch and returns scores
at the label's size, through ``restore_to_label`` (crop the padding off, resize to the label).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nrd.errors import InvalidHyperparameterError, UnknownNameError

MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
BASE_MODES = ("whole", "slide")


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _check_images(images: torch.Tensor, owner: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        found = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InvalidHyperparameterError(owner, "images", found, "a floating-point (B, C, H, W) tensor")


def _check_size(value: Sequence[int], owner: str, name: str) -> tuple[int, int]:
    valid = (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    )
    if not valid:
        raise InvalidHyperparameterError(owner, name, value, "two positive integers (height, width)")
    return tuple(value)


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    if size <= window:
        return [0]
    return [*range(0, size - window, stride), size - window]


def _whole(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model(images)


def _slide(model: nn.Module, images: torch.Tensor, crop_size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    height, width = images.shape[-2:]
    crop_h, crop_w = crop_size
    logits = counts = None
    for top in _window_starts(height, crop_h, stride[0]):
        for left in _window_starts(width, crop_w, stride[1]):
            window = model(images[..., top : top + crop_h, left : left + crop_w])
            if logits is None:
                dtype = torch.promote_types(window.dtype, torch.float32)
                logits = window.new_zeros((*window.shape[:2], height, width), dtype=dtype)
                counts = window.new_zeros((height, width), dtype=dtype)
            logits[..., top : top + crop_h, left : left + crop_w] += window
            counts[top : top + crop_h, left : left + crop_w] += 1
    return logits / counts


def _slide_settings(
    crop_size: Sequence[int], stride: Sequence[int] | None, owner: str
) -> tuple[tuple[int, int], tuple[int, int]]:
    crop_size = _check_size(crop_size, owner, "crop_size")
    stride = tuple(2 * side // 3 for side in crop_size) if stride is None else _check_size(stride, owner, "stride")
    if stride[0] > crop_size[0] or stride[1] > crop_size[1]:
        raise InvalidHyperparameterError(owner, "stride", stride, f"at most crop_size {crop_size} (no gaps)")
    return crop_size, stride


def predict_whole(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, H, W) of one forward pass on the full images (B, C, H, W)."""
    _check_images(images, "predict_whole")
    with _evaluating(model):
        return _whole(model, images)


def predict_slide(
    model: nn.Module, images: torch.Tensor, crop_size: Sequence[int], stride: Sequence[int] | None = None
) -> torch.Tensor:
    """Logits (B, K, H, W) averaged over sliding windows of ``crop_size`` (h, w) moved by ``stride`` (default: two
    thirds of the crop, 341×682 for 512×1024). Windows start every stride and the last one is aligned with the
    bottom/right border, so every pixel is covered; where the image is smaller than the crop, the window is the
    whole image along that side (the model pads it)."""
    _check_images(images, "predict_slide")
    crop_size, stride = _slide_settings(crop_size, stride, "predict_slide")
    with _evaluating(model):
        return _slide(model, images, crop_size, stride)


def predict_msflip(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float] = MS_SCALES,
    flip: bool = True,
    base_mode: str = "whole",
    crop_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
) -> torch.Tensor:
    """Softmax probabilities (B, K, H, W) averaged over ``scales`` × (original, horizontally flipped).

    Each scale s multiplies the size H × W of the images given, i.e. the original image size: pass unpadded
    images (as ``predict_to_label`` does). For each s the images are resized to ⌊s·H + 0.5⌋ × ⌊s·W + 0.5⌋
    (bilinear, align_corners=False), predicted with ``base_mode`` ("whole", or "slide" with ``crop_size``/``stride``),
    flipped predictions are flipped back, logits are resized to H × W (bilinear), turned into probabilities and
    averaged. Argmax over K is the prediction.
    """
    owner = "predict_msflip"
    _check_images(images, owner)
    if base_mode not in BASE_MODES:
        raise UnknownNameError("msflip base mode", base_mode, BASE_MODES)
    if base_mode == "slide":
        if crop_size is None:
            raise InvalidHyperparameterError(owner, "crop_size", None, "two positive integers with base_mode='slide'")
        crop_size, stride = _slide_settings(crop_size, stride, owner)
        base = functools.partial(_slide, crop_size=crop_size, stride=stride)
    else:
        base = _whole
    if not isinstance(scales, Sequence) or len(scales) == 0 or not all(s > 0 for s in scales):
        raise InvalidHyperparameterError(owner, "scales", scales, "a non-empty sequence of positive numbers")
    height, width = images.shape[-2:]
    total = None
    with _evaluating(model):
        for scale in scales:
            size = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
            scaled = images
            if size != (height, width):
                scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            for flipped in (False, True) if flip else (False,):
                logits = base(model, scaled.flip(-1)).flip(-1) if flipped else base(model, scaled)
                if size != (height, width):
                    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
                probabilities = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=1)
                total = probabilities if total is None else total + probabilities
    return total / (len(scales) * (2 if flip else 1))


MODES: dict[str, Callable[..., torch.Tensor]] = {
    "whole": predict_whole,
    "slide": predict_slide,
    "msflip": predict_msflip,
}


def predict(model: nn.Module, images: torch.Tensor, mode: str = "whole", **options) -> torch.Tensor:
    """Run ``MODES[mode]`` (whole, slide, msflip) with its keyword ``options``; "whole" and "slide" return logits,
    "msflip" averaged probabilities, all (B, K, H, W) with the prediction as argmax over K."""
    if mode not in MODES:
        raise UnknownNameError("inference mode", mode, MODES)
    function = MODES[mode]
    valid = list(inspect.signature(function).parameters)[2:]
    for key in options:
        if key not in valid:
            takes = {name: list(inspect.signature(f).parameters)[2:] for name, f in MODES.items()}
            modes = [name for name, keys in takes.items() if key in keys]
            if modes:
                raise InvalidHyperparameterError(
                    f"inference mode {mode!r}", key, options[key], f"no {key}: only modes {', '.join(modes)} take it"
                )
            raise UnknownNameError(f"option of inference mode {mode!r}", key, valid)
    return function(model, images, **options)


def restore_to_label(scores: torch.Tensor, valid_size: Sequence[int], label_size: Sequence[int]) -> torch.Tensor:
    """Scores (B, K, H', W') predicted on padded images → (B, K, H, W) at the label's size ``label_size`` = (H, W).

    The top-left ``valid_size`` = (h, w) region (the image content, ``ValTransform.valid_size``) is kept, the
    bottom/right padding dropped; when (h, w) differs from (H, W) (a test scale was used) the kept scores are resized
    to (H, W), bilinear with align_corners=False. Logits and probabilities alike (a bilinear resize of probabilities
    is still a distribution over K)."""
    owner = "restore_to_label"
    if not isinstance(scores, torch.Tensor) or scores.ndim != 4:
        found = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise InvalidHyperparameterError(owner, "scores", found, "a (B, K, H, W) tensor")
    height, width = _check_size(valid_size, owner, "valid_size")
    label_size = _check_size(label_size, owner, "label_size")
    if height > scores.shape[-2] or width > scores.shape[-1]:
        expected = f"at most the scores' size {tuple(scores.shape[-2:])}"
        raise InvalidHyperparameterError(owner, "valid_size", (height, width), expected)
    scores = scores[..., :height, :width]
    if (height, width) != label_size:
        scores = F.interpolate(scores, size=label_size, mode="bilinear", align_corners=False)
    return scores


def predict_to_label(
    model: nn.Module,
    images: torch.Tensor,
    valid_size: Sequence[int],
    label_size: Sequence[int],
    mode: str = "whole",
    **options,
) -> torch.Tensor:
    """Scores (B, K, H, W) at the label's size for a batch prepared by ``ValTransform`` (images zero-padded at the
    bottom/right, content ``valid_size``), with inference ``mode`` and its ``options`` as in ``predict``.

    "whole" runs on the padded batch: the models from ``create_model`` would pad it the same way, so the result
    equals a prediction on the unpadded images. "slide" and "msflip" get the unpadded images, since their windows
    and scales are placed relative to the image's border. ``restore_to_label`` then maps the scores to the label."""
    _check_images(images, "predict_to_label")
    if mode != "whole":
        height, width = _check_size(valid_size, "predict_to_label", "valid_size")
        images = images[..., :height, :width]
    return restore_to_label(predict(model, images, mode, **options), valid_size, label_size)
