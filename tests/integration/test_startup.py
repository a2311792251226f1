"""Start-up imports only what the command uses (docs/ARCHITECTURE.md, "What is imported when").

Each test runs the real command in a fresh interpreter (`faas_supervisor.cli.main` in
`python -c`) and, when it has exited, reads the modules it had loaded: a heavy import that
creeps back into `cli.py`, `config.py`, the S3 provider's construction or the watchdog's
start-up fails here, whatever the machine's speed. Not a timing test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import S3Server, free_port, script_output, wait_for_http

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Runs main(argv) and, at exit, writes the names of the loaded modules to a file.
DRIVER = """
import atexit, json, sys
out, argv = sys.argv[1], json.loads(sys.argv[2])
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from faas_supervisor.cli import main
sys.exit(main(argv))
"""

# Needed by other commands, or by a storage transfer, never by these start-ups.
NEVER = ("boto3", "botocore", "s3transfer", "docker", "kubernetes",
         "faas_supervisor.controller", "faas_supervisor.client", "faas_supervisor.api_client")
# `run` is a CLI over asyncio: no HTTP server or client either.
NEVER_IN_RUN = (*NEVER, "aiohttp", "yarl", "multidict")

# A MinIO provider the config names but no path of this invocation uses: its client must
# not be built (nor boto3 imported) for an invocation that moves no object.
MINIO_CONFIG = """storage_providers:
  minio:
    default: {endpoint: "http://127.0.0.1:9", access_key: AKSTARTUP, secret_key: SKSTARTUP}
"""


def loaded(tmp_path: Path, argv: list[str], stdin: bytes = b"") -> tuple[list[str], bytes]:
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items()
           if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT", "LOG_LEVEL")}
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", DRIVER, str(out), json.dumps(argv)],
                            input=stdin, capture_output=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(out.read_text()), result.stdout


def present(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in names)]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "script.sh"
    path.write_text('#!/bin/sh\ncat "$INPUT_FILE_PATH"\n')
    return path


def test_a_plain_run_imports_no_client_controller_storage_sdk_yaml_or_structlog(
    tmp_path: Path, script: Path
) -> None:
    modules, stdout = loaded(tmp_path, ["run", "--script", str(script)], b'{"a":1}')
    assert script_output(stdout) == b'{"a":1}'  # it did run the script
    assert present(modules, NEVER_IN_RUN) == []
    # No config: nothing to parse. The invocation's INFO lines are written as kept, with
    # no logger to build (logs.InvocationLog).
    assert present(modules, ("yaml", "structlog")) == []


def test_a_run_whose_event_moves_no_object_builds_no_s3_client(
    tmp_path: Path, script: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(MINIO_CONFIG)
    argv = ["run", "--script", str(script), "--config", str(config)]
    modules, stdout = loaded(tmp_path, argv, b'{"b":2}')
    assert script_output(stdout) == b'{"b":2}'
    assert present(modules, NEVER_IN_RUN) == []


def test_watchdog_start_and_a_plain_invocation_import_no_storage_sdk_or_controller(
    tmp_path: Path, script: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(MINIO_CONFIG)
    port = free_port()
    out = tmp_path / "modules.json"
    argv = ["watchdog", "--script", str(script), "--config", str(config), "--port", str(port),
            "--host", "127.0.0.1", "--suppress-lock"]
    env = {k: v for k, v in os.environ.items() if k not in ("FUNCTION_CONFIG", "SCRIPT")}
    env["TMPDIR"] = str(tmp_path)
    log = tmp_path / "watchdog.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-c", DRIVER, str(out), json.dumps(argv)],
                                   stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/_/health", process, log=log)
        answer = requests.post(f"http://127.0.0.1:{port}/", data=b'{"c":3}', timeout=10)
        assert answer.status_code == 200, answer.text
        assert script_output(answer.content) == b'{"c":3}'
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0, log.read_text()
    modules = json.loads(out.read_text())
    assert "aiohttp.web" in modules  # the driver did run the watchdog
    assert present(modules, NEVER) == []


def test_the_s3_provider_builds_its_client_on_first_use_once() -> None:
    code = """
