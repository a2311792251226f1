"""What an exposed service learns of its client through the controller (local backend):
Host, X-Forwarded-For, -Host and -Proto, as OSCAR's Ingress (nginx-ingress, by default)
sets them. A real controller, a real watchdog, a real server that answers what it got.

The client connects from 127.0.0.2, so that its address is told apart from the
controller's hop to the watchdog (127.0.0.1).
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import aiohttp
import pytest

from tests.integration.controller_fixture import ControllerProcess
from tests.integration.test_controller_exposed import exposed, wait_served

pytestmark = pytest.mark.integration

CLIENT = "127.0.0.2"
# Any path answers the request's headers; /ws sends its handshake's as its first message.
HEADERS_APP = '''
import os
from aiohttp import web

async def any_path(request):
    headers = [[k, v] for k, v in request.headers.items()]
    if request.path != "/ws":
        return web.json_response(headers)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_json(headers)
    await ws.close()
    return ws

app = web.Application()
app.router.add_route("*", "/{tail:.*}", any_path)
web.run_app(app, host="127.0.0.1", port=int(os.environ["upstream_port"]), print=None)
'''
# What a client may say of itself: replaced, as nginx-ingress does (use-forwarded-headers off).
FORGED = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "forged.example",
          "X-Forwarded-Proto": "https"}


def seen(headers: list[list[str]]) -> tuple[str, ...]:
    found = {k.lower(): v for k, v in headers}
    return tuple(found.get(name, "") for name in (
        "host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"))


@pytest.mark.timeout(120)
async def test_the_service_gets_the_clients_host_and_address(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    """It got the watchdog's loopback address as Host and X-Forwarded-Host, and the
    controller's as X-Forwarded-For, after what the client claimed (a review found it).
    A WebSocket handshake the same."""
    app = tmp_path / "headers_app.py"
    app.write_text(HEADERS_APP)
    controller.create(exposed("hosts", app))
    wait_served(controller, "hosts")
    host = f"public.example:{controller.port}"
    expected = (host, CLIENT, host, "http")

    connection = http.client.HTTPConnection("127.0.0.1", controller.port, timeout=60,
                                            source_address=(CLIENT, 0))
    try:
        connection.request("GET", "/system/services/hosts/exposed/x",
                           headers={"Host": host, **FORGED})
        answer = connection.getresponse()
        assert answer.status == 200
        assert seen(json.loads(answer.read())) == expected
    finally:
        connection.close()

    connector = aiohttp.TCPConnector(local_addr=(CLIENT, 0))
    async with aiohttp.ClientSession(connector=connector) as session, session.ws_connect(
        f"{controller.url}/system/services/hosts/exposed/ws",
        headers={"Host": host, **FORGED},
    ) as ws:
        assert seen(await ws.receive_json(timeout=10)) == expected
