"""Named errors raised by nrd-bench. Each message says what was at fault and what was expected."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NRDBenchError(Exception):
    """Base class of every error nrd-bench raises on purpose."""

    def __reduce__(self):
        # Picklable whatever a subclass's constructor takes (Ray re-raises a worker's error in the driver)
        return _rebuild_error, (type(self), str(self), dict(self.__dict__))


def _rebuild_error(kind: type, message: str, attributes: dict) -> NRDBenchError:
    error = kind.__new__(kind, message)
    Exception.__init__(error, message)
    error.__dict__.update(attributes)
    return error


class UnknownNameError(NRDBenchError, ValueError):
    """A name (decoder, encoder, dataset, keyword argument, ...) that is not one of the valid ones."""

    def __init__(self, kind: str, name: object, valid: Iterable[str]):
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        same_but_case = [valid for valid in self.valid if valid.lower() == str(name).lower()]
        close = same_but_case or difflib.get_close_matches(str(name), self.valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        listing = f"valid: {', '.join(self.valid)}" if self.valid else "there is none to choose from"
        super().__init__(f"unknown {kind} {name!r}{hint}; {listing}")


class InvalidHyperparameterError(NRDBenchError, ValueError):
    """A hyperparameter value outside what the model supports."""

    def __init__(self, owner: str, name: str, value: object, expected: str):
        self.owner = owner
        self.name = name
        self.value = value
        super().__init__(f"{owner}: {name}={value!r} is invalid; expected {expected}")


class WeightsMismatchError(NRDBenchError, ValueError):
    """A weights file whose keys or shapes do not match the model it is loaded into."""


class WeightsFileNotFoundError(NRDBenchError, FileNotFoundError):
    """A pretrained-weights path that does not exist."""

    def __init__(self, path: str):
        self.path = path
        super().__init__(f"weights file not found: {path}")
