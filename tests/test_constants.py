"""The light names of ``nrd.constants`` (what the command line's help lists without importing torch) stay equal to
the registries' keys, and the lazy ``nrd`` package still gives every name it exports."""

from __future__ import annotations

import pytest

import nrd
from nrd import constants
from nrd.data import DATASETS
from nrd.decoders import DECODERS
from nrd.encoders import ENCODERS
from nrd.inference import MODES


@pytest.mark.parametrize(
    ("names", "registry", "where"),
    [
        (constants.DECODER_NAMES, DECODERS, "nrd.decoders.DECODERS"),
        (constants.ENCODER_NAMES, ENCODERS, "nrd.encoders.ENCODERS"),
        (constants.DATASET_NAMES, DATASETS, "nrd.data.DATASETS"),
        (constants.INFERENCE_MODES, MODES, "nrd.inference.MODES"),
    ],
)
def test_names_are_the_registry_keys_in_order(names, registry, where):
    assert names == tuple(registry), f"nrd.constants lists {names}; {where} has {tuple(registry)}: make them equal"


def test_every_exported_name_imports_from_the_package():
    for name in nrd.__all__:
        assert getattr(nrd, name) is not None
        assert name in dir(nrd)
    from nrd import create_model, decoder_arguments  # noqa: F401  (the form the rest of the code uses)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        nrd.no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        from nrd import no_such_name  # noqa: F401
