"""`python -m mamba_export`: the mamba-export command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
