"""One module per ``nrd-bench`` sub-command; each exposes ``register(subparsers)``."""
