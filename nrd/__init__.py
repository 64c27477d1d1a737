"""nrd: encoders, decoders (NRD and baselines), one ``create_model``, cost accounting. Pure PyTorch.

The names below are imported from their modules on first use (``from nrd import create_model`` works as ever), so
that importing a light submodule such as ``nrd.errors`` or ``nrd.constants`` does not import torch: the command
line's parser needs only those.
"""

from __future__ import annotations

import importlib

_MODULE_OF = {
    "DECODERS": "nrd.decoders",
    "ENCODERS": "nrd.encoders",
    "create_encoder": "nrd.encoders",
    "load_encoder_weights": "nrd.encoders",
    "InvalidHyperparameterError": "nrd.errors",
    "NRDBenchError": "nrd.errors",
    "UnknownNameError": "nrd.errors",
    "WeightsMismatchError": "nrd.errors",
    "ModelConfig": "nrd.model",
    "SegmentationModel": "nrd.model",
    "create_model": "nrd.model",
    "decoder_arguments": "nrd.model",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'nrd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value  # later look-ups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})
