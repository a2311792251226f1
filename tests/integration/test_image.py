"""The runtime image (SPEC 8) against a real Docker engine.

The top-level Dockerfile is built as it is, from local bases (no registry is reachable
here): a Debian minbase made with debootstrap stands for `python:3.11-slim-bookworm` (the
build stage installs Debian's Python itself when the base has none), and busybox plus the
libraries of Debian's libc6 package stands for `busybox:stable-glibc`. The init container
then fills a volume, and user images with no Python run `/oscar/bin/faas-supervisor` from
that volume: busybox with glibc, with musl, and with no C library at all
(docker_fixtures.USER_IMAGES). In each, one watchdog serves OSCAR's documented invocations,
and a storage-event job runs against moto; the user's programs get the image's own C
library and environment, the runtime none of the image's libraries.

Bases are cached by tag in the engine: the first run takes a few minutes (debootstrap, then
the build stage's apt and pip), later ones reuse them and Docker's build cache.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import EXAMPLES, REPO, S3Server, faas_command, free_port
from tests.integration.docker_fixtures import GLIBC_BASE, LABEL, STATIC_BASE, USER_IMAGES

# Generous: a first run on a new machine builds the bases and the image (about 5 min).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

# ---- the user's container ---------------------------------------------------------------


class UserContainer:
    def __init__(self, container: Any, port: int) -> None:
        self.container = container
        self.url = f"http://127.0.0.1:{port}"

    def logs(self) -> str:
        return str(self.container.logs().decode(errors="replace"))


@pytest.fixture
def user_container(docker_client: Any, runtime_volume: str) -> Iterator[Any]:
    """Starts the watchdog from the volume in a Python-less user image, /app = `app`."""
    started: list[Any] = []

    def start(app: Path, image: str = GLIBC_BASE, environment: dict[str, str] | None = None,
              ) -> UserContainer:
        port = free_port()
        command = ["/oscar/bin/faas-supervisor", "watchdog", "--port", str(port),
                   "--host", "127.0.0.1", "--script", "/app/script.sh"]
        if (app / "function_config.yaml").exists():
            command += ["--config", "/app/function_config.yaml"]
        container = docker_client.containers.run(
            image, command, detach=True, network_mode="host", labels={LABEL: "1"},
            environment=environment or {},
            volumes={runtime_volume: {"bind": "/oscar/bin", "mode": "ro"},
                     str(app): {"bind": "/app", "mode": "ro"},
                     str(EXAMPLES): {"bind": "/examples", "mode": "ro"}})
        started.append(container)
        user = UserContainer(container, port)
        deadline = time.monotonic() + 60
        while True:
            container.reload()
            if container.status == "exited":
                pytest.fail(f"the watchdog's container exited:\n{user.logs()}")
            try:
                if requests.get(f"{user.url}/_/health", timeout=1).status_code == 200:
                    return user
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{user.url}/_/health did not answer in 60 s:\n{user.logs()}")
            time.sleep(0.1)  # a port opening in a container has no event to wait on

    yield start
    for container in started:
        container.remove(force=True)


# ---- the tests --------------------------------------------------------------------------


# What each user image holds in /lib and /usr/lib: its C library, nothing Python needs.
IMAGE_LIBRARIES = {"glibc": "libc.so.6", "static": "", "musl": "libc.so"}


@pytest.mark.parametrize("name", USER_IMAGES)
def test_user_image_has_no_python(docker_client: Any, user_images: dict[str, str],
                                  name: str) -> None:
    """The user images really lack Python and every library but their C library's."""
    out = docker_client.containers.run(
        user_images[name], ["/bin/sh", "-c", "ls /usr/bin/python* /usr/lib/python* "
                            "/usr/local/lib 2>/dev/null; find / -xdev -name '*.so*'"],
        remove=True, network_mode="none", labels={LABEL: "1"}).decode()
    assert "python" not in out
    libraries = {line.rsplit("/", 1)[-1] for line in out.split()}
    assert "libz.so.1" not in libraries and "libssl.so.3" not in libraries
    if IMAGE_LIBRARIES[name]:
        assert IMAGE_LIBRARIES[name] in libraries
    else:
        assert not libraries, out
    if name != "glibc":
        assert "libc.so.6" not in libraries


