"""The self-contained build's traces taken out of the environment (frozen.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from faas_supervisor import frozen
from faas_supervisor.controller.backends.local import runtime_command

# The launcher moved the image's loader variables aside; PyInstaller then set its own
# LD_LIBRARY_PATH (and no LD_LIBRARY_PATH_ORIG: there was no LD_LIBRARY_PATH left).
BUNDLE_VARIABLES = {
    "LD_LIBRARY_PATH": "/oscar/bin/_internal",
    "_PYI_APPLICATION_HOME_DIR": "/oscar/bin/_internal",
    "_PYI_ARCHIVE_FILE": "/oscar/bin/_internal/faas-supervisor",
    "_PYI_PARENT_PROCESS_LEVEL": "1",
    "_FAAS_SUPERVISOR_LD_LIBRARY_PATH": "/image/lib",
    "_FAAS_SUPERVISOR_LD_PRELOAD": "/image/lib/libjemalloc.so.2",
    "_FAAS_SUPERVISOR_LD_AUDIT": "",
}


def test_the_image_gets_its_own_variables_back() -> None:
    environ = {"PATH": "/usr/bin:/bin", "HOME": "/root", **BUNDLE_VARIABLES}
    assert frozen.image_environment(environ) == {
        "PATH": "/usr/bin:/bin", "HOME": "/root", "LD_LIBRARY_PATH": "/image/lib",
        "LD_PRELOAD": "/image/lib/libjemalloc.so.2", "LD_AUDIT": "",
    }


def test_variables_the_image_did_not_have_are_gone() -> None:
    environ = {"PATH": "/bin", "LD_LIBRARY_PATH": "/oscar/bin/_internal",
               "_PYI_PARENT_PROCESS_LEVEL": "1"}
    assert frozen.image_environment(environ) == {"PATH": "/bin"}


def test_an_image_set_empty_stays_empty() -> None:
    environ = {"LD_LIBRARY_PATH": "/oscar/bin/_internal", "_FAAS_SUPERVISOR_LD_LIBRARY_PATH": ""}
    assert frozen.image_environment(environ) == {"LD_LIBRARY_PATH": ""}


def test_the_images_own_ld_library_path_orig_stays_as_it_was() -> None:
    """An image may set LD_LIBRARY_PATH_ORIG itself (PyInstaller's name, from a PyInstaller
    program of its own): it is the image's, kept, and makes no LD_LIBRARY_PATH."""
    environ = {"LD_LIBRARY_PATH": "/oscar/bin/_internal", "LD_LIBRARY_PATH_ORIG": "/foo"}
    assert frozen.image_environment(environ) == {"LD_LIBRARY_PATH_ORIG": "/foo"}


def test_restore_makes_os_environ_the_images() -> None:
    before = dict(os.environ)
    try:
        os.environ.update(BUNDLE_VARIABLES)
        frozen.restore_image_environment()
        assert os.environ["LD_LIBRARY_PATH"] == "/image/lib"
        assert os.environ["LD_PRELOAD"] == "/image/lib/libjemalloc.so.2"
        assert not [n for n in os.environ if n.startswith(("_PYI_", "_FAAS_SUPERVISOR_"))]
        assert "LD_LIBRARY_PATH_ORIG" not in os.environ
    finally:  # this process's children must not get the preload
        os.environ.clear()
        os.environ.update(before)


def test_the_frozen_local_backend_starts_the_launcher(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """The executable names /oscar/bin's loader as its interpreter: started directly
    anywhere else it would not run, so children start through the launcher."""
    (tmp_path / "_internal").mkdir()
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "_internal" / "faas-supervisor"))
    assert runtime_command() == [str(tmp_path / "faas-supervisor")]
    monkeypatch.setattr(sys, "frozen", False)
    assert runtime_command()[1:] == ["-P", "-m", "faas_supervisor"]
