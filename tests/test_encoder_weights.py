"""Encoder weights by name, URL or mapping (``nrd.weights``), against a real HTTP server on 127.0.0.1: downloads land
in the cache once, load into the encoder, are checked against the SHA-256 prefix of their name (downloaded and cached
files alike), fail with one clear error when the server is down, and never write outside the cache folder."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from nrd import ENCODERS, ModelConfig, create_encoder
from nrd.errors import (
    InvalidHyperparameterError,
    NRDBenchError,
    UnknownNameError,
    WeightsChecksumError,
    WeightsDownloadError,
    WeightsUnavailableError,
)
from nrd.weights import IMAGENET, PublishedWeights, cache_dir, expected_sha256_prefix, resolve_encoder_weights
from pipeline.config import TrainConfig
from pipeline.resolve import check_model
from pipeline.search.spaces import load_space


@dataclass
class Files:
    """What the test server serves (URL path → bytes) and every path it was asked for."""

    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        served: Files = self.server.served  # type: ignore[attr-defined]
        served.requests.append(self.path)
        body = served.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Files]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.served = Files(port=httpd.server_address[1])  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.served  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("NRD_BENCH_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def published() -> tuple[dict[str, torch.Tensor], bytes, str]:
    """A ResNet-18 state dict in our key layout with recognisable values, as saved bytes, and their SHA-256."""
    generator = torch.Generator().manual_seed(0)
    state = {
        key: torch.rand(value.shape, generator=generator) + 0.5 if value.is_floating_point() else value
        for key, value in create_encoder("resnet18").state_dict().items()
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    return state, data, hashlib.sha256(data).hexdigest()


def files_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def serve(server: Files, published, name: str | None = None) -> str:
    """Serve the state dict under torchvision's kind of name (its SHA-256 prefix in it); the URL."""
    _, data, digest = published
    name = name or f"resnet18-{digest[:8]}.pth"
    server.files[f"/{name}"] = data
    return server.url(name)


def test_download_lands_in_the_cache_once_and_loads(server, cache, published):
    state, _, digest = published
    url = serve(server, published)
    config = ModelConfig.from_dict({"decoder": "bilinear", "encoder": "resnet18", "num_classes": 2,
                                    "encoder_weights": {"resnet18": url, "resnet50": None}})  # fmt: skip
    model = config.build()
    cached = cache / "encoders" / f"resnet18-{digest[:8]}.pth"
    assert files_in(cache) == [cached]
    assert cached.read_bytes() == published[1]
    loaded = model.encoder.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert server.requests == [f"/resnet18-{digest[:8]}.pth"]

    again = create_encoder("resnet18", weights={"resnet18": url})  # resolved from the cache: no second download
    assert server.requests == [f"/resnet18-{digest[:8]}.pth"]
    assert torch.equal(again.state_dict()["layer4.1.bn2.weight"], state["layer4.1.bn2.weight"])
    assert config.to_dict()["encoder_weights"] == {"resnet18": url, "resnet50": None}


def test_the_imagenet_name_resolves_through_the_table(server, cache, published, monkeypatch):
    _, _, digest = published
    name = f"resnet18-{digest[:8]}.pth"
    monkeypatch.setitem(IMAGENET, "resnet18", PublishedWeights(name, serve(server, published, name)))
    config = TrainConfig.from_dict(
        {
            "data": {"dataset_dir": "unused"},
            "model": {"encoder": "resnet18", "encoder_weights": "imagenet", "num_classes": 2},
        }
    )
    check_model(config)  # the checks before training never download
    assert server.requests == [] and files_in(cache) == []
    encoder = create_encoder("resnet18", weights="imagenet")
    assert files_in(cache) == [cache / "encoders" / name] and len(server.requests) == 1
    assert torch.equal(encoder.state_dict()["conv1.weight"], published[0]["conv1.weight"])
    check_model(config)  # now cached: checked (SHA-256, keys) and loaded on the meta device, still no request
    assert len(server.requests) == 1


def test_a_wrong_checksum_is_refused_and_nothing_stays_in_the_cache(server, cache, published):
    _, _, digest = published
    wrong = "0123abcd" if not digest.startswith("0123abcd") else "89abcdef"
    url = serve(server, published, f"resnet18-{wrong}.pth")
    with pytest.raises(WeightsChecksumError) as caught:
        create_encoder("resnet18", weights=url)
    message = str(caught.value)
    assert str(cache / "encoders" / f"resnet18-{wrong}.pth") in message and url in message
    assert f"expected {wrong}" in message and f"starts with {digest[:8]}" in message
    assert files_in(cache) == []
    assert "\n" not in message and isinstance(caught.value, NRDBenchError)


def test_a_server_that_is_down_is_one_clear_error(cache):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/resnet18-f37072fd.pth"
    with pytest.raises(WeightsDownloadError) as caught:
        create_encoder("resnet18", weights={"resnet18": url})
    message = str(caught.value)
    assert url in message and str(cache / "encoders" / "resnet18-f37072fd.pth") in message
    assert "by hand" in message and "\n" not in message
    assert files_in(cache) == []


