"""The controller's graceful stop (SIGTERM): real controller processes on loopback.

At the signal both ports (the API's and the S3 endpoint's) stop listening at once, no new
input object starts a job (one stored during the drain gets it at the next start), a
request waiting for a starting service gets its 503 at once, and the requests in flight
of both ports share one drain (aiohttp's 60 s), not one after the other.
"""

from __future__ import annotations

import base64
import contextlib
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import requests

from tests.integration.controller_fixture import (
    PASSWORD,
    USER,
    ControllerFactory,
    ControllerProcess,
    wait_until,
)

pytestmark = pytest.mark.integration

BODY_LENGTH = 1000  # of each request body sent in part


def refuses(port: int) -> bool:
    """Whether a connection to the port is refused (nothing listens there)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def s3_client(controller: ControllerProcess) -> Any:
    provider = controller.request("GET", "/system/config").json()["minio_provider"]
    return boto3.client(
        "s3", endpoint_url=provider["endpoint"], aws_access_key_id=provider["access_key"],
        aws_secret_access_key=provider["secret_key"], region_name="us-east-1")


def put_url(controller: ControllerProcess, bucket: str, key: str) -> str:
    """A presigned PutObject URL of the controller's S3 endpoint."""
    url: str = s3_client(controller).generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=600)
    return url


def begun_put(url: str) -> socket.socket:
    """A PutObject of BODY_LENGTH bytes, of which only the first 10 are sent."""
    parts = urlsplit(url)
    sock = socket.create_connection(("127.0.0.1", parts.port or 80), timeout=30)
    sock.sendall(f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                 f"Content-Length: {BODY_LENGTH}\r\n\r\n".encode() + b"x" * 10)
    return sock


def begun_api_post(controller: ControllerProcess) -> socket.socket:
    """A POST /system/services of BODY_LENGTH bytes, of which only the first 10 are sent."""
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    sock = socket.create_connection(("127.0.0.1", controller.port), timeout=30)
    sock.sendall(f"POST /system/services HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}"
                 f"\r\nContent-Type: application/json\r\nContent-Length: {BODY_LENGTH}\r\n\r\n"
                 .encode() + b" " * 10)
    return sock


@pytest.mark.timeout(240)
def test_a_stop_closes_both_ports_at_once_and_an_object_stored_in_the_drain_waits(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    """A request in flight holds the drain: the S3 endpoint listened on meanwhile, and
    an object put then started a job that the stop interrupted. Now nothing new comes
    in, the request in flight is served, and an object stored during the drain (here
    copied into the folder store) starts no job then, and gets its one job at the next
    start, from the watcher."""
    marks = tmp_path / "marks"
    marks.mkdir()
    controller = controllers(env={"MARKS": str(marks)})
    controller.create({"name": "held", "script": 'touch "$MARKS/held"\nsleep 8\necho done\n'})
    controller.create({"name": "svc", "script": 'basename "$INPUT_FILE_PATH" >> "$MARKS/ran"\n',
                       "input": [{"storage_provider": "minio", "path": "svc/input"}]})
    late = put_url(controller, "svc", "input/late.txt")
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(controller.request, "POST", "/run/held", data=b"e30=", timeout=60)
        wait_until(lambda: (marks / "held").exists(), 30, "the /run to start", controller)

        started = time.monotonic()
        controller.process.send_signal(signal.SIGTERM)
        wait_until(lambda: refuses(controller.port) and refuses(controller.s3_port), 5,
                   "both ports to refuse connections", controller)
        with pytest.raises(requests.ConnectionError):
            requests.put(late, data=b"late", timeout=10)
        assert time.monotonic() - started < 5
        # The drain lasts some 8 s more (the /run): the watcher would offer this file
        # within a second (two polls half a second apart), its job's script run soon after.
        (controller.storage / "svc" / "input" / "drained.txt").write_bytes(b"drained")
        run = held.result(60)
    assert run.status_code == 200 and run.text.endswith("done\n"), run.text
    assert controller.process.wait(60) == 0
    assert not (marks / "ran").exists(), (marks / "ran").read_text()
    assert "new input object" not in controller.log_text()

    again = controllers(data_dir=controller.data_dir, env={"MARKS": str(marks)})
    jobs = again.wait_jobs("svc", 1)
    assert [j["status"] for j in jobs.values()] == ["Succeeded"], jobs
    assert (marks / "ran").read_text() == "drained.txt\n"
    assert again.stop() == 0


@pytest.mark.timeout(240)
def test_requests_in_flight_on_both_ports_share_one_drain(
    controllers: ControllerFactory,
) -> None:
    """One 60 s drain for both ports, not one after the other: an upload trickling into
    the S3 endpoint kept going while the API's drain waited for a stalled body (60 s),
    and got its own 60 s after (120 s). The only test here that waits for a whole drain:
    its bodies never come."""
    controller = controllers()
    s3_client(controller).create_bucket(Bucket="bkt")
    upload = begun_put(put_url(controller, "bkt", "o"))
    post = begun_api_post(controller)
    done = threading.Event()

    def trickle() -> None:
        """A byte every half second: never idle for the endpoint's BODY_IDLE_TIMEOUT."""
        with contextlib.suppress(OSError):  # the connection closed by the controller
            while not done.wait(0.5):
                upload.sendall(b"x")

    with ThreadPoolExecutor(1) as pool:
        pool.submit(trickle)
        controller.request("GET", "/health")  # both connections accepted before the signal
        started = time.monotonic()
        controller.process.send_signal(signal.SIGTERM)
        try:
            assert controller.process.wait(150) == 0
        finally:
            done.set()
    took = time.monotonic() - started
    assert took < 90, f"the stop took {took:.0f} s"
    for sock in (upload, post):
        sock.close()


@pytest.mark.timeout(240)
def test_a_request_waiting_for_a_starting_service_gets_its_503_at_the_stop(
    controllers: ControllerFactory,
) -> None:
    """It was held until --sync-wait ran out, and the stop with it."""
    controller = controllers()
    # A server that never listens: its watchdog is never ready.
    controller.create({"name": "web", "script": "exec sleep 600\n",
                       "expose": {"api_port": 8080}})
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            lambda: (controller.request("GET", "/system/services/web/exposed/", timeout=120),
                     time.monotonic()))
        # No event says the request is waiting in the controller: it was sent, and
        # the controller reads it at once.
        time.sleep(1)
        assert not waiting.done()
        signalled = time.monotonic()
        controller.process.send_signal(signal.SIGTERM)
        answer, answered = waiting.result(120)
    assert answer.status_code == 503, answer.text
    assert "the controller is stopping" in answer.text
    assert answered - signalled < 10
    assert controller.process.wait(60) == 0
    assert time.monotonic() - signalled < 30
