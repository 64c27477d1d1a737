"""DeepLabV3+ decoder (Chen et al. 2018) on the shared context module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nrd.decoders.common import (
    ContextModule,
    ConvBNReLU,
    Decoder,
    SeparableConvBNReLU,
    check_positive,
    check_probability,
    classifier_conv,
    resolve_dilations,
)


class DeepLabV3PlusDecoder(Decoder):
    """DeepLabV3+ decoder: the context (B, 512, H/s, W/s) is up-sampled to the stride-4 stage, concatenated with a
    1×1 (→48) projection of that stage, refined by two depthwise-separable 3×3 convs (512 channels), classified and
    up-sampled bilinearly ×4. The NRD paper's main decoder baseline (same encoder, same context module)."""

    def __init__(
        self,
        *,
        encoder_channels: tuple[int, ...],
        encoder_strides: tuple[int, ...],
        num_classes: int,
        low_level_channels: int = 48,
        decoder_channels: int = 512,
        context_channels: int = 512,
        context_dilations: tuple[int, ...] | None = None,
        dropout: float = 0.1,
    ):
        super().__init__(encoder_channels, encoder_strides, num_classes)
        owner = type(self).__name__
        check_positive(
            owner,
            low_level_channels=low_level_channels,
            decoder_channels=decoder_channels,
            context_channels=context_channels,
        )
        check_probability(owner, dropout=dropout)
        dilations = resolve_dilations(owner, context_dilations, self.context_stride)
        self.context = ContextModule(encoder_channels[-1], context_channels, dilations, separable=True)
        self.low_level = ConvBNReLU(encoder_channels[0], low_level_channels, 1)
        self.fuse = nn.Sequential(
            SeparableConvBNReLU(context_channels + low_level_channels, decoder_channels),
            SeparableConvBNReLU(decoder_channels, decoder_channels),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = classifier_conv(decoder_channels, num_classes)

    def decode(self, features, context, output_size):
        low_level = self.low_level(features[0])
        context = F.interpolate(context, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        fused = self.fuse(torch.cat([context, low_level], dim=1))
        logits = self.classifier(self.dropout(fused))
        return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
