"""Search spaces: a small YAML schema, validated whole before any trial starts.

A space file has three sections::

    search:                       # how to search
      objectives: {mIoU: max}     # one metric (ASHA early stopping) or {mIoU: max, gmacs_model: min} (Optuna, NSGA)
      scheduler: asha             # asha | fifo (multi-objective searches use fifo)
      num_samples: 8              # trials (each grid point is repeated num_samples times, as in Ray Tune)
      seeds: 1                    # repeats of every configuration with schedule.seed 0..seeds-1 (one child run each)
      max_concurrent: 1
      iterations: 200             # training iterations per trial (the budget ASHA cuts)
      grace_period: 1             # ASHA: evaluations before a trial may be stopped
      reduction_factor: 2
      resources: {workers: 1, cpus_per_worker: 1.0, gpus_per_worker: 0}
    fixed:                        # values every trial gets (dotted keys)
      data.dataset_dir: shards/synthetic
      schedule.batch_size: 8
    space:                        # what varies
      model.decoder: {choice: [nrd, deeplabv3plus]}
      nrd.dyn_channels: {choice: [8, 16, 32]}
      schedule.lr: {loguniform: [0.001, 0.05]}

Keys are the flat names of ``pipeline.config`` (the same as the MLflow params and Ray Tune's parameter names):
dotted paths into the training config (``model.*``, ``data.*``, ``schedule.*``, ``scaling.*``, ``run.*``), and
``<decoder>.<arg>`` (e.g. ``nrd.dyn_channels``), a decoder hyperparameter applied only to trials of that decoder.
The short names of ``pipeline.config.ALIASES`` (the ``nrd-bench train`` flags: ``lr``, ``decoder``, ...) are read
too. Distributions: ``choice: [..]``, ``grid: [..]``, ``uniform: [low, high]``, ``loguniform: [low, high]``,
``randint: [low, high)``; anything else is a fixed value.

``variants`` is a space key of its own: a ``grid`` (or ``choice``) of mappings of the keys above, each applied whole
to a trial, for settings that only make sense together (e.g. NRD with and without ``static_base`` beside
decoders that have no such argument, without repeating those decoders)::

    space:
      variants: {grid: [{model.decoder: nrd}, {model.decoder: nrd, nrd.static_base: true}, {model.decoder: bilinear}]}

``model.encoder_weights`` (``nrd.weights``: ``imagenet``, a URL, a path, or per encoder) is checked, without any
download, against every encoder a trial can get; a mapping encoder → weights is a fixed value (under ``fixed``, or as
``model.encoder_weights.<encoder>`` keys there).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nrd import DECODERS, ENCODERS, ModelConfig
from nrd.errors import InvalidHyperparameterError, NRDBenchError, UnknownNameError
from nrd.weights import check_weights_spec, resolve_encoder_weights
from pipeline.config import ConfigError, TrainConfig, canonical_key, field_default, nest
from pipeline.names import OBJECTIVE_METRICS
from pipeline.values import convert_value, load_yaml, merge

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SCHEDULERS = ("asha", "fifo")
TRIAL_DRIVER_CPUS = 0.01  # a multi-worker trial's own process, which starts its TorchTrainer
DATA_CPUS = 1.0  # what Ray Data needs free besides the trials: its file-listing task asks for a whole CPU
MODES = ("max", "min")
VARIANTS_KEY = "variants"  # a grid of mappings applied whole (see the module docstring)
WEIGHTS_KEY = "model.encoder_weights"  # a name, URL, path, or mapping encoder → one (nrd.weights)


@dataclass(frozen=True)
class SearchSettings:
    objectives: dict[str, str] = field(default_factory=lambda: {"mIoU": "max"})
    scheduler: str = "asha"
    num_samples: int = 1
    seeds: int = 1
    max_concurrent: int = 1
    iterations: int = 200
    grace_period: int = 1
    reduction_factor: int = 2
    resources: dict[str, float] = field(default_factory=lambda: {"workers": 1, "cpus_per_worker": 1.0})

    def trial_resources(self) -> dict[str, float]:
        """What one Tune trial asks Ray for. A single-worker trial trains in its own process, so it holds the
        worker's CPUs (and GPUs); a multi-worker trial holds almost nothing: its TorchTrainer's workers hold the
        rest."""
        workers = self.resources.get("workers", 1)
        if workers > 1:
            return {"CPU": TRIAL_DRIVER_CPUS}
        gpus = self.resources.get("gpus_per_worker", 0)
        return {"CPU": self.resources.get("cpus_per_worker", 1.0)} | ({"GPU": gpus} if gpus else {})

    def cpus_per_trial(self) -> float:
        """CPUs one trial takes in all: its own process and its training workers."""
        workers = self.resources.get("workers", 1)
        driver = TRIAL_DRIVER_CPUS if workers > 1 else 0.0
        return workers * self.resources.get("cpus_per_worker", 1.0) + driver

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


@dataclass(frozen=True)
class SearchSpace:
    """A validated space file: settings, fixed values and distributions, keys already resolved to dotted paths."""

    path: str
    search: SearchSettings
    fixed: dict[str, Any]
    space: dict[str, tuple[str, Any]]  # dotted key → (distribution, arguments)

    def trial_overrides(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """Nested training-config overrides for one trial: fixed values, then the sampled ones; decoder
        hyperparameters of other decoders than the trial's are dropped."""
        values = {**self.fixed, **sampled}
        if not sampled and "model.encoder" not in values and self.trial_encoders():
            # the sweep's base: every trial draws its encoder, so check the base with one a trial gets (its
            # encoder_weights may not cover the default encoder)
            values["model.encoder"] = self.trial_encoders()[0]
        nested = nest(values, values.get("model.decoder", ModelConfig().decoder))
        schedule = nested.setdefault("schedule", {})
        schedule.setdefault("iterations", self.search.iterations)
        scaling = nested.setdefault("scaling", {})
        for key, value in self.search.resources.items():
            scaling.setdefault(key, value)
        return nested

    def trial_encoders(self) -> list[str]:
        """The encoders the space draws for its trials (empty when it does not vary the encoder)."""
        return _drawn_encoders(self.space)


