"""``create_model``: one encoder from ``ENCODERS`` + one decoder from ``DECODERS`` (+ the training-only FCN
auxiliary head), and the frozen ``ModelConfig`` that maps onto it."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nrd.decoders import DECODERS, Decoder
from nrd.decoders.common import FCNAuxHead
from nrd.encoders import ENCODERS, ResNet, create_encoder
from nrd.errors import InvalidHyperparameterError, UnknownNameError
from nrd.weights import WeightsSpec, check_weights_spec

SIZE_DIVISOR = 32


class SegmentationModel(nn.Module):
    """Encoder → decoder (context module + up-sampling decoder) → logits (B, K, H, W) at the input's size.

    Inputs of any height and width work: they are zero-padded at the bottom/right to a multiple of 32 and the logits
    are cropped back. ``forward(images, with_aux=True)`` (or ``forward_with_aux``) also returns the auxiliary FCN
    head's logits (on encoder stage 3) for training; the plain forward (inference, cost) never runs the aux head.
    """

    def __init__(self, encoder: ResNet, decoder: Decoder, aux_head: FCNAuxHead | None = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.aux_head = aux_head

    @staticmethod
    def pad(images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % SIZE_DIVISOR, -width % SIZE_DIVISOR
        return F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images

    def forward(self, images: torch.Tensor, with_aux: bool = False):
        """Logits (B, K, H, W); with ``with_aux`` the pair (logits, auxiliary logits or None), so that a
        DistributedDataParallel wrapper sees the auxiliary head in the same forward call."""
        height, width = images.shape[-2:]
        padded = self.pad(images)
        features = self.encoder(padded)
        logits = self.decoder(features, padded.shape[-2:])[..., :height, :width]
        if not with_aux:
            return logits
        aux_logits = None
        if self.aux_head is not None:
            aux_logits = self.aux_head(features[2])
            aux_logits = F.interpolate(aux_logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
            aux_logits = aux_logits[..., :height, :width]
        return logits, aux_logits

    def forward_with_aux(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.forward(images, with_aux=True)


def decoder_arguments(decoder: str) -> list[str]:
    """The hyperparameters ``decoder`` accepts as keyword arguments (beyond what create_model passes itself)."""
    if decoder not in DECODERS:
        raise UnknownNameError("decoder", decoder, DECODERS)
    passed_by_create_model = {"self", "encoder_channels", "encoder_strides", "num_classes"}
    parameters = inspect.signature(DECODERS[decoder].__init__).parameters
    return [name for name in parameters if name not in passed_by_create_model]


def create_model(
    decoder: str = "nrd",
    encoder: str = "resnet50_v1c",
    num_classes: int = 19,
    *,
    output_stride: int | None = None,
    aux_head: bool = True,
    encoder_weights: WeightsSpec = None,
    **decoder_kwargs: Any,
) -> SegmentationModel:
    """Build a segmentation model.

    ``decoder``/``encoder`` are keys of ``DECODERS``/``ENCODERS``; ``output_stride`` defaults to the decoder's own
    (32, or 8 for the dilated DeepLabV3); ``encoder_weights`` is a local torchvision-layout checkpoint, a name
    (``imagenet``) or URL resolved through the cache, or a mapping encoder → one of those (``nrd.weights``);
    ``decoder_kwargs`` are that decoder's hyperparameters (see ``decoder_arguments``).
    """
    if decoder not in DECODERS:
        raise UnknownNameError("decoder", decoder, DECODERS)
    valid_kwargs = decoder_arguments(decoder)
    for key in decoder_kwargs:
        if key not in valid_kwargs:
            raise UnknownNameError(f"argument of decoder {decoder!r}", key, valid_kwargs)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise InvalidHyperparameterError("create_model", "num_classes", num_classes, "a positive integer")
    decoder_class = DECODERS[decoder]
    stride = decoder_class.default_output_stride if output_stride is None else output_stride
    backbone = create_encoder(encoder, output_stride=stride, weights=encoder_weights)
    head = decoder_class(
        encoder_channels=backbone.out_channels,
        encoder_strides=backbone.out_strides,
        num_classes=num_classes,
        **decoder_kwargs,
    )
    aux = FCNAuxHead(backbone.out_channels[2], num_classes) if aux_head else None
    return SegmentationModel(backbone, head, aux)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a model, in one place; ``build()`` maps it onto ``create_model``."""

    decoder: str = "nrd"
    encoder: str = "resnet50_v1c"
    num_classes: int = 19
    output_stride: int | None = None
    aux_head: bool = True
    encoder_weights: str | Mapping[str, str | None] | None = None  # see nrd.weights; resolved when built
    decoder_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> SegmentationModel:
        return create_model(
            self.decoder,
            self.encoder,
            self.num_classes,
            output_stride=self.output_stride,
            aux_head=self.aux_head,
            encoder_weights=self.encoder_weights,
            **dict(self.decoder_kwargs),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "model config") -> ModelConfig:
        """Build from a plain mapping (e.g. parsed YAML); unknown keys raise an error naming ``source``."""
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in valid:
                raise UnknownNameError(f"key in {source}", key, valid)
        values = dict(data)
        types = {"decoder": (str,), "encoder": (str,), "num_classes": (int,), "aux_head": (bool,)}
        types |= {"output_stride": (int, type(None))}
        for key, value in values.items():
            expected = types.get(key)
            wrong_bool = isinstance(value, bool) and bool not in (expected or ())
            if expected and (not isinstance(value, expected) or wrong_bool):
                names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in expected)
                raise InvalidHyperparameterError(source, key, value, f"a value of type {names}")
        check_weights_spec(values.get("encoder_weights"), ENCODERS, source)
        if isinstance(values.get("encoder_weights"), Mapping):
            values["encoder_weights"] = dict(values["encoder_weights"])
        kwargs = values.get("decoder_kwargs")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise InvalidHyperparameterError(source, "decoder_kwargs", kwargs, "a mapping ARG: VALUE")
        if "decoder_kwargs" in values:
            values["decoder_kwargs"] = dict(kwargs or {})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["decoder_kwargs"] = dict(self.decoder_kwargs)
        if isinstance(self.encoder_weights, Mapping):
            values["encoder_weights"] = dict(self.encoder_weights)
        return values
