"""Pictures of predictions: colour-coded labels, and the image | label | prediction figure logged after training."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def colourise(label: np.ndarray, palette: list[list[int]], ignore_index: int) -> np.ndarray:
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    colours[ignore_index] = (0, 0, 0)
    return colours[label]


def prediction_figure(image: torch.Tensor, label: torch.Tensor, prediction: torch.Tensor, manifest: dict) -> bytes:
    """PNG with the (de-normalised) image, the colour-coded label and the colour-coded prediction side by side."""
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    rgb = (image.float() * std + mean).clamp(0, 255).byte().permute(1, 2, 0).numpy()
    if rgb.shape[:2] != tuple(label.shape):  # evaluated at data.test_scale: show the image at its label's size
        rgb = np.asarray(Image.fromarray(rgb).resize((label.shape[1], label.shape[0]), Image.BILINEAR))
    palette, ignore = manifest["palette"], manifest["ignore_index"]
    panels = [
        rgb,
        colourise(label.numpy().astype(np.uint8), palette, ignore),
        colourise(prediction.numpy().astype(np.uint8), palette, ignore),
    ]
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(panels, axis=1)).save(buffer, format="PNG")
    return buffer.getvalue()
