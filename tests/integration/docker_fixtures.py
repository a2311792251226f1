"""A real Docker engine and the images the tests run, shared by every test that needs them.

The engine is the machine's, started here (with vfs, no bridge: what works in this kind
of machine) when it is not running. Images are made locally, since no registry is
reachable: a Debian minbase made with debootstrap stands for `python:3.11-slim-bookworm`
(the Dockerfile's build stage installs Debian's Python itself when the base has none), busybox
plus the libraries of Debian's libc6 package stands for `busybox:stable-glibc` and for a
user image without Python, and the repository's Dockerfile built from them is the runtime
(init) image. Two more user images have no glibc: busybox alone (no C library at all, as a
static or distroless image) and busybox plus Debian's musl (as Alpine). The glibc and musl
images have `libc-maps`, a program linked against their C library that prints its own
/proc/self/maps: which C library the user's programs really get. Bases are cached by tag
in the engine: the first run takes a few minutes, later ones reuse them and Docker's build
cache.

conftest.py imports the fixtures, so that every test module shares one engine and one build.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

# Bumping a version rebuilds that base on the next run.
BUILD_BASE = "faas-supervisor-test/bookworm-minbase:1"
GLIBC_BASE = "faas-supervisor-test/busybox-glibc:2"
STATIC_BASE = "faas-supervisor-test/busybox-static:1"
MUSL_BASE = "faas-supervisor-test/busybox-musl:1"
# The user images the injected runtime is tested in, by the name tests are parametrized with.
USER_IMAGES = {"glibc": GLIBC_BASE, "static": STATIC_BASE, "musl": MUSL_BASE}
# Overridable so that two checkouts testing different runtimes at once never share a tag.
INIT_IMAGE = os.environ.get("FAAS_TEST_INIT_IMAGE", "faas-supervisor-test/init:latest")
LABEL = "faas-supervisor-test"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


# ---- the engine -------------------------------------------------------------------------


def _apt_install(*packages: str) -> None:
    """Install Debian packages that `make system-deps` would have (the test runs alone too)."""
    missing = [p for p in packages
               if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"cannot install {missing}: {' '.join(command)}:\n{done.stderr[-2000:]}")


def _docker_client() -> Any:
    import docker

    return docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=900)


def _engine_answers() -> bool:
    import docker.errors

    try:
        _docker_client().ping()
        return True
    except (docker.errors.DockerException, OSError):
        return False


@pytest.fixture(scope="session")
def docker_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The machine's Docker engine; started here (and stopped after) if it isn't running."""
    started: subprocess.Popen[bytes] | None = None
    if not _engine_answers():
        _apt_install("docker.io")
        if shutil.which("dockerd") is None:
            pytest.fail("dockerd is not installed and `apt-get install docker.io` did not add it")
        log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
        # vfs: no overlay filesystem inside this machine; no bridge or iptables: containers
        # use the host's network, which is all these tests need.
        with open(log, "wb") as out:
            started = subprocess.Popen(
                ["dockerd", "--storage-driver=vfs", "--iptables=false", "--bridge=none"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not _engine_answers():
            if started.poll() is not None or time.monotonic() > deadline:
                pytest.fail("Docker cannot run here: dockerd "
                            f"{'exited' if started.poll() is not None else 'did not answer'}:\n"
                            f"{log.read_text()[-3000:]}")
            time.sleep(0.2)  # the daemon's socket has no readiness event to wait on
    client = _docker_client()
    try:
        yield client
    finally:
        for container in client.containers.list(all=True, filters={"label": LABEL}):
            container.remove(force=True)
        for volume in client.volumes.list(filters={"label": LABEL}):
            volume.remove(force=True)
        client.close()
        if started is not None:
            started.send_signal(signal.SIGTERM)
            try:
                started.wait(30)
            except subprocess.TimeoutExpired:
                started.kill()
                started.wait()


# ---- local base images ------------------------------------------------------------------


def _has_image(client: Any, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def _import_rootfs(root: Path, tag: str) -> None:
    """`tar -C root -c . | docker import - tag`: an image from a folder, no registry."""
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    done = subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout,
                          capture_output=True, text=True)
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait() != 0 or done.returncode != 0:
        pytest.fail(f"docker import {tag} failed: {done.stderr}")


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (the only one reachable here)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        # one-line format (`deb URI bookworm main`) and deb822 (`URIs: URI`)
        for uri in re.findall(r"^\s*(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)(\S+)", text, re.M):
            if uri.rstrip("/").endswith("/debian"):
                return str(uri)
    return DEFAULT_MIRROR


def _make_build_base(client: Any) -> None:
    """Debian bookworm minbase: no Python, apt pointing at the reachable mirror."""
    if _has_image(client, BUILD_BASE):
        return
    _apt_install("debootstrap")
    with tempfile.TemporaryDirectory(prefix="faas-debootstrap-") as tmp:
        root = Path(tmp) / "rootfs"
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), debian_mirror()],
            capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"debootstrap failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        # The apt cache debootstrap leaves would only make every layer above it bigger.
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True)
        _import_rootfs(root, BUILD_BASE)


