"""Decoder cost benchmark: params, GMACs per level and decoder-level latency of every decoder on ResNet-50-V1c.

Settings (input, classes): Cityscapes 1024x2048 (K=19) and its 512x1024 training crop, ADE20K 512x512 (K=150),
PASCAL Context 480x480 (K=60).
Variants: every decoder at its default output stride (32; dilated DeepLabV3 at 8) plus DeepLabV3+ on a dilated OS8
encoder. Writes ``decoder_cost.csv`` (one row per setting x variant) and ``decoder_cost.json`` (resolved config,
ratios, the dynamic-MLP comparison) to ``--out-dir`` and prints both as tables. Ratios are measured side by side in
this one run:

- NRD / DeepLabV3+ at the ``decoder`` level (MACs and wall time; paper: ~0.27-0.30),
- NRD (OS32) / DeepLabV3+ (OS8) and NRD / DeepLabV3 (OS8) at the ``model`` level (paper: ~0.15),
- our batched dynamic MLP vs the released formulation (nearest-upsample every parameter map to the MLP's resolution,
  multiply, grouped sum), time and peak memory, at 512x1024.

Decoder latency runs the decoder alone on random features of the encoder's shapes (values do not change the work).
Run: ``python benchmarks/decoder_cost.py [--device cuda] [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from nrd import create_model
from nrd.cost import COUNTER, LEVELS, count_macs, count_params, time_call
from nrd.decoders.nrd import dynamic_mlp, mlp_layer_shapes, num_dynamic_params

ENCODER = "resnet50_v1c"
SETTINGS = (
    ("cityscapes", (1024, 2048), 19),
    ("cityscapes_crop", (512, 1024), 19),  # the training crop, where the speed targets are set
    ("ade20k", (512, 512), 150),
    ("pascal_context", (480, 480), 60),
)
VARIANTS = (
    ("nrd", None),
    ("deeplabv3plus", None),
    ("bilinear", None),
    ("dupsampling", None),
    ("deeplabv3", None),
    ("deeplabv3plus", 8),
)


def decoder_inputs(model, input_shape, device):
    """Random encoder features and context of the shapes the model produces for ``input_shape`` (a multiple of 32)."""
    batch, _, height, width = input_shape
    encoder = model.encoder
    features = [
        torch.randn(batch, channels, height // stride, width // stride, device=device)
        for channels, stride in zip(encoder.out_channels, encoder.out_strides, strict=True)
    ]
    context = torch.randn(batch, model.decoder.context.out_channels, *features[-1].shape[-2:], device=device)
    return features, context


def decoder_latency(model, input_shape, device, warmup, repeats):
    model = model.to(device).eval()
    features, context = decoder_inputs(model, input_shape, device)
    with torch.inference_mode():
        return time_call(lambda: model.decoder.decode(features, context, input_shape[-2:]), device, warmup, repeats)


def released_dynamic_mlp(inputs, params, layer_shapes):
    """The released formulation, kept here as the reference: every parameter map is nearest-upsampled to the MLP's
    resolution, the input is repeated once per output channel, multiplied elementwise and summed per group."""
    factor = inputs.shape[-1] // params.shape[-1]
    weights = F.interpolate(params, scale_factor=factor, mode="nearest")
    hidden, offset = inputs, 0
    for index, (out, inp) in enumerate(layer_shapes):
        weight = weights[:, offset : offset + out * inp]
        offset += out * inp
        bias = weights[:, offset : offset + out]
        offset += out
        products = hidden.repeat(1, out, 1, 1) * weight
        ones = torch.ones(out, inp, 1, 1, device=inputs.device, dtype=inputs.dtype)
        hidden = F.conv2d(products, ones, groups=out) + bias
        if index < len(layer_shapes) - 1:
            hidden = torch.relu(hidden)
    return hidden


def peak_memory_bytes(fn, device) -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before. CUDA: the allocator's peak;
    CPU: the running sum of the profiler's allocation/free records (kineto), in time order."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak


def dynamic_mlp_comparison(device, warmup, repeats, size=(512, 1024), num_classes=19):
    """Ours vs the released formulation on NRD's default MLP (D=G=16, 3 layers, factor 8) at one input size."""
    torch.manual_seed(0)
    shapes = mlp_layer_shapes(18, 16, num_classes, 3)
    coarse = (size[0] // 32, size[1] // 32)
    params = 0.1 * torch.randn(1, num_dynamic_params(shapes), *coarse, device=device)
    inputs = torch.randn(1, 18, coarse[0] * 8, coarse[1] * 8, device=device)
    ours = lambda: dynamic_mlp(inputs, params, shapes)
    released = lambda: released_dynamic_mlp(inputs, params, shapes)
    with torch.inference_mode():
        max_difference = (ours() - released()).abs().max().item()
        result = {"input": [1, 3, *size], "num_classes": num_classes, "max_abs_difference": max_difference}
        for name, fn in (("ours", ours), ("released", released)):
            result[f"{name}_ms"] = time_call(fn, device, warmup, repeats)
            result[f"{name}_peak_mib"] = peak_memory_bytes(fn, device) / 2**20
    result["time_ratio"] = result["ours_ms"]["p50"] / result["released_ms"]["p50"]
    result["memory_ratio"] = result["ours_peak_mib"] / result["released_peak_mib"]
    return result


def run(args) -> dict:
    device = torch.device(args.device)
    rows = []
    for setting, size, num_classes in SETTINGS:
        shape = (1, 3, *size)
        for decoder, output_stride in VARIANTS:
            torch.manual_seed(0)
            model = create_model(decoder, ENCODER, num_classes, output_stride=output_stride, aux_head=False)
            row = {
                "setting": setting,
                "input": "x".join(map(str, shape)),
                "num_classes": num_classes,
                "variant": f"{decoder}-os{model.encoder.output_stride}",
                "decoder": decoder,
                "encoder": ENCODER,
                "output_stride": model.encoder.output_stride,
            }
            row |= {f"params_m_{k}": round(v, 4) for k, v in count_params(model).items()}
            row |= {f"gmacs_{k}": round(v, 3) for k, v in count_macs(model, shape).items()}
            started = time.perf_counter()
            latency = decoder_latency(model, shape, device, args.warmup, args.repeats)
            row |= {"decoder_p50_ms": round(latency["p50"], 2), "decoder_p90_ms": round(latency["p90"], 2)}
            row["latency_device"] = str(device)
            rows.append(row)
            print(
                f"{setting:<17}{row['variant']:<19}{row['gmacs_decoder']:>9.2f} GMACs decoder "
                f"{row['gmacs_model']:>9.1f} GMACs model {row['decoder_p50_ms']:>9.1f} ms p50 "
                f"({time.perf_counter() - started:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
            del model

    def pick(setting, variant):
        return next(r for r in rows if r["setting"] == setting and r["variant"] == variant)

    ratios = {}
    for setting, _, _ in SETTINGS:
        nrd, dlv3p = pick(setting, "nrd-os32"), pick(setting, "deeplabv3plus-os32")
        ratios[setting] = {
            "decoder_macs_nrd_vs_deeplabv3plus": nrd["gmacs_decoder"] / dlv3p["gmacs_decoder"],
            "decoder_time_nrd_vs_deeplabv3plus": nrd["decoder_p50_ms"] / dlv3p["decoder_p50_ms"],
            "model_macs_nrd_os32_vs_deeplabv3plus_os8": nrd["gmacs_model"]
            / pick(setting, "deeplabv3plus-os8")["gmacs_model"],
            "model_macs_nrd_os32_vs_deeplabv3_os8": nrd["gmacs_model"] / pick(setting, "deeplabv3-os8")["gmacs_model"],
        }
    mlp = dynamic_mlp_comparison(device, args.warmup, args.repeats)
    return {"rows": rows, "ratios": ratios, "dynamic_mlp": mlp}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per measurement (default 1)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", default="", help="suffix of the output file names (e.g. _h200)")
    args = parser.parse_args(argv)

    result = run(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"decoder_cost{args.tag}"
    fields = list(result["rows"][0])
    with open(f"{stem}.csv.tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(result["rows"])
    os.replace(f"{stem}.csv.tmp", f"{stem}.csv")
    config = {
        "encoder": ENCODER,
        "settings": [{"name": n, "input": [1, 3, *s], "num_classes": k} for n, s, k in SETTINGS],
        "variants": [{"decoder": d, "output_stride": o or "decoder default"} for d, o in VARIANTS],
        "device": args.device,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else None,
        "convention": "MACs (FLOPs = 2 x MACs)",
        "counter": COUNTER,
        "latency": "decoder level alone on random features, p50/p90 ms",
    }
    summary = {"config": config, "ratios": result["ratios"], "dynamic_mlp": result["dynamic_mlp"]}
    with open(f"{stem}.json.tmp", "w") as handle:
        json.dump(summary, handle, indent=2)
    os.replace(f"{stem}.json.tmp", f"{stem}.json")

    print(f"\nResNet-50-V1c, MACs counted by {COUNTER}\n")
    header = f"{'setting':<17}{'variant':<19}" + "".join(f"{'GMACs ' + k:>15}" for k in LEVELS)
    print(header + f"{'dec p50 ms':>12}{'dec p90 ms':>12}")
    for row in result["rows"]:
        cells = "".join(f"{row['gmacs_' + k]:>15.2f}" for k in LEVELS)
        print(
            f"{row['setting']:<17}{row['variant']:<19}{cells}{row['decoder_p50_ms']:>12.1f}{row['decoder_p90_ms']:>12.1f}"
        )
    print("\nRatios (measured side by side in this run):")
    for setting, values in result["ratios"].items():
        print(f"  {setting}: " + ", ".join(f"{k} = {v:.3f}" for k, v in values.items()))
    mlp = result["dynamic_mlp"]
    print(
        f"\nDynamic MLP at {'x'.join(map(str, mlp['input']))} (K={mlp['num_classes']}, {args.device}): "
        f"ours {mlp['ours_ms']['p50']:.1f} ms / {mlp['ours_peak_mib']:.1f} MiB peak, released formulation "
        f"{mlp['released_ms']['p50']:.1f} ms / {mlp['released_peak_mib']:.1f} MiB peak -> time ratio "
        f"{mlp['time_ratio']:.3f}, memory ratio {mlp['memory_ratio']:.3f} "
        f"(max |difference| {mlp['max_abs_difference']:.2e})"
    )
    print(f"\nwrote {stem}.csv and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
