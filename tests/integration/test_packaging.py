"""packaging/'s shell scripts run as the images run them, by dash and by busybox sh.

inject.sh (the init container's entry point) copies builds made here into a folder: two at
once, stopped by a signal, killed outright. The launcher starts a stand-in for the bundled
loader that shows what environment the runtime would get; frozen.py then gives the
script's back. Without a Docker engine: the images' own runs are test_image.py's.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from faas_supervisor import frozen

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
INJECT = REPO / "packaging" / "inject.sh"
LAUNCHER = REPO / "packaging" / "launcher.sh"
SHELLS = {"dash": ["dash"], "busybox": ["busybox", "sh"]}


# ---- builds and folders -------------------------------------------------------------------


def make_build(folder: Path, build_id: str, files: int = 160) -> Path:
    """A build as the image holds one: the launcher, `_internal` (here `files` files of
    128 KiB in a few folders, about what a copy of the real one takes), `.build-id`."""
    internal = folder / "_internal"
    internal.mkdir(parents=True)
    for n in range(files):
        path = internal / f"lib{n % 7}" / f"{build_id}-{n}.so"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha256(f"{build_id}{n}".encode()).digest() * 4096)
    (internal / "faas-supervisor").write_text(f"the executable of build {build_id}\n")
    launcher = folder / "faas-supervisor"
    launcher.write_bytes(LAUNCHER.read_bytes())
    launcher.chmod(0o755)
    (folder / ".build-id").write_text(f"{build_id}\n")
    return folder


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (a symbolic link to one followed): path -> SHA-256."""
    found = {}
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(parent, name)
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def holds(dest: Path, build: Path) -> bool:
    """`dest` runs `build` whole: its launcher, and exactly its `_internal`."""
    return ((dest / "faas-supervisor").read_bytes() == (build / "faas-supervisor").read_bytes()
            and tree(dest / "_internal") == tree(build / "_internal"))


def leftovers(dest: Path) -> list[Path]:
    """What injections left that no build is made of: copies, links under way."""
    return [p for pattern in (".incoming.*", ".link.*") for p in dest.rglob(pattern)]


def inject(shell: str, build: Path, dest: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*SHELLS[shell], str(INJECT), str(dest)], text=True, start_new_session=True,
        env={**os.environ, "FAAS_SUPERVISOR_BUILD": str(build)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out


IN_CREATE = 0x100


@contextlib.contextmanager
def copy_started(*folders: Path) -> Iterator[Callable[[], None]]:
    """Wait (the returned call) until an injection makes its copy's folder, `.incoming.*`,
    in one of `folders`: inotify, watching from before the injection starts."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        for folder in folders:
            assert libc.inotify_add_watch(fd, bytes(folder), IN_CREATE) >= 0

        def wait() -> None:
            while True:
                ready, _, _ = select.select([fd], [], [], 60)
                assert ready, "no injection started a copy in 60 s"
                data = os.read(fd, 65536)
                while data:
                    _wd, _mask, _cookie, size = struct.unpack_from("iIII", data)
                    name = data[16:16 + size].rstrip(b"\0")
                    data = data[16 + size:]
                    if name.startswith(b".incoming."):
                        return

        yield wait
    finally:
        os.close(fd)


def end_group(process: subprocess.Popen[str]) -> None:
    """What the injection left running once it is gone (a copy, when the shell died by
    the signal) killed, as a container's end kills it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


# ---- inject.sh ----------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_injections_into_one_folder_at_once_leave_a_whole_build(shell: str,
                                                                 tmp_path: Path) -> None:
    """Two injections at once, of two builds and of one: the folder holds one build whole
    (never one's files in the other's folder), nothing half made is left, and later
    injections see what it holds as it is."""
    a = make_build(tmp_path / "a", "aaaa1111")
    b = make_build(tmp_path / "b", "bbbb2222")
    for attempt, (first, second) in enumerate([(a, b)] * 6 + [(a, a)] * 2):
        dest = tmp_path / f"dest{attempt}"
        both = [inject(shell, first, dest), inject(shell, second, dest)]
        for process in both:
            finish(process)
        assert holds(dest, first) or holds(dest, second), f"attempt {attempt}"
        assert not leftovers(dest), f"attempt {attempt}"
        for build in (b, a, b):
            finish(inject(shell, build, dest))
            assert holds(dest, build), f"attempt {attempt}: {build.name} after the race"


