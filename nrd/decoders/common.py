"""Building blocks shared by the decoders: conv-BN-ReLU, depthwise-separable convs, the ASPP context module, the
decoder base class and the FCN auxiliary head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nrd.errors import InvalidHyperparameterError


def init_conv_module(conv: nn.Conv2d) -> nn.Conv2d:
    """mmcv ``ConvModule``'s initialisation (every conv of the official heads): Kaiming-normal, mode fan_out, gain for
    ReLU, bias 0."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def classifier_conv(in_channels: int, num_classes: int) -> nn.Conv2d:
    """A 1×1 classifier conv initialised as mmseg's ``conv_seg`` (``BaseDecodeHead.init_weights``): N(0, 0.01),
    bias 0."""
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.normal_(conv.weight, mean=0.0, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) → BatchNorm → ReLU, initialised as mmcv's ``ConvModule``: conv Kaiming-normal (fan_out, ReLU),
    BatchNorm weight 1 and bias 0."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1, groups: int = 1):
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        init_conv_module(self[0])
        nn.init.ones_(self[1].weight)
        nn.init.zeros_(self[1].bias)


class SeparableConvBNReLU(nn.Sequential):
    """Depthwise 3×3 (BN, ReLU) then pointwise 1×1 (BN, ReLU), as mmseg's DepthwiseSeparableConvModule."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1):
        super().__init__(
            ConvBNReLU(in_channels, in_channels, 3, dilation=dilation, groups=in_channels),
            ConvBNReLU(in_channels, out_channels, 1),
        )


def is_int(value: object) -> bool:
    """True for an ``int`` that is not a ``bool``: ``3.0`` and ``True`` are not integer hyperparameters."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if not is_int(value) or value < 1:
            raise InvalidHyperparameterError(owner, name, value, "a positive integer")


def check_probability(owner: str, **values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise InvalidHyperparameterError(owner, name, value, "a probability in [0, 1]")


def default_dilations(output_stride: int) -> tuple[int, int, int]:
    """ASPP dilations (3, 6, 9) at output stride 32, scaled with the feature resolution: (6, 12, 18) at 16,
    (12, 24, 36) at 8, the DeepLabV3(+) settings."""
    scale = 32 // output_stride
    return (3 * scale, 6 * scale, 9 * scale)


def resolve_dilations(owner: str, dilations: Sequence[int] | None, output_stride: int) -> tuple[int, ...]:
    """The context module's dilations: ``default_dilations(output_stride)`` when ``dilations`` is None, else
    ``dilations`` itself, which must be a non-empty sequence (tuple or list) of positive integers."""
    if dilations is None:
        return default_dilations(output_stride)
    if not isinstance(dilations, tuple | list) or not dilations or not all(is_int(d) and d >= 1 for d in dilations):
        raise InvalidHyperparameterError(
            owner, "context_dilations", dilations, "a non-empty tuple or list of positive integers, or None (defaults)"
        )
    return tuple(dilations)


class ContextModule(nn.Module):
    """ASPP on the last encoder stage: image pooling, a 1×1 branch and three dilated 3×3 branches (depthwise-separable
    as in DeepLabV3+ and NRD, or plain as in DeepLabV3), concatenated and fused by a 3×3 conv.

    (B, in_channels, h, w) → (B, channels, h, w). This is the "context" cost level shared by the decoders.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 512,
        dilations: tuple[int, ...] = (3, 6, 9),
        separable: bool = True,
    ):
        super().__init__()
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, channels, 1))
        branches: list[nn.Module] = [ConvBNReLU(in_channels, channels, 1)]
        for dilation in dilations:
            if separable:
                branches.append(SeparableConvBNReLU(in_channels, channels, dilation))
            else:
                branches.append(ConvBNReLU(in_channels, channels, 3, dilation=dilation))
        self.branches = nn.ModuleList(branches)
        self.bottleneck = ConvBNReLU(channels * (len(branches) + 1), channels, 3)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.bottleneck(torch.cat([pooled, *(branch(x) for branch in self.branches)], dim=1))


class Decoder(nn.Module):
    """Base of every decoder: ``forward(features, output_size)`` runs the context module on the last encoder stage,
    then ``decode``, which must return logits (B, num_classes, *output_size).

    Subclasses receive the encoder's ``encoder_channels`` and ``encoder_strides`` (one per stage) and build
    ``self.context``; cost accounting measures ``context`` and ``decode`` as separate levels.
    """

    #: Output stride of the encoder this decoder is normally paired with (create_model's default).
    default_output_stride = 32

    def __init__(self, encoder_channels: tuple[int, ...], encoder_strides: tuple[int, ...], num_classes: int):
        super().__init__()
        name = type(self).__name__
        if len(encoder_channels) != len(encoder_strides) or not encoder_channels:
            raise InvalidHyperparameterError(name, "encoder_channels", encoder_channels, "one entry per stride")
        check_positive(name, num_classes=num_classes)
        self.encoder_channels = tuple(encoder_channels)
        self.encoder_strides = tuple(encoder_strides)
        self.num_classes = num_classes

    @property
    def context_stride(self) -> int:
        return self.encoder_strides[-1]

    def forward(self, features: list[torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        return self.decode(features, self.context(features[-1]), output_size)

    def decode(self, features: list[torch.Tensor], context: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError


class ClassifierDecoder(Decoder):
    """Context module → dropout → 1×1 classifier at the context stride → bilinear up-sampling to the output size.

    The plain baselines: with an output-stride-32 encoder this is the paper's "bilinear" decoder, with a dilated
    output-stride-8 encoder and plain ASPP it is DeepLabV3.
    """

    separable_context = True

    def __init__(
        self,
        *,
        encoder_channels: tuple[int, ...],
        encoder_strides: tuple[int, ...],
        num_classes: int,
        context_channels: int = 512,
        context_dilations: tuple[int, ...] | None = None,
        dropout: float = 0.1,
    ):
        super().__init__(encoder_channels, encoder_strides, num_classes)
        owner = type(self).__name__
        check_positive(owner, context_channels=context_channels)
        check_probability(owner, dropout=dropout)
        dilations = resolve_dilations(owner, context_dilations, self.context_stride)
        self.context = ContextModule(encoder_channels[-1], context_channels, dilations, self.separable_context)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = classifier_conv(context_channels, num_classes)

    def decode(self, features, context, output_size):
        logits = self.classifier(self.dropout(context))
        return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)


class FCNAuxHead(nn.Module):
    """Auxiliary FCN head used only in training (3×3 conv → 256, BN, ReLU, dropout 0.1, 1×1 classifier), applied to
    the third encoder stage as in the official configs (loss weight 0.4). Initialised as mmseg's ``FCNHead``: the conv
    as a ``ConvModule``, the classifier as ``conv_seg``."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = classifier_conv(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))
