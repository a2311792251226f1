"""Start-up imports only what the command uses (docs/ARCHITECTURE.md, "What is imported when").

Each test runs the real command in a fresh interpreter (`faas_supervisor.cli.main` in
`python -c`) and, when it has exited, reads the modules it had loaded: a heavy import that
creeps back into `cli.py`, `config.py`, the S3 provider's construction or the watchdog's
start-up fails here, whatever the machine's speed. Not a timing test.

And a start-up that cannot go on (a bad config or setting) ends with one line and exit
status 2, never a traceback.
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

# Runs `write` functions (at_end) at the process's end, however it ends: at the
# interpreter's exit, or before os._exit, which runs no atexit function (the watchdog ends
# with it: cli._exit_now). The last given runs first.
AT_END = """
import atexit, json, os, sys
_writers = []
def at_end(write):
    _writers.append(write)
def _write_all():
    while _writers:
        _writers.pop()()
atexit.register(_write_all)
_real_exit = os._exit
def _exit_after_writing(status):
    _write_all()
    _real_exit(status)
os._exit = _exit_after_writing
"""

# Runs main(argv) and, at its end, writes the names of the loaded modules to a file.
DRIVER = """
out, argv = sys.argv[1], json.loads(sys.argv[2])
at_end(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from faas_supervisor.cli import main
sys.exit(main(argv))
"""

# Also writes, at its end, whether aiohttp's default TLS contexts have loaded their CAs.
TLS_STATE = """
def tls_state():
    connector = sys.modules["aiohttp.connector"]
    state = {name: connector.__dict__["_SSL_CONTEXT_" + name.upper()].loaded()
             for name in ("verified", "unverified")}
    open(sys.argv[3], "w").write(json.dumps(state))
at_end(tls_state)
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
    result = subprocess.run([sys.executable, "-c", AT_END + DRIVER, str(out), json.dumps(argv)],
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
    out, tls = tmp_path / "modules.json", tmp_path / "tls.json"
    argv = ["watchdog", "--script", str(script), "--config", str(config), "--port", str(port),
            "--host", "127.0.0.1", "--suppress-lock"]
    env = {k: v for k, v in os.environ.items() if k not in ("FUNCTION_CONFIG", "SCRIPT")}
    env["TMPDIR"] = str(tmp_path)
    log = tmp_path / "watchdog.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", AT_END + TLS_STATE + DRIVER, str(out), json.dumps(argv),
             str(tls)],
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
    # aiohttp's two default TLS contexts were made, and never read the CA bundle: nothing
    # here opened a TLS connection (lazy_ca.py).
    assert json.loads(tls.read_text()) == {"verified": False, "unverified": False}


@pytest.mark.parametrize(
    ("command", "config", "env", "expected"),
    [
        ("run", b"name: caf\xe9\n", {}, "not UTF-8 text"),
        ("run", b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", {}, "nested too deeply"),
        ("run", b'environment:\n  variables: {"A=B": x}\n', {},
         "'A=B' cannot be a variable's name"),
        ("run", b'environment:\n  variables: {X: "a\\0b"}\n', {}, "X: a NUL"),
        ("watchdog", b"", {"port": "70000"}, "port: '70000' is not a TCP port"),
        ("watchdog", b"", {"mode": "http", "port": "{free}", "upstream_port": "{free}"},
         "is the watchdog's own port"),
    ],
)
def test_a_bad_config_stops_the_start_with_one_line_and_exit_status_2(
    tmp_path: Path, script: Path, command: str, config: bytes, env: dict[str, str],
    expected: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(config)
    port = str(free_port())
    environ = {k: v for k, v in os.environ.items()
               if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT", "LOG_LEVEL")}
    environ |= {"TMPDIR": str(tmp_path), "suppress_lock": "true"}
    environ |= {name: value.replace("{free}", port) for name, value in env.items()}
    result = subprocess.run(
        [sys.executable, "-m", "faas_supervisor", command, "--script", str(script),
         "--config", str(path)],
        stdin=subprocess.DEVNULL, capture_output=True, env=environ, timeout=30)
    lines = result.stderr.decode().splitlines()
    assert (result.returncode, len(lines)) == (2, 1), result.stderr.decode()
    assert lines[0].startswith("faas-supervisor: error: ") and expected in lines[0]


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


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA and a certificate it signed for 127.0.0.1, and a self-signed one (no CA knows
    it), as PEM files; `ca` alone is the CA bundle the tests' TLS client is given."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
                    signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer or subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def pem(path: Path, *items: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
        data = b""
        for item in items:
            if isinstance(item, x509.Certificate):
                data += item.public_bytes(serialization.Encoding.PEM)
            else:
                data += item.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
        path.write_bytes(data)
        return path

    ca_key, key, stranger_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = certificate("faas-supervisor test CA", ca_key, None, ca_key, ca=True)
    known = certificate("127.0.0.1", key, ca.subject, ca_key, ca=False)
    stranger = certificate("127.0.0.1", stranger_key, None, stranger_key, ca=False)
    return {"ca": pem(folder / "ca.pem", ca),
            "known": pem(folder / "known.pem", known, key),
            "stranger": pem(folder / "stranger.pem", stranger, stranger_key)}


# aiohttp imported as the watchdog imports it, then its client's default contexts at work
# against two TLS servers on loopback: one whose certificate the default CA paths trust
# ($SSL_CERT_FILE, which OpenSSL's default paths honour), one nobody signed.
TLS_CLIENT = """
import asyncio, json, ssl, sys
from faas_supervisor.lazy_ca import import_aiohttp
import_aiohttp()
import aiohttp
from aiohttp import connector, web
verified, unverified = connector._SSL_CONTEXT_VERIFIED, connector._SSL_CONTEXT_UNVERIFIED
report = {"deferred": [not verified.loaded(), not unverified.loaded()],
          # ssl as it was: contexts made from now on load their CAs when asked, at once
          "patch gone": "set_default_verify_paths" not in ssl.SSLContext.__dict__,
          "a new context's CAs": ssl.create_default_context().cert_store_stats()["x509_ca"]}

async def main():
    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text="hello"))
    runner = web.AppRunner(app)
    await runner.setup()
    ports = {}
    for name in ("known", "stranger"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[1 if name == "known" else 2])
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        ports[name] = site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://127.0.0.1:{ports['known']}/") as answer:
            report["known"] = await answer.text()
        try:
            async with session.get(f"https://127.0.0.1:{ports['stranger']}/") as answer:
                report["stranger"] = await answer.text()
        except aiohttp.ClientConnectorCertificateError:
            report["stranger"] = "refused"
        async with session.get(f"https://127.0.0.1:{ports['stranger']}/", ssl=False) as answer:
            report["stranger, unverified"] = await answer.text()
    await runner.cleanup()

asyncio.run(main())
report["loaded"] = [verified.loaded(), unverified.loaded()]
print(json.dumps(report))
"""


def test_aiohttps_default_tls_contexts_load_the_default_cas_at_first_use(tmp_path: Path) -> None:
    """The watchdog imports aiohttp with its contexts' CA loads deferred (lazy_ca.py): they
    are loaded at the first handshake, so a certificate the default CA paths trust is
    accepted, and one nobody signed is refused, exactly as without the deferral."""
    files = _certificates(tmp_path)
    env = {**os.environ, "SSL_CERT_FILE": str(files["ca"]), "SSL_CERT_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", TLS_CLIENT, str(files["known"]), str(files["stranger"])],
        capture_output=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout) == {
        "deferred": [True, True],
        "patch gone": True,
        "a new context's CAs": 1,
        "known": "hello",
        "stranger": "refused",
        "stranger, unverified": "hello",
        "loaded": [True, True],
    }