import sys
from faas_supervisor.config import ProviderConfig
from faas_supervisor.storage_providers.s3 import S3Provider
provider = S3Provider(ProviderConfig("minio", "default", {
    "endpoint": "http://127.0.0.1:9", "access_key": "AK", "secret_key": "SK"}))
assert "boto3" not in sys.modules, "boto3 imported by the constructor"
client = provider.client
assert "boto3" in sys.modules and provider.client is client
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert result.stdout == b"ok\n", result.stderr.decode()


async def test_an_s3_client_that_cannot_be_built_fails_its_transfer(tmp_path: Path) -> None:
    """Built on first use, a client botocore refuses (a bad endpoint) is that transfer's
    StorageError naming the provider, as any store failure is, not an error at start-up."""
    from faas_supervisor.config import ProviderConfig, Secret
    from faas_supervisor.errors import StorageError
    from faas_supervisor.storage_providers.s3 import S3Provider

    provider = S3Provider(ProviderConfig("minio", "bad", {
        "endpoint": "http://", "access_key": Secret("AKBADENDPOINT"),
        "secret_key": Secret("SKBADENDPOINT")}))
    with pytest.raises(StorageError) as caught:
        await provider.download("bucket", "key", tmp_path / "out")
    assert caught.value.message.startswith("minio.bad: cannot download bucket/key")
    assert "SKBADENDPOINT" not in caught.value.message
    assert not (tmp_path / "out").exists()


# A warm job runner's warm-up, then one job's `run` as its forked child would run it: the
# modules the job had to import on top of the runner's.
WARM_DRIVER = """
import json, sys
out, argv = sys.argv[1], json.loads(sys.argv[2])
from faas_supervisor import job_runner
job_runner.warm_up()
from faas_supervisor.cli import build_parser, main
parser = build_parser()
before = set(sys.modules)
status = main(argv, parser)
open(out, "w").write(json.dumps(sorted(set(sys.modules) - before)))
sys.exit(status)
"""


def test_a_warm_job_imports_nothing_its_runner_has_not(tmp_path: Path) -> None:
    """What `run` imports on first use (the config's YAML, the log renderer) is in the
    runner already: a job forked from it pays no import (job_runner.WARM_MODULES)."""
    script = tmp_path / "script.sh"
    script.write_text("echo hi\n")
    config = tmp_path / "config.yaml"
    config.write_text("log_level: DEBUG\n")  # every line printed: structlog in use
    out = tmp_path / "modules.json"
    argv = ["run", "--script", str(script), "--config", str(config)]
    env = {**os.environ, "EVENT": "aGkK", "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", WARM_DRIVER, str(out), json.dumps(argv)],
                            env=env, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(out.read_text()) == []


def test_a_job_moving_small_objects_imports_no_boto3(tmp_path: Path,
                                                     moto_server: S3Server) -> None:
    """A MinIO event's object down and the result up, both under the multipart threshold:
    one signed request each (s3_direct.py), boto3 never imported (bench/job.py's job)."""
    bucket = f"startup-{uuid.uuid4().hex[:8]}"
    store = moto_server.client()
    store.create_bucket(Bucket=bucket)
    store.put_object(Bucket=bucket, Key="input/data.txt", Body=b"small object\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        "storage_providers:\n  minio:\n    default:\n"
        f"      endpoint: {moto_server.endpoint}\n"
        "      access_key: AKSTARTUP\n      secret_key: SKSTARTUP\n"
        f"input:\n  - storage_provider: minio.default\n    path: {bucket}/input\n"
        f"output:\n  - storage_provider: minio.default\n    path: {bucket}/output\n")
    script = tmp_path / "script.sh"
    script.write_text('cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/result.txt"\n')
    event = json.dumps({"Records": [{
        "eventVersion": "2.0", "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": "input/data.txt", "size": 13}},
    }]}).encode()
    modules, _ = loaded(tmp_path, ["run", "--script", str(script), "--config", str(config)],
                        stdin=event)
    assert present(modules, ("boto3", "botocore", "s3transfer")) == []
    result = store.get_object(Bucket=bucket, Key="output/result.txt")["Body"].read()
    assert result == b"small object\n"