def test_a_corrupted_cached_file_is_detected_and_not_used(server, cache, published):
    _, data, digest = published
    url = serve(server, published)
    path = Path(resolve_encoder_weights(url, "resnet18"))
    corrupted = bytearray(data)
    corrupted[len(corrupted) // 2] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    found = hashlib.sha256(corrupted).hexdigest()[:8]
    for build in (lambda: create_encoder("resnet18", weights=url),
                  lambda: resolve_encoder_weights(url, "resnet18", download=False)):  # fmt: skip
        with pytest.raises(WeightsChecksumError) as caught:
            build()
        message = str(caught.value)
        assert str(path) in message and f"expected {digest[:8]}" in message and f"starts with {found}" in message
    assert len(server.requests) == 1  # no silent re-download over a file someone may have put there


@pytest.mark.parametrize("name", ["..%2Fx", "%2E%2E%2Fx.pth", "sub%2F..%2F..%2Fx.pth", ".hidden.pth", ""])
def test_url_file_names_never_escape_the_cache(server, cache, name):
    url = server.url(name)
    with pytest.raises(InvalidHyperparameterError, match="plain file name"):
        ModelConfig.from_dict({"encoder": "resnet18", "encoder_weights": {"resnet18": url}})
    with pytest.raises(InvalidHyperparameterError, match="plain file name"):
        resolve_encoder_weights(url, "resnet18")
    assert server.requests == [] and not (cache.parent / "x").exists() and files_in(cache) == []


def test_an_encoder_without_published_weights_says_which_file_to_put_where(cache):
    with pytest.raises(WeightsUnavailableError) as caught:
        resolve_encoder_weights("imagenet", "resnet50_v1c", download=False)
    message = str(caught.value)
    expected = cache / "encoders" / IMAGENET["resnet50_v1c"].file_name
    assert "resnet50_v1c" in message and str(expected) in message and str(cache) in message
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"put there by hand")  # no hash in its name: used as it is (the load checks its keys)
    assert resolve_encoder_weights("imagenet", "resnet50_v1c") == str(expected)


@pytest.mark.parametrize(
    ("weights", "error", "message"),
    [
        ("imagnet", UnknownNameError, "did you mean 'imagenet'"),
        ({"resnet19": "imagenet"}, UnknownNameError, "did you mean 'resnet18'"),
        ({"resnet18": 3}, InvalidHyperparameterError, "encoder_weights.resnet18"),
        ({}, InvalidHyperparameterError, "a weights name"),
        (7, InvalidHyperparameterError, "a weights name"),
        ("ftp://host/resnet18-f37072fd.pth", InvalidHyperparameterError, "http:// or https://"),
    ],
)
def test_config_forms_are_checked_without_any_download(weights, error, message):
    with pytest.raises(error, match=message):
        ModelConfig.from_dict({"encoder": "resnet18", "encoder_weights": weights})


def test_a_mapping_must_list_the_encoder_and_a_path_works_as_before(tmp_path, cache, published):
    config = ModelConfig.from_dict({"decoder": "bilinear", "encoder": "resnet34", "num_classes": 2,
                                    "encoder_weights": {"resnet18": "imagenet"}})  # fmt: skip
    with pytest.raises(InvalidHyperparameterError, match=r"an entry for encoder .resnet34.*lists resnet18"):
        config.build()
    path = tmp_path / "weights" / "resnet18.pth"
    path.parent.mkdir()
    path.write_bytes(published[1])
    for weights in (str(path), {"resnet18": str(path)}):
        model = ModelConfig(decoder="bilinear", encoder="resnet18", num_classes=2, encoder_weights=weights).build()
        assert torch.equal(model.encoder.state_dict()["bn1.bias"], published[0]["bn1.bias"])
    assert files_in(cache) == []


def test_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("NRD_BENCH_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "nrd-bench"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "nrd-bench"
    monkeypatch.setenv("NRD_BENCH_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_the_table_covers_every_encoder_with_torchvision_names():
    assert set(IMAGENET) == set(ENCODERS)
    for encoder, entry in IMAGENET.items():
        if entry.url is None:
            assert "v1c" in encoder and expected_sha256_prefix(entry.file_name) is None
        else:
            assert entry.url == f"https://download.pytorch.org/models/{entry.file_name}"
            assert entry.file_name.startswith(f"{encoder}-") and len(expected_sha256_prefix(entry.file_name)) == 8


def write_space(tmp_path: Path, fixed: str, space: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(f"search: {{iterations: 10}}\nfixed: {{{fixed}}}\nspace: {{{space}}}\n")
    return path


def test_spaces_check_every_encoders_weights_early(tmp_path, cache):
    ok = load_space(write_space(tmp_path, "model.encoder_weights: imagenet", "encoder: {grid: [resnet18, resnet50]}"))
    assert ok.trial_overrides({})["model"]["encoder"] == "resnet18"  # the base is checked with a trial's encoder
    assert ok.trial_overrides({"model.encoder": "resnet50"})["model"]["encoder"] == "resnet50"
    with pytest.raises(WeightsUnavailableError, match="resnet50_v1c"):
        load_space(
            write_space(tmp_path, "model.encoder_weights: imagenet", "encoder: {grid: [resnet18, resnet50_v1c]}")
        )
    by_encoder = "model.encoder_weights.resnet18: imagenet, model.encoder_weights.resnet50: null"
    load_space(write_space(tmp_path, by_encoder, "encoder: {grid: [resnet18, resnet50]}"))
    with pytest.raises(InvalidHyperparameterError, match="entry for encoder 'resnet34'"):
        load_space(write_space(tmp_path, by_encoder, "encoder: {grid: [resnet18, resnet34]}"))
    with pytest.raises(UnknownNameError, match="did you mean 'imagenet'"):
        load_space(write_space(tmp_path, "model.encoder_weights: imagent", "lr: {choice: [0.1, 0.01]}"))
    with pytest.raises(NRDBenchError, match="put it under fixed"):
        load_space(write_space(tmp_path, "", "model.encoder_weights: {resnet18: imagenet}, lr: {choice: [0.1]}"))
    assert files_in(cache) == []
