"""Entry point of the self-contained build: the same `main` as the console script."""

import os
import sys

from faas_supervisor.cli import main


def restore_environment() -> None:
    """Give the user's script the environment the runtime was started with.

    PyInstaller's bootloader sets LD_LIBRARY_PATH to the bundle's own libraries (keeping
    the original in LD_LIBRARY_PATH_ORIG) and adds _PYI_* variables, then re-executes
    itself. Left in place, the user's programs would load our libssl, libstdc++, ... instead
    of their image's, and a PyInstaller-built program in the image would take itself for
    a re-executed child. This process's own libraries are already resolved: the dynamic
    loader reads LD_LIBRARY_PATH once, at exec.
    """
    original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is not None:
        os.environ["LD_LIBRARY_PATH"] = original
    else:
        os.environ.pop("LD_LIBRARY_PATH", None)
    for name in [n for n in os.environ if n.startswith("_PYI_")]:
        del os.environ[name]


if __name__ == "__main__":
    if getattr(sys, "frozen", False):
        restore_environment()
    sys.exit(main())
