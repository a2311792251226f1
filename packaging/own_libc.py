"""Give the PyInstaller build its own C library, loader and launcher (SPEC 8).

PyInstaller leaves glibc (the loader, libc, libm, libpthread, ...) to the host: a build
made on Debian then needs glibc in the user's image. `make_self_contained` turns the
one-folder build into one that needs nothing from the image but `/bin/sh`:

    faas-supervisor               the launcher (launcher.sh): /bin/sh, execs the below
    _internal/faas-supervisor     PyInstaller's executable; PT_INTERP = /oscar/bin/_internal/
                                  ld-linux-x86-64.so.2, RPATH = $ORIGIN
    _internal/ld-linux-x86-64.so.2, libc.so.6, libm.so.6, libgcc_s.so.1, ...   the build
                                  machine's glibc: whatever the executable and every library
                                  of the build needs, found by the build machine's loader

At the runtime's fixed mount path the launcher execs the executable, whose interpreter
is the bundled loader; anywhere else (dist/ on the build machine, a copy elsewhere) it
runs the bundled loader explicitly with `--library-path`. Either way the build's
libraries come first, and the image's /lib is never searched for one the build has.

Run from the spec on the build machine (its glibc is the one bundled), after COLLECT.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

MOUNT = "/oscar/bin"  # the runtime's fixed path in users' containers (SPEC 8)
LOADER = "ld-linux-x86-64.so.2"
CONTENTS = "_internal"
# Loaded with dlopen by glibc itself, so no DT_NEEDED names it: pthread_exit and
# pthread_cancel unwind through libgcc_s, and abort the process when it is missing
# (CPython exits a thread that way at interpreter shutdown).
DLOPENED = ("libgcc_s.so.1",)
_RESOLVED = re.compile(r"^\s*(\S+) => (/\S+) \(0x[0-9a-f]+\)$")


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def _elf_files(folder: Path) -> list[Path]:
    """The executable and the libraries, less the loader (which needs nothing)."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not p.is_symlink() and p.name != LOADER and _is_elf(p))


def _dependencies(loader: Path, path: Path, args: list[str],
                  env: dict[str, str]) -> dict[str, str]:
    """The libraries `path` needs and where `loader` finds them (`ld.so --list`)."""
    done = subprocess.run([str(loader), *args, "--list", str(path)], env=env,
                          capture_output=True, text=True)
    # `--list` of a library that needs nothing says so and exits 1, as ldd does.
    if done.returncode != 0 and "statically linked" not in done.stdout + done.stderr:
        raise RuntimeError(f"{loader} --list {path}: {done.stderr.strip()}")
    found = {}
    for line in done.stdout.splitlines():
        if "=> not found" in line:
            raise RuntimeError(f"{path}: {line.strip()}")
        match = _RESOLVED.match(line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def _copy_c_library(internal: Path, host_loader: Path) -> list[str]:
    """Copy into `internal` every library the build needs from the build machine."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LD_LIBRARY_PATH": str(internal)}
    copied = []
    shutil.copy2(host_loader.resolve(), internal / LOADER)
    wanted: dict[str, str] = {}
    for name in DLOPENED:
        places = [f"{folder}/{name}" for folder in ("/lib/x86_64-linux-gnu",
                                                    "/usr/lib/x86_64-linux-gnu", "/lib64")]
        found = [p for p in places if os.path.exists(p)]
        if not found:
            raise RuntimeError(f"{name} is not on this machine: looked in {', '.join(places)}")
        wanted[name] = found[0]
    pending = _elf_files(internal)
    while pending or wanted:
        for path in pending:
            wanted.update(_dependencies(host_loader, path, [], env))
        pending = []
        for name, source in wanted.items():
            target = internal / name
            if not target.exists() and Path(source).resolve().parent != internal.resolve():
                shutil.copy2(Path(source).resolve(), target)
                copied.append(name)
                pending.append(target)
        wanted = {}
    return copied


def _check_isolated(internal: Path) -> None:
    """Every library of every file resolves inside the build, by the bundled loader."""
    loader = internal / LOADER
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    args = ["--inhibit-cache", "--library-path", str(internal)]
    root = str(internal.resolve()) + os.sep
    for path in _elf_files(internal):
        for name, where in _dependencies(loader, path, args, env).items():
            if not os.path.realpath(where).startswith(root):
                raise RuntimeError(f"{path} would load {name} from {where}, outside the build")


def make_self_contained(collected: Path, folder: Path, launcher: Path, patchelf: str) -> None:
    """`collected` (COLLECT's folder, old flat layout) becomes `folder`/_internal, with the
    C library copied in, the executable patched and the launcher written beside it."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    internal = folder / CONTENTS
    collected.rename(internal)
    executable = internal / folder.name
    host_loader = Path(subprocess.run([patchelf, "--print-interpreter", str(executable)],
                                      check=True, capture_output=True, text=True).stdout.strip())
    copied = _copy_c_library(internal, host_loader)
    # RPATH, not RUNPATH: searched before LD_LIBRARY_PATH, so an image's LD_LIBRARY_PATH
    # cannot lend this process its own libc.so.6 (PyInstaller's restart puts _internal
    # first in LD_LIBRARY_PATH anyway). The ELF section holding PyInstaller's archive
    # survives the edit.
    subprocess.run([patchelf, "--set-interpreter", f"{MOUNT}/{CONTENTS}/{LOADER}",
                    "--force-rpath", "--set-rpath", "$ORIGIN", str(executable)], check=True)
    _check_isolated(internal)
    shutil.copy2(launcher, folder / folder.name)
    os.chmod(folder / folder.name, 0o755)
    print(f"own_libc: bundled {LOADER} and {', '.join(sorted(copied))}")
