"""pipeline: orchestration around ``nrd``: training with Ray Train and Ray Data (``training``), Ray Tune searches
(``search``), results read back from MLflow (``results``: run catalogue, Pareto front, report, predict), Ray cluster
jobs (``jobs``) and the ``nrd-bench`` command line (``commands``). ``config`` is the one training config, ``names``
the MLflow tag and run-file names they share."""
