"""The runtime image (SPEC 8) against a real Docker engine.

The top-level Dockerfile is built as it is, from local bases (no registry is reachable
here): a Debian minbase made with debootstrap stands for `python:3.11-slim-bookworm` (the
build stage installs Debian's Python itself when the base has none), and busybox plus the
libraries of Debian's libc6 package stands for `busybox:stable-glibc`. The init container
then fills a volume, and a user image with no Python (the same busybox + glibc image) runs
`/oscar/bin/faas-supervisor watchdog` from that volume and serves the examples over HTTP.

Bases are cached by tag in the engine: the first run takes a few minutes (debootstrap, then
the build stage's apt and pip), later ones reuse them and Docker's build cache.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import EXAMPLES, S3Server, faas_command, free_port
from tests.integration.docker_fixtures import GLIBC_BASE, LABEL

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
    """Starts the watchdog from the volume in the Python-less user image, /app = `app`."""
    started: list[Any] = []

    def start(app: Path) -> UserContainer:
        port = free_port()
        command = ["/oscar/bin/faas-supervisor", "watchdog", "--port", str(port),
                   "--host", "127.0.0.1", "--script", "/app/script.sh"]
        if (app / "function_config.yaml").exists():
            command += ["--config", "/app/function_config.yaml"]
        container = docker_client.containers.run(
            GLIBC_BASE, command, detach=True, network_mode="host", labels={LABEL: "1"},
            volumes={runtime_volume: {"bind": "/oscar/bin", "mode": "ro"},
                     str(app): {"bind": "/app", "mode": "ro"}})
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


def test_user_image_has_no_python(docker_client: Any, init_image: str) -> None:
    """The user image really lacks Python and every library but glibc's."""
    out = docker_client.containers.run(
        GLIBC_BASE, ["/bin/sh", "-c", "ls /usr/bin/python* /usr/lib/python* /usr/local/bin "
                     "2>/dev/null; ls /lib/x86_64-linux-gnu"],
        remove=True, network_mode="none", labels={LABEL: "1"}).decode()
    assert "python" not in out
    assert "libc.so.6" in out
    assert "libz" not in out and "libssl" not in out


def test_image_holds_the_runtime_under_oscar_bin(docker_client: Any, init_image: str) -> None:
    out = docker_client.containers.run(
        init_image, ["--version"], entrypoint=["/oscar/bin/faas-supervisor"], remove=True,
        network_mode="none", labels={LABEL: "1"})
    assert out.decode().startswith("faas-supervisor ")


def test_same_commands_and_flags_as_the_package(docker_client: Any,
                                                runtime_volume: str) -> None:
    """Every subcommand's --help, from the volume in the user image, equals the package's."""
    commands = ["", "watchdog", "run", "controller", "service", "manifests"]
    loop = "; ".join(f"/oscar/bin/faas-supervisor {c} --help; echo '<<end>>'" for c in commands)
    bundled = docker_client.containers.run(
        GLIBC_BASE, ["/bin/sh", "-c", loop], remove=True, network_mode="none",
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
    assert not list(tmp_path.glob(".incoming.*"))


def test_cowsay_json_in_text_out(user_container: Any) -> None:
    user = user_container(EXAMPLES / "cowsay")
    response = requests.post(user.url, json={"message": "hello from a container"}, timeout=30)
    assert response.status_code == 200, user.logs()
    assert "< hello from a container >" in response.text
    assert "(oo)" in response.text
    assert response.headers["X-Exit-Code"] == "0"


def test_one_output_file_comes_back_base64(user_container: Any, tmp_path: Path) -> None:
    (tmp_path / "script.sh").write_text(
        '#!/bin/sh\ntr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/upper.txt"\n')
    user = user_container(tmp_path)
    response = requests.post(user.url, data=base64.b64encode(b"shout this\n"), timeout=30)
    assert response.status_code == 200, user.logs()
    assert base64.b64decode(response.text) == b"SHOUT THIS\n"


def test_script_gets_the_images_environment(user_container: Any, tmp_path: Path) -> None:
    """Not the bundle's: its LD_LIBRARY_PATH would make the image's programs load our
    libraries, and PyInstaller's _PYI_* variables would confuse one of its own builds."""
    (tmp_path / "script.sh").write_text("#!/bin/sh\nenv\n")
    (tmp_path / "function_config.yaml").write_text("log_level: CRITICAL\n")
    user = user_container(tmp_path)
    response = requests.post(user.url, timeout=30)
    assert response.status_code == 200, user.logs()
    names = [line.split("=", 1)[0] for line in response.text.splitlines()]
    assert "TMP_OUTPUT_DIR" in names
    assert not [n for n in names if n.startswith(("LD_", "_PYI", "_MEI"))], response.text


def test_several_outputs_come_back_as_a_zip(user_container: Any) -> None:
    user = user_container(EXAMPLES / "split-lines")
    response = requests.post(user.url, data=base64.b64encode(b"one\ntwo\nthree\n"), timeout=30)
    assert response.status_code == 200, user.logs()
    archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(response.text)))
    assert sorted(archive.namelist()) == ["lines/1.txt", "lines/2.txt", "lines/3.txt",
                                          "size.txt"]
    assert archive.read("lines/2.txt") == b"two\n"
    assert archive.read("size.txt").strip() == b"14"