@pytest.mark.parametrize("shell", SHELLS)
def test_an_injection_again_leaves_its_build_alone(shell: str, tmp_path: Path) -> None:
    build = make_build(tmp_path / "a", "aaaa1111", files=3)
    dest = tmp_path / "dest"
    assert "build aaaa1111 copied to" in finish(inject(shell, build, dest))
    made = {p: p.stat().st_ino for p in (dest / "_internal").rglob("*")}
    assert "already holds build aaaa1111" in finish(inject(shell, build, dest))
    assert {p: p.stat().st_ino for p in (dest / "_internal").rglob("*")} == made
    # Readable and runnable by any user, whatever the injection's umask was.
    assert (dest / "faas-supervisor").stat().st_mode & 0o777 == 0o755
    assert (dest / ".builds").stat().st_mode & 0o777 == 0o755


def test_a_launcher_being_switched_in_is_no_leftover_to_another_injection(
    tmp_path: Path,
) -> None:
    """The launcher's copy was made with cp -p, dated as the build (hours old): an injection
    running meanwhile swept it as a leftover (over 10 minutes old), and the first one
    failed on its rename (a review found it). A `mv` of our own runs the second injection
    just before the first renames its launcher in (dash runs mv from PATH)."""
    build = make_build(tmp_path / "a", "aaaa1111", files=3)
    hours_ago = time.time() - 3 * 3600
    os.utime(build / "faas-supervisor", (hours_ago, hours_ago))
    dest = tmp_path / "dest"
    shims = tmp_path / "shims"
    shims.mkdir()
    mv = shims / "mv"
    mv.write_text(f"""#!/bin/sh
case "$2:$3" in
  */.link.*:*/faas-supervisor)
    [ -n "$SECOND" ] || SECOND=1 dash {INJECT} {dest} >/dev/null || exit 99 ;;
esac
exec {shutil.which("mv")} "$@"
""")
    mv.chmod(0o755)
    first = subprocess.run(
        ["dash", str(INJECT), str(dest)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "FAAS_SUPERVISOR_BUILD": str(build),
             "PATH": f"{shims}:{os.environ['PATH']}"})
    assert first.returncode == 0, first.stderr
    assert holds(dest, build) and not leftovers(dest)


def signalled_while_copying(shell: str, build: Path, parent: Path,
                            signum: int) -> tuple[subprocess.Popen[str], Path]:
    """An injection sent `signum` (SIGKILL: its whole group, as a container's end) as soon
    as its copy begins, and its folder. Tried again in a new folder when the injection got
    as far as finishing its copy (a whole build in `.builds`) or switching before the
    signal came (a busy machine wakes this test late)."""
    for attempt in range(20):
        dest = parent / f"dest{attempt}"
        (dest / ".builds").mkdir(parents=True)
        with copy_started(dest, dest / ".builds") as started:
            process = inject(shell, build, dest)
            started()
        if signum == signal.SIGKILL:
            end_group(process)
        else:
            process.send_signal(signum)
        process.communicate(timeout=120)
        end_group(process)
        copied = any(not p.name.startswith(".") for p in (dest / ".builds").iterdir())
        if not copied and not (dest / "_internal").exists():
            return process, dest
    pytest.fail("every injection was done before the signal came")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                                (signal.SIGHUP, 129)])
