"""Decoders, one file each; ``DECODERS`` maps the public names to the classes."""

from nrd.decoders.bilinear import BilinearDecoder
from nrd.decoders.common import Decoder
from nrd.decoders.deeplabv3 import DeepLabV3Decoder
from nrd.decoders.deeplabv3plus import DeepLabV3PlusDecoder
from nrd.decoders.dupsampling import DUpsamplingDecoder
from nrd.decoders.nrd import NRDDecoder

DECODERS: dict[str, type[Decoder]] = {
    "nrd": NRDDecoder,
    "deeplabv3plus": DeepLabV3PlusDecoder,
    "bilinear": BilinearDecoder,
    "dupsampling": DUpsamplingDecoder,
    "deeplabv3": DeepLabV3Decoder,
}

__all__ = [
    "DECODERS",
    "BilinearDecoder",
    "DUpsamplingDecoder",
    "Decoder",
    "DeepLabV3Decoder",
    "DeepLabV3PlusDecoder",
    "NRDDecoder",
]