def _drawn_encoders(space: Mapping[str, tuple[str, Any]]) -> list[str]:
    kind, arguments = space.get("model.encoder", (None, None))
    if kind in ("choice", "grid"):
        return list(arguments)
    if kind == "fixed":
        return [arguments]
    variants = space.get(VARIANTS_KEY, ("grid", []))[1]
    if variants and all("model.encoder" in variant for variant in variants):
        return [variant["model.encoder"] for variant in variants]
    return []


def _weights_in(values: Mapping[str, Any]) -> tuple[bool, Any]:
    """Whether flat ``values`` set ``encoder_weights``, and to what (whole, or per encoder as dotted keys)."""
    if WEIGHTS_KEY in values:
        return True, values[WEIGHTS_KEY]
    entries = {key.split(".", 2)[2]: value for key, value in values.items() if key.startswith(f"{WEIGHTS_KEY}.")}
    return bool(entries), entries or None


def _check_weights_per_encoder(path: str, fixed: Mapping[str, Any], space: Mapping[str, tuple[str, Any]]) -> None:
    """Every encoder a trial can get against the ``encoder_weights`` it gets, without downloading: a mapping that
    lacks the encoder, or a name with no published file for it and none in the cache, fails here, not in a trial."""
    encoders = _drawn_encoders({k: v for k, v in space.items() if k != VARIANTS_KEY})
    encoders = encoders or [fixed.get("model.encoder", ModelConfig().encoder)]
    kind, arguments = space.get(WEIGHTS_KEY, (None, None))
    specs = list(arguments) if kind in ("choice", "grid") else [arguments] if kind else [_weights_in(fixed)[1]]
    pairs = [(encoder, spec) for encoder in encoders for spec in specs]
    if VARIANTS_KEY in space:
        pairs = []
        for variant in space[VARIANTS_KEY][1]:
            sets_weights, spec = _weights_in(variant)
            for encoder in [variant["model.encoder"]] if "model.encoder" in variant else encoders:
                pairs += [(encoder, spec)] if sets_weights else [(encoder, other) for other in specs]
    for encoder, spec in pairs:
        resolve_encoder_weights(spec, encoder, download=False, source=f"{path}: {WEIGHTS_KEY} for {encoder}")


