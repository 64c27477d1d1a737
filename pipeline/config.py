"""The configuration of a training run: one frozen ``TrainConfig``, read from YAML, CLI flags or a search space in
one place, resolved once against the data set, then passed unchanged through Ray Tune and Ray Train to the loop.

``TrainConfig.from_dict`` validates every key and value before anything starts (unknown keys name the closest valid
one and the file they came from); ``to_dict`` is what gets written beside every result, ``flat_params`` what MLflow
gets as params.

Flat names (search-space keys, Ray Tune parameters, MLflow params) have one spelling: the dotted path of a setting
(``schedule.lr``, ``model.encoder``) and ``<decoder>.<argument>`` for a decoder hyperparameter (``nrd.dyn_channels``,
``model.decoder_kwargs.dyn_channels`` in the nested YAML). ``ALIASES`` is the one table of short names: the CLI
flags (``--lr``) and the short keys a space may use (``lr``). Old spellings stay readable: a space's
``model.decoder_kwargs.<argument>``, ``--decoder-arg <argument>=VALUE``, Tune's ``nrd__dyn_channels`` of sweeps
started before, MLflow's ``model.decoder_kwargs.<argument>`` params of older runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nrd import DECODERS, ModelConfig, decoder_arguments
from nrd.errors import UnknownNameError
from nrd.losses import LOSS_REDUCTIONS
from pipeline.values import ConfigError, is_folder_name, merge, read_section, require


@dataclass(frozen=True)
class DataSettings:
    """Where the prepared shards are (``nrd-bench prepare`` output: a local folder or a URI pyarrow reads) and the
    training augmentation. ``crop_size``/``base_scale`` default to the dataset's preset (nrd.data.transforms).
    ``eval_msflip``: after the last iteration, evaluate once more with multi-scale + flip inference
    (``nrd.inference.predict_msflip``), logged as ``mIoU_msflip`` and ``aAcc_msflip``. ``test_scale`` (long, short):
    evaluation resizes each val image to fit it, keeping its aspect ratio, and scores are resized back to the
    full-size label (mmseg's test ``Resize``); None evaluates at the stored size."""

    dataset_dir: str = ""
    crop_size: tuple[int, int] | None = None
    base_scale: tuple[int, int] | None = None
    test_scale: tuple[int, int] | None = None
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    photometric: bool = True
    val_limit: int | None = None
    eval_msflip: bool = False


OFFICIAL_WARMUP_SHARE = 4000 / 84000  # configs/_base_/schedules/schedule_80k_warmup.py: 4k warm-up in 84k iterations


@dataclass(frozen=True)
class ScheduleSettings:
    """The official iteration-based schedule: SGD with momentum, linear warm-up from ``warmup_ratio``·lr, then poly
    decay with ``power`` down to ``min_lr``. ``batch_size`` is global: each of W workers takes batch_size / W.
    ``warmup_iterations`` None (the default) takes the official share of the budget: 4k of 84k, round(iterations / 21).
    ``loss_reduction`` (main and auxiliary loss, ``nrd.losses``): ``official`` = mmseg's mean over all pixels with
    ignored ones counting 0, or ``valid`` = mean over the valid pixels (PyTorch's ``CrossEntropyLoss``)."""

    iterations: int = 84000  # the official schedule_80k_warmup: 84k iterations, the first 4k a linear warm-up
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iterations: int | None = None
    warmup_ratio: float = 0.01
    power: float = 0.9
    min_lr: float = 1e-4
    aux_weight: float = 0.4
    loss_reduction: str = "official"
    log_interval: int = 10
    eval_interval: int = 8000
    checkpoint_interval: int = 8000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.warmup_iterations is None and isinstance(self.iterations, int):
            object.__setattr__(self, "warmup_iterations", round(self.iterations * OFFICIAL_WARMUP_SHARE))


@dataclass(frozen=True)
class ScalingSettings:
    """Ray Train workers. On CPU a worker takes ``cpus_per_worker`` (fractional leaves room for Ray Data).
    ``gpu_wait``: seconds a cluster that lacks the GPUs is given to scale up before the run is refused."""

    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    gpu_wait: float = 600.0

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


@dataclass(frozen=True)
class RunSettings:
    """Where results go and how they are tracked. Re-running with the same ``storage_path`` and ``name`` resumes.
    ``storage_path`` is a folder (on a cluster, one every node mounts), not a URI."""

    storage_path: str = "results"
    name: str = ""
    max_failures: int = 0
    tracking_uri: str | None = None
    experiment: str = "nrd-bench"
    tracking_timeout: float = 300.0  # seconds the end of a run waits for an unreachable MLflow before giving up
    log_model: bool = False  # the final network as an MLflow model too (else `pareto --register` logs the front's)
    system_metrics: bool = False  # MLflow's system-metrics monitor (CPU, memory, GPU): the [system-metrics] extra


NOT_IN_CONFIG_KEY = ("seed", "log_interval", "checkpoint_interval")  # schedule settings repeats may differ in
FROM_DATA = 0  # model.num_classes when not given: taken from the prepared data set's manifest
SECTIONS = {"data": DataSettings, "schedule": ScheduleSettings, "scaling": ScalingSettings, "run": RunSettings}
# The one table of short names: `nrd-bench train`'s flags (--dataset-dir is dest dataset_dir) and a space's short keys.
ALIASES = {
    "dataset_dir": "data.dataset_dir",
    "crop_size": "data.crop_size",
    "val_limit": "data.val_limit",
    "eval_msflip": "data.eval_msflip",
    "decoder": "model.decoder",
    "encoder": "model.encoder",
    "num_classes": "model.num_classes",
    "output_stride": "model.output_stride",
    "iterations": "schedule.iterations",
    "batch_size": "schedule.batch_size",
    "lr": "schedule.lr",
    "weight_decay": "schedule.weight_decay",
    "warmup_iterations": "schedule.warmup_iterations",
    "aux_weight": "schedule.aux_weight",
    "log_interval": "schedule.log_interval",
    "eval_interval": "schedule.eval_interval",
    "checkpoint_interval": "schedule.checkpoint_interval",
    "seed": "schedule.seed",
    "workers": "scaling.workers",
    "gpus_per_worker": "scaling.gpus_per_worker",
    "cpus_per_worker": "scaling.cpus_per_worker",
    "gpu_wait": "scaling.gpu_wait",
    "storage_path": "run.storage_path",
    "name": "run.name",
    "max_failures": "run.max_failures",
    "tracking_uri": "run.tracking_uri",
    "experiment": "run.experiment",
    "tracking_timeout": "run.tracking_timeout",
}
DECODER_ARGS = "decoder_kwargs"  # ModelConfig's field holding the decoder hyperparameters
OLD_TUNE_SEPARATOR = "__"  # sweeps started before stood "." as "__" in Tune's parameter names


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (model, data, schedule, scaling, run)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataSettings = field(default_factory=DataSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    run: RunSettings = field(default_factory=RunSettings)

    @property
    def per_worker_batch_size(self) -> int:
        return self.schedule.batch_size // self.scaling.workers

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            **{name: _plain(dataclasses.asdict(getattr(self, name))) for name in SECTIONS},
        }

    def flat_params(self) -> dict[str, str]:
        """Flat names (``schedule.lr``, ``nrd.dyn_channels``: see the module docstring) → value strings, for MLflow
        params."""
        flat = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                if key == DECODER_ARGS and section == "model":
                    flat.update({f"{self.model.decoder}.{k}": str(v) for k, v in value.items()})
                else:
                    flat[f"{section}.{key}"] = str(value)
        return flat

    def config_key(self) -> str:
        """The configuration this run is a repeat of: a short hash of every setting that can change its result,
        i.e. all but the seed, the log and checkpoint intervals and the ``run`` section (where results go, how
        they are tracked). Runs with equal keys differ only in their seed."""
        values = self.to_dict()
        del values["run"]
        for key in NOT_IN_CONFIG_KEY:
            del values["schedule"][key]
        text = json.dumps(values, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def updated(self, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """This config with ``values`` (flat names or short aliases → values) applied, validated whole. A
        ``<decoder>.<argument>`` applies only when ``<decoder>`` is the config's decoder (after the update)."""
        flat = {canonical_key(key, source): value for key, value in values.items()}
        decoder = flat.get("model.decoder", self.model.decoder)
        current = self.to_dict()
        if decoder != self.model.decoder:  # hyperparameters belong to their decoder
            current["model"][DECODER_ARGS] = {}
        return TrainConfig.from_dict(merge(current, nest(flat, decoder)), source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> TrainConfig:
        check_sections(data, source)
        model_values = {"num_classes": FROM_DATA, **(data.get("model") or {})}
        model = ModelConfig.from_dict(model_values, source=f"{source}: model")
        sections = {
            name: read_section(kind, data.get(name) or {}, f"{source}: {name}") for name, kind in SECTIONS.items()
        }
        config = cls(model=model, **sections)
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        """Checks that need no cluster and no data: positive sizes, divisible batch, sane schedule."""
        schedule, scaling = self.schedule, self.scaling
        for name in ("iterations", "batch_size", "log_interval", "eval_interval", "checkpoint_interval"):
            require(getattr(schedule, name) >= 1, source, f"schedule.{name}", getattr(schedule, name), ">= 1")
        warmup = schedule.warmup_iterations
        require(
            isinstance(warmup, int) and not isinstance(warmup, bool) and warmup >= 0,
            source,
            "schedule.warmup_iterations",
            warmup,
            "an integer >= 0, or null (the official share)",
        )
        require(schedule.lr > 0, source, "schedule.lr", schedule.lr, "> 0")
        require(
            0 <= schedule.min_lr <= schedule.lr,
            source,
            "schedule.min_lr",
            schedule.min_lr,
            f"in [0, schedule.lr={schedule.lr:g}]; lower it in the schedule section of a --config file",
        )
        require(0 <= schedule.momentum < 1, source, "schedule.momentum", schedule.momentum, "in [0, 1)")
        require(schedule.weight_decay >= 0, source, "schedule.weight_decay", schedule.weight_decay, ">= 0")
        require(0 < schedule.warmup_ratio <= 1, source, "schedule.warmup_ratio", schedule.warmup_ratio, "in (0, 1]")
        require(schedule.power > 0, source, "schedule.power", schedule.power, "> 0")
        require(schedule.aux_weight >= 0, source, "schedule.aux_weight", schedule.aux_weight, ">= 0")
        require(
            schedule.loss_reduction in LOSS_REDUCTIONS,
            source,
            "schedule.loss_reduction",
            schedule.loss_reduction,
            f"one of {', '.join(LOSS_REDUCTIONS)}",
        )
        require(scaling.workers >= 1, source, "scaling.workers", scaling.workers, ">= 1")
        require(scaling.cpus_per_worker > 0, source, "scaling.cpus_per_worker", scaling.cpus_per_worker, "> 0")
        require(scaling.gpus_per_worker >= 0, source, "scaling.gpus_per_worker", scaling.gpus_per_worker, ">= 0")
        require(scaling.gpu_wait >= 0, source, "scaling.gpu_wait", scaling.gpu_wait, ">= 0")
        if schedule.batch_size % scaling.workers:
            raise ConfigError(
                f"{source}: schedule.batch_size={schedule.batch_size} is not divisible by scaling.workers="
                f"{scaling.workers}; the global batch is fixed, so each worker must take batch_size / workers"
            )
        if schedule.batch_size // scaling.workers == 1 and not (scaling.use_gpu and scaling.workers > 1):
            raise ConfigError(
                f"{source}: schedule.batch_size={schedule.batch_size} over scaling.workers={scaling.workers} gives "
                "each worker 1 image; BatchNorm (the context module's image pooling) needs 2 or more, unless "
                "SyncBatchNorm pools them across several GPU workers"
            )
        limit = self.data.val_limit
        require(
            limit is None or (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1),
            source,
            "data.val_limit",
            limit,
            "a positive integer (the first N val images), or null for all",
        )
        name = self.run.name
        require(
            name in (None, "") or is_folder_name(name),
            source,
            "run.name",
            name,
            "a folder name inside run.storage_path (no '/', not '.' or '..')",
        )
        if not self.data.dataset_dir:
            raise ConfigError(f"{source}: data.dataset_dir is empty; expected the output folder of nrd-bench prepare")
        require(self.run.max_failures >= -1, source, "run.max_failures", self.run.max_failures, ">= -1 (-1: no limit)")
        require(self.run.tracking_timeout >= 0, source, "run.tracking_timeout", self.run.tracking_timeout, ">= 0")
        if self.run.system_metrics and importlib.util.find_spec("psutil") is None:
            raise ConfigError(
                f"{source}: run.system_metrics is true but psutil, which MLflow's system-metrics monitor needs, is not "
                "installed; install the extra (pip install -e '.[system-metrics]') or set run.system_metrics: false"
            )
        if "://" in self.run.storage_path:
            raise ConfigError(
                f"{source}: run.storage_path={self.run.storage_path!r} is a URI; expected a folder path. The run's "
                "record, config, results and MLflow buffer are files beside the checkpoints, so on a cluster give a "
                "folder that every node mounts (NFS, EFS, a Kubernetes ReadWriteMany volume: see deploy/README.md)"
            )


def check_sections(data: Any, source: str) -> None:
    """``data`` is a mapping of known sections, each a mapping (or empty)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping with sections model, {', '.join(SECTIONS)}")
    valid = ["model", *SECTIONS]
    for key in data:
        if key not in valid:
            raise UnknownNameError(f"section in {source}", key, valid)
    for name in valid:
        if not isinstance(data.get(name) or {}, Mapping):
            example = "decoder: nrd" if name == "model" else "key: value"
            raise ConfigError(
                f"{source}: section {name} is {data[name]!r}; expected a mapping of its keys, e.g. "
                f"{name}: {{{example}}}"
            )


def canonical_key(key: str, source: str = "config") -> str:
    """The one spelling of a flat name (see the module docstring): an alias resolved, an old Tune name decoded, the
    section and key checked (unknown ones raise ``UnknownNameError`` listing the valid ones)."""
    if OLD_TUNE_SEPARATOR in key and "." not in key:
        key = key.replace(OLD_TUNE_SEPARATOR, ".")
    key = ALIASES.get(key, key)
    section, _, rest = key.partition(".")
    if section in DECODERS:
        valid = decoder_arguments(section)
        if rest not in valid:
            raise UnknownNameError(f"{section} hyperparameter in {source}", rest, valid)
        return key
    if section == "model":
        valid = [f.name for f in dataclasses.fields(ModelConfig)]
        if rest.split(".")[0] not in valid:
            raise UnknownNameError(f"model key in {source}", rest, valid)
        return key
    if section in SECTIONS:
        valid = [f.name for f in dataclasses.fields(SECTIONS[section])]
        if rest not in valid:
            raise UnknownNameError(f"{section} key in {source}", rest, valid)
        return key
    valid = [*ALIASES, *(f"{s}.<key>" for s in ("model", *SECTIONS)), *(f"{d}.<arg>" for d in DECODERS)]
    raise UnknownNameError(f"key in {source}", key, valid)


def is_decoder_argument(key: str) -> bool:
    """Whether flat name ``key`` is a decoder hyperparameter (``nrd.dyn_channels``, ``model.decoder_kwargs.x``)."""
    return key.partition(".")[0] in DECODERS or key.startswith(f"model.{DECODER_ARGS}.")


def nest(values: Mapping[str, Any], decoder: str) -> dict[str, Any]:
    """Flat names → nested config sections (``nrd.dyn_channels`` → ``model.decoder_kwargs.dyn_channels``), for
    merging into a config dict. Hyperparameters of decoders other than ``decoder`` are dropped."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        section, _, rest = key.partition(".")
        if section in DECODERS:
            if section != decoder:
                continue
            section, rest = "model", f"{DECODER_ARGS}.{rest}"
        node = nested.setdefault(section, {})
        *parents, leaf = rest.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


def field_default(key: str) -> Any:
    """The default of the setting at dotted ``key`` (None when it has none, or for decoder hyperparameters)."""
    section, _, rest = key.partition(".")
    kind = ModelConfig if section == "model" else SECTIONS.get(section)
    fields = {f.name: f for f in dataclasses.fields(kind)} if kind else {}
    default = getattr(fields.get(rest), "default", None)
    return None if default is dataclasses.MISSING else default


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}