def test_failing_script_is_a_500(user_container: Any) -> None:
    user = user_container(EXAMPLES / "failing")
    response = requests.post(user.url, data=base64.b64encode(b"not an image"), timeout=30)
    assert response.status_code == 500
    assert response.headers["X-Exit-Code"] == "3"
    assert "the input is not an image" in response.text
    # SIGTERM from `docker stop` reaches the watchdog (PID 1), which exits 0.
    user.container.stop(timeout=20)
    assert user.container.wait(timeout=30)["StatusCode"] == 0


def test_s3_round_trip_with_the_trimmed_models(docker_client: Any, runtime_volume: str,
                                               moto_server: S3Server, tmp_path: Path) -> None:
    """botocore keeps only a few service models in the bundle: S3 still works, both ways."""
    s3 = moto_server.client()
    s3.create_bucket(Bucket="plants")
    s3.put_object(Bucket="plants", Key="input/a b.txt", Body=b"hello s3\n")
    event = {"Records": [{"eventSource": "minio:s3", "eventTime": "2026-11-24T10:23:44.000Z",
                          "s3": {"bucket": {"name": "plants"},
                                 "object": {"key": "input/a+b.txt", "size": 9}}}]}
    (tmp_path / "event.json").write_text(json.dumps(event))
    (tmp_path / "script.sh").write_text(
        '#!/bin/sh\ntr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/out.txt"\n')
    provider = (f"{{endpoint: {moto_server.endpoint}, access_key: {moto_server.access_key}, "
                f"secret_key: {moto_server.secret_key}, region: {moto_server.region}}}")
    (tmp_path / "function_config.yaml").write_text(
        f"storage_providers:\n  minio:\n    default: {provider}\n"
        "input:\n  - {storage_provider: minio.default, path: plants/input}\n"
        "output:\n  - {storage_provider: minio.default, path: plants/output}\n")
    docker_client.containers.run(
        GLIBC_BASE, ["/oscar/bin/faas-supervisor", "run", "--config", "/app/function_config.yaml",
                     "--script", "/app/script.sh", "--event-file", "/app/event.json"],
        remove=True, network_mode="host", labels={LABEL: "1"},
        volumes={runtime_volume: {"bind": "/oscar/bin", "mode": "ro"},
                 str(tmp_path): {"bind": "/app", "mode": "ro"}})
    assert s3.get_object(Bucket="plants", Key="output/out.txt")["Body"].read() == b"HELLO S3\n"


def test_bundle_tree_is_small_and_clean(docker_client: Any, runtime_volume: str) -> None:
    """No test suites, build leftovers or controller engine clients in the runtime."""
    listing = docker_client.containers.run(
        GLIBC_BASE, ["/bin/sh", "-c", "cd /oscar/bin && find . && du -sk ."], remove=True,
        network_mode="none", labels={LABEL: "1"},
        volumes={runtime_volume: {"bind": "/oscar/bin", "mode": "ro"}}).decode()
    paths = listing.splitlines()
    size_kib = int(paths[-1].split()[0])
    assert size_kib < 60 * 1000, f"{size_kib} KiB"
    for unwanted in ("/docker/", "/kubernetes/", "/tests/", "/pytest", "PyInstaller",
                     "botocore/data/ec2", "examples-1.json"):
        assert not [p for p in paths if unwanted in p], unwanted
    assert "./_internal/botocore/data/s3/2006-03-01/service-2.json.gz" in paths

