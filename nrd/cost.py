"""Cost accounting: parameters, multiply-accumulates (MACs) and latency per level of a ``SegmentationModel``.

Levels (inference graph; the training-only auxiliary head is never counted):

- ``encoder``: the ResNet.
- ``context``: the shared context module (ASPP) on the last encoder stage.
- ``decoder``: everything after the context module (for NRD: controller, guidance, g_θ; for DeepLabV3+: the
  low-level projection and the fusion convs), up-sampling included. The paper's "~30% of DeepLabV3+" is this level.
- ``head`` = context + decoder; ``model`` = encoder + head.

MACs come from ``torch.utils.flop_counter`` which records every conv, matmul, bmm/baddbmm and einsum (so NRD's
dynamic MLP is counted) and reports 2 FLOPs per multiply-add: MACs = counted FLOPs / 2, FLOPs = 2 × MACs. It counts
nothing for normalisation, activations, pooling, interpolation or element-wise ops (nor conv biases). Counting runs
on a copy of the model on the ``meta`` device: shapes only, no arithmetic, so any input size is instant.

NRD's ``static_base`` (the saddle fix) costs nothing extra by these conventions, and truly: its θ_base is the
generator conv's bias, which the official NRD already has (counted in ``params_m``); adding it to W·h is the conv's
bias add (P additions per coarse location, no multiply), which no level counts for any decoder.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nrd.model import SegmentationModel

LEVELS = ("encoder", "context", "decoder", "head", "model")
CONVENTION = "MACs"
COUNTER = (
    f"torch.utils.flop_counter.FlopCounterMode (torch {torch.__version__.split('+')[0]}): conv, mm, bmm/baddbmm, "
    "einsum counted; MACs = counted FLOPs / 2; norms, activations, pooling, interpolation, biases not counted"
)


@dataclass(frozen=True)
class CostReport:
    """Params (millions) and GMACs per level for one input shape (B, 3, H, W); GFLOPs = 2 × GMACs.

    ``padded_input`` is the shape the network actually runs at: the input zero-padded to a multiple of 32 (see
    ``SegmentationModel.pad``); the counts are those of that padded shape.
    """

    input: tuple[int, int, int, int]
    padded_input: tuple[int, int, int, int]
    gmacs: dict[str, float]
    params_m: dict[str, float]
    convention: str = CONVENTION
    counter: str = COUNTER
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def gflops(self) -> dict[str, float]:
        return {level: 2.0 * value for level, value in self.gmacs.items()}

    def to_dict(self) -> dict:
        result = asdict(self)
        result["input"] = list(self.input)
        result["padded_input"] = list(self.padded_input)
        result["gflops"] = self.gflops
        result["flops_convention"] = "FLOPs = 2 x MACs"
        return result


def _num_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def count_params(model: SegmentationModel) -> dict[str, float]:
    """Parameters per level, in millions (the auxiliary head excluded)."""
    encoder, head, context = (_num_params(m) for m in (model.encoder, model.decoder, model.decoder.context))
    counts = {"encoder": encoder, "context": context, "decoder": head - context, "head": head, "model": encoder + head}
    return {level: counts[level] / 1e6 for level in LEVELS}


def count_macs(model: SegmentationModel, input_shape: tuple[int, int, int, int]) -> dict[str, float]:
    """GMACs per level for one forward pass in eval mode on an input of ``input_shape`` (B, 3, H, W)."""
    meta_model = copy.deepcopy(model).to(device="meta").eval()
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), counter:
        meta_model(torch.empty(input_shape, device="meta"))
    per_module = counter.get_flop_counts()
    root = type(model).__name__

    def gmacs(name: str) -> float:
        return sum(per_module.get(name, {}).values()) / 2e9

    encoder = gmacs(f"{root}.encoder")
    head = gmacs(f"{root}.decoder")
    context = gmacs(f"{root}.decoder.context")
    total = gmacs("Global")
    return {"encoder": encoder, "context": context, "decoder": head - context, "head": head, "model": total}


def measure_cost(model: SegmentationModel, input_shape: tuple[int, int, int, int]) -> CostReport:
    padded = tuple(model.pad(torch.empty(input_shape, device="meta")).shape)
    return CostReport(
        input=tuple(input_shape),
        padded_input=padded,
        gmacs=count_macs(model, input_shape),
        params_m=count_params(model),
    )


def quantile_interval(
    timings: Sequence[float], quantile: float = 0.5, resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of the ``quantile`` of repeated timings: the timings are drawn with
    replacement ``resamples`` times and the quantile taken of each draw. It covers the timing noise of that machine
    in that session (the timings treated as exchangeable), not machine-to-machine variation. None for fewer than 2
    timings."""
    values = np.asarray(timings, dtype=np.float64)
    if values.size < 2:
        return None
    rng = np.random.default_rng(seed)
    drawn = np.quantile(values[rng.integers(0, values.size, size=(resamples, values.size))], quantile, axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(drawn, [tail, 1 - tail])
    return float(low), float(high)


def time_call(
    fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 2, repeats: int = 10
) -> dict[str, object]:
    """Wall time of ``fn()`` in milliseconds: ``warmup`` untimed calls, then over ``repeats`` calls the p50 with
    its 95% bootstrap interval (``p50_low``, ``p50_high``; None with one call), p90 and mean, and the timings
    themselves (``times``). On CUDA the device is synchronised before each clock read."""
    device = torch.device(device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    p50, p90 = np.percentile(times, [50, 90])
    low, high = quantile_interval(times) or (None, None)
    return {
        "p50": float(p50),
        "p50_low": low,
        "p50_high": high,
        "p90": float(p90),
        "mean": float(np.mean(times)),
        "repeats": repeats,
        "times": times,
    }


def measure_latency(
    model: SegmentationModel,
    input_shape: tuple[int, int, int, int],
    levels: tuple[str, ...] = LEVELS,
    device: torch.device | str = "cpu",
    warmup: int = 2,
    repeats: int = 10,
) -> dict[str, dict[str, float]]:
    """Inference latency (ms) per level on random input. ``context``, ``decoder`` and ``head`` run alone on
    pre-computed encoder features (and context), so each figure is that part's own time.

    ``model`` itself is moved to ``device`` (``nn.Module.to`` works in place) and stays there; it is timed in eval
    mode and its training mode is restored afterwards.
    """
    unknown = set(levels) - set(LEVELS)
    if unknown:
        raise ValueError(f"unknown cost levels {sorted(unknown)}; valid: {', '.join(LEVELS)}")
    was_training = model.training
    model.to(device).eval()
    decoder = model.decoder
    try:
        with torch.inference_mode():
            images = model.pad(torch.randn(input_shape, device=device))
            size = images.shape[-2:]
            features = model.encoder(images) if set(levels) - {"model", "encoder"} else None
            context = decoder.context(features[-1]) if features is not None else None
            calls = {
                "encoder": lambda: model.encoder(images),
                "context": lambda: decoder.context(features[-1]),
                "decoder": lambda: decoder.decode(features, context, size),
                "head": lambda: decoder(features, size),
                "model": lambda: model(images),
            }
            return {level: time_call(calls[level], device, warmup, repeats) for level in levels}
    finally:
        model.train(was_training)
