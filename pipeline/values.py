"""Reading and checking config values, whatever they configure: YAML files (safe loader, errors naming the file),
merging sections, and typed conversion of one section's values against its dataclass defaults."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from nrd.errors import InvalidHyperparameterError, NRDBenchError, UnknownNameError


class ConfigError(NRDBenchError, ValueError):
    """A configuration that cannot work: the message names the file/key at fault and what was expected."""


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping from ``path`` (safe loader); errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; expected a YAML file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); expected a YAML file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied section by section (nested mappings merged, other values replaced)."""
    result = {key: dict(value) if isinstance(value, Mapping) else value for key, value in base.items()}
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def read_section(kind, values: Mapping[str, Any], source: str):
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    for key in values:
        if key not in fields:
            raise UnknownNameError(f"key in {source}", key, fields)
    converted = {}
    for key, value in values.items():
        default = fields[key].default
        try:
            converted[key] = convert_value(value, default)
        except (TypeError, ValueError):
            expected = type(default).__name__ if default is not None else "a value of the documented type"
            raise ConfigError(f"{source}: {key}={value!r} has the wrong type; expected a finite {expected}") from None
    return kind(**converted)


def convert_value(value: Any, default: Any) -> Any:
    """``value`` checked (TypeError) and converted to the type of the field whose default is ``default``: null only
    where the default is null, numbers finite."""
    if value is None:
        if default is None:
            return None
        raise TypeError
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise TypeError
        return value
    if isinstance(value, list):
        return tuple(value)
    return value


def require(ok: bool, source: str, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise InvalidHyperparameterError(source, key, value, expected)


SWEEP_NAME_EXPECTED = "a folder name inside the storage path (no '/', not '.' or '..')"


def is_folder_name(name: Any) -> bool:
    """One folder name (a run's or a sweep's), so that joining it to its parent folder stays inside that folder."""
    return isinstance(name, str) and name.strip() not in ("", ".", "..") and not set(name) & set("/\\\0")
