"""Label maps and colour overlays of a trained model on new images (``nrd-bench predict``).

A model is a resolved ``config.yaml`` (written beside every training run and logged to its MLflow run) plus a state
dict (the run's MLflow artifact ``weights/model.pt``, or a checkpoint's ``state.pt`` in the run directory, whose
``model`` entry is read). Images are prepared exactly as training's evaluation prepares the val split
(``ValTransform`` of ``pipeline.training.ingest.decode_val``: ImageNet normalisation at the original size, or
resized to fit the run's ``data.test_scale`` when it has one, zero padding to a multiple of 32) and predicted with
one of ``nrd.inference.MODES`` through ``nrd.inference.predict_to_label`` (scores cropped back to the image) under bf16
autocast on CUDA (as training evaluates there) and fp32 elsewhere, so ``whole`` reproduces training's evaluation pixel
for pixel.

Written under the output folder, for an input file ``a/b.jpg`` (its path relative to the input folder):

    labels/a/b.png     single-channel 8-bit PNG of train ids (the argmax over classes), at the image's size
    overlays/a/b.png   the image blended with the class colours: (1 - alpha) * image + alpha * colour, rounded
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from nrd import SegmentationModel, load_encoder_weights
from nrd.data import read_manifest
from nrd.data.base import CorruptImageError, DataError, decode_image, encode_png
from nrd.data.transforms import TRAIN_PRESETS, ValTransform, ValTransformConfig
from nrd.errors import InvalidHyperparameterError, WeightsMismatchError
from nrd.inference import predict_to_label
from pipeline.config import FROM_DATA, ConfigError, TrainConfig
from pipeline.files import write_atomic
from pipeline.names import CHECKPOINT_WEIGHTS, CONFIG_FILE, WEIGHTS_ARTIFACT_DIR
from pipeline.training.pictures import colourise
from pipeline.values import load_yaml

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LABELS_DIR = "labels"
OVERLAYS_DIR = "overlays"
# where training logs the config and the final weights in its MLflow run (pipeline.training.run and .evaluation)
CONFIG_ARTIFACT = CONFIG_FILE
WEIGHTS_FOLDER = WEIGHTS_ARTIFACT_DIR
WEIGHTS_ARTIFACT = f"{WEIGHTS_FOLDER}/{CHECKPOINT_WEIGHTS}"
GOLDEN_RATIO_CONJUGATE = 0.618033988749895


class NoImagesError(DataError):
    """An input path that does not exist or holds no image file."""


@dataclass
class TrainedModel:
    """A model rebuilt from a run's config with its weights loaded (eval mode, on the CPU). ``manifest`` is the
    prepared data set's manifest when ``config.data.dataset_dir`` could be read, else None, with the reason in
    ``manifest_problem``."""

    model: SegmentationModel
    config: TrainConfig
    manifest: dict | None
    manifest_problem: str = ""

    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes


def find_config(weights: Path) -> Path:
    """The ``config.yaml`` beside ``weights`` or in its parent folder (a run directory's ``checkpoint_*/state.pt``,
    downloaded MLflow artifacts ``weights/model.pt``); ``ConfigError`` naming both places when neither has one."""
    places = [weights.parent / CONFIG_FILE, weights.parent.parent / CONFIG_FILE]
    for place in places:
        if place.is_file():
            return place
    raise ConfigError(
        f"no {CONFIG_FILE} beside the weights {weights} (looked in {places[0].parent} and {places[1].parent}); pass "
        f"--config with the config.yaml of the run that wrote them"
    )


def load_trained_model(config_path: Path, weights: Path) -> TrainedModel:
    """Build the model described by the resolved training config at ``config_path`` and load the state dict
    ``weights`` into it (``torch.load(weights_only=True)``; any missing, unexpected or differently shaped tensor
    raises ``WeightsMismatchError`` naming both files). The encoder's pretrained weights named in the config are not
    read: every tensor comes from ``weights``. ``model.num_classes`` left to the data set is taken from the
    manifest of ``data.dataset_dir``."""
    config = TrainConfig.from_dict(load_yaml(config_path), source=str(config_path))
    manifest, problem = _read_manifest(config.data.dataset_dir)
    model_config = replace(config.model, encoder_weights=None)
    if model_config.num_classes == FROM_DATA:
        if manifest is None:
            raise ConfigError(f"{config_path}: model.num_classes is not set and the data set cannot tell it: {problem}")
        model_config = replace(model_config, num_classes=manifest["num_classes"])
    config = replace(config, model=model_config)
    if not weights.is_file():
        raise DataError(
            weights,
            "weights file not found; expected a state dict written by nrd-bench train (weights/model.pt, or a "
            "checkpoint's state.pt)",
        )
    model = model_config.build()
    try:
        load_encoder_weights(model, weights)
    except WeightsMismatchError as error:
        raise WeightsMismatchError(
            f"the model of {config_path} ({model_config.decoder} decoder, {model_config.encoder} encoder, "
            f"{model_config.num_classes} classes) cannot take these weights: {error}"
        ) from error
    return TrainedModel(model.eval(), config, manifest, problem)


def _read_manifest(dataset_dir: str) -> tuple[dict | None, str]:
    try:
        return read_manifest(dataset_dir), ""
    except DataError as error:
        return None, str(error)


def class_palette(trained: TrainedModel) -> tuple[list[list[int]], str]:
    """One RGB colour per class and where it comes from: the data set's manifest when it was readable and has one
    colour per class, else ``fallback_palette``."""
    manifest, count = trained.manifest, trained.num_classes
    if manifest is None:
        return fallback_palette(count), f"fallback (no dataset manifest: {trained.manifest_problem})"
    if len(manifest["palette"]) != count:
        return fallback_palette(count), (
            f"fallback (the manifest of {trained.config.data.dataset_dir} has {len(manifest['palette'])} colours "
            f"for {count} classes)"
        )
    return [list(colour) for colour in manifest["palette"]], f"dataset manifest of {trained.config.data.dataset_dir}"


def fallback_palette(num_classes: int) -> list[list[int]]:
    """``num_classes`` distinct, deterministic colours: hues stepped by the golden ratio around the colour wheel
    (neighbouring class ids get far-apart hues), saturation and value alternating between two levels."""
    palette = []
    for index in range(num_classes):
        hue = (index * GOLDEN_RATIO_CONJUGATE) % 1.0
        saturation, value = (0.75, 0.95) if index % 2 == 0 else (0.95, 0.7)
        palette.append([round(255 * channel) for channel in colorsys.hsv_to_rgb(hue, saturation, value)])
    return palette


def find_images(source: Path, exclude: Path | None = None) -> list[tuple[Path, str]]:
    """``(image path, output name)`` pairs, sorted: ``source`` itself when it is a file, else every file with an
    image suffix under it (recursively, skipping anything under ``exclude``, e.g. the output folder). The output
    name is the path relative to ``source`` (the file name for a file) with the suffix replaced by ``.png``."""
    if source.is_file():
        return [(source, source.with_suffix(".png").name)]
    if not source.is_dir():
        raise NoImagesError(source, "no such file or folder; expected an image or a folder of images")
    excluded = exclude.resolve() if exclude is not None else None
    found: dict[str, Path] = {}
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if excluded is not None and path.resolve().is_relative_to(excluded):
            continue
        name = path.relative_to(source).with_suffix(".png").as_posix()
        if name in found:
            raise NoImagesError(path, f"would write the same output {name} as {found[name]}; rename one of them")
        found[name] = path
    if not found:
        raise NoImagesError(source, f"holds no image file (searched recursively for {', '.join(IMAGE_SUFFIXES)})")
    return [(path, name) for name, path in found.items()]


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, checked: a malformed name or a CUDA device on a machine without CUDA is a named
    error."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        expected = "a torch device: cpu, cuda, cuda:1, ..."
        raise InvalidHyperparameterError("nrd-bench predict", "--device", name, expected) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidHyperparameterError("nrd-bench predict", "--device", name, "cpu: CUDA is not available here")
    return device


def mode_options(
    trained: TrainedModel,
    mode: str,
    crop_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    scales: Sequence[float] | None = None,
) -> dict:
    """The keyword options of inference ``mode`` from what was given: ``slide`` windows default to the run's
    training crop (``data.crop_size``, else the data set's preset); options a mode does not take are refused by
    ``nrd.inference.predict``."""
    options: dict = {}
    if mode == "slide" and crop_size is None:
        crop_size = trained.config.data.crop_size
        if crop_size is None and trained.manifest is not None:
            crop_size = TRAIN_PRESETS.get(trained.manifest["dataset"], TRAIN_PRESETS["synthetic"]).crop_size
        if crop_size is None:
            raise InvalidHyperparameterError(
                "nrd-bench predict", "--crop-size", None, "HxW for --mode slide: the run's training crop is unknown"
            )
    for key, value in (("crop_size", crop_size), ("stride", stride), ("scales", scales)):
        if value is not None:
            options[key] = tuple(value)
    return options


def predict_label(
    model: torch.nn.Module,
    image: np.ndarray,
    mode: str = "whole",
    options: Mapping | None = None,
    test_scale: Sequence[int] | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (H, W) uint8 train ids: ``ValTransform`` as in training's evaluation (resized to fit
    the run's ``data.test_scale`` when it has one), inference ``mode`` with its ``options`` on the model's device,
    scores restored to (H, W), argmax over the classes."""
    device = next(model.parameters()).device
    transform = ValTransform(ValTransformConfig(test_scale=tuple(test_scale) if test_scale else None))
    size = image.shape[:2]
    tensor, _ = transform(image, np.zeros(size, dtype=np.uint8))  # the label is a placeholder
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        scores = predict_to_label(
            model, tensor[None].to(device), transform.valid_size(*size), size, mode, **dict(options or {})
        )
    return scores.argmax(1)[0].to(torch.uint8).cpu().numpy()


def overlay(image: np.ndarray, label: np.ndarray, palette: Sequence[Sequence[int]], alpha: float) -> np.ndarray:
    """(H, W, 3) uint8: ``image`` blended with the colour of each pixel's class, ``(1 - alpha) * image + alpha *
    colour`` rounded to the nearest integer."""
    colours = colourise(label, [list(colour) for colour in palette], ignore_index=255).astype(np.float64)
    return np.rint((1 - alpha) * image.astype(np.float64) + alpha * colours).astype(np.uint8)


def predict_files(
    trained: TrainedModel,
    images: Sequence[tuple[Path, str]],
    out: Path,
    palette: Sequence[Sequence[int]],
    mode: str = "whole",
    options: Mapping | None = None,
    device: torch.device | str = "cpu",
    alpha: float = 0.5,
) -> list[str]:
    """Predict every ``(path, name)`` of ``images`` and write ``out/labels/<name>`` and ``out/overlays/<name>``
    (atomically, folders created as needed); returns the names written."""
    if not 0 <= alpha <= 1:
        raise InvalidHyperparameterError("nrd-bench predict", "--alpha", alpha, "a number in [0, 1]")
    for path, _ in images:  # every input checked before anything is written
        check_image(path)
    model = trained.model.to(device)
    for done, (path, name) in enumerate(images):
        try:
            image = decode_image(path.read_bytes(), path)
        except (DataError, OSError) as error:  # what the header check could not see (e.g. truncated pixel data)
            raise CorruptImageError(
                path, f"{error}; the {done} image(s) before it were written under {out}, none after"
            ) from None
        label = predict_label(model, image, mode, options, trained.config.data.test_scale)
        write_atomic(out / LABELS_DIR / name, encode_png(label))
        write_atomic(out / OVERLAYS_DIR / name, encode_png(overlay(image, label, palette, alpha)))
    return [name for _, name in images]


def check_image(path: Path) -> None:
    """``path`` is an image file PIL can read (its header and structure, without decoding the pixels)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # PIL raises many types for bad files
        raise CorruptImageError(path, f"cannot read image ({error}); nothing was written") from None


class MissingArtifactError(DataError):
    """An MLflow run without the artifact that is needed (e.g. no weights: the run did not finish)."""


def download_run_files(tracking_uri: str, run_id: str, directory: Path) -> tuple[Path, Path]:
    """Download the ``config.yaml`` and ``weights/model.pt`` artifacts of MLflow run ``run_id`` into ``directory``
    and return their local paths. An unknown run, or a run lacking either file, is a named error."""
    from mlflow import MlflowClient

    from pipeline.training.tracking import mlflow_call

    with mlflow_call(tracking_uri):
        client = MlflowClient(tracking_uri)
        client.get_run(run_id)  # an unknown id fails here, naming it
        present = [item.path for item in client.list_artifacts(run_id)]
        present += [item.path for item in client.list_artifacts(run_id, WEIGHTS_FOLDER)]
        for needed in (CONFIG_ARTIFACT, WEIGHTS_ARTIFACT):
            if needed not in present:
                raise MissingArtifactError(
                    f"run {run_id} at {tracking_uri}",
                    f"has no artifact {needed} (it has: {', '.join(sorted(present)) or 'none'}); training logs the "
                    "config when it starts and the weights when it finishes",
                )
        config = client.download_artifacts(run_id, CONFIG_ARTIFACT, str(directory))
        weights = client.download_artifacts(run_id, WEIGHTS_ARTIFACT, str(directory))
    return Path(config), Path(weights)
