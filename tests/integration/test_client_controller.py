"""`faas-supervisor service ...` against the real controller, both as subprocesses.

The controller runs the embedded default (local backend) on loopback with its own data
folder; the client is the installed command, called as a user would, with the
endpoint and credentials in its environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import EXAMPLES, faas_command, free_port, wait_for_http

pytestmark = pytest.mark.integration

USER, PASSWORD = "u", "p"


@dataclass
class Controller:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def env(self, user: str = USER, password: str = PASSWORD) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_")}
        env.update({"FAAS_ENDPOINT": self.url, "FAAS_USER": user, "FAAS_PASSWORD": password})
        return env

    def service(self, *args: str, user: str = USER, password: str = PASSWORD,
                timeout: float = 120, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*faas_command(), "service", *args],
                              env={**self.env(user, password), **(env or {})}, text=True,
                              capture_output=True, timeout=timeout, check=False)

    def read_10_bytes(self, *args: str) -> tuple[int, bytes]:
        """A reader that stops early (`| head -c 10`): the status and stderr then."""
        process = subprocess.Popen([*faas_command(), "service", *args], env=self.env(),
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        try:
            assert process.stdout is not None and process.stderr is not None
            assert len(process.stdout.read(10)) == 10
            process.stdout.close()
            err = process.stderr.read()
            return process.wait(60), err
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate()

    def ok(self, *args: str) -> str:
        result = self.service(*args)
        assert result.returncode == 0, (
            f"service {' '.join(args)} exited {result.returncode}: {result.stderr}\n"
            f"controller log:\n{self.log.read_text()}")
        return result.stdout


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    port = free_port()
    data = tmp_path / "data"
    log = tmp_path / "controller.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_")}
    env["TMPDIR"] = str(tmp_path)
    cmd = [*faas_command(), "controller", "--data-dir", str(data), "--port", str(port),
           "--s3-port", str(free_port()), "--user", USER, "--password", PASSWORD]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process, log=log)
        yield Controller(process, f"http://127.0.0.1:{port}", log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def cowsay_fdl(folder: Path) -> Path:
    fdl = folder / "cowsay.yaml"
    # `script` relative to the FDL file, as OSCAR's examples write it.
    (folder / "script.sh").write_bytes((EXAMPLES / "cowsay" / "script.sh").read_bytes())
    fdl.write_text("""functions:
  oscar:
  - local:
      name: cowsay
      image: ghcr.io/grycap/cowsay
      cpu: '0.5'
      memory: 256Mi
      log_level: CRITICAL
      script: script.sh
