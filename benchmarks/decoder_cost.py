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

Each CSV row also holds its own ratios against the same setting's DeepLabV3+ rows (``decoder_macs_vs_deeplabv3plus``,
``decoder_time_vs_deeplabv3plus``, ``model_macs_vs_deeplabv3plus_os8``); the JSON records the git commit and whether
the working tree was dirty.

Decoder latency runs the decoder alone on random features of the encoder's shapes (values do not change the work).
The dynamic-MLP comparison refuses to time formulations that disagree (max |difference| > 1e-4) and refuses peak
memory figures that cannot be right (zero, or a released-formulation peak below the size of its up-sampled parameter
maps), so a broken measurement never shows as a win.
Run: ``python benchmarks/decoder_cost.py [--device cuda] [--repeats 20]``; the defaults (2 warm-up + 20 timed runs
per measurement) take about 6 minutes on 2 CPU cores, most of it in the DeepLabV3+ decoders at 1024x2048.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
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
# The dynamic MLP must match the released formulation to this before it is timed (float32, values ~1).
MLP_TOLERANCE = 1e-4
VARIANTS = (
    ("nrd", None),
    ("deeplabv3plus", None),
    ("bilinear", None),
    ("dupsampling", None),
    ("deeplabv3", None),
    ("deeplabv3plus", 8),
)


class MeasurementError(RuntimeError):
    """A measurement that failed its sanity check: reporting it would be misleading."""


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
    """Ours vs the released formulation on NRD's default MLP (D=G=16, 3 layers, factor 8) at one input size.

    Raises ``MeasurementError`` before timing if the two outputs differ by more than ``MLP_TOLERANCE``, and after
    measuring memory if either peak is not positive or the released formulation's peak is below the bytes of its
    nearest-upsampled parameter maps (P × H/4 × W/4 values, which it must hold at once)."""
    torch.manual_seed(0)
    shapes = mlp_layer_shapes(18, 16, num_classes, 3)
    num_params = num_dynamic_params(shapes)
    coarse = (size[0] // 32, size[1] // 32)
    params = 0.1 * torch.randn(1, num_params, *coarse, device=device)
    inputs = torch.randn(1, 18, coarse[0] * 8, coarse[1] * 8, device=device)
    formulations = {
        "ours": lambda: dynamic_mlp(inputs, params, shapes),
        "released": lambda: released_dynamic_mlp(inputs, params, shapes),
    }
    result = {"input": [1, 3, *size], "num_classes": num_classes}
    with torch.inference_mode():
        max_difference = (formulations["ours"]() - formulations["released"]()).abs().max().item()
        result["max_abs_difference"] = max_difference
        if not max_difference <= MLP_TOLERANCE:  # also catches NaN
            raise MeasurementError(
                f"our dynamic MLP and the released formulation differ by {max_difference:.3e} "
                f"(> {MLP_TOLERANCE}): one of them is wrong, timing them would compare different functions"
            )
        peaks = {}
        for name, fn in formulations.items():
            result[f"{name}_ms"] = time_call(fn, device, warmup, repeats)
            peaks[name] = peak_memory_bytes(fn, device)
    upsampled_bytes = num_params * inputs.shape[-2] * inputs.shape[-1] * params.element_size()
    if min(peaks.values()) <= 0 or peaks["released"] < upsampled_bytes:
        raise MeasurementError(
            f"implausible peak memory (ours {peaks['ours']} B, released {peaks['released']} B): both must be positive "
            f"and the released formulation must hold its up-sampled parameter maps, {upsampled_bytes} B "
            f"(P={num_params} x {inputs.shape[-2]} x {inputs.shape[-1]} x {params.element_size()} B)"
        )
    for name, peak in peaks.items():
        result[f"{name}_peak_mib"] = peak / 2**20
    result["released_upsampled_params_mib"] = upsampled_bytes / 2**20
    result["time_ratio"] = result["ours_ms"]["p50"] / result["released_ms"]["p50"]
    result["memory_ratio"] = peaks["ours"] / peaks["released"]
    return result


def git_state() -> dict:
    """The commit the benchmark ran from and whether the working tree differed from it (None: not a git checkout)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        command = ["git", "--no-optional-locks", *args]  # read-only: no index refresh
        return subprocess.run(command, cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}


def add_ratio_columns(rows: list[dict]) -> None:
    """Each row's decoder MACs and time against the same setting's DeepLabV3+ (OS32) decoder, and its model MACs
    against the same setting's DeepLabV3+ on the dilated OS8 encoder."""
    for row in rows:
        same = {r["variant"]: r for r in rows if r["setting"] == row["setting"]}
        decoder, dilated = same["deeplabv3plus-os32"], same["deeplabv3plus-os8"]
        row["decoder_macs_vs_deeplabv3plus"] = row["gmacs_decoder"] / decoder["gmacs_decoder"]
        row["decoder_time_vs_deeplabv3plus"] = row["decoder_p50_ms"] / decoder["decoder_p50_ms"]
        row["model_macs_vs_deeplabv3plus_os8"] = row["gmacs_model"] / dilated["gmacs_model"]


def run(args) -> dict:
    device = torch.device(args.device)
    mlp = dynamic_mlp_comparison(device, args.warmup, args.repeats)  # first: its sanity checks fail fast
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
            row |= {f"params_m_{k}": v for k, v in count_params(model).items()}
            row |= {f"gmacs_{k}": v for k, v in count_macs(model, shape).items()}
            started = time.perf_counter()
            latency = decoder_latency(model, shape, device, args.warmup, args.repeats)
            row |= {"decoder_p50_ms": latency["p50"], "decoder_p90_ms": latency["p90"]}
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

    add_ratio_columns(rows)

    def pick(setting, variant):
        return next(r for r in rows if r["setting"] == setting and r["variant"] == variant)

    ratios = {}
    for setting, _, _ in SETTINGS:
        nrd = pick(setting, "nrd-os32")
        ratios[setting] = {
            "decoder_macs_nrd_vs_deeplabv3plus": nrd["decoder_macs_vs_deeplabv3plus"],
            "decoder_time_nrd_vs_deeplabv3plus": nrd["decoder_time_vs_deeplabv3plus"],
            "model_macs_nrd_os32_vs_deeplabv3plus_os8": nrd["model_macs_vs_deeplabv3plus_os8"],
            "model_macs_nrd_os32_vs_deeplabv3_os8": nrd["gmacs_model"] / pick(setting, "deeplabv3-os8")["gmacs_model"],
        }
    return {"rows": rows, "ratios": ratios, "dynamic_mlp": mlp}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per measurement (default 2)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tag", default="", help="suffix of the output file names (e.g. _h200)")
    args = parser.parse_args(argv)

    revision = git_state()  # before the run: the code that produced the figures
    result = run(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"decoder_cost{args.tag}"
    fields = list(result["rows"][0])
    with open(f"{stem}.csv.tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in result["rows"]:  # 6 significant digits
            writer.writerow({k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in row.items()})
    os.replace(f"{stem}.csv.tmp", f"{stem}.csv")
    config = {
        **revision,
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
