"""``nrd-bench cost``: params, MACs/FLOPs per level and optional latency of one model at one input size."""

from __future__ import annotations

import argparse
import json

from nrd.constants import DECODER_NAMES, ENCODER_NAMES
from nrd.errors import InvalidHyperparameterError
from pipeline.commands.common import decoder_args, parse_key_value, parse_size


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model-defining flags shared by the commands that build a model."""
    parser.add_argument("--decoder", default="nrd", help=f"one of: {', '.join(DECODER_NAMES)} (default: nrd)")
    parser.add_argument(
        "--encoder", default="resnet50_v1c", help=f"one of: {', '.join(ENCODER_NAMES)} (default: resnet50_v1c)"
    )
    parser.add_argument("--num-classes", type=int, default=19, help="number of classes K (default: 19)")
    parser.add_argument(
        "--output-stride",
        type=int,
        choices=(8, 16, 32),
        default=None,
        help="encoder output stride (default: the decoder's own, 32; 8 for deeplabv3)",
    )
    parser.add_argument(
        "--decoder-arg",
        dest="decoder_args",
        type=parse_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="decoder hyperparameter, repeatable: DECODER.ARG=VALUE as in spaces and MLflow params (e.g. --decoder-arg "
        "nrd.dyn_channels=32 --decoder-arg nrd.patch_factor=16); a bare ARG=VALUE is read as the chosen decoder's",
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cost",
        help="params, GMACs/GFLOPs per level (and latency) of a model",
        description=(
            "Count parameters and multiply-accumulates per level (encoder, context, decoder, head, model) with "
            "torch.utils.flop_counter at one input size; FLOPs = 2 x MACs. The auxiliary head is not counted."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("--input", type=parse_size, default=(1024, 2048), metavar="HxW", help="default 1024x2048")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size of the counted input (default 1)")
    parser.add_argument("--latency", action="store_true", help="also time every level (random input)")
    parser.add_argument("--device", default="cpu", help="device for --latency (default cpu)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per level for --latency (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per level for --latency (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(handler=run)


def check_device(name: str) -> None:
    """``name`` is ``cpu``, or ``cuda``/``cuda:N`` with that GPU present on this machine."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise InvalidHyperparameterError("nrd-bench cost", "--device", name, "cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise InvalidHyperparameterError(
                "nrd-bench cost", "--device", name, f"a GPU of this machine, which has {count} CUDA device(s)"
            )


def run(args: argparse.Namespace) -> int:
    from nrd import create_model  # importing torch takes seconds: only when run, not for --help
    from nrd.cost import LEVELS, measure_cost, measure_latency

    if args.batch_size < 1:
        raise InvalidHyperparameterError("nrd-bench cost", "--batch-size", args.batch_size, "a positive integer")
    if args.repeats < 1:
        raise InvalidHyperparameterError("nrd-bench cost", "--repeats", args.repeats, "a positive integer")
    if args.warmup < 0:
        raise InvalidHyperparameterError("nrd-bench cost", "--warmup", args.warmup, "an integer >= 0")
    check_device(args.device)
    model = create_model(
        args.decoder,
        args.encoder,
        args.num_classes,
        output_stride=args.output_stride,
        aux_head=False,
        **decoder_args(args.decoder_args, args.decoder),
    )
    shape = (args.batch_size, 3, *args.input)
    report = measure_cost(model, shape)
    result = report.to_dict()
    if args.latency:
        result["latency_ms"] = measure_latency(model, shape, LEVELS, args.device, args.warmup, args.repeats)
        result["latency_device"] = args.device
        result["latency_warmup"] = args.warmup
    result["model"] = {
        "decoder": args.decoder,
        "encoder": args.encoder,
        "num_classes": args.num_classes,
        "output_stride": model.encoder.output_stride,
        "decoder_kwargs": decoder_args(args.decoder_args, args.decoder),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def format_table(result: dict) -> str:
    from nrd.cost import LEVELS

    model = result["model"]
    shape = "x".join(map(str, result["input"]))
    if result["padded_input"] != result["input"]:
        shape += f" (padded to a multiple of 32: runs and is counted at {'x'.join(map(str, result['padded_input']))})"
    lines = [
        f"{model['decoder']} decoder on {model['encoder']} (output stride {model['output_stride']}), "
        f"K={model['num_classes']}, input {shape}",
        f"counter: {result['counter']}",
    ]
    latency = result.get("latency_ms", {})
    header = f"{'level':<9}{'params (M)':>12}{'GMACs':>12}{'GFLOPs':>12}"
    if latency:
        header += f"{'p50 (ms)':>12}{'p50 95% CI':>18}{'p90 (ms)':>12}"
    lines += [header, "-" * len(header)]
    for level in LEVELS:
        row = f"{level:<9}{result['params_m'][level]:>12.3f}"
        row += f"{result['gmacs'][level]:>12.2f}{result['gflops'][level]:>12.2f}"
        if latency:
            timed = latency[level]
            interval = "-" if timed["p50_low"] is None else f"[{timed['p50_low']:.1f}, {timed['p50_high']:.1f}]"
            row += f"{timed['p50']:>12.1f}{interval:>18}{timed['p90']:>12.1f}"
        lines.append(row)
    if latency:
        lines.append(
            f"latency on {result['latency_device']}, {latency['model']['repeats']} timed runs per level after "
            f"{result['latency_warmup']} untimed; p50 interval: 95% percentile bootstrap over the timed runs (this "
            "machine's timing noise, not machine-to-machine variation)"
        )
    return "\n".join(lines)
