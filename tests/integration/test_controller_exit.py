"""The controller's exit once stopped: a thread still blocked on a stalled store does not
hold it. A real controller process, its `--minio-endpoint` a proxy to moto that stops
forwarding when told; a bucket create caught in the stall, then SIGTERM twice.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import S3Server
from tests.integration.controller_fixture import (
    PASSWORD,
    USER,
    ControllerFactory,
    ControllerProcess,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# The controller's own bound (server.EXIT_GRACE, 5 s) and some slack; the store's client
# would hold the thread for up to 60 s (20 s to read, 3 attempts).
EXIT_WITHIN = 15.0


class StallingProxy:
    """Forwards loopback connections to an S3 server until `stall()`; from then on what
    the client sends is read and dropped, so no request gets an answer (on connections
    already open too). `stalled_request` is set once a request has been dropped."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self._upstream = (host, int(port))
        self._server = socket.create_server(("127.0.0.1", 0))
        self._stalled = threading.Event()
        self.stalled_request = threading.Event()
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def stall(self) -> None:
        self._stalled.set()

    def close(self) -> None:
        self._server.close()
        for sock in self._held:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the server closed at the end
            while True:
                client, _ = self._server.accept()
                upstream = socket.create_connection(self._upstream)
                self._held += [client, upstream]
                threading.Thread(target=self._pump, args=(client, upstream, True),
                                 daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, False),
                                 daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, towards_store: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if towards_store and self._stalled.is_set():
                    self.stalled_request.set()
                    continue
                target.sendall(data)


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


def test_a_forced_stop_does_not_wait_for_a_thread_blocked_on_a_stalled_store(
    controllers: ControllerFactory, proxy: StallingProxy, moto_server: S3Server
) -> None:
    controller = controllers(args=[
        "--minio-endpoint", proxy.url,
        "--minio-access-key", moto_server.access_key,
        "--minio-secret-key", moto_server.secret_key,
        "--minio-region", moto_server.region,
    ])
    # Through the proxy to moto while it forwards.
    made = controller.request("POST", "/system/buckets", json={"bucket_name": "exit-before"})
    assert made.status_code == 201, made.text

    proxy.stall()
    pending = create_bucket_request(controller, "exit-stalled")
    try:
        # The create's boto3 call is in the default pool's thread, waiting for an answer.
        assert proxy.stalled_request.wait(30), controller.log_text()

        controller.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "controller stopping" in controller.log_text(), 30,
                   "the first SIGTERM taken", controller)
        controller.process.send_signal(signal.SIGTERM)
        forced = time.monotonic()
        try:
            status = controller.process.wait(EXIT_WITHIN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_WITHIN} s after the second SIGTERM:\n"
                        f"{controller.log_text()}")
        took = time.monotonic() - forced
    finally:
        pending.close()

    log = controller.log_text()
    assert status == 0, log
    assert took < EXIT_WITHIN, log
    # Said, and flushed before the process ended.
    assert "not waited for" in log, log
