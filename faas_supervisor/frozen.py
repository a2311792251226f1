"""The self-contained build (`make dist`, SPEC 8): its traces taken out of the environment.

The build starts through its own glibc and loader (packaging/own_libc.py, launcher.sh),
and on the way the environment is changed for this process alone:

* the launcher moves the image's LD_LIBRARY_PATH, LD_PRELOAD and LD_AUDIT (libraries
  built for the image's C library, not ours) aside, to _FAAS_SUPERVISOR_LD_LIBRARY_PATH,
  ..._LD_PRELOAD and ..._LD_AUDIT, each only if the image set it (empty or not);
* PyInstaller's bootloader then sets LD_LIBRARY_PATH to the build's libraries and adds
  _PYI_* variables, and re-executes itself. (Its own copy of the original,
  LD_LIBRARY_PATH_ORIG, would lose an empty value; with LD_LIBRARY_PATH moved aside it
  writes none, so an LD_LIBRARY_PATH_ORIG here is the image's own, and stays.)

`image_environment` undoes both: the environment the container was started with, which
is what the user's script, and every process it starts, must get, so that they run with
the image's own loader and libraries. The frozen entry point applies it to `os.environ`
before anything reads it (config.current_environ is read after), so every child of this
process inherits the image's environment whichever way it is started. This process's
own libraries are already resolved: the loader reads these variables once, at exec.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

SAVED_PREFIX = "_FAAS_SUPERVISOR_"  # the launcher's: _FAAS_SUPERVISOR_LD_PRELOAD, ...
SAVED_BY_LAUNCHER = ("LD_LIBRARY_PATH", "LD_PRELOAD", "LD_AUDIT")
PYINSTALLER_PREFIX = "_PYI_"


def is_frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def image_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` of the frozen build as the image had it (see the module's docstring)."""
    env = {k: v for k, v in environ.items()
           if not k.startswith((PYINSTALLER_PREFIX, SAVED_PREFIX))
           and k not in SAVED_BY_LAUNCHER}
    for name in SAVED_BY_LAUNCHER:
        if SAVED_PREFIX + name in environ:
            env[name] = environ[SAVED_PREFIX + name]
    return env


def restore_image_environment() -> None:
    """Make `os.environ` the image's: called first thing by the frozen entry point."""
    env = image_environment(os.environ)
    os.environ.clear()
    os.environ.update(env)


def launcher() -> Path:
    """The frozen build's own start command: the launcher beside `_internal`, which holds
    the executable (sys.executable). The executable itself starts only at /oscar/bin, the
    path its interpreter names."""
    return Path(sys.executable).resolve().parent.parent / "faas-supervisor"
