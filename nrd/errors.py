"""Named errors raised by nrd-bench. Each message says what was at fault and what was expected."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NRDBenchError(Exception):
    """Base class of every error nrd-bench raises on purpose."""


class UnknownNameError(NRDBenchError, ValueError):
    """A name (decoder, encoder, dataset, keyword argument, ...) that is not one of the valid ones."""

    def __init__(self, kind: str, name: object, valid: Iterable[str]):
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        close = difflib.get_close_matches(str(name), self.valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(f"unknown {kind} {name!r}{hint}; valid: {', '.join(self.valid)}")


class InvalidHyperparameterError(NRDBenchError, ValueError):
    """A hyperparameter value outside what the model supports."""

    def __init__(self, owner: str, name: str, value: object, expected: str):
        self.owner = owner
        self.name = name
        self.value = value
        super().__init__(f"{owner}: {name}={value!r} is invalid; expected {expected}")


class WeightsMismatchError(NRDBenchError, ValueError):
    """A weights file whose keys or shapes do not match the model it is loaded into."""
