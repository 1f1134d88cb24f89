"""``python -m refcompress``: the command-line interface (refcompress.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