def test_image_holds_the_runtime_under_oscar_bin(docker_client: Any, init_image: str) -> None:
    out = docker_client.containers.run(
        init_image, ["--version"], entrypoint=["/oscar/bin/faas-supervisor"], remove=True,
        network_mode="none", labels={LABEL: "1"})
    assert out.decode().startswith("faas-supervisor ")


def test_same_commands_and_flags_as_the_package(docker_client: Any, runtime_volume: str,
                                                user_images: dict[str, str]) -> None:
    """Every subcommand's --help, from the volume in an image with no C library, equals
    the package's."""
    commands = ["", "watchdog", "run", "controller", "service", "manifests"]
    loop = "; ".join(f"/oscar/bin/faas-supervisor {c} --help; echo '<<end>>'" for c in commands)
    bundled = docker_client.containers.run(
        STATIC_BASE, ["/bin/sh", "-c", loop], remove=True, network_mode="none",
        environment={"COLUMNS": "100"}, labels={LABEL: "1"},
        volumes={runtime_volume: {"bind": "/oscar/bin", "mode": "ro"}}).decode()
    env = {**os.environ, "COLUMNS": "100"}
    installed = "".join(
        subprocess.run([*faas_command(), *([c] if c else []), "--help"], env=env,
                       capture_output=True, text=True, check=True).stdout + "<<end>>\n"
        for c in commands)
    assert bundled == installed


def test_init_container_is_idempotent(docker_client: Any, init_image: str,
                                      runtime_volume: str, tmp_path: Path) -> None:
    mounts = {runtime_volume: {"bind": "/oscar/bin", "mode": "rw"}}
    again = docker_client.containers.run(init_image, remove=True, volumes=mounts,
                                         labels={LABEL: "1"}, network_mode="none")
    assert b"already holds" in again
    # Into another folder given as the argument, e.g. a host folder.
    docker_client.containers.run(init_image, ["/target"], remove=True, labels={LABEL: "1"},
                                 volumes={str(tmp_path): {"bind": "/target", "mode": "rw"}},
                                 network_mode="none")
    assert (tmp_path / "faas-supervisor").is_file()
    assert os.access(tmp_path / "faas-supervisor", os.X_OK)
    assert (tmp_path / "_internal").is_dir()
    assert not list(tmp_path.rglob(".incoming.*"))


# One watchdog per image serves every invocation below: the body says which it is.
DISPATCH = """#!/bin/sh
case $(head -c 5 "$INPUT_FILE_PATH") in
  '{'*) exec /bin/sh /examples/cowsay/script.sh ;;           # JSON in, text out
  upper*) tr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/upper.txt" ;;  # one file out
  fail*) exec /bin/sh /examples/failing/script.sh ;;          # a failing script: 500
  env*) env; echo '<<script>>'; cat /proc/self/maps; echo '<<runtime>>'; cat /proc/$PPID/maps
       if command -v libc-maps >/dev/null; then echo '<<program>>'; libc-maps; fi ;;
  *) exec /bin/sh /examples/split-lines/script.sh ;;         # several files out: a zip
esac
"""
# Loader variables as an image may set them for its own programs: the preload is a real
# library of the image's C library where it has one (the runtime loading it would show).
IMAGE_LOADER_ENV = {
    "glibc": {"LD_LIBRARY_PATH": "/image/lib", "LD_PRELOAD": "/lib/x86_64-linux-gnu/libm.so.6"},
    "static": {"LD_LIBRARY_PATH": "/image/lib", "LD_PRELOAD": "/image/lib/libnone.so"},
    "musl": {"LD_LIBRARY_PATH": "/image/lib", "LD_PRELOAD": "/lib/x86_64-linux-musl/libc.so"},
}
IMAGE_C_LIBRARY = {"glibc": "/lib/x86_64-linux-gnu/libc.so.6",
                   "musl": "/lib/x86_64-linux-musl/libc.so"}


def mapped_files(maps: str) -> set[str]:
    """The files in a /proc/PID/maps text."""
    return {fields[5] for fields in (line.split() for line in maps.splitlines())
            if len(fields) >= 6 and fields[5].startswith("/")}


