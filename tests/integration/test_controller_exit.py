"""The controller's exit once stopped: a thread still blocked on a stalled store does not
hold it. A real controller process, its `--minio-endpoint` a proxy to moto that stops
forwarding when told; a bucket create caught in the stall, then SIGTERM (twice, or once
and the whole drain). And its stop when its log lines cannot be written.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from faas_supervisor.controller.server import DRAIN_TIMEOUT, EXIT_GRACE
from tests.integration.conftest import (
    S3Server,
    faas_command,
    free_port,
    script_output,
    wait_for_http,
)
from tests.integration.controller_fixture import (
    PASSWORD,
    USER,
    ControllerFactory,
    ControllerProcess,
    wait_until,
)
from tests.integration.servers import StallingProxy
from tests.leftovers import processes, running_with

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# The controller's own bound (server.EXIT_GRACE, 5 s) and some slack; the store's client
# would hold the thread for up to 60 s (20 s to read, 3 attempts).
EXIT_WITHIN = 15.0


@pytest.fixture
def proxy(moto_server: S3Server) -> Iterator[StallingProxy]:
    proxy = StallingProxy(moto_server.endpoint)
    try:
        yield proxy
    finally:
        proxy.close()


def create_bucket_request(controller: ControllerProcess, bucket: str) -> socket.socket:
    """POST /system/buckets sent whole; its answer is not read (it never comes)."""
    body = json.dumps({"bucket_name": bucket}).encode()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    sock = socket.create_connection(("127.0.0.1", controller.port), timeout=30)
    sock.sendall(f"POST /system/buckets HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                 .encode() + body)
    return sock


@contextlib.contextmanager
def stalled_create(
    controllers: ControllerFactory, proxy: StallingProxy, moto_server: S3Server
) -> Iterator[ControllerProcess]:
    """A controller on the proxy, a bucket create of its API caught in the stall: its
    boto3 call in the default pool's thread, waiting for an answer."""
    controller = controllers(args=[
        "--minio-endpoint", proxy.url,
        "--minio-access-key", moto_server.access_key,
        "--minio-secret-key", moto_server.secret_key,
        "--minio-region", moto_server.region,
    ])
    # Through the proxy to moto while it forwards.
    unique = uuid.uuid4().hex[:8]  # moto is the session's
    made = controller.request("POST", "/system/buckets",
                              json={"bucket_name": f"exit-before-{unique}"})
    assert made.status_code == 201, made.text

    proxy.stall()
    pending = create_bucket_request(controller, f"exit-stalled-{unique}")
    try:
        assert proxy.stalled_request.wait(30), controller.log_text()
        yield controller
    finally:
        pending.close()


def forced_stop(controller: ControllerProcess) -> float:
    """SIGTERM and, once taken, SIGTERM again: when the second was sent."""
    controller.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "controller stopping" in controller.log_text(), 30,
               "the first SIGTERM taken", controller)
    controller.process.send_signal(signal.SIGTERM)
    return time.monotonic()


def test_a_forced_stop_does_not_wait_for_a_thread_blocked_on_a_stalled_store(
    controllers: ControllerFactory, proxy: StallingProxy, moto_server: S3Server
) -> None:
    with stalled_create(controllers, proxy, moto_server) as controller:
        forced = forced_stop(controller)
        try:
            status = controller.process.wait(EXIT_WITHIN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_WITHIN} s after the second SIGTERM:\n"
                        f"{controller.log_text()}")
        took = time.monotonic() - forced

    log = controller.log_text()
    assert status == 0, log
    assert took < EXIT_WITHIN, log
    # Said, and flushed before the process ended.
    assert "not waited for" in log, log


def test_signals_during_the_exit_wait_change_nothing(
    controllers: ControllerFactory, proxy: StallingProxy, moto_server: S3Server
) -> None:
    """SIGTERM/SIGINT are the controller's until it ends: during the exit's wait for the
    stuck thread (up to EXIT_GRACE), a third signal neither kills it (SIGTERM's default)
    nor raises KeyboardInterrupt into asyncio.run's unbounded join of that thread (Ctrl-C).
    They come one after the other until it has ended, through the whole wait."""
    with stalled_create(controllers, proxy, moto_server) as controller:
        forced = forced_stop(controller)
        more = itertools.cycle((signal.SIGINT, signal.SIGTERM))
        while controller.process.poll() is None and time.monotonic() - forced < EXIT_WITHIN:
            with contextlib.suppress(ProcessLookupError):
                controller.process.send_signal(next(more))
            with contextlib.suppress(subprocess.TimeoutExpired):
                controller.process.wait(0.2)
        status = controller.process.poll()
        took = time.monotonic() - forced

    log = controller.log_text()
    assert status == 0, log
    assert took < EXIT_WITHIN, log
    assert "not waited for" in log, log


