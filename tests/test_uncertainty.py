"""pipeline.results.uncertainty and .convergence: the bootstrap against exact enumeration of every resample of tiny
evaluations, front probability on clear cases, paired comparisons, latency intervals, Kendall's tau-b and the
convergence flags by hand. Pure NumPy: no Ray, no MLflow."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest

from nrd.errors import UnknownNameError
from nrd.evidence import ImageCounts
from nrd.metrics import scores_from_counts
from pipeline.results.convergence import CurveInputError, curve_band, kendall_tau_b, ranking_change, rising_at_end
from pipeline.results.uncertainty import (
    EXACT,
    IMAGES_ONLY,
    NO_INTERVAL,
    SEEDS_AND_IMAGES,
    TIMINGS,
    UncertaintyInputError,
    bootstrap,
    compare,
    exact,
    front_probability,
    latency_interval,
)

IDS = ("img0", "img1", "img2")
CLASSES = ("road", "car")
# (images, classes, TP/FP/FN) of one repeat
A = np.array([[[5, 1, 0], [2, 0, 1]], [[3, 0, 2], [4, 2, 0]], [[0, 1, 1], [6, 0, 0]]])
B_SEED_2 = np.array([[[4, 2, 1], [1, 1, 2]], [[5, 0, 0], [3, 0, 1]], [[1, 0, 0], [5, 1, 1]]])
BETTER = A.copy()
BETTER[:, 0, 0] += 3  # 3 more road TPs in every image, where road always has errors: better on every draw


def evidence(*repeats: np.ndarray, ids=IDS) -> list[ImageCounts]:
    return [ImageCounts(ids, CLASSES, counts, 255) for counts in repeats]


def miou(counts: np.ndarray) -> float:
    return float(scores_from_counts(counts)["mIoU"])


def image_draws(n: int = 3):
    """Every ordered draw of n images out of n with replacement (equally likely)."""
    return list(itertools.product(range(n), repeat=n))


def assert_same_distribution(replicates: np.ndarray, exact_values: list[float]) -> None:
    """The replicates' mean and CDF at every support point agree with the exact distribution within 5 standard
    errors of a Monte-Carlo estimate."""
    exact_values = np.asarray(exact_values)
    b = replicates.size
    assert abs(replicates.mean() - exact_values.mean()) < 5 * exact_values.std() / math.sqrt(b)
    for point in np.unique(exact_values):
        p = (exact_values <= point + 1e-9).mean()
        share = (replicates <= point + 1e-9).mean()
        assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / b) + 1e-12, (point, share, p)


def test_one_seed_against_every_image_resample():
    boot = bootstrap({"a": evidence(A)}, resamples=20000, seed=3)
    estimate = boot.estimates["a"]["mIoU"]
    # full data by hand: road TP 8, FP 2, FN 3 -> 8/13; car TP 12, FP 2, FN 1 -> 12/15
    assert math.isclose(estimate.value, 100 * (8 / 13 + 12 / 15) / 2, rel_tol=1e-12)
    assert estimate.scheme == IMAGES_ONLY and estimate.seeds == 1 and estimate.resamples == 20000
    exact_values = [miou(A[list(draw)].sum(0)) for draw in image_draws()]  # dataset-level: summed, then scored
    replicates = boot.replicates["a"]["mIoU"]
    assert_same_distribution(replicates, exact_values)
    assert (estimate.low, estimate.high) == tuple(np.quantile(replicates, [0.025, 0.975]))
    as_json = json.loads(json.dumps(boot.to_dict()))
    assert as_json["estimates"]["a"]["mIoU"]["scheme"] == IMAGES_ONLY and as_json["images"] == 3
    assert estimate.low < estimate.value < estimate.high


def test_two_seeds_against_every_seed_and_image_resample():
    boot = bootstrap({"b": evidence(A, B_SEED_2)}, resamples=20000, seed=4)
    estimate = boot.estimates["b"]["mIoU"]
    assert estimate.scheme == SEEDS_AND_IMAGES and estimate.seeds == 2
    assert math.isclose(estimate.value, (miou(A.sum(0)) + miou(B_SEED_2.sum(0))) / 2, rel_tol=1e-12)
    seeds = (A, B_SEED_2)
    exact_values = [
        (miou(seeds[s1][list(draw)].sum(0)) + miou(seeds[s2][list(draw)].sum(0))) / 2
        for draw in image_draws()
        for s1, s2 in itertools.product(range(2), repeat=2)
    ]
    assert_same_distribution(boot.replicates["b"]["mIoU"], exact_values)


def test_differences_are_paired_by_a_shared_image_draw():
    boot = bootstrap({"better": evidence(BETTER), "a": evidence(A)}, resamples=20000, seed=5)
    paired = [miou(BETTER[list(d)].sum(0)) - miou(A[list(d)].sum(0)) for d in image_draws()]
    unpaired = [miou(BETTER[list(d)].sum(0)) - miou(A[list(e)].sum(0)) for d in image_draws() for e in image_draws()]
    difference = boot.replicates["better"]["mIoU"] - boot.replicates["a"]["mIoU"]
    assert_same_distribution(difference, paired)
    with pytest.raises(AssertionError):  # the check tells pairing from independent draws of the two
        assert_same_distribution(difference, unpaired)
    comparison = compare(
        boot,
        "better",
        "a",
        {"better": 0.27, "a": 1.0},
        labels={"better": "nrd/resnet50", "a": "deeplabv3plus/resnet50"},
    )
    diff = comparison.difference
    assert diff.low > 0 and diff.value > 0 and min(paired) > 0  # better on every draw
    assert math.isclose(diff.value, miou(BETTER.sum(0)) - miou(A.sum(0)), rel_tol=1e-12)
    assert re.fullmatch(
        r"nrd/resnet50 vs deeplabv3plus/resnet50: \+\d+\.\d mIoU \[\+\d+\.\d, \+\d+\.\d\], 0\.27x decoder MACs",
        str(comparison),
    ), str(comparison)
    reverse = compare(boot, "a", "better")
    assert reverse.difference.high < 0 and str(reverse).startswith("a vs better: -")


def test_reproducible_and_order_independent():
    repeats = {"a": evidence(A), "b": evidence(A, B_SEED_2)}
    first = bootstrap(repeats, metrics=("mIoU", "aAcc", "IoU.car"), resamples=500, seed=7)
    shuffled = [2, 0, 1]
    again = bootstrap(
        {"b": evidence(A[shuffled], B_SEED_2[shuffled], ids=tuple(IDS[i] for i in shuffled)), "a": evidence(A)},
        metrics=("mIoU", "aAcc", "IoU.car"),
        resamples=500,
        seed=7,
    )
    for key in repeats:
        for name in ("mIoU", "aAcc", "IoU.car"):
            np.testing.assert_array_equal(first.replicates[key][name], again.replicates[key][name])
    other = bootstrap(repeats, resamples=500, seed=8)
    assert not np.array_equal(first.replicates["a"]["mIoU"], other.replicates["a"]["mIoU"])
    assert math.isclose(first.estimates["a"]["IoU.car"].value, 100 * 12 / 15)
    with pytest.raises(UnknownNameError, match=r"IoU\.road"):
        bootstrap(repeats, metrics=("IoU.bus",), resamples=10)


def test_other_images_or_classes_are_refused():
    with pytest.raises(UncertaintyInputError, match="other images"):
        bootstrap({"a": evidence(A), "b": evidence(A, ids=("img0", "img1", "img9"))})
    renamed = [ImageCounts(IDS, ("road", "bus"), A, 255)]
    with pytest.raises(UncertaintyInputError, match="same classes"):
        bootstrap({"a": evidence(A), "b": renamed})
    with pytest.raises(UncertaintyInputError, match="resamples"):
        bootstrap({"a": evidence(A)}, resamples=0)


def test_no_counts_means_no_interval():
    boot = bootstrap(
        {"a": evidence(A), "logged": [], "nothing": []}, resamples=200, logged={"logged": {"mIoU": [40.0, 42.0]}}
    )
    estimate = boot.estimates["logged"]["mIoU"]
    assert estimate.value == 41.0 and estimate.seeds == 2
    assert not estimate.has_interval and estimate.scheme == NO_INTERVAL and estimate.low is None
    assert estimate.format() == "41.0 (no interval: no per-image counts)"
    assert boot.estimates["nothing"]["mIoU"].value is None and boot.estimates["nothing"]["mIoU"].format() == "-"
    assert "logged" not in boot.replicates
    probability = front_probability(boot, {"a": 1.0, "logged": 2.0, "nothing": 0.5})
    assert probability["logged"] is None and probability["nothing"] is None and probability["a"] is not None
    comparison = compare(boot, "logged", "a")
    assert not comparison.difference.has_interval
    assert "(no interval: no per-image counts for logged)" in str(comparison)
    alone = bootstrap({"x": []}, logged={"x": {"mIoU": [40.0]}})
    assert alone.estimates["x"]["mIoU"].format() == "40.0 (no interval: no per-image counts)"


def test_front_probability_on_clear_and_mixed_cases():
    perfect = A.copy()
    perfect[..., 0] += perfect[..., 2]  # every FN becomes a TP and every FP disappears: mIoU 100 on every draw
    perfect[..., 1:] = 0
    close = A.copy()
    close[0, 0, 0] += 1  # slightly better than A on draws holding img0, equal otherwise
    repeats = {
        "perfect": evidence(perfect),
        "dominated": evidence(A),
        "cheap": evidence(A),
        "close": evidence(close),
        "twin": evidence(A),
    }
    boot = bootstrap(repeats, resamples=2000, seed=11)
    costs = {"perfect": 1.0, "dominated": 2.0, "cheap": 0.5}
    assert front_probability(boot, costs) == {"perfect": 1.0, "dominated": 0.0, "cheap": 1.0}
    # equal cost: "close" is on the front in every draw (>= A), A only in the draws without img0, (2/3)^3 of them
    mixed = front_probability(boot, {"close": 3.0, "twin": 3.0})
    assert mixed["close"] == 1.0
    assert abs(mixed["twin"] - (2 / 3) ** 3) < 5 * math.sqrt((8 / 27) * (19 / 27) / 2000)
    assert front_probability(boot, {"perfect": None, "cheap": 0.5})["perfect"] is None
    with pytest.raises(UnknownNameError, match="configuration"):
        front_probability(boot, {"absent": 1.0})


def test_latency_interval_and_exact_costs():
    timings = [10.0, 10.2, 9.9, 10.1, 30.0, 10.0, 10.3, 9.8, 10.1, 10.0]
    estimate = latency_interval(timings, resamples=2000, seed=0)
    assert estimate.value == float(np.median(timings)) and estimate.scheme == TIMINGS
    assert 9.8 <= estimate.low <= estimate.value <= estimate.high <= 10.3  # the median shrugs off the outlier
    assert latency_interval([12.0] * 5).format() == "12.0 [12.0, 12.0]"
    assert latency_interval([12.0]).format() == "12.0 (no interval: one timing)"
    assert latency_interval([]).value is None
    p90 = latency_interval(timings, quantile=0.9)
    assert p90.value == float(np.quantile(timings, 0.9))
    macs = exact(3.25)
    assert macs.scheme == EXACT and not macs.has_interval and macs.format(2) == "3.25 (exact)"


def test_kendall_tau_b_by_hand():
    assert kendall_tau_b([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert math.isclose(kendall_tau_b([1, 2, 3, 4], [1, 2, 4, 3]), (5 - 1) / 6)  # one discordant pair of six
    # one tie in a: 5 concordant, 0 discordant, n0 = 6, 1 tied pair in a -> 5 / sqrt(5 * 6)
    assert math.isclose(kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 4]), 5 / math.sqrt(30))
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))
    scipy_stats = pytest.importorskip("scipy.stats", reason="SciPy not installed: the hand values above stand")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 30), rng.integers(0, 5, 30)
    assert math.isclose(kendall_tau_b(a, b), scipy_stats.kendalltau(a, b).statistic, rel_tol=1e-12)


def test_ranking_change():
    steady = {
        "x": ([1000, 2000, 3000], [30, 40, 50]),
        "y": ([1000, 2000, 3000], [20, 30, 45]),
        "z": ([1000, 2000, 3000], [10, 20, 25]),
    }
    result = ranking_change(steady)
    assert result.tau == 1.0 and not result.changed and result.iterations == (2000.0, 3000.0)
    swapped = dict(steady, z=([1000, 2000, 3000], [10, 20, 46]))  # z overtakes y at the last evaluation
    result = ranking_change(swapped)
    assert math.isclose(result.tau, 1 / 3) and result.changed and result.configurations == 3
    assert ranking_change({"x": steady["x"]}).tau is None
    # the last evaluations common to all: a run stopped at 2000 moves the comparison to 1000 vs 2000
    stopped = dict(steady, w=([1000, 2000], [5, 6]))
    assert ranking_change(stopped).iterations == (1000.0, 2000.0)


def test_rising_and_flat_curves():
    rising = rising_at_end([1000, 2000, 3000, 4000, 5000], [10, 30, 35, 40, 45])
    assert rising.slope_per_1k == pytest.approx(5.0) and rising.points == 3 and rising.rising
    flat = rising_at_end([1000, 2000, 3000, 4000, 5000], [10, 40, 40.2, 39.9, 40.1])
    assert abs(flat.slope_per_1k) < 0.5 and flat.rising is False
    # the slope is per 1000 iterations: +0.4 per 100 iterations is 4 per 1k
    short = rising_at_end([100, 200, 300], [20.0, 20.4, 20.8])
    assert short.slope_per_1k == pytest.approx(4.0) and short.rising
    assert rising_at_end([100, 200, 300], [20, 20.04, 20.08], threshold=0.5).rising is False  # 0.4 per 1k
    assert rising_at_end([1000], [30.0]).rising is None
    # only the second half counts: a short curve's first jump, then a fall, is not "still rising"
    jump = rising_at_end([40, 80, 120], [6.5, 27.4, 24.1])
    assert jump.points == 2 and jump.slope_per_1k == pytest.approx(-82.5) and jump.rising is False
    assert rising_at_end([0, 1000], [5.0, 30.0]).points == 1  # iteration 0 is in the first half: no verdict
    assert rising_at_end([1000, 2000], [30.0, 31.0], window=5).points == 2
    with pytest.raises(CurveInputError, match=r"\(2,\) iterations but \(1,\) values"):
        rising_at_end([1000, 2000], [30.0])


def test_curve_band_over_seeds():
    band = curve_band([([100, 200, 300], [10.0, 20.0, 30.0]), ([100, 200], [14.0, 22.0]), ([200], [float("nan")])])
    assert band.iterations.tolist() == [100, 200, 300]
    assert band.mean.tolist() == [12.0, 21.0, 30.0]
    assert band.low.tolist() == [10.0, 20.0, 30.0] and band.high.tolist() == [14.0, 22.0, 30.0]
    assert band.seeds.tolist() == [2, 2, 1]


def test_plots_are_written(tmp_path):
    from PIL import Image

    from pipeline.results.uncertainty_plots import plot_front_uncertainty, plot_learning_curves

    boot = bootstrap(
        {"a": evidence(A), "better": evidence(BETTER), "logged": []}, resamples=300, logged={"logged": {"mIoU": [50.0]}}
    )
    costs = {"a": 2.0, "better": 1.0, "logged": 3.0}
    estimates = {key: boot.estimates[key]["mIoU"] for key in costs}
    probabilities = front_probability(boot, costs)
    front = tmp_path / "front.png"
    plot_front_uncertainty(costs, estimates, probabilities, front, "decoder GMACs", "val mIoU (%)", rising={"a"})
    bands = {"a": curve_band([([100, 200], [10.0, 20.0]), ([100, 200], [12.0, 19.0])])}
    curves = tmp_path / "curves.png"
    plot_learning_curves(bands, curves, rising={"a"})
    for path, size in ((front, (1100, 660)), (curves, (990, 605))):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "front.png"]