def _error(path: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {problem}")


def _check_value(path: str, key: str, value: Any) -> None:
    """Values that would fail inside a trial fail here instead: unknown names, wrong types."""
    checks = {"model.decoder": DECODERS, "model.encoder": ENCODERS}
    if key in checks and value not in checks[key]:
        raise UnknownNameError(f"{key.split('.')[1]} in {path} ({key})", value, checks[key])
    if key == WEIGHTS_KEY or key.startswith(f"{WEIGHTS_KEY}."):  # the whole value, or one encoder's entry
        check_weights_spec(value if key == WEIGHTS_KEY else {key.split(".", 2)[2]: value}, ENCODERS, f"{path}")
    default = field_default(key)
    if default is not None:
        try:
            convert_value(value, default)
        except (TypeError, ValueError):
            expected = type(default).__name__
            raise _error(path, key, f"{value!r} has the wrong type; expected a finite {expected}") from None
    section, _, argument = key.partition(".")
    if section in DECODERS:  # built on the meta device, as each trial would build it
        model = ModelConfig(decoder=section, encoder="resnet18", num_classes=2, decoder_kwargs={argument: value})
        try:
            with torch.device("meta"):
                model.build()
        except (NRDBenchError, TypeError, ValueError) as error:
            raise _error(path, key, f"{value!r} cannot build the {section} decoder ({error})") from None
        return
    try:  # the setting's own range (lr > 0, ...), the others at their defaults
        TrainConfig.from_dict(merge({"data": {"dataset_dir": "unused"}}, nest({key: value}, ModelConfig().decoder)))
    except InvalidHyperparameterError as error:
        if error.name == key:
            raise _error(path, key, str(error).partition(": ")[2]) from None
    except ConfigError:
        pass  # a combination with other defaults (batch size over workers, ...): each trial's config is checked


def _distribution(path: str, key: str, spec: Mapping[str, Any]) -> tuple[str, Any]:
    if len(spec) != 1:
        raise _error(path, key, f"expected exactly one of {', '.join(DISTRIBUTIONS)}, got {sorted(spec)}")
    kind, arguments = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise UnknownNameError(f"distribution in {path} ({key})", kind, DISTRIBUTIONS)
    if kind in ("choice", "grid"):
        if not isinstance(arguments, list) or not arguments:
            raise _error(path, key, f"{kind} needs a non-empty list of values, got {arguments!r}")
        for value in arguments:
            _check_value(path, key, value)
        return kind, list(arguments)
    if not (isinstance(arguments, list) and len(arguments) == 2 and all(_is_number(v) for v in arguments)):
        raise _error(path, key, f"{kind} needs [low, high] numbers, got {arguments!r}")
    low, high = arguments
    if not low < high:
        raise _error(path, key, f"{kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise _error(path, key, f"loguniform needs low > 0, got {low}")
    if kind == "randint" and not all(isinstance(v, int) for v in arguments):
        raise _error(path, key, f"randint needs integers, got {arguments!r}")
    if isinstance(field_default(key), int) and kind != "randint":
        raise _error(path, key, f"{kind} draws floats but the value must be an integer; use randint or choice")
    return kind, [low, high]


def _variants(path: str, spec: Any) -> tuple[str, list[dict[str, Any]]]:
    where = f"space.{VARIANTS_KEY}"
    if not (isinstance(spec, Mapping) and len(spec) == 1 and next(iter(spec)) in ("grid", "choice")):
        raise _error(path, where, "expected {grid: [mapping, ...]} or {choice: [mapping, ...]}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values or not all(isinstance(v, Mapping) and v for v in values):
        raise _error(path, where, f"{kind} needs a non-empty list of non-empty mappings, got {values!r}")
    variants = []
    for variant in values:
        resolved = {}
        for key, value in variant.items():
            dotted = canonical_key(key, path)
            if isinstance(value, Mapping):
                raise _error(path, f"{where}: {dotted}", "a variant holds fixed values, not distributions")
            _check_value(path, dotted, value)
            resolved[dotted] = value
        if resolved in variants:
            raise _error(path, where, f"{variant!r} is listed twice")
        variants.append(resolved)
    return kind, variants


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _search_settings(path: str, values: Mapping[str, Any], available_cpus: float | None) -> SearchSettings:
    fields = {f.name: f for f in dataclasses.fields(SearchSettings)}
    for key in values:
        if key not in fields:
            raise UnknownNameError(f"search setting in {path}", key, fields)
    settings = SearchSettings(**values)
    if not isinstance(settings.objectives, dict) or not settings.objectives:
        raise _error(path, "search.objectives", "expected a mapping metric: max|min, e.g. {mIoU: max}")
    for metric, mode in settings.objectives.items():
        if metric not in OBJECTIVE_METRICS and not re.fullmatch(r"trimap_mIoU_\d+px", str(metric)):
            valid = [*OBJECTIVE_METRICS, "trimap_mIoU_<W>px"]
            raise UnknownNameError(f"objective metric in {path} (search.objectives)", metric, valid)
        if mode not in MODES:
            raise UnknownNameError(f"mode of objective {metric!r} in {path}", mode, MODES)
    if settings.scheduler not in SCHEDULERS:
        raise UnknownNameError(f"scheduler in {path}", settings.scheduler, SCHEDULERS)
    if settings.multi_objective and settings.scheduler == "asha":
        raise _error(path, "search.scheduler", "asha stops trials on one metric; use fifo with several objectives")
    for name in ("num_samples", "seeds", "max_concurrent", "iterations", "grace_period", "reduction_factor"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _error(path, f"search.{name}", f"expected a positive integer, got {value!r}")
    if settings.seeds > 1 and settings.multi_objective:
        raise _error(
            path,
            "search.seeds",
            "repeated seeds work with one objective (grid, random, ASHA); Optuna's multi-objective search would "
            "suggest each repeat anew. Use one objective, or seeds: 1",
        )
    resources = settings.resources
    valid = ("workers", "cpus_per_worker", "gpus_per_worker")
    for key, value in resources.items():
        if key not in valid:
            raise UnknownNameError(f"resource in {path} (search.resources)", key, valid)
        if not _is_number(value) or value < 0 or (key != "gpus_per_worker" and value <= 0):
            raise _error(path, f"search.resources.{key}", f"expected a positive number, got {value!r}")
    if available_cpus is not None:
        needed = settings.cpus_per_trial() * settings.max_concurrent
        if needed + DATA_CPUS > available_cpus:
            raise _error(
                path,
                "search.resources",
                f"{settings.max_concurrent} concurrent trial(s) need {needed:g} CPUs plus {DATA_CPUS:g} for Ray "
                f"Data's decoding, but the cluster has {available_cpus:g}; lower cpus_per_worker or max_concurrent",
            )
    return settings


def load_space(path: str | os.PathLike, available_cpus: float | None = None) -> SearchSpace:
    """Read and validate a space file; every problem is a named error with the file and key."""
    path = str(Path(path))
    data = load_yaml(path)
    valid_sections = ("search", "fixed", "space")
    for section in data:
        if section not in valid_sections:
            raise UnknownNameError(f"section in {path}", section, valid_sections)
    for section in valid_sections:
        if not isinstance(data.get(section) or {}, Mapping):
            raise _error(path, section, f"expected a mapping, got {type(data[section]).__name__}")
    search = _search_settings(path, data.get("search") or {}, available_cpus)
    fixed: dict[str, Any] = {}
    for key, value in (data.get("fixed") or {}).items():
        dotted = canonical_key(key, path)
        _check_value(path, dotted, value)
        fixed[dotted] = value
    space = {}
    for key, spec in (data.get("space") or {}).items():
        if key == VARIANTS_KEY:
            space[key] = _variants(path, spec)
            continue
        dotted = canonical_key(key, path)
        if dotted == WEIGHTS_KEY and isinstance(spec, Mapping) and not set(spec) & set(DISTRIBUTIONS):
            raise _error(path, dotted, "a mapping encoder: weights is a fixed value; put it under fixed")
        space[dotted] = _distribution(path, dotted, spec) if isinstance(spec, Mapping) else ("fixed", spec)
        if space[dotted][0] == "fixed":
            _check_value(path, dotted, spec)
    if not space:
        raise _error(path, "space", "nothing varies; expected at least one key with a distribution")
    _check_weights_per_encoder(path, fixed, space)
    if search.seeds > 1 and ("schedule.seed" in space or "schedule.seed" in fixed):
        raise _error(path, "schedule.seed", "set by search.seeds (repeats get seeds 0..seeds-1); remove one of them")
    return SearchSpace(path=path, search=search, fixed=fixed, space=space)