def test_the_drain_cancels_a_handler_still_running_at_its_bound(
    controllers: ControllerFactory, proxy: StallingProxy, moto_server: S3Server
) -> None:
    """One SIGTERM, a request handler awaiting a thread blocked on the stalled store: the
    drain ends at DRAIN_TIMEOUT (60 s) with the handler cancelled, and the exit waits at
    most EXIT_GRACE for the thread. aiohttp alone would then cancel only the request's
    body and wait its shutdown_timeout again (until the store's client gave up: ~80 s).
    This test takes the whole drain: about 65 s."""
    with stalled_create(controllers, proxy, moto_server) as controller:
        controller.process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        within = DRAIN_TIMEOUT + EXIT_GRACE + 5
        try:
            status = controller.process.wait(within)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {within} s after SIGTERM:\n{controller.log_text()}")
        took = time.monotonic() - stopped

    log = controller.log_text()
    assert status == 0, log
    assert DRAIN_TIMEOUT <= took < within, log
    assert "drain over: cancelling the requests still in flight" in log, log
    assert "not waited for" in log, log


def test_a_stop_whose_log_lines_cannot_be_written_still_stops_its_watchdogs(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    """The controller's stdout and stderr a pipe whose reader has gone (its supervisor
    restarted, `| head` ended): SIGTERM's "controller stopping" line fails with EPIPE.
    The line is dropped, the stop goes on: status 0 (not 1, nor the interpreter's 120 for
    a failed flush at exit), and the service's watchdog is stopped, not left running."""
    data_dir = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_")}
    env["TMPDIR"] = str(tmp_path)
    process = subprocess.Popen(
        [*faas_command(), "controller", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data_dir), "--user", USER, "--password", PASSWORD,
         "--s3-port", str(free_port())],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    log = tmp_path / "closed-pipe-controller.log"  # what was read before the reader went
    controller = ControllerProcess(process, port, data_dir, log)
    controllers.started.append(controller)  # stopped, and its leftovers, at the end
    assert process.stdout is not None
    with open(log, "wb") as kept:
        while b"controller ready" not in log.read_bytes():
            chunk = process.stdout.read1(65536)
            assert chunk, log.read_text(errors="replace")  # it ended
            kept.write(chunk)
            kept.flush()
    wait_for_http(f"{controller.url}/health", process, log=log)
    controller.create({"name": "closed-pipe", "script": "echo hi\n"})
    watchdogs = wait_until(
        lambda: [p for p in running_with(str(data_dir)) if p.pid != process.pid], 30,
        "the service's watchdog", controller)

    process.stdout.close()  # the reader goes
    process.send_signal(signal.SIGTERM)
    status = process.wait(30)

    assert status == 0
    now = processes()
    left = [p.command for p in watchdogs
            if (q := now.get(p.pid)) is not None and q.start == p.start and q.state != "Z"]
    assert left == []


def test_a_controller_started_without_stdout_and_stderr_serves_and_stops_cleanly(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    """Both closed at the start (`>&- 2>&-`: sys.stdout and sys.stderr are None): its log
    lines go nowhere, its first one no longer ends it (exit 1 before it served), and its
    clean stop no longer fails flushing stdout (a traceback, exit 1): it serves, runs a
    service, and SIGTERM ends it with status 0, its watchdog (which has no stderr either)
    stopped."""
    data_dir = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_")}
    env["TMPDIR"] = str(tmp_path)
    process = subprocess.Popen(
        ["sh", "-c", 'exec "$@" >&- 2>&-', "sh", *faas_command(), "controller",
         "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
         "--user", USER, "--password", PASSWORD, "--s3-port", str(free_port())],
        env=env, stdin=subprocess.DEVNULL,
    )
    log = tmp_path / "nothing.log"  # it has none: what a failure shows
    controller = ControllerProcess(process, port, data_dir, log)
    controllers.started.append(controller)  # stopped, and its leftovers, at the end
    wait_for_http(f"{controller.url}/health", process)
    controller.create({"name": "no-streams", "script": "echo hi\n"})
    answer = controller.request("POST", "/run/no-streams", data=b"")
    assert answer.status_code == 200 and script_output(answer.text).strip() == "hi", answer.text
    watchdogs = [p for p in running_with(str(data_dir)) if p.pid != process.pid]
    assert watchdogs

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    now = processes()
    left = [p.command for p in watchdogs
            if (q := now.get(p.pid)) is not None and q.start == p.start and q.state != "Z"]
    assert left == []
