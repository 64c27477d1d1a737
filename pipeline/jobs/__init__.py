"""Cluster jobs: an nrd-bench command submitted to a Ray cluster through the Ray Jobs API."""
