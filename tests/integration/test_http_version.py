"""A request line of another HTTP version than 1.x (`HTTP/2.0` on a plain connection) is
served by nothing: the connection is closed without an answer (docs/RELIABILITY.md,
"Choices where the issue is silent"; `http_timeouts._hang_up`).

A real controller over loopback, a raw socket: a service created by such a request would
show that the route ran. The watchdog's case (a script that would run) is the hostile
catalogue's `http-version` row.
"""

from __future__ import annotations

import base64
import json
import socket

import pytest

from tests.integration.controller_fixture import ControllerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def exchange(port: int, request: bytes) -> bytes:
    """What the server sends back until it closes the connection (the request asks it to)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_an_http2_request_line_runs_no_controller_route_and_gets_no_answer(
    controller: ControllerProcess,
) -> None:
    body = json.dumps({"name": "h2", "script": "echo"}).encode()
    credentials = base64.b64encode(":".join(controller.auth).encode())
    request = (
        b"POST /system/services HTTP/2.0\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Basic " + credentials + b"\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    answer = exchange(controller.port, request)
    assert answer == b"", answer[:200]
    assert controller.request("GET", "/system/services/h2").status_code == 404
    # The same request as HTTP/1.1 is served: what was refused is the version alone.
    http11 = request.replace(b" HTTP/2.0\r\n", b" HTTP/1.1\r\n", 1)
    assert exchange(controller.port, http11).startswith(b"HTTP/1.1 201 ")
    assert controller.request("GET", "/system/services/h2").status_code == 200
    assert "Traceback" not in controller.log_text()
