"""Entry point of the self-contained build: the same `main` as the console script."""

import sys

from faas_supervisor.cli import main

if __name__ == "__main__":
    sys.exit(main())
