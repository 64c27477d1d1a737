"""ResNet encoders in torchvision's parameter layout, with a deep-stem (V1c) variant and dilated output strides.

Every encoder returns the four stage features (``layer1`` … ``layer4``) and declares their channels and strides in
``out_channels`` / ``out_strides``, so decoders never hard-code them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch
from torch import nn

from nrd.errors import InvalidHyperparameterError, UnknownNameError, WeightsFileNotFoundError, WeightsMismatchError
from nrd.weights import WeightsSpec, check_weights_spec, resolve_encoder_weights

OUTPUT_STRIDES = (8, 16, 32)
# Stage strides (layer1..layer4) and dilations per output stride; the first block of a dilated stage keeps the
# previous dilation (torchvision's ``replace_stride_with_dilation``, mmseg's ``contract_dilation``).
_STAGE_STRIDES = {32: (1, 2, 2, 2), 16: (1, 2, 2, 1), 8: (1, 2, 1, 1)}
_STAGE_DILATIONS = {32: (1, 1, 1, 1), 16: (1, 1, 1, 2), 8: (1, 1, 2, 4)}


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride, dilation)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels, 1, dilation)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided, "V1b"/torchvision style) → 1×1 bottleneck with a residual connection (ResNet-50/101)."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, stride, dilation)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet backbone returning the features of its four stages.

    Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1`` …) so torchvision checkpoints load
    as they are; with ``deep_stem=True`` (ResNet-V1c, as in the official NRD code) the 7×7 stem is replaced by three
    3×3 convolutions named like mmcv's (``stem.0``, ``stem.1``, ``stem.3`` …).

    ``output_stride`` 32 is the plain network; 16 and 8 replace the stride of the last one or two stages with
    dilation (the "dilated encoder" baselines). For an input (B, 3, H, W) the forward returns a list of four
    tensors of shapes (B, out_channels[i], H / out_strides[i], W / out_strides[i]).

    Initialisation as mmseg's ``ResNet.init_weights`` without pretrained weights: convs Kaiming-normal (fan_out,
    ReLU), BatchNorm weight 1 and bias 0, and with ``zero_init_residual`` (mmseg's default) the last BatchNorm of
    every residual block (``bn2`` of a BasicBlock, ``bn3`` of a Bottleneck) starts at weight 0, so that each block
    starts as the identity. Loading weights (``load_encoder_weights``) overwrites all of it.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        *,
        deep_stem: bool = False,
        output_stride: int = 32,
        zero_init_residual: bool = True,
    ):
        super().__init__()
        if not isinstance(output_stride, int) or isinstance(output_stride, bool) or output_stride not in OUTPUT_STRIDES:
            raise InvalidHyperparameterError("ResNet", "output_stride", output_stride, "one of 8, 16, 32")
        self.output_stride = output_stride
        self.deep_stem = deep_stem
        if deep_stem:
            self.stem = nn.Sequential(
                _conv3x3(3, 32, stride=2),
                nn.BatchNorm2d(32),
                nn.ReLU(inplace=True),
                _conv3x3(32, 32),
                nn.BatchNorm2d(32),
                nn.ReLU(inplace=True),
                _conv3x3(32, 64),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
            )
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        strides = _STAGE_STRIDES[output_stride]
        dilations = _STAGE_DILATIONS[output_stride]
        in_channels = 64
        previous_dilation = 1
        out_channels, out_strides = [], []
        total_stride = 4
        for index, (blocks, stride, dilation) in enumerate(zip(layers, strides, dilations, strict=True)):
            channels = 64 * 2**index
            stage = self._make_stage(block, in_channels, channels, blocks, stride, dilation, previous_dilation)
            self.add_module(f"layer{index + 1}", stage)
            in_channels = channels * block.expansion
            previous_dilation = dilation
            total_stride *= stride
            out_channels.append(in_channels)
            out_strides.append(total_stride)
        self.out_channels: tuple[int, ...] = tuple(out_channels)
        self.out_strides: tuple[int, ...] = tuple(out_strides)
        self._init_weights(zero_init_residual)

    @staticmethod
    def _make_stage(block, in_channels, channels, blocks, stride, dilation, previous_dilation) -> nn.Sequential:
        downsample = None
        if stride != 1 or in_channels != channels * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels * block.expansion),
            )
        # The first block keeps the previous dilation (its 3×3 conv is where the stride used to be).
        stage = [block(in_channels, channels, stride, previous_dilation, downsample)]
        in_channels = channels * block.expansion
        stage += [block(in_channels, channels, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x) if self.deep_stem else self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features


def resnet18(output_stride: int = 32) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), output_stride=output_stride)


def resnet34(output_stride: int = 32) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), output_stride=output_stride)


def resnet50(output_stride: int = 32) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), output_stride=output_stride)


def resnet101(output_stride: int = 32) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), output_stride=output_stride)


def resnet50_v1c(output_stride: int = 32) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), deep_stem=True, output_stride=output_stride)


def resnet101_v1c(output_stride: int = 32) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), deep_stem=True, output_stride=output_stride)


ENCODERS: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet50_v1c": resnet50_v1c,
    "resnet101_v1c": resnet101_v1c,
}

# Keys of an ImageNet classifier that the encoder does not have; a checkpoint may hold them.
_CLASSIFIER_PREFIXES = ("fc.",)
# BatchNorm's step counter: older checkpoints (e.g. torchvision's resnet50-19c8e357.pth) predate it, and PyTorch's
# own BatchNorm loader tolerates its absence, so it is never reported missing.
_OPTIONAL_SUFFIX = "num_batches_tracked"


def create_encoder(name: str, output_stride: int = 32, weights: WeightsSpec = None) -> ResNet:
    """Build encoder ``name`` (a key of ``ENCODERS``), optionally loading pretrained weights: a local file, a name
    (``imagenet``) or URL resolved through the cache (downloaded once), or a mapping encoder → one of those
    (``nrd.weights``)."""
    if name not in ENCODERS:
        raise UnknownNameError("encoder", name, ENCODERS)
    check_weights_spec(weights, ENCODERS, "create_encoder")
    path = resolve_encoder_weights(weights, name, source="create_encoder")
    encoder = ENCODERS[name](output_stride=output_stride)
    if path is not None:
        load_encoder_weights(encoder, path)
    return encoder


def _unwrap_state_dict(obj: object, path: str) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):  # mmcv / reference-script checkpoints
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
        if all(isinstance(value, torch.Tensor) for value in obj.values()):
            return {key.removeprefix("module."): value for key, value in obj.items()}
    raise WeightsMismatchError(f"{path}: expected a state dict (a mapping of parameter names to tensors)")


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict[str, list[str]]:
    """Load a local checkpoint in torchvision's key layout (``conv1.weight``, ``layer1.0.conv1.weight`` …; V1c nets
    use mmcv's ``stem.*`` names) into ``encoder``. The ImageNet classifier (``fc.*``) is ignored.

    With ``strict`` any missing key, unexpected key or shape mismatch raises ``WeightsMismatchError`` listing all of
    them; without it the matching tensors are loaded and the lists are returned. BatchNorm ``num_batches_tracked``
    counters absent from the file (older checkpoints) are not missing: the encoder keeps its own. A path that does
    not exist raises ``WeightsFileNotFoundError``.
    """
    path = os.fspath(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise WeightsFileNotFoundError(path) from error
    except Exception as error:  # unpickling errors come in many types
        raise WeightsMismatchError(f"{path}: not a loadable weights file ({error})") from error
    state = {k: v for k, v in _unwrap_state_dict(loaded, path).items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    own = encoder.state_dict()
    missing = sorted(key for key in set(own) - set(state) if not key.endswith(_OPTIONAL_SUFFIX))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(own[key].shape)}"
        for key in set(own) & set(state)
        if state[key].shape != own[key].shape
    )
    report = {"missing": missing, "unexpected": unexpected, "shape_mismatch": mismatched}
    if strict and (missing or unexpected or mismatched):
        lines = [f"{path} does not match encoder {type(encoder).__name__}:"]
        for label, keys in report.items():
            if keys:
                shown = ", ".join(keys[:50]) + (f", … ({len(keys)} in all)" if len(keys) > 50 else "")
                lines.append(f"  {label} ({len(keys)}): {shown}")
        raise WeightsMismatchError("\n".join(lines))
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    encoder.load_state_dict(loadable, strict=False)
    return report