@pytest.mark.parametrize("name", USER_IMAGES)
def test_documented_invocations_in_every_image(user_container: Any, user_images: dict[str, str],
                                               name: str, tmp_path: Path) -> None:
    """OSCAR's documented invocations, served from glibc, musl and C-library-less images."""
    (tmp_path / "script.sh").write_text(DISPATCH)
    (tmp_path / "function_config.yaml").write_text("log_level: INFO\n")
    user = user_container(tmp_path, user_images[name], IMAGE_LOADER_ENV[name])

    response = requests.post(user.url, json={"message": "hello from a container"}, timeout=30)
    assert response.status_code == 200, user.logs()
    assert "< hello from a container >" in response.text and "(oo)" in response.text
    assert response.headers["X-Exit-Code"] == "0"

    response = requests.post(user.url, data=base64.b64encode(b"upper: shout\n"), timeout=30)
    assert response.status_code == 200, user.logs()
    assert base64.b64decode(response.text) == b"UPPER: SHOUT\n"

    response = requests.post(user.url, data=base64.b64encode(b"one\ntwo\nthree\n"), timeout=30)
    assert response.status_code == 200, user.logs()
    archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(response.text)))
    assert sorted(archive.namelist()) == ["lines/1.txt", "lines/2.txt", "lines/3.txt",
                                          "size.txt"]
    assert archive.read("lines/2.txt") == b"two\n"
    assert archive.read("size.txt").strip() == b"14"

    check_the_script_gets_the_images_c_library(user, name)

    response = requests.post(user.url, data=base64.b64encode(b"fail: not an image"), timeout=30)
    assert response.status_code == 500
    assert response.headers["X-Exit-Code"] == "3"
    assert "the input is not an image" in response.text
    # SIGTERM from `docker stop` reaches the watchdog (PID 1, the launcher exec'd it), which
    # exits 0.
    user.container.stop(timeout=20)
    assert user.container.wait(timeout=30)["StatusCode"] == 0


def check_the_script_gets_the_images_c_library(user: UserContainer, name: str) -> None:
    """The script's environment is the image's (its loader variables given back, none of
    the bundle's); its programs load the image's C library, the runtime only its own."""
    response = requests.post(user.url, data=base64.b64encode(b"env\n"), timeout=30)
    assert response.status_code == 200, user.logs()
    env_text, rest = response.text.split("<<script>>\n", 1)
    script_maps, rest = rest.split("<<runtime>>\n", 1)
    runtime_maps, _, program_maps = rest.partition("<<program>>\n")
    env = dict(line.split("=", 1) for line in env_text.splitlines() if "=" in line)
    assert "TMP_OUTPUT_DIR" in env
    for variable, value in IMAGE_LOADER_ENV[name].items():
        assert env[variable] == value
    assert not [n for n in env if n.startswith(("_PYI", "_MEI", "_FAAS_SUPERVISOR"))
                or n in ("LD_LIBRARY_PATH_ORIG", "LD_AUDIT")], env_text

    runtime = mapped_files(runtime_maps)
    # By their real paths: /oscar/bin/_internal is a link to the build's, .builds/ID/_internal.
    (libc,) = [f for f in runtime if f.endswith("/libc.so.6")]
    internal = libc.removesuffix("/libc.so.6")
    assert re.fullmatch(r"/oscar/bin/\.builds/[0-9a-f]+/_internal", internal), libc
    assert f"{internal}/ld-linux-x86-64.so.2" in runtime
    assert not [f for f in runtime if ".so" in f and not f.startswith(f"{internal}/")]
    # busybox (the shell, cat) is static; the image's own program loads the image's libc.
    assert not [f for f in mapped_files(script_maps) if f.startswith("/oscar/bin")]
    if name in IMAGE_C_LIBRARY:
        program = mapped_files(program_maps)
        assert "/usr/local/bin/libc-maps" in program
        assert IMAGE_C_LIBRARY[name] in program
        assert not [f for f in program if f.startswith("/oscar/bin")]
    else:
        assert not program_maps


