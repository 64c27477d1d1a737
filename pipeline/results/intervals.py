"""The front with its uncertainty, per data set: the runs grouped into configurations (runs with equal
``config_key`` tags are repeats that differ only in seed), each configuration's y metric with a bootstrap interval
from its runs' per-image counts (``image_counts.npz``, ``pipeline.results.uncertainty.bootstrap``) and its front
probability (the share of resamples in which it is on the front). A configuration whose runs kept no per-image counts
(older runs), or a y metric that counts cannot give (``mIoU_msflip``, ``latency``), gets its mean logged value and no
interval, said as such; never a made-up one. Costs (MACs, params) are exact.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from nrd.evidence import IMAGE_COUNTS_FILE, ImageCounts, ImageCountsError, read_image_counts
from pipeline.files import write_atomic
from pipeline.names import CONFIG_KEY_TAG, PARETO_PROBABILITY_TAG
from pipeline.results.catalogue import RunPoint, slug
from pipeline.results.front import DatasetRuns, layout_table
from pipeline.results.uncertainty import (
    RESAMPLES,
    Y_METRICS,
    Bootstrap,
    Estimate,
    UncertaintyInputError,
    bootstrap,
    front_probability,
)
from pipeline.training.tracking import mlflow_call


@dataclass
class Configuration:
    """One configuration of a data set's front: its repeats (``runs``), exact cost ``x``, the ``estimate`` of y
    (value = mean over the repeats; interval when per-image counts exist) and its front ``probability`` (None
    without an interval)."""

    key: str
    runs: list[RunPoint]
    x: float
    estimate: Estimate
    probability: float | None = None

    @property
    def label(self) -> str:
        return self.runs[0].label

    def to_dict(self) -> dict:
        return {
            "config_key": self.key,
            "label": self.label,
            "run_ids": [point.run_id for point in self.runs],
            "seeds": len(self.runs),
            "x": self.x,
            "y": self.estimate.to_dict(),
            "front_probability": self.probability,
        }


@dataclass
class IntervalFront:
    """The configurations of one data set with their intervals and front probabilities, and what was done."""

    runs: DatasetRuns
    configurations: list[Configuration]
    resamples: int
    note: str  # how the intervals were obtained, or why there are none
    boot: Bootstrap | None = None  # the replicates, for paired comparisons

    def find(self, name: str) -> Configuration:
        """The configuration named by its config_key (or a prefix of it), or by its label or ``decoder/encoder``
        when exactly one configuration has it."""
        matches = [c for c in self.configurations if c.key.startswith(name)]
        matches = matches or [c for c in self.configurations if name in (c.label, c.label.split(" ")[0])]
        if len(matches) != 1:
            choices = [f"{c.key} ({c.label})" for c in self.configurations]
            problem = "matches several configurations" if matches else "names no configuration"
            raise UncertaintyInputError(f"{name!r} {problem} of {self.runs.dataset}; expected one of: {choices}")
        return matches[0]

    def to_dict(self) -> dict:
        return {
            "x": self.runs.x,
            "y": self.runs.y,
            "resamples": self.resamples,
            "note": self.note,
            "configurations": [configuration.to_dict() for configuration in self.configurations],
        }


def config_key(point: RunPoint, tags: dict[str, str]) -> str:
    """The configuration a run repeats; a run without the tag (older runs) is a configuration of its own."""
    return tags.get(CONFIG_KEY_TAG) or f"run-{point.run_id}"


def read_evidence(client: MlflowClient, run_id: str, folder: Path) -> ImageCounts | None:
    """The run's per-image counts, or None when it kept none (or they cannot be read: no interval then)."""
    if IMAGE_COUNTS_FILE not in {artifact.path for artifact in client.list_artifacts(run_id)}:
        return None
    try:
        return read_image_counts(client.download_artifacts(run_id, IMAGE_COUNTS_FILE, str(folder / run_id)))
    except ImageCountsError:
        return None


