"""Pretrained encoder weights by name, URL or path: what ``encoder_weights`` may say, and the cache it resolves to.

``encoder_weights`` (``ModelConfig``, ``create_model``, ``create_encoder``) is one of

* null: no weights, the encoder's own initialisation;
* a name of ``WEIGHTS_NAMES`` (``imagenet``): the encoder's published file in ``IMAGENET``, downloaded once into the
  cache; an encoder with no published file in our key layout (the V1c nets) needs that file put there by hand;
* an ``http(s)://`` URL: downloaded once into the cache under the URL's file name;
* a local path (any other string: it must hold a ``/`` or a file extension, so that a misspelt name is not taken
  for a file), read as it is;
* a mapping encoder name → one of the above (null: none), so that a space sweeping encoders gives each its own;
  an encoder the mapping does not list is an error, not a silent run from scratch.

The cache is ``$NRD_BENCH_CACHE``, else ``$XDG_CACHE_HOME/nrd-bench``, else ``~/.cache/nrd-bench``; weights go in its
``encoders/`` folder. A file name that carries torchvision's ``-<hex>.`` part (``resnet50-0676ba61.pth``) is checked
against it: the SHA-256 must start with those digits, for a download before it enters the cache and for a cached
file every time it is used. Downloads go to a temporary file in the same folder, checked, then renamed into place.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlsplit

from torch.hub import download_url_to_file

from nrd.errors import (
    InvalidHyperparameterError,
    UnknownNameError,
    WeightsChecksumError,
    WeightsDownloadError,
    WeightsUnavailableError,
)

CACHE_VARIABLE = "NRD_BENCH_CACHE"
ENCODERS_FOLDER = "encoders"
TORCHVISION_MODELS = "https://download.pytorch.org/models/"
URL_SCHEMES = ("http", "https")
# torchvision's (and torch.hub's) naming: "<name>-<first hex digits of the SHA-256>.<extension>"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")


@dataclass(frozen=True)
class PublishedWeights:
    """One encoder's entry for a weights name: the file name it has in the cache and the URL it is published at.

    ``url`` None means no file is published in our key layout, so ``file_name`` is the name a person gives the file
    they put in the cache; ``hint`` then says where such a checkpoint comes from.
    """

    file_name: str
    url: str | None = None
    hint: str = ""


def _torchvision(file_name: str) -> PublishedWeights:
    return PublishedWeights(file_name, TORCHVISION_MODELS + file_name)


def _by_hand(encoder: str) -> PublishedWeights:
    hint = (
        f"an ImageNet {encoder} checkpoint in our key layout (the deep stem as stem.0 ... stem.7, torchvision's names "
        f"for the rest, as in mmcv's open-mmlab://{encoder})"
    )
    return PublishedWeights(f"{encoder}_imagenet.pth", None, hint)


# torchvision's IMAGENET1K_V1 files (ResNet*_Weights.IMAGENET1K_V1, the original paper's recipe), in our key layout.
IMAGENET: dict[str, PublishedWeights] = {
    "resnet18": _torchvision("resnet18-f37072fd.pth"),
    "resnet34": _torchvision("resnet34-b627a593.pth"),
    "resnet50": _torchvision("resnet50-0676ba61.pth"),
    "resnet101": _torchvision("resnet101-63fe2227.pth"),
    "resnet50_v1c": _by_hand("resnet50_v1c"),
    "resnet101_v1c": _by_hand("resnet101_v1c"),
}
WEIGHTS_NAMES: dict[str, dict[str, PublishedWeights]] = {"imagenet": IMAGENET}
WeightsSpec = str | os.PathLike | Mapping[str, str | os.PathLike | None] | None
EXPECTED = "a weights name (" + ", ".join(WEIGHTS_NAMES) + "), an http(s) URL, a local path, or a mapping encoder: one"


def cache_dir() -> Path:
    """The nrd-bench cache folder: ``$NRD_BENCH_CACHE``, else ``$XDG_CACHE_HOME/nrd-bench``, else
    ``~/.cache/nrd-bench``."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "nrd-bench"


def encoders_cache() -> Path:
    return cache_dir() / ENCODERS_FOLDER


def _kind(value: str, source: str) -> str:
    """``url``, ``name`` or ``path``; an unknown name (no ``/``, no extension) raises ``UnknownNameError``."""
    if not value:
        raise InvalidHyperparameterError(source, "encoder_weights", value, EXPECTED)
    if "://" in value:
        return "url"
    if value in WEIGHTS_NAMES:
        return "name"
    if not any(mark in value for mark in ("/", "\\", ".")):
        error = UnknownNameError(f"encoder_weights name in {source}", value, WEIGHTS_NAMES)
        error.args = (f"{error}; a local path needs a '/' or a file extension (./{value}), a URL its scheme",)
        raise error
    return "path"


def url_file_name(url: str, source: str = "model config") -> str:
    """The cache file name of a weights URL: the last segment of its path, which must be a plain file name (no
    ``..``, no separators once unquoted, not hidden), so that the file stays inside the cache folder."""
    parts = urlsplit(url)
    if parts.scheme not in URL_SCHEMES or not parts.netloc:
        raise InvalidHyperparameterError(source, "encoder_weights", url, "an http:// or https:// URL of a file")
    name = unquote(parts.path.rsplit("/", 1)[-1])
    if not name or name.startswith(".") or set(name) & set("/\\\0:"):
        raise InvalidHyperparameterError(
            source, "encoder_weights", url, "a URL ending in a plain file name (it names the file in the cache)"
        )
    return name


