"""Training: Ray Data input, the training loop on Ray Train workers, checkpoints, cluster checks, MLflow tracking."""
