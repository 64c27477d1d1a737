"""Results read back from MLflow: the run catalogue, the Pareto front and its plots, the report, predictions."""