@pytest.mark.parametrize("name", USER_IMAGES)
def test_storage_event_job_in_every_image(docker_client: Any, runtime_volume: str,
                                          user_images: dict[str, str], moto_server: S3Server,
                                          tmp_path: Path, name: str) -> None:
    """`run` with a storage event against moto: stage-in, script, stage-out, both ways
    through botocore's trimmed models and the bundle's own libssl."""
    s3 = moto_server.client()
    bucket = f"plants-{name}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="input/a b.txt", Body=b"hello s3\n")
    event = {"Records": [{"eventSource": "minio:s3", "eventTime": "2026-11-24T10:23:44.000Z",
                          "s3": {"bucket": {"name": bucket},
                                 "object": {"key": "input/a+b.txt", "size": 9}}}]}
    (tmp_path / "event.json").write_text(json.dumps(event))
    (tmp_path / "script.sh").write_text(
        '#!/bin/sh\ntr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/out.txt"\n')
    provider = (f"{{endpoint: {moto_server.endpoint}, access_key: {moto_server.access_key}, "
                f"secret_key: {moto_server.secret_key}, region: {moto_server.region}}}")
    (tmp_path / "function_config.yaml").write_text(
        f"storage_providers:\n  minio:\n    default: {provider}\n"
        f"input:\n  - {{storage_provider: minio.default, path: {bucket}/input}}\n"
        f"output:\n  - {{storage_provider: minio.default, path: {bucket}/output}}\n")
    docker_client.containers.run(
        user_images[name], ["/oscar/bin/faas-supervisor", "run", "--config",
                            "/app/function_config.yaml", "--script", "/app/script.sh",
                            "--event-file", "/app/event.json"],
        remove=True, network_mode="host", labels={LABEL: "1"},
        volumes={runtime_volume: {"bind": "/oscar/bin", "mode": "ro"},
                 str(tmp_path): {"bind": "/app", "mode": "ro"}})
    assert s3.get_object(Bucket=bucket, Key="output/out.txt")["Body"].read() == b"HELLO S3\n"


def test_the_runtime_runs_from_any_folder(docker_client: Any, runtime_volume: str) -> None:
    """Elsewhere than /oscar/bin (the path its executable's interpreter names), through a
    relative path and a symbolic link, the launcher runs the bundled loader itself: in the
    image with no C library at all."""
    out = docker_client.containers.run(
        STATIC_BASE, ["/bin/sh", "-c", "/opt/rt/faas-supervisor --version && cd /opt && "
                      "rt/faas-supervisor --version && ln -s /opt/rt/faas-supervisor /tmp/fs "
                      "&& /tmp/fs --version"],
        remove=True, network_mode="none", labels={LABEL: "1"},
        volumes={runtime_volume: {"bind": "/opt/rt", "mode": "ro"}}).decode()
    assert out.count("faas-supervisor ") == 3, out


def test_bundle_tree_is_small_and_clean(docker_client: Any, runtime_volume: str) -> None:
    """No test suites, build leftovers or controller engine clients in the runtime."""
    listing = docker_client.containers.run(
        GLIBC_BASE, ["/bin/sh", "-c", "cd -P /oscar/bin/_internal/.. && find . && du -sk ."],
        remove=True, network_mode="none", labels={LABEL: "1"},
        volumes={runtime_volume: {"bind": "/oscar/bin", "mode": "ro"}}).decode()
    paths = listing.splitlines()
    size_kib = int(paths[-1].split()[0])
    assert size_kib < 60 * 1000, f"{size_kib} KiB"
    for unwanted in ("/docker/", "/kubernetes/", "/tests/", "/pytest", "PyInstaller",
                     "botocore/data/ec2", "examples-1.json"):
        assert not [p for p in paths if unwanted in p], unwanted
    assert "./_internal/botocore/data/s3/2006-03-01/service-2.json.gz" in paths
    # Its own C library and loader (packaging/own_libc.py), and the launcher.
    for own in ("ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libgcc_s.so.1",
                "faas-supervisor"):
        assert f"./_internal/{own}" in paths, own



# ---- a build injected where one runs; the loader variables the script gets ---------------


def inject(client: Any, init_image: str, volume: str, build: Path | None = None) -> str:
    """The repository's inject.sh run by the init image's shell into `volume`, copying the
    image's own build, or `build` (mounted where the image keeps its own)."""
    from docker.types import Mount

    mounts = [Mount("/oscar/bin", volume, type="volume", no_copy=True),
              Mount("/packaging", str(REPO / "packaging"), type="bind", read_only=True)]
    if build is not None:
        mounts.append(Mount("/opt/faas-supervisor", str(build), type="bind", read_only=True))
    return str(client.containers.run(
        init_image, ["/oscar/bin"], entrypoint=["/bin/sh", "/packaging/inject.sh"],
        mounts=mounts, remove=True, network_mode="none", labels={LABEL: "1"}).decode())