""")
    return fdl


def test_the_client_drives_the_controller(controller: Controller, tmp_path: Path) -> None:
    fdl = cowsay_fdl(tmp_path)
    assert controller.ok("apply", "-f", str(fdl)) == 'Created service "cowsay"\n'
    assert controller.ok("apply", "-f", str(fdl)) == 'Updated service "cowsay"\n'

    listing = controller.ok("list").splitlines()
    assert listing[0].split() == ["NAME", "IMAGE", "CPU", "MEMORY"]
    assert listing[1].split() == ["cowsay", "ghcr.io/grycap/cowsay", "0.5", "256Mi"]

    service = json.loads(controller.ok("get", "cowsay"))
    assert service["name"] == "cowsay"
    assert service["token"]
    assert service["labels"]["oscar_service"] == "cowsay"

    said = controller.ok("run", "cowsay", "--text-input", '{"message": "hello"}')
    assert "< hello >" in said and "(oo)" in said
    event = tmp_path / "event.json"
    event.write_text('{"message": "from a file"}')
    out = tmp_path / "said.txt"
    assert controller.ok("run", "cowsay", "--input", str(event), "-o", str(out)) == ""
    assert "< from a file >" in out.read_text()

    job = controller.ok("job", "cowsay", "--input", str(event)).strip()
    assert job
    status = _wait_for_job(controller, job)
    assert status == "Succeeded", controller.log.read_text()
    table = controller.ok("logs", "cowsay").splitlines()
    assert table[0].split()[:3] == ["JOB", "NAME", "STATUS"]
    assert any(line.split()[:2] == [job, "Succeeded"] for line in table[1:])
    assert "< from a file >" in controller.ok("logs", "cowsay", job)

    wrong = controller.service("list", password="wrong")
    assert wrong.returncode == 1
    assert wrong.stderr.startswith("faas-supervisor: error: GET /system/services: 401")
    # Credentials in the endpoint, FAAS_USER and FAAS_PASSWORD set empty: those are unset
    # (it was exit 2, "credentials given two ways").
    host = controller.url.split("://", 1)[1]
    listed = controller.service("list", env={
        "FAAS_ENDPOINT": f"http://{USER}:{PASSWORD}@{host}", "FAAS_USER": "", "FAAS_PASSWORD": ""})
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[0] == "cowsay"

    assert controller.ok("delete", "cowsay") == 'Deleted service "cowsay"\n'
    gone = controller.service("get", "cowsay")
    assert gone.returncode == 1
    assert "GET /system/services/cowsay: 404" in gone.stderr
    assert gone.stderr.count("\n") == 1
    assert controller.ok("list") == "There are no services\n"


def test_run_streams_a_large_file_through_the_controller(controller: Controller,
                                                         tmp_path: Path) -> None:
    """An identity service: the input file is copied to the output folder and comes back."""
    (tmp_path / "copy.sh").write_text('#!/bin/sh\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/out"\n')
    fdl = tmp_path / "copy.yaml"
    fdl.write_text("functions:\n  oscar:\n  - local:\n      name: copy\n"
                   "      image: busybox\n      script: copy.sh\n")
    controller.ok("apply", "-f", str(fdl))
    source = tmp_path / "big.bin"
    with source.open("wb") as f:
        for _ in range(16):
            f.write(os.urandom(1 << 20))
    out = tmp_path / "back.bin"
    assert controller.ok("run", "copy", "--input", str(source), "--output", str(out)) == ""
    assert _sha256(out) == _sha256(source)

    # To stdout, a reader that stops early (`| head -c 10`): status 141 (a SIGPIPE's),
    # nothing said (it was a BrokenPipeError's traceback, exit 1).
    assert controller.read_10_bytes("run", "copy", "--input", str(source)) == (141, b"")


def test_logs_are_the_jobs_bytes_as_they_come(controller: Controller, tmp_path: Path) -> None:
    """A job's log is what its script printed: not always UTF-8 (it was a
    UnicodeDecodeError's traceback), and large: streamed, not held whole."""
    (tmp_path / "noisy.sh").write_text(
        "#!/bin/sh\nprintf 'caf\\351 \\377\\n'\nhead -c 2097152 /dev/zero | tr '\\0' x\n")
    fdl = tmp_path / "noisy.yaml"
    fdl.write_text("functions:\n  oscar:\n  - local:\n      name: noisy\n"
                   "      image: busybox\n      script: noisy.sh\n")
    controller.ok("apply", "-f", str(fdl))
    job = controller.ok("job", "noisy", "--text-input", "x").strip()
    assert _wait_for_job(controller, job, "noisy") == "Succeeded", controller.log.read_text()
    logs = subprocess.run([*faas_command(), "service", "logs", "noisy", job],
                          env=controller.env(), capture_output=True, timeout=120, check=False)
    assert logs.returncode == 0, logs.stderr
    assert b"caf\xe9 \xff\n" + b"x" * (2 << 20) in logs.stdout
    assert logs.stdout.endswith(b"\n")
    assert controller.read_10_bytes("logs", "noisy", job) == (141, b"")


def _wait_for_job(controller: Controller, job: str, service: str = "cowsay",
                  timeout: float = 60) -> str:
    """The job's final status, polled: the API has no completion event to await."""
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        for line in controller.ok("logs", service).splitlines()[1:]:
            fields = line.split()
            if fields[:1] == [job]:
                status = fields[1]
        if status in ("Succeeded", "Failed"):
            return status
        time.sleep(0.2)
    return status


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
