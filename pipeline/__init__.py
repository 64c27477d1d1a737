"""pipeline: orchestration around ``nrd`` (CLI, and later Ray Train/Tune, MLflow, Pareto, cluster jobs)."""
