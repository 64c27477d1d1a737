"""``nrd-bench predict``: label PNGs and colour overlays of a trained model on an image or a folder of images."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from nrd.constants import INFERENCE_MODES
from nrd.errors import InvalidHyperparameterError, UnknownNameError
from pipeline.commands.common import parse_size


def parse_scales(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers such as 0.5,1,1.5") from None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="label PNGs and colour overlays of a trained model on images",
        description=(
            "Predict every image of --input (a file, or a folder searched recursively for png/jpg/jpeg/bmp/tif/tiff/"
            "webp) with a trained model and write, under --out, labels/<relative path>.png (single-channel PNG of "
            "train ids, at the image's size) and overlays/<relative path>.png (the image blended with the class "
            "colours: the palette of the data set's manifest when data.dataset_dir is readable, else a fixed "
            "fallback palette; the output says which). Images are prepared as training's evaluation prepares the "
            "val split (ImageNet normalisation at the original size), so --mode whole reproduces its predictions "
            "and `nrd-bench evaluate --pred OUT/labels` its metrics. The model comes either from an MLflow run "
            "(--run-id: its config.yaml and weights/model.pt artifacts) or from a weights file (--weights) and the "
            "run's resolved config.yaml (--config)."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--weights",
        type=Path,
        metavar="FILE",
        help="state dict written by training: the MLflow artifact weights/model.pt, or a run directory's "
        "checkpoint_*/state.pt (its model entry)",
    )
    source.add_argument("--run-id", metavar="ID", help="MLflow run whose config.yaml and weights/model.pt to use")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="with --weights: the run's resolved config.yaml (default: the config.yaml beside the weights file or "
        "in its parent folder, as in a run directory or downloaded MLflow artifacts)",
    )
    parser.add_argument(
        "--tracking-uri", metavar="URI", help="with --run-id (default $MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    parser.add_argument("--input", type=Path, required=True, metavar="IMG_OR_DIR", help="an image or a folder")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for labels/ and overlays/")
    parser.add_argument(
        "--mode", default="whole", help=f"inference mode, one of {', '.join(INFERENCE_MODES)} (default whole)"
    )
    parser.add_argument(
        "--crop-size",
        type=parse_size,
        metavar="HxW",
        help="slide window (default: the run's training crop)",
    )
    parser.add_argument("--stride", type=parse_size, metavar="HxW", help="slide stride (default 2/3 of the crop)")
    parser.add_argument(
        "--scales", type=parse_scales, metavar="S,S,...", help="msflip scales (default 0.5,0.75,1,1.25,1.5,1.75)"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the class colour in overlays (default 0.5)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu (default) or cuda:0")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.results import predict

    if args.mode not in INFERENCE_MODES:
        raise UnknownNameError("inference mode", args.mode, INFERENCE_MODES)
    if args.run_id and args.config:
        raise InvalidHyperparameterError("nrd-bench predict", "--config", str(args.config), "no --config with --run-id")
    device = predict.resolve_device(args.device)
    images = predict.find_images(args.input, exclude=args.out)
    with tempfile.TemporaryDirectory() as downloads:
        if args.run_id:
            from pipeline.training.tracking import resolve_tracking_uri

            uri = resolve_tracking_uri(args.tracking_uri)
            config_path, weights = predict.download_run_files(uri, args.run_id, Path(downloads))
            origin = f"run {args.run_id} at {uri}"
        else:
            config_path, weights = args.config or predict.find_config(args.weights), args.weights
            origin = f"{weights} with {config_path}"
        trained = predict.load_trained_model(config_path, weights)
    options = predict.mode_options(trained, args.mode, args.crop_size, args.stride, args.scales)
    palette, palette_source = predict.class_palette(trained)
    names = predict.predict_files(trained, images, args.out, palette, args.mode, options, device, args.alpha)
    model = trained.config.model
    print(
        f"predicted {len(names)} image(s) of {args.input} with {model.decoder}/{model.encoder} "
        f"({trained.num_classes} classes) from {origin}; mode {args.mode}"
        + "".join(f", {key} {value}" for key, value in options.items())
        + f"; device {device}"
    )
    print(f"labels:   {args.out / predict.LABELS_DIR} (single-channel PNG, train ids 0..{trained.num_classes - 1})")
    print(f"overlays: {args.out / predict.OVERLAYS_DIR} (alpha {args.alpha})")
    print(f"palette:  {palette_source}")
    return 0