def test_a_running_build_is_not_rewritten_by_another_injected_over_it(
    docker_client: Any, init_image: str, moto_server: S3Server, tmp_path: Path
) -> None:
    """Another build injected into the folder a job runs from (a manual volume shared by
    containers, as the README's example is): the job, which still reads its build's files
    by path (PyInstaller's modules, at its build's offsets), ends as it would have. Here
    the other build's executable, which holds those modules, is all zeros."""
    s3 = moto_server.client()
    s3.create_bucket(Bucket="survivor")
    other = tmp_path / "other"
    other.mkdir()
    docker_client.containers.run(
        init_image, ["-c", "cp -a /opt/faas-supervisor/. /other/"], entrypoint=["/bin/sh"],
        remove=True, network_mode="none", labels={LABEL: "1"},
        volumes={str(other): {"bind": "/other", "mode": "rw"}})
    (other / ".build-id").write_text("0123456789abcdef\n")
    executable = other / "_internal" / "faas-supervisor"
    executable.write_bytes(bytes(executable.stat().st_size))

    app = tmp_path / "app"
    app.mkdir()
    os.mkfifo(app / "go")
    (app / "script.sh").write_text(
        'read -r line < /app/go\necho "$line" > "$TMP_OUTPUT_DIR/out.txt"\n')
    (app / "event.json").write_text("{}")
    provider = (f"{{endpoint: {moto_server.endpoint}, access_key: {moto_server.access_key}, "
                f"secret_key: {moto_server.secret_key}, region: {moto_server.region}}}")
    (app / "function_config.yaml").write_text(
        f"storage_providers:\n  minio:\n    default: {provider}\n"
        "output:\n  - {storage_provider: minio.default, path: survivor/output}\n")
    volume = docker_client.volumes.create(labels={LABEL: "1"}).name
    job = None
    try:
        assert "copied to /oscar/bin" in inject(docker_client, init_image, volume)
        job = docker_client.containers.run(
            GLIBC_BASE, ["/oscar/bin/faas-supervisor", "run", "--config",
                         "/app/function_config.yaml", "--script", "/app/script.sh",
                         "--event-file", "/app/event.json"],
            detach=True, network_mode="host", labels={LABEL: "1"},
            volumes={volume: {"bind": "/oscar/bin", "mode": "ro"},
                     str(app): {"bind": "/app", "mode": "ro"}})
        runs, injected = threading.Event(), threading.Event()

        def release() -> None:
            with open(app / "go", "w") as go:  # opened once the script opens it: it runs
                runs.set()
                injected.wait(300)
                go.write("still here\n")

        releaser = threading.Thread(target=release)
        releaser.start()
        try:
            if not runs.wait(120):
                open(app / "go").close()  # the releaser let go
                pytest.fail(f"the job's script never started:\n{job.logs().decode()}")
            assert "copied to /oscar/bin" in inject(docker_client, init_image, volume, other)
        finally:
            injected.set()
            releaser.join()
        assert job.wait(timeout=120)["StatusCode"] == 0, job.logs().decode()
    finally:
        if job is not None:
            job.remove(force=True)
        docker_client.volumes.get(volume).remove(force=True)
    output = s3.get_object(Bucket="survivor", Key="output/out.txt")["Body"].read()
    assert output == b"still here\n"


@pytest.mark.parametrize("image", [{}, {"LD_LIBRARY_PATH": ""}, {"LD_LIBRARY_PATH_ORIG": "/foo"},
                                   {"LD_LIBRARY_PATH": "/a", "LD_LIBRARY_PATH_ORIG": "/b"}])
def test_the_script_gets_the_images_library_path_exactly(
    docker_client: Any, runtime_volume: str, tmp_path: Path, image: dict[str, str]
) -> None:
    """Through the real bootloader: set, set empty or not set, as the image had it."""
    (tmp_path / "script.sh").write_text("env > /out/env\n")
    docker_client.containers.run(
        GLIBC_BASE, ["/oscar/bin/faas-supervisor", "run", "--script", "/out/script.sh"],
        environment={**image, "EVENT": "{}"}, remove=True, network_mode="none",
        labels={LABEL: "1"}, volumes={runtime_volume: {"bind": "/oscar/bin", "mode": "ro"},
                                      str(tmp_path): {"bind": "/out", "mode": "rw"}})
    env = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines()
               if "=" in line)
    names = ("LD_LIBRARY_PATH", "LD_LIBRARY_PATH_ORIG")
    assert {n: env[n] for n in names if n in env} == image
