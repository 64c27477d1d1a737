"""``nrd-bench train``: train any create_model model on prepared shards with Ray Train, tracked in MLflow."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from pipeline.commands.common import decoder_args, parse_key_value, parse_size
from pipeline.values import load_yaml, merge

if TYPE_CHECKING:
    from pipeline.config import TrainConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on prepared shards (Ray Train + Ray Data, tracked in MLflow)",
        description=(
            "Train with Ray Train on the shards written by `nrd-bench prepare`. Settings come from --config (YAML with "
            "sections model, data, schedule, scaling, run) and the flags below, which override it. Without --address "
            "a local Ray starts. Re-running the same command (same --storage-path and --name) resumes from the last "
            "checkpoint and logs into the same MLflow run."
        ),
    )
    parser.add_argument("--config", help="YAML file with sections model, data, schedule, scaling, run")
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    group = parser.add_argument_group("data")
    group.add_argument("--dataset-dir", help="output folder (or URI) of nrd-bench prepare")
    group.add_argument("--crop-size", type=parse_size, metavar="HxW", help="training crop (default: dataset preset)")
    group.add_argument("--val-limit", type=int, help="evaluate on the first N val samples only")
    group.add_argument(
        "--eval-msflip",
        action="store_true",
        default=None,
        help="after the last iteration, also evaluate with multi-scale + flip inference (mIoU_msflip)",
    )
    group = parser.add_argument_group("model")
    group.add_argument("--decoder", help="decoder name (default nrd)")
    group.add_argument("--encoder", help="encoder name (default resnet50_v1c)")
    group.add_argument("--num-classes", type=int, help="default: from the prepared data set")
    group.add_argument("--output-stride", type=int, choices=(8, 16, 32))
    group.add_argument(
        "--decoder-arg",
        dest="decoder_args",
        type=parse_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="decoder hyperparameter, repeatable: DECODER.ARG=VALUE as in spaces and MLflow params (e.g. "
        "--decoder-arg nrd.dyn_channels=32); a bare ARG=VALUE is read as the chosen decoder's",
    )
    group = parser.add_argument_group("schedule")
    group.add_argument("--iterations", type=int)
    group.add_argument("--batch-size", type=int, help="global batch size (split evenly over the workers)")
    group.add_argument("--lr", type=float)
    group.add_argument("--warmup-iterations", type=int)
    group.add_argument("--aux-weight", type=float)
    group.add_argument("--log-interval", type=int)
    group.add_argument("--eval-interval", type=int)
    group.add_argument("--checkpoint-interval", type=int)
    group.add_argument("--seed", type=int)
    group = parser.add_argument_group("scaling")
    group.add_argument("--workers", type=int, help="Ray Train workers (default 1)")
    group.add_argument("--gpus-per-worker", type=float, help="0 (default) trains on CPU with gloo")
    group.add_argument("--cpus-per-worker", type=float, help="CPUs reserved per worker (default 1)")
    group.add_argument(
        "--gpu-wait",
        type=float,
        metavar="SECONDS",
        help="on a cluster that lacks the GPUs, how long to let the autoscaler add them before refusing (default 600)",
    )
    group = parser.add_argument_group("run")
    group.add_argument(
        "--storage-path", help="folder for checkpoints and results (default ./results); on a cluster, a shared one"
    )
    group.add_argument("--name", help="run name (default: DATASET-DECODER-ENCODER); the same name resumes")
    group.add_argument("--max-failures", type=int, help="worker/node failures to recover from (-1: no limit)")
    group.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite)")
    group.add_argument("--experiment", help="MLflow experiment (default nrd-bench)")
    group.add_argument(
        "--tracking-timeout",
        type=float,
        metavar="SECONDS",
        help="at the end, how long to wait for an unreachable MLflow before failing with the buffer files to replay "
        "(default 300)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """--config, then the flags (``pipeline.config.ALIASES``: flag dest → setting), then --decoder-arg values."""
    from pipeline.config import ALIASES, TrainConfig, check_sections, nest  # imports torch: only when run

    source = args.config or "command line"
    config = load_yaml(args.config) if args.config else {}
    check_sections(config, source)
    flags = {key: getattr(args, dest, None) for dest, key in ALIASES.items()}
    flat = {
        key: list(value) if isinstance(value, tuple) else value for key, value in flags.items() if value is not None
    }
    decoder = flat.get("model.decoder") or (config.get("model") or {}).get("decoder") or TrainConfig().model.decoder
    flat |= {f"{decoder}.{argument}": value for argument, value in decoder_args(args.decoder_args, decoder).items()}
    return TrainConfig.from_dict(merge(config, nest(flat, decoder)), source=source)


def run(args: argparse.Namespace) -> int:
    from pipeline.resolve import resolve
    from pipeline.training.run import train

    config, manifest = resolve(config_from_args(args))
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2))
        return 0

    result = train(config, manifest, address=args.address)
    print(json.dumps({"run_id": result["run_id"], "directory": result["directory"], **result["metrics"]}, default=str))
    return 0
