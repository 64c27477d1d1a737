"""Cost accounting: per-level MACs against hand-derived formulas (the dynamic MLP must be counted), params, latency,
and the `nrd-bench cost` command."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from nrd import create_model
from nrd.cost import (
    LEVELS,
    count_macs,
    count_params,
    measure_cost,
    measure_latency,
    quantile_interval,
    time_call,
)
from pipeline.commands.cli import main


def nrd_decoder_macs(height, width, num_classes, context=512, controller=512, low=256, hidden=48, guidance=16, dyn=16):
    """MACs after the context module, derived by hand from NRD_NOTES §2 (stride-32 context, stride-4 g_θ)."""
    coarse = (height // 32) * (width // 32)
    fine = (height // 4) * (width // 4)
    params = (2 + guidance) * dyn + dyn + dyn * dyn + dyn + dyn * num_classes + num_classes
    controller_macs = coarse * (context * controller * 9 + controller * params)
    guidance_macs = fine * (low * hidden * 9 + hidden * guidance)
    mlp_macs = fine * ((2 + guidance) * dyn + dyn * dyn + dyn * num_classes)  # the dynamic per-pixel MLP
    return (controller_macs + guidance_macs + mlp_macs) / 1e9, mlp_macs / 1e9


def deeplabv3plus_decoder_macs(height, width, num_classes, context=512, low=256, projected=48, channels=512):
    fine = (height // 4) * (width // 4)
    first = (context + projected) * 9 + (context + projected) * channels  # depthwise + pointwise
    second = channels * 9 + channels * channels
    return fine * (low * projected + first + second + channels * num_classes) / 1e9


def bilinear_decoder_macs(height, width, num_classes, context=512):
    """A 1×1 classifier on the stride-32 context; the ×32 bilinear up-sampling counts nothing."""
    return (height // 32) * (width // 32) * context * num_classes / 1e9


def dupsampling_decoder_macs(height, width, num_classes, context=512, low=256, projected=48, fused=512, compressed=256):
    """1×1 projection of the stride-4 stage (then average-pooled: free), 3×3 fuse conv on [context, pooled] at
    stride 32, 1×1 compression, 1×1 reconstruction to 32·32·K channels; depth-to-space and temperature are free."""
    fine = (height // 4) * (width // 4)
    coarse = (height // 32) * (width // 32)
    per_cell = (context + projected) * fused * 9 + fused * compressed + compressed * 32 * 32 * num_classes
    return (fine * low * projected + coarse * per_cell) / 1e9


@pytest.fixture(scope="module")
def r50_costs():
    shape = (1, 3, 1024, 2048)
    return {
        name: count_macs(create_model(name, "resnet50_v1c", 19, aux_head=False), shape)
        for name in ("nrd", "deeplabv3plus", "bilinear", "dupsampling")
    }


def test_nrd_decoder_macs_match_the_hand_count_including_the_dynamic_mlp(r50_costs):
    expected, mlp_only = nrd_decoder_macs(1024, 2048, 19)
    assert r50_costs["nrd"]["decoder"] == pytest.approx(expected, rel=1e-9)
    assert mlp_only > 0.1  # the dynamic MLP is ~0.11 GMACs here: leaving it out would break the equality above


def test_deeplabv3plus_decoder_macs_match_the_hand_count(r50_costs):
    assert r50_costs["deeplabv3plus"]["decoder"] == pytest.approx(deeplabv3plus_decoder_macs(1024, 2048, 19), rel=1e-9)


def test_bilinear_and_dupsampling_decoder_macs_match_the_hand_count(r50_costs):
    assert r50_costs["bilinear"]["decoder"] == pytest.approx(bilinear_decoder_macs(1024, 2048, 19), rel=1e-9)
    assert r50_costs["dupsampling"]["decoder"] == pytest.approx(dupsampling_decoder_macs(1024, 2048, 19), rel=1e-9)


def test_the_aux_head_is_never_counted():
    shape = (1, 3, 128, 192)
    with_aux = count_macs(create_model("nrd", "resnet18", 5, aux_head=True), shape)
    assert with_aux == count_macs(create_model("nrd", "resnet18", 5, aux_head=False), shape)


def test_levels_add_up_and_the_decoder_ratio_is_the_papers(r50_costs):
    for costs in r50_costs.values():
        assert costs["head"] == pytest.approx(costs["context"] + costs["decoder"])
        assert costs["model"] == pytest.approx(costs["encoder"] + costs["head"])
    assert r50_costs["nrd"]["context"] == pytest.approx(r50_costs["deeplabv3plus"]["context"])  # shared module
    ratio = r50_costs["nrd"]["decoder"] / r50_costs["deeplabv3plus"]["decoder"]
    assert 0.25 <= ratio <= 0.30  # paper: ~30%; NRD_NOTES: 20.5 / 76 ≈ 0.27


def test_cost_scales_with_pixels_and_batch():
    model = create_model("nrd", "resnet18", 5, aux_head=False)
    small = count_macs(model, (1, 3, 256, 512))
    assert count_macs(model, (2, 3, 256, 512))["model"] == pytest.approx(2 * small["model"])
    assert count_macs(model, (1, 3, 512, 1024))["encoder"] == pytest.approx(4 * small["encoder"], rel=1e-3)


def test_params_per_level_exclude_the_aux_head():
    with_aux = create_model("nrd", "resnet18", 5)
    params = count_params(with_aux)
    manual_decoder = sum(
        p.numel() for name, p in with_aux.decoder.named_parameters() if not name.startswith("context.")
    )
    assert params["decoder"] * 1e6 == pytest.approx(manual_decoder)
    aux = sum(p.numel() for p in with_aux.aux_head.parameters())
    assert params["model"] * 1e6 == pytest.approx(sum(p.numel() for p in with_aux.parameters()) - aux)


def test_counting_leaves_the_model_untouched():
    model = create_model("bilinear", "resnet18", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = measure_cost(model, (1, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).device.type == "cpu" and model.training
    assert report.to_dict()["gflops"]["model"] == pytest.approx(2 * report.gmacs["model"])


def test_latency_per_level():
    model = create_model("nrd", "resnet18", 3)  # in training mode
    latency = measure_latency(model, (1, 3, 64, 64), levels=("decoder", "model"), warmup=1, repeats=3)
    assert model.training  # restored after timing in eval mode
    assert set(latency) == {"decoder", "model"}
    for figures in latency.values():
        assert 0 < figures["p50"] <= figures["p90"] and figures["repeats"] == 3
    with pytest.raises(ValueError, match="unknown cost levels"):
        measure_latency(model, (1, 3, 64, 64), levels=("decodr",))
    model.eval()
    measure_latency(model, (1, 3, 64, 64), levels=("decoder",), warmup=0, repeats=1)
    assert not model.training


def test_time_call_reports_percentiles_of_what_it_timed():
    calls = []
    figures = time_call(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and figures["p50"] <= figures["p90"]
    times = figures["times"]
    assert len(times) == 5 and figures["p50"] == float(np.median(times))
    assert min(times) <= figures["p50_low"] <= figures["p50"] <= figures["p50_high"] <= max(times)
    assert time_call(lambda: None, warmup=0, repeats=1)["p50_low"] is None  # one timing: no interval


def test_quantile_interval_by_hand():
    # two timings: each draw is (a, a), (a, b), (b, a) or (b, b), medians a, (a+b)/2, (a+b)/2, b; the 95% interval
    # of 2000 such medians spans from a to b
    assert quantile_interval([10.0, 20.0], resamples=2000) == (10.0, 20.0)
    assert quantile_interval([5.0] * 4) == (5.0, 5.0)
    assert quantile_interval([5.0]) is None


def test_cost_command_json(capsys):
    assert (
        main(
            ["cost", "--decoder", "nrd", "--encoder", "resnet18", "--num-classes", "19", "--input", "256x512", "--json"]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["input"] == [1, 3, 256, 512] == result["padded_input"]
    assert result["convention"] == "MACs"
    assert "flop_counter" in result["counter"]
    assert set(result["gmacs"]) == set(LEVELS) == set(result["params_m"])
    expected = count_macs(create_model("nrd", "resnet18", 19, aux_head=False), (1, 3, 256, 512))
    assert result["gmacs"] == pytest.approx(expected)
    assert result["gflops"]["model"] == pytest.approx(2 * expected["model"])


def test_cost_command_reports_the_padded_size_it_counts(capsys):
    args = ["cost", "--decoder", "bilinear", "--encoder", "resnet18", "--input", "500x1000"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["input"] == [1, 3, 500, 1000]
    assert result["padded_input"] == [1, 3, 512, 1024]  # the next multiples of 32
    expected = count_macs(create_model("bilinear", "resnet18", 19, aux_head=False), (1, 3, 512, 1024))
    assert result["gmacs"] == pytest.approx(expected)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "input 1x3x500x1000 (padded to a multiple of 32: runs and is counted at 1x3x512x1024)" in out


def test_cost_command_table_with_latency_and_decoder_args(capsys):
    args = [
        "cost",
        "--encoder",
        "resnet18",
        "--input",
        "64x64",
        "--latency",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--decoder-arg",
        "dyn_channels=8",
        "--decoder-arg",
        "coord_mode=centred",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "input 1x3x64x64" in out and "GMACs" in out and "p50 (ms)" in out and "counter:" in out
    assert "p50 95% CI" in out and "2 timed runs per level after 0 untimed" in out
    assert re.search(r"^model .*\[\d+\.\d, \d+\.\d\]", out, flags=re.M)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--decoder", "nrdd"], "unknown decoder 'nrdd'"),
        (["--decoder-arg", "patch_factor=12"], "patch_factor=12 is invalid"),
        (["--decoder-arg", "dyn=4"], "unknown argument of decoder 'nrd' 'dyn'"),
        (["--latency", "--repeats", "0"], "--repeats=0 is invalid; expected a positive integer"),
        (["--latency", "--warmup", "-1"], "--warmup=-1 is invalid; expected an integer >= 0"),
        (["--latency", "--device", "tpu"], "--device='tpu' is invalid; expected cpu, cuda or cuda:N"),
        (["--latency", "--device", "cuda:x"], "--device='cuda:x' is invalid; expected cpu, cuda or cuda:N"),
    ],
)
def test_cost_command_errors(capsys, args, message):
    assert main(["cost", "--encoder", "resnet18", "--input", "64x64", *args]) == 2
    assert message in capsys.readouterr().err


def test_cost_command_rejects_a_bad_size(capsys):
    with pytest.raises(SystemExit):
        main(["cost", "--input", "64by64"])
    assert "not a size HxW" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cost_command_names_a_missing_gpu(capsys):
    assert main(["cost", "--encoder", "resnet18", "--input", "64x64", "--latency", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device='cuda' is invalid; expected a GPU of this machine, which has 0 CUDA device(s)" in err
    assert "Traceback" not in err
