"""Names shared between modules, in one place: MLflow run tags and metrics, and the files of a run's folder.

Training writes these, the search, the Pareto analysis, the report and predict read them back, and the tests
import them from here rather than repeating the strings. MLflow params are ``TrainConfig.flat_params()``'s keys
(``pipeline.config``).
"""

# ------------------------------------------------------------------------------------------------ MLflow run tags
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: nests a trial's run under its sweep's run
KIND_TAG = "nrd_bench.kind"  # bookkeeping runs, never points of a front: KIND_SWEEP or KIND_PARETO
KIND_SWEEP = "sweep"
KIND_PARETO = "pareto"
DATASET_TAG = "dataset"
DATASET_DIR_TAG = "dataset_dir"
DECODER_TAG = "decoder"
ENCODER_TAG = "encoder"
DEVICE_TAG = "device_type"
COMMIT_TAG = "git_commit"
EVAL_INPUT_TAG = "eval_input"  # NxCxHxW of the input the cost metrics were counted at
COST_CONVENTION_TAG = "cost_convention"
TRIAL_ID_TAG = "trial_id"
SWEEP_TAG = "sweep"  # a trial's sweep name
TRIAL_VALUES_TAG = "trial_values"  # JSON of the values the search gave the trial
STOPPED_EARLY_TAG = "stopped_early"
ERROR_TAG = "nrd_bench.error"  # why a run ended FAILED (or KILLED: interrupted)
ERROR_TAG_CHARS = 5000  # of the error message kept in the tag (MLflow's limit on a tag value is 8000)
CONFIG_KEY_TAG = "config_key"  # TrainConfig.config_key(): runs with equal keys are repeats (differ only in seed)
PARETO_OPTIMAL_TAG = "pareto_optimal"
PARETO_RANK_TAG = "pareto_rank"
PARETO_AXES_TAG = "pareto_axes"
NOTE_TAG = "mlflow.note.content"  # MLflow's own: the run's description, Markdown, shown on its page
PARETO_PROBABILITY_TAG = "pareto_probability"  # share of bootstrap resamples with the run's configuration on the front

# ------------------------------------------------------------------------------------------------- MLflow metrics
MIOU = "mIoU"  # the final single-scale val mIoU (%), what searches and reports rank on by default
MIOU_MSFLIP = "mIoU_msflip"
GMACS_MODEL = "gmacs_model"  # the default cost axis of the Pareto front
ITERATION = "iteration"  # reported to Ray Tune with every evaluation; ASHA's time axis
CLASS_IOU_PREFIX = "iou/"  # + the class's name: its IoU (%) at every evaluation, in MLflow only (not reported to Tune)
VAL_METRICS = (MIOU, "aAcc", "mAcc", "mDice", "mBIoU")  # logged (and reported to Tune) at every evaluation
# What a trial reports to Tune, so what a sweep's objectives may name (beside trimap_mIoU_<W>px)
OBJECTIVE_METRICS = (
    *VAL_METRICS,
    MIOU_MSFLIP,
    "aAcc_msflip",
    "loss",
    "images_per_s",
    "params_m",
    "latency_p50_ms",
    *(f"gmacs_{level}" for level in ("encoder", "context", "decoder", "head", "model")),
)

# -------------------------------------------------------------------------------------- a run's folder and artifacts
CONFIG_FILE = "config.yaml"  # the resolved TrainConfig, beside the results and as an MLflow artifact
RESULT_FILE = "result.json"  # the final metrics
FINISHED_MARKER = "FINISHED"  # written once the training is done, before the MLflow run is ended
RUN_RECORD = "mlflow_run.json"  # the MLflow run of a training run (tracking_uri, experiment_id, run_id)
RUN_BUFFER = "mlflow-buffer.jsonl"  # rank 0's MLflow operations not yet delivered
DRIVER_BUFFER = "mlflow-driver-buffer.jsonl"  # the driver's
SWEEP_RECORD = "sweep.json"  # the MLflow parent run of a sweep
SWEEP_BUFFER = "mlflow-sweep-buffer.jsonl"
CHECKPOINT_STATE = "state.pt"  # full training state in a Ray checkpoint
CHECKPOINT_WEIGHTS = "model.pt"  # the model's state_dict as the MLflow artifact (checkpoints: in state.pt)
WEIGHTS_ARTIFACT_DIR = "weights"
LOGGED_MODEL_NAME = "model"  # the run's MLflow model (mlflow.pytorch.log_model; pipeline.training.lineage)
MODEL_INPUT_MULTIPLE = 32  # the logged model's inputs: H and W multiples of this (predict pads to it)
PARETO_ALIAS_PREFIX = "pareto-"  # registry aliases set by `pareto --register`: pareto-<dataset>[-<n>]
PREDICTIONS_ARTIFACT_DIR = "predictions"
PARETO_ARTIFACT_DIR = "pareto"  # the front's plots, CSV and JSON, on the run that holds the front
PER_CLASS_FILE = "per_class_iou.csv"
# the per-image TP/FP/FN counts of the final evaluation: nrd.evidence.IMAGE_COUNTS_FILE ("image_counts.npz")
