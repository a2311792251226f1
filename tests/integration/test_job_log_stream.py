"""A job's log streamed to a client that stops reading it half way (`oscar-cli service
logs ... | head`): the client's choice, not a failure of the controller's.

A real controller on loopback (local backend), a job whose log is 20 MB, and a raw socket
that reads the answer's status line and closes. Before: the write that met the closed
connection raised, and the error middleware logged "request failed" at ERROR with a
traceback, then tried to answer 500 after the 200 was sent.
"""

from __future__ import annotations

import base64
import socket

import pytest

from tests.integration.controller_fixture import (
    PASSWORD,
    USER,
    ControllerProcess,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LOG_SIZE = 20_000_000  # far more than loopback's socket buffers hold
LEFT = "the client left before the job's log was sent"


def writer(name: str) -> dict[str, object]:
    return {
        "name": name,
        "image": "busybox",
        "script": f'head -c {LOG_SIZE} /dev/zero | tr "\\0" x\n',
        "input": [{"storage_provider": "minio", "path": f"{name}/input"}],
        "output": [{"storage_provider": "minio", "path": f"{name}/output"}],
    }


def test_a_client_leaving_mid_log_is_no_error_of_the_controllers(
    controller: ControllerProcess,
) -> None:
    controller.create(writer("big"))
    job = controller.request("POST", "/job/big", data=b'{"a": 1}').json()["job"]
    controller.wait_jobs("big", 1)
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with socket.create_connection(("127.0.0.1", controller.port), timeout=30) as client:
        client.sendall(f"GET /system/logs/big/{job} HTTP/1.1\r\nHost: x\r\n"
                       f"Authorization: Basic {auth}\r\n\r\n".encode())
        assert client.recv(64).startswith(b"HTTP/1.1 200 ")
    # Closed with the log unread. The controller's handling of it ends with a line in
    # its log, whichever it is: the log is polled for it (no event to await otherwise).
    wait_until(lambda: LEFT in (text := controller.log_text()) or "request failed" in text,
               30, "the controller to meet the closed connection", controller)
    log = controller.log_text()
    assert "request failed" not in log and "Traceback" not in log, log
    assert LEFT in log
    # And it serves on: the whole log (the script's output and the run's lines), to a
    # client that reads it.
    whole = controller.request("GET", f"/system/logs/big/{job}")
    assert whole.status_code == 200 and b"x" * LOG_SIZE in whole.content
