"""Fixtures that start real things: watchdog processes and storage servers, on loopback.

Servers are started by the tests themselves (`make test` installs them); a server that
cannot start is a failure with its log, never a silent skip.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, overload

import pytest
import requests
from aiohttp import web

# The Docker engine and the locally built images: one of each for the whole session,
# whichever test modules use them (fixtures found in a module are that module's own).
from tests.integration.docker_fixtures import (  # noqa: F401
    docker_client,
    init_image,
    runtime_volume,
    user_images,
)

REPO = Path(__file__).resolve().parents[2]
STOP_GRACE = 15.0  # seconds the watchdogs a test left running get to stop at its end
EXAMPLES = REPO / "examples"

if TYPE_CHECKING:
    from tests.integration.ceph import CephRgw
    from tests.integration.controller_fixture import ControllerFactory, ControllerProcess
    from tests.integration.rucio_server import RucioServer


_handed_out: set[int] = set()


TCP_ESTABLISHED = 1  # linux/tcp_states.h


def server_side_state(port: int, peer: int) -> int | None:
    """The TCP state of the server's end of a loopback connection (local port `port`,
    remote port `peer`), from /proc/net/tcp: ESTABLISHED while its process holds it, a
    closing state once it has let it go (its unsent data then the kernel's, not its)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
                if int(local, 16) == port and int(remote, 16) == peer:
                    return int(fields[3], 16)
    return None


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    """`app` served on a loopback port the kernel picks: its base URL, for as long as the
    block runs (a stand-in server of a test, answering from the test's event loop)."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def free_port() -> int:
    """A port free now, and never one this test run handed out before: a port closed
    here is free again at once, and two taken for one test (a watchdog's and its
    server's upstream_port) came out the same once (the watchdog refused to start)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_for_http(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 30.0,
                  log: Path | None = None) -> None:
    """Poll until `url` answers 200; fail with the server's log if it dies or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            text = log.read_text() if log and log.exists() else ""
            pytest.fail(f"server exited with {process.returncode} before {url} answered:\n{text}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)  # polling a socket that has no readiness event to await
    text = log.read_text() if log and log.exists() else ""
    pytest.fail(f"{url} did not answer within {timeout} s:\n{text}")


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str = "size=256k") -> Iterator[Path]:
    """A tmpfs mounted on the (made) folder `path`, unmounted at the end; a skip with its
    reason printed when not root (the tests of a full disk need one)."""
    if os.geteuid() != 0:
        reason = "mounting a tmpfs needs root; run the tests as root (make test does)"
        print(reason)
        pytest.skip(reason)
    path.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"{options},mode=0755", "tmpfs",
                              str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs on {path}: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        # Lazily: a process the test left (it fails the test elsewhere) must not hide why.
        subprocess.run(["umount", "-l", str(path)], check=False)


def faas_command() -> list[str]:
    """The installed console script, or the module with this interpreter."""
    exe = shutil.which("faas-supervisor")
    return [exe] if exe else [sys.executable, "-m", "faas_supervisor"]


@dataclass
class WatchdogProcess:
    process: subprocess.Popen[bytes]
    port: int
    tmpdir: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def invocation_folders(self) -> list[Path]:
        """One per invocation whose folders (`faas-X-input`, `faas-X-output`) are there,
        one or both: `faas-X`."""
        return sorted({
            self.tmpdir / p.name.removesuffix("-input").removesuffix("-output")
            for p in self.tmpdir.iterdir()
            if p.name.startswith("faas-") and not p.name.startswith("faas-runtime-")
        })

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


class WatchdogFactory:
    """Starts `faas-supervisor watchdog` processes; each gets its own port and TMPDIR."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[WatchdogProcess] = []

    def __call__(
        self,
        script: str | Path,
        config: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        args: list[str] | None = None,
        wait: bool = True,
    ) -> WatchdogProcess:
        n = len(self.started)
        tmpdir = self.tmp_path / f"wd{n}-tmp"
        tmpdir.mkdir()
        if isinstance(script, str) and not Path(script).is_file():
            path = self.tmp_path / f"wd{n}-script.sh"
            path.write_text(script)
            script = path
        port = free_port()
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT")}
        full_env.update({"TMPDIR": str(tmpdir), "suppress_lock": "true"})
        full_env.update(env or {})
        cmd = [*faas_command(), "watchdog", "--port", str(port), "--host", "127.0.0.1",
               "--script", str(script)]
        if config is not None:
            if isinstance(config, str) and not Path(config).is_file():
                path = self.tmp_path / f"wd{n}-config.yaml"
                path.write_text(config)
                config = path
            cmd += ["--config", str(config)]
        cmd += args or []
        log = self.tmp_path / f"wd{n}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        wd = WatchdogProcess(process, port, tmpdir, log, full_env)
        self.started.append(wd)
        if wait:
            wait_for_http(f"{wd.url}/_/health", process, log=log)
        return wd

    def close(self) -> None:
        """SIGTERM, so that each stops its scripts and its server (a watchdog started by
        hand and killed outright cannot: README, Processes); SIGKILL after a while."""
        running = [wd for wd in self.started if wd.process.poll() is None]
        for wd in running:
            wd.process.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for wd in running:
            try:
                wd.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                wd.process.kill()
                wd.process.wait()


@pytest.fixture
def watchdog(tmp_path: Path) -> Iterator[WatchdogFactory]:
    factory = WatchdogFactory(tmp_path)
    yield factory
    factory.close()


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# A line of the runtime's own in a logs response (logs.InvocationLog): time, level, text.
RUNTIME_LINE = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) [^\n]*\n"


