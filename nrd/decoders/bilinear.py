"""Bilinear baseline: ASPP + classifier at the encoder's output stride, bilinear up-sampling to the image."""

from __future__ import annotations

from nrd.decoders.common import ClassifierDecoder


class BilinearDecoder(ClassifierDecoder):
    """FCN-style baseline of the NRD paper: the shared depthwise-separable context module, a 1×1 classifier at
    stride 32 and one bilinear up-sampling (×32) to the image. (B, C, H/32, W/32) → (B, K, H, W)."""

    separable_context = True
    default_output_stride = 32
