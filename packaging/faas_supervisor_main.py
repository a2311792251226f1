"""Entry point of the self-contained build: the same `main` as the console script."""

import sys

from faas_supervisor import frozen

if __name__ == "__main__":
    if frozen.is_frozen():
        # Before any other import: nothing may read the build's own variables.
        frozen.restore_image_environment()
    from faas_supervisor.cli import main

    sys.exit(main())
