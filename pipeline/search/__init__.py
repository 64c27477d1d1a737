"""Searches: space files, and Ray Tune sweeps whose trials are training runs nested under one MLflow run."""
