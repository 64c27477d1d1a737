"""The ``nrd-bench`` command line (``cli``): one module per sub-command, each exposing ``register(subparsers)``;
``common`` holds what several share."""