LIBC_MAPS_C = r"""
#include <stdio.h>
/* Prints its own memory map: the loader and C library this program was given. */
int main(void) {
    char line[4096];
    FILE *maps = fopen("/proc/self/maps", "r");
    if (maps == NULL) { perror("/proc/self/maps"); return 1; }
    while (fgets(line, sizeof line, maps) != NULL) fputs(line, stdout);
    return fclose(maps) != 0;
}
"""


def _busybox_root(root: Path) -> None:
    """Debian's busybox-static as /bin/sh and every applet: the image's only program."""
    _apt_install("busybox-static")
    for folder in ("bin", "etc", "tmp", "usr/local/bin"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", root / "bin/busybox")
    applets = subprocess.run([str(root / "bin/busybox"), "--list"], capture_output=True,
                             text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")


def _compile_libc_maps(compiler: str, target: Path) -> None:
    source = target.parent / "libc-maps.c"
    source.write_text(LIBC_MAPS_C)
    done = subprocess.run([compiler, "-O2", "-o", str(target), str(source)],
                          capture_output=True, text=True)
    source.unlink()
    if done.returncode != 0:
        pytest.fail(f"{compiler} libc-maps.c failed:\n{done.stderr}")


def _make_glibc_base(client: Any) -> None:
    """busybox and glibc alone: no Python, none of the libraries Python itself links."""
    if _has_image(client, GLIBC_BASE):
        return
    _apt_install("gcc", "libc6-dev")
    with tempfile.TemporaryDirectory(prefix="faas-glibc-") as tmp:
        root = Path(tmp)
        _busybox_root(root)
        for folder in ("lib64", "lib/x86_64-linux-gnu"):
            (root / folder).mkdir(parents=True)
        # Exactly the shared libraries of Debian's libc6 package (not libz, libssl, ...):
        # what "needs nothing from the image but glibc" means.
        files = subprocess.run(["dpkg", "-L", "libc6"], capture_output=True, text=True,
                               check=True).stdout.split()
        for name in files:
            path = Path(name)
            if re.search(r"^/(usr/)?lib/x86_64-linux-gnu/[^/]+\.so[.0-9]*$", name) and \
                    path.is_file():
                shutil.copy2(path, root / "lib/x86_64-linux-gnu" / path.name)
        (root / "lib64/ld-linux-x86-64.so.2").symlink_to(
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        _compile_libc_maps("gcc", root / "usr/local/bin/libc-maps")
        _import_rootfs(root, GLIBC_BASE)


def _make_static_base(client: Any) -> None:
    """No C library at all: busybox-static and nothing else (a static or distroless image)."""
    if _has_image(client, STATIC_BASE):
        return
    with tempfile.TemporaryDirectory(prefix="faas-static-") as tmp:
        root = Path(tmp)
        _busybox_root(root)
        _import_rootfs(root, STATIC_BASE)


def _make_musl_base(client: Any) -> None:
    """busybox-static plus Debian's musl (its loader is its libc), as Alpine has, and
    libc-maps linked against it with musl-gcc."""
    if _has_image(client, MUSL_BASE):
        return
    _apt_install("musl", "musl-tools")
    with tempfile.TemporaryDirectory(prefix="faas-musl-") as tmp:
        root = Path(tmp)
        _busybox_root(root)
        (root / "lib/x86_64-linux-musl").mkdir(parents=True)
        shutil.copy2("/lib/x86_64-linux-musl/libc.so", root / "lib/x86_64-linux-musl/libc.so")
        (root / "lib/ld-musl-x86_64.so.1").symlink_to("x86_64-linux-musl/libc.so")
        _compile_libc_maps("musl-gcc", root / "usr/local/bin/libc-maps")
        _import_rootfs(root, MUSL_BASE)


@pytest.fixture(scope="session")
def user_images(docker_client: Any) -> dict[str, str]:
    """USER_IMAGES, made if missing."""
    _make_glibc_base(docker_client)
    _make_static_base(docker_client)
    _make_musl_base(docker_client)
    return USER_IMAGES


def local_ca_certificates() -> str:
    """The certificates this machine trusts besides Debian's (Debian's place for them).

    Where egress goes through a TLS-inspecting proxy, pip in the build stage needs them
    to reach PyPI, as pip on this machine does.
    """
    folder = Path("/usr/local/share/ca-certificates")
    return "".join(p.read_text() for p in sorted(folder.rglob("*.crt")))


@pytest.fixture(scope="session")
def init_image(docker_client: Any) -> str:
    """The repository's Dockerfile, built from the local bases."""
    import docker.errors

    _make_build_base(docker_client)
    _make_glibc_base(docker_client)
    started = time.monotonic()
    repository, _, tag = INIT_IMAGE.rpartition(":")
    try:
        # The build stage first, tagged and labelled as ours: the whole build then takes
        # it from the cache. Untagged, a stage image outlives its build: vfs stores every
        # layer whole, and each run left one (half a GiB and more) behind.
        for target, name in (("build", f"{repository}-build-stage:{tag}"), (None, INIT_IMAGE)):
            docker_client.images.build(
                path=str(REPO), tag=name, target=target, rm=True, forcerm=True,
                buildargs={"BUILD_BASE": BUILD_BASE, "RUNTIME_BASE": GLIBC_BASE,
                           "EXTRA_CA_CERTS": local_ca_certificates()},
                network_mode="host",  # no bridge network: apt and pip need the host's
                labels={LABEL: "1"},
            )
        # Drop this test's earlier builds (and their stages), keeping the current ones as
        # the cache of the next run.
        docker_client.images.prune(filters={"dangling": True, "label": LABEL})
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream") or chunk.get("error") or "")
                      for chunk in exc.build_log)
        pytest.fail(f"docker build failed: {exc.msg}\n{log[-5000:]}")
    print(f"built {INIT_IMAGE} in {time.monotonic() - started:.0f} s")
    return INIT_IMAGE


@pytest.fixture(scope="session")
def runtime_volume(docker_client: Any, init_image: str) -> str:
    """A volume filled by the init container, as the docker backend and Kubernetes do."""
    from docker.types import Mount

    volume = docker_client.volumes.create(labels={LABEL: "1"})
    # no_copy: Docker would otherwise fill an empty volume from the image's /oscar/bin by
    # itself; a Kubernetes emptyDir starts empty, and the entry point must do the copy.
    mount = Mount("/oscar/bin", volume.name, type="volume", no_copy=True)
    output = docker_client.containers.run(init_image, remove=True, mounts=[mount],
                                          labels={LABEL: "1"}, network_mode="none")
    assert b"copied to /oscar/bin" in output
    return str(volume.name)
