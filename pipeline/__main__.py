"""``python -m pipeline``: the ``nrd-bench`` command line."""

import sys

from pipeline.commands.cli import main

sys.exit(main())