def test_a_stopped_injection_leaves_no_copy_behind(shell: str, signum: int, status: int,
                                                   tmp_path: Path) -> None:
    """`docker stop`, a pod's deletion: the signal during the copy. The copy goes, and the
    shell exits as the signal would have ended it (dash and busybox sh run no EXIT trap
    when a signal ends them)."""
    build = make_build(tmp_path / "a", "aaaa1111")
    process, dest = signalled_while_copying(shell, build, tmp_path, signum)
    assert process.returncode == status
    assert not leftovers(dest)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_copy_killed_outright_is_removed_by_a_later_injection(shell: str,
                                                                tmp_path: Path) -> None:
    """SIGKILL (a container killed, a node lost) runs no trap: its half copy stays, until
    an injection finds it 10 minutes old (a copy takes seconds) and removes it. A younger
    one may be another injection's, under way: it stays."""
    build = make_build(tmp_path / "a", "aaaa1111")
    _, dest = signalled_while_copying(shell, build, tmp_path, signal.SIGKILL)
    killed = leftovers(dest)
    assert killed
    for path in killed:  # found later
        os.utime(path, (time.time() - 660, time.time() - 660), follow_symlinks=False)
    under_way = dest / ".builds" / ".incoming.UNDERWAY"
    (under_way / "build").mkdir(parents=True)
    finish(inject(shell, build, dest))
    assert holds(dest, build)
    assert leftovers(dest) == [under_way]


def test_a_folder_filled_by_the_earlier_injection_is_switched_over(tmp_path: Path) -> None:
    """Its build in `_internal` itself, as the earlier inject.sh left it: replaced."""
    old, new = make_build(tmp_path / "old", "0ld00000", 3), make_build(tmp_path / "new",
                                                                       "new11111", 3)
    dest = tmp_path / "dest"
    subprocess.run(["cp", "-a", f"{old}/.", str(dest)], check=True)
    finish(inject("busybox", new, dest))
    assert holds(dest, new)
    assert not (dest / ".build-id").exists()


# ---- the launcher and frozen.py -------------------------------------------------------------

# What PyInstaller's bootloader (6.x, pyi_utils_set_library_search_path) does to the
# environment before it starts Python: its own LD_LIBRARY_PATH, the original kept in
# LD_LIBRARY_PATH_ORIG only when it was set and not empty (its getenv returns NULL for an
# empty variable). test_image.py checks the result against the real bootloader.
SHOW_ENVIRONMENT = f"""#!{sys.executable}
import json, os, sys
env = dict(os.environ)
home = sys.argv[sys.argv.index("--library-path") + 1]
if env.get("LD_LIBRARY_PATH"):
    env["LD_LIBRARY_PATH_ORIG"] = env["LD_LIBRARY_PATH"]
    env["LD_LIBRARY_PATH"] = home + ":" + env["LD_LIBRARY_PATH"]
else:
    env["LD_LIBRARY_PATH"] = home
env["_PYI_APPLICATION_HOME_DIR"] = home
print(json.dumps(env))
"""

LOADER_VARIABLES = [
    {},
    {"LD_LIBRARY_PATH": "/image/lib"},
    {"LD_LIBRARY_PATH": ""},
    {"LD_LIBRARY_PATH_ORIG": "/foo"},
    {"LD_LIBRARY_PATH": "/image/lib", "LD_LIBRARY_PATH_ORIG": "/foo", "LD_PRELOAD": "",
     "LD_AUDIT": "/image/lib/audit.so"},
]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("image", LOADER_VARIABLES)
def test_the_script_gets_the_images_loader_variables_exactly(shell: str, image: dict[str, str],
                                                             tmp_path: Path) -> None:
    """Set, set empty or not set, each as the image had it: none lost, none made up."""
    build = make_build(tmp_path / "build", "aaaa1111", files=0)
    loader = build / "_internal" / "ld-linux-x86-64.so.2"
    loader.write_text(SHOW_ENVIRONMENT)
    loader.chmod(0o755)
    environ = {"PATH": os.environ["PATH"], "HOME": "/root", **image}
    started = subprocess.run([*SHELLS[shell], str(build / "faas-supervisor"), "run"],
                             env=environ, capture_output=True, text=True, check=True)
    runtime = json.loads(started.stdout)
    assert "LD_PRELOAD" not in runtime and "LD_AUDIT" not in runtime  # never ours to load
    restored = frozen.image_environment(runtime)
    names = ("LD_LIBRARY_PATH", "LD_LIBRARY_PATH_ORIG", "LD_PRELOAD", "LD_AUDIT", "HOME")
    assert {n: restored[n] for n in names if n in restored} == \
        {n: environ[n] for n in names if n in environ}
    assert not [n for n in restored if n.startswith(("_PYI_", "_FAAS_SUPERVISOR_"))]
