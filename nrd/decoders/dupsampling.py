"""DUpsampling (Tian, He, Shen, Yan, CVPR 2019): data-dependent linear reconstruction of label patches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nrd.decoders.common import (
    ContextModule,
    ConvBNReLU,
    Decoder,
    check_positive,
    init_conv_module,
    is_int,
    resolve_dilations,
)
from nrd.errors import InvalidHyperparameterError


class DUpsamplingDecoder(Decoder):
    """DUpsampling decoder: the stride-4 stage is projected (1×1 → 48) and pooled to the context resolution, fused
    with the context (3×3 conv), compressed to C̃ channels, and every coarse location's C̃-vector is mapped by one
    learned linear reconstruction (C̃ → r·r·K, no bias) to an r×r patch of K logits, placed by depth-to-space:
    reconstruction channel k·r² + dy·r + dx of coarse cell (i, j) is class k at pixel (i·r + dy, j·r + dx).
    Logits are divided by a learnable softmax temperature T = exp(``log_temperature``), initialised to 1 and
    positive whatever the optimiser does to its logarithm.

    The reconstruction matrix W is learned end to end with the rest of the network from its random initialisation;
    Tian et al. instead pre-compute it by PCA of the training set's one-hot label patches, which is not done here.

    NRD's linear counterpart: a fixed linear basis per patch instead of a per-location non-linear MLP. With the
    default r = the encoder output stride the logits come out at input resolution: (B, K, H, W).
    """

    def __init__(
        self,
        *,
        encoder_channels: tuple[int, ...],
        encoder_strides: tuple[int, ...],
        num_classes: int,
        compressed_channels: int = 256,
        upsample_ratio: int | None = None,
        low_level_channels: int = 48,
        fuse_channels: int = 512,
        context_channels: int = 512,
        context_dilations: tuple[int, ...] | None = None,
    ):
        super().__init__(encoder_channels, encoder_strides, num_classes)
        owner = type(self).__name__
        check_positive(
            owner,
            compressed_channels=compressed_channels,
            low_level_channels=low_level_channels,
            fuse_channels=fuse_channels,
            context_channels=context_channels,
        )
        stride = self.context_stride
        ratio = stride if upsample_ratio is None else upsample_ratio
        if not is_int(ratio) or ratio < 1 or stride % ratio:
            raise InvalidHyperparameterError(
                owner, "upsample_ratio", upsample_ratio, f"a positive divisor of the encoder output stride {stride}"
            )
        self.upsample_ratio = ratio
        dilations = resolve_dilations(owner, context_dilations, stride)
        self.context = ContextModule(encoder_channels[-1], context_channels, dilations, separable=True)
        self.low_level = ConvBNReLU(encoder_channels[0], low_level_channels, 1)
        self.fuse = ConvBNReLU(context_channels + low_level_channels, fuse_channels, 3)
        # No official DUpsampling head in the NRD code: initialised by analogy, the compression as a ConvModule and the
        # reconstruction (the classifier) as mmseg's conv_seg, N(0, 0.01).
        self.compress = init_conv_module(nn.Conv2d(fuse_channels, compressed_channels, 1))
        self.reconstruct = nn.Conv2d(compressed_channels, ratio * ratio * num_classes, 1, bias=False)
        nn.init.normal_(self.reconstruct.weight, mean=0.0, std=0.01)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def decode(self, features, context, output_size):
        low_level = F.adaptive_avg_pool2d(self.low_level(features[0]), context.shape[-2:])
        compressed = self.compress(self.fuse(torch.cat([context, low_level], dim=1)))
        logits = F.pixel_shuffle(self.reconstruct(compressed), self.upsample_ratio) / self.temperature
        if logits.shape[-2:] != tuple(output_size):
            logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
        return logits