@overload
def script_output(body: bytes) -> bytes: ...
@overload
def script_output(body: str) -> str: ...
def script_output(body: bytes | str) -> bytes | str:
    """A logs response less the runtime's lines that start it (at INFO, the default):
    the script's output, for tests about something else than those lines."""
    data = body.encode() if isinstance(body, str) else body
    rest = re.sub(rb"\A(?:" + RUNTIME_LINE + rb")*", b"", data)
    return rest.decode() if isinstance(body, str) else rest


# ---- storage servers -------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region)

    def sqs(self):  # type: ignore[no-untyped-def]
        """A client of the same server's SQS (moto serves both)."""
        import boto3

        return boto3.client("sqs", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region)

    def queue_empty(self, url: str) -> bool:
        """No message in the queue at `url`: none visible, none in flight."""
        counts = self.sqs().get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return all(int(v) == 0 for v in counts.values())


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's standalone S3 server (it accepts any keys)."""
    exe = shutil.which("moto_server")
    if exe is None:
        pytest.fail("moto_server is not installed: run `make test`, which installs moto[server]")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/moto-api/", process, log=log)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def ceph_rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephRgw]:
    """One real Ceph RGW for the session (about 15 s to start), shared by every module."""
    from tests.integration.ceph import start_ceph_rgw  # ceph.py imports this module

    rgw = start_ceph_rgw(tmp_path_factory.mktemp("ceph"))
    try:
        yield rgw
    finally:
        rgw.stop()


@pytest.fixture(scope="session")
def rucio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RucioServer]:
    """One real Rucio server for the session (about 10 s to start once installed)."""
    from tests.integration.rucio_server import start_rucio_server  # imports this module

    server = start_rucio_server(tmp_path_factory.mktemp("rucio"))
    try:
        yield server
    finally:
        server.stop()


# ---- the controller, in a process of its own (controller_fixture.py) --------------------
# Imported where used: controller_fixture imports this module.


@pytest.fixture
def controllers(tmp_path: Path) -> Iterator[ControllerFactory]:
    """Controllers started on demand, each stopped (and checked) at the test's end; a test
    file needing other arguments defines its own."""
    from tests.integration.controller_fixture import ControllerFactory

    factory = ControllerFactory(tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def controller(controllers: ControllerFactory) -> ControllerProcess:
    return controllers()