def check_weights_spec(spec: object, encoders: Collection[str], source: str = "model config") -> None:
    """The form of an ``encoder_weights`` value, with no file or network access: a known name, a URL ending in a
    safe file name, a path, null, or a mapping of ``encoders`` names to those. Raises a named error otherwise."""
    if spec is None or isinstance(spec, os.PathLike):
        return
    if isinstance(spec, str):
        if _kind(spec, source) == "url":
            url_file_name(spec, source)
        return
    if not isinstance(spec, Mapping) or not spec:
        raise InvalidHyperparameterError(source, "encoder_weights", spec, EXPECTED)
    for encoder, value in spec.items():
        if encoder not in encoders:
            raise UnknownNameError(f"encoder in {source}: encoder_weights", encoder, encoders)
        if value is not None and not isinstance(value, str | os.PathLike):
            expected = "a weights name, URL or local path, or null"
            raise InvalidHyperparameterError(source, f"encoder_weights.{encoder}", value, expected)
        check_weights_spec(value, encoders, f"{source}: encoder_weights.{encoder}")


def entry_for(spec: object, encoder: str, source: str = "model config") -> str | os.PathLike | None:
    """What ``spec`` says for ``encoder``: itself, or its mapping's entry (an encoder it lacks raises)."""
    if not isinstance(spec, Mapping):
        return spec  # type: ignore[return-value]
    if encoder not in spec:
        expected = f"an entry for encoder {encoder!r} (null for none); it lists {', '.join(sorted(spec))}"
        raise InvalidHyperparameterError(source, "encoder_weights", dict(spec), expected)
    return spec[encoder]


def resolve_encoder_weights(
    spec: object, encoder: str, *, download: bool = True, progress: bool = False, source: str = "model config"
) -> str | None:
    """The local file ``spec`` (see the module docstring) gives ``encoder``, or None for no weights.

    A name or URL resolves to ``<cache>/encoders/<file name>``: a cached file is checked against the SHA-256 prefix
    its name carries (``WeightsChecksumError``, the file is not used); a missing one is downloaded, or with
    ``download=False`` (checks before training) None is returned while it can still be downloaded. A name whose
    encoder has no published file and no cached one raises ``WeightsUnavailableError`` naming the file to put there;
    a failed download raises ``WeightsDownloadError``. A local path is returned as it is.
    """
    entry = entry_for(spec, encoder, source)
    if entry is None:
        return None
    if isinstance(entry, os.PathLike) or _kind(entry, source) == "path":
        return os.fspath(entry)
    if _kind(entry, source) == "name":
        published = WEIGHTS_NAMES[entry].get(encoder)
        if published is None:
            raise UnknownNameError(f"encoder with {entry!r} weights", encoder, WEIGHTS_NAMES[entry])
        file_name, url, hint = published.file_name, published.url, published.hint
    else:
        file_name, url, hint = url_file_name(entry, source), entry, ""
    folder = encoders_cache()
    path = folder / file_name
    if os.path.dirname(os.path.normpath(path)) != os.path.normpath(folder):  # lexical: a symlink put there is fine
        raise InvalidHyperparameterError(source, "encoder_weights", entry, "a file name that stays in the cache")
    expected = expected_sha256_prefix(file_name)
    if path.is_file():
        _verify(path, expected, "a corrupted or wrong file in the cache, not used: delete it to download it again")
        return str(path)
    if url is None:
        raise WeightsUnavailableError(
            f"no {entry!r} weights are published for encoder {encoder!r} in our key layout; put {hint} at {path} "
            f"(expected file name {file_name} in the cache {cache_dir()}, set by {CACHE_VARIABLE}); it loads strictly",
            str(path),
        )
    if not download:
        return None
    _download(url, path, expected, progress)
    return str(path)


def expected_sha256_prefix(file_name: str) -> str | None:
    """The SHA-256 prefix a torchvision-style name carries (``resnet18-f37072fd.pth``: 8 or more hex digits between a
    ``-`` and a ``.``, as torch.hub's ``check_hash`` reads it), or None for a name without one (not checked)."""
    match = _HASH_IN_NAME.search(file_name)
    return match.group(1) if match else None


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _verify(path: Path, expected: str | None, detail: str, shown: Path | None = None) -> None:
    if expected is None:
        return
    found = _sha256(path)[: len(expected)]
    if found != expected:
        raise WeightsChecksumError(str(shown or path), expected, found, detail)


def _download(url: str, path: Path, expected: str | None, progress: bool) -> None:
    """``url`` into ``path``: a temporary file beside it, checked, then renamed; nothing is left on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsDownloadError(url, str(path), f"cannot create the cache folder: {error}") from error
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.download")
    try:
        print(f"nrd-bench: downloading {url} to {path}", file=sys.stderr, flush=True)
        try:
            download_url_to_file(url, str(temporary), hash_prefix=None, progress=progress)
        except (OSError, ValueError, http.client.HTTPException) as error:  # URLError, HTTPError, timeouts, ...
            reason = error.reason if isinstance(error, URLError) and not isinstance(error, HTTPError) else error
            raise WeightsDownloadError(url, str(path), reason) from error
        _verify(temporary, expected, f"downloaded from {url}; nothing was kept in the cache", shown=path)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
