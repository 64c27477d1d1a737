"""``python -m pipeline.cli``: the ``nrd-bench`` command line (``pipeline.commands.cli``), at its short path."""

import sys

from pipeline.commands.cli import cli_reference, main

if __name__ == "__main__":
    if sys.argv[1:] == ["--reference"]:
        sys.stdout.write(cli_reference())
        sys.exit(0)
    sys.exit(main())
