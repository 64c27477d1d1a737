"""nrd: encoders, decoders (NRD and baselines), one ``create_model``, cost accounting. Pure PyTorch."""

from nrd.decoders import DECODERS
from nrd.encoders import ENCODERS, create_encoder, load_encoder_weights
from nrd.errors import InvalidHyperparameterError, NRDBenchError, UnknownNameError, WeightsMismatchError
from nrd.model import ModelConfig, SegmentationModel, create_model, decoder_arguments

__all__ = [
    "DECODERS",
    "ENCODERS",
    "InvalidHyperparameterError",
    "ModelConfig",
    "NRDBenchError",
    "SegmentationModel",
    "UnknownNameError",
    "WeightsMismatchError",
    "create_encoder",
    "create_model",
    "decoder_arguments",
    "load_encoder_weights",
]
