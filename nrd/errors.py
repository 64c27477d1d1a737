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


class WeightsUnavailableError(NRDBenchError, FileNotFoundError):
    """Named pretrained weights that cannot be had on this machine: no file in the cache and nowhere to download
    it from (an encoder with no published file in our key layout). The message says which file to put where."""

    def __init__(self, message: str, path: str):
        self.path = path
        super().__init__(message)


class WeightsDownloadError(NRDBenchError, OSError):
    """A weights download that failed (no network, refused, HTTP error). The message names the URL, the cache file
    it was meant for and how to put that file there by hand, so that offline machines can still use the name."""

    def __init__(self, url: str, path: str, reason: object):
        self.url = url
        self.path = path
        super().__init__(
            f"cannot download encoder weights from {url} ({reason}); expected file: {path}. Offline, download that "
            f"URL on a machine with network and copy the file there by hand under this name (or point "
            f"NRD_BENCH_CACHE at a folder whose encoders/ holds it)"
        )


class WeightsChecksumError(NRDBenchError, ValueError):
    """A weights file whose SHA-256 does not start with the prefix its published name carries: a corrupted cache
    entry or a wrong download. The file is never loaded."""

    def __init__(self, path: str, expected: str, found: str, detail: str):
        self.path = path
        self.expected = expected
        self.found = found
        super().__init__(f"{path}: SHA-256 starts with {found}, expected {expected}; {detail}")