def estimate_configurations(
    tracking_uri: str, points: list[RunPoint], y: str, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[dict[str, list[RunPoint]], Bootstrap, str]:
    """Group ``points`` into configurations by their ``config_key`` tags and bootstrap ``y`` for each from the
    runs' per-image counts (one image draw shared by all). Returns the groups (key -> repeats, in the order
    given), the bootstrap and a note on how the intervals were obtained, or why there are none."""
    with mlflow_call(tracking_uri):
        client = MlflowClient(tracking_uri)
        tags = {point.run_id: client.get_run(point.run_id).data.tags for point in points}
        groups: dict[str, list[RunPoint]] = {}
        for point in points:
            groups.setdefault(config_key(point, tags[point.run_id]), []).append(point)
        evidence: dict[str, list[ImageCounts]] = {}
        with tempfile.TemporaryDirectory() as folder:
            for key, repeats in groups.items():
                parts = [read_evidence(client, point.run_id, Path(folder)) for point in repeats]
                evidence[key] = [] if any(part is None for part in parts) else parts
    logged = {key: {y: [point.y for point in repeats]} for key, repeats in groups.items()}
    note = f"percentile bootstrap, {resamples} resamples over validation images and seeds, 95% intervals"
    if y not in Y_METRICS:
        evidence = {key: [] for key in groups}
        note = f"no interval: {y} cannot be recomputed from per-image counts"
    elif not any(evidence.values()):
        note = "no interval: no run kept per-image counts (image_counts.npz)"
    try:
        boot = bootstrap(evidence, (y,), resamples, seed, logged=logged)
    except UncertaintyInputError as error:  # e.g. runs validated on different images
        note = f"no interval: {error}"
        boot = bootstrap({key: [] for key in groups}, (y,), resamples, seed, logged=logged)
    return groups, boot, note


def interval_front(runs: DatasetRuns, resamples: int = RESAMPLES, seed: int = 0) -> IntervalFront:
    """Group ``runs.points`` into configurations and bootstrap them (module docstring)."""
    groups, boot, note = estimate_configurations(runs.scope.tracking_uri, runs.points, runs.y, resamples, seed)
    costs = {key: points[0].x for key, points in groups.items()}
    probabilities = front_probability(boot, costs, runs.y)
    configurations = [
        Configuration(key, points, costs[key], boot.estimates[key][runs.y], probabilities[key])
        for key, points in groups.items()
    ]
    configurations.sort(key=lambda c: (-(c.probability or 0.0), c.x, c.label))
    return IntervalFront(runs, configurations, boot.resamples, note, boot)


def format_intervals(front: IntervalFront, rising: Collection[str] | None = None) -> str:
    """The configurations by front probability: seeds, cost, y [95% interval], P(front), and whether each is still
    rising at the end of its learning curve (a column when ``rising``, the keys of those that are, is given)."""
    runs = front.runs
    header = ["configuration", "seeds", runs.x, f"{runs.y} [95% CI]", "P(front)"]
    rows = [
        [
            configuration.label,
            str(len(configuration.runs)),
            f"{configuration.x:.2f}",
            configuration.estimate.format(2),
            "-" if configuration.probability is None else f"{configuration.probability:.2f}",
        ]
        for configuration in front.configurations
    ]
    if rising is not None:
        header.append("still rising")
        for row, configuration in zip(rows, front.configurations, strict=True):
            row.append("yes" if configuration.key in rising else "no")
    table = layout_table(header, rows, right_aligned={"seeds", runs.x, "P(front)"})
    return f"{runs.dataset}: {front.note}\n{table}"


def write_interval_reports(front: IntervalFront, out_dir: Path, rising: Collection[str] | None = None) -> list[Path]:
    """``<dataset>_<y>_vs_<x>_intervals.csv`` / ``.json`` / ``.png`` (whiskers, points shaded by probability). With
    ``rising`` (the keys of the configurations still rising at the end of their learning curves), the CSV has a
    ``still_rising`` column and the plot marks them."""
    from pipeline.results.uncertainty_plots import plot_front_uncertainty

    runs = front.runs
    stem = out_dir / f"{slug(runs.dataset)}_{slug(f'{runs.y}_vs_{runs.x}')}_intervals"
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    header = ["dataset", "config_key", "configuration", "seeds", "run_ids", runs.x, runs.y, "low", "high", "scheme"]
    writer.writerow([*header, "front_probability", *(["still_rising"] if rising is not None else [])])
    for c in front.configurations:
        e = c.estimate
        run_ids = " ".join(point.run_id for point in c.runs)
        interval = ["" if e.low is None else e.low, "" if e.high is None else e.high, e.scheme]
        probability = "" if c.probability is None else c.probability
        flag = [] if rising is None else [str(c.key in rising).lower()]
        writer.writerow(
            [runs.dataset, c.key, c.label, len(c.runs), run_ids, c.x, e.value, *interval, probability, *flag]
        )
    paths = [stem.with_name(stem.name + suffix) for suffix in (".csv", ".json", ".png")]
    write_atomic(paths[0], text.getvalue().encode())
    write_atomic(paths[1], (json.dumps(front.to_dict(), indent=2) + "\n").encode())
    plot_front_uncertainty(
        {c.key: c.x for c in front.configurations},
        {c.key: c.estimate for c in front.configurations},
        {c.key: c.probability for c in front.configurations},
        paths[2],
        runs.x,
        runs.y,
        labels={c.key: c.label for c in front.configurations},
        rising=rising or (),
        title=f"{runs.dataset}: {runs.y} vs {runs.x} ({front.note})",
    )
    return paths


def tag_probabilities(front: IntervalFront) -> int:
    """``pareto_probability`` on every run of every configuration, as a tag (``none`` without an interval) and as a
    metric (none without)."""
    tagged = 0
    with mlflow_call(front.runs.scope.tracking_uri):
        client = MlflowClient(front.runs.scope.tracking_uri)
        for configuration in front.configurations:
            value = "none" if configuration.probability is None else f"{configuration.probability:.3f}"
            metrics = [] if configuration.probability is None else [configuration.probability]
            for point in configuration.runs:
                now = int(time.time() * 1000)
                client.log_batch(
                    point.run_id,
                    metrics=[Metric(PARETO_PROBABILITY_TAG, number, now, 0) for number in metrics],
                    tags=[RunTag(PARETO_PROBABILITY_TAG, value)],
                )
                tagged += 1
    return tagged
