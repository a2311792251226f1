"""The controller's exposed routes and `/run` on the local backend, against real processes.

A real controller (controller_fixture.py) runs each exposed service as real watchdogs in
http mode, each with a real user server: an aiohttp app written here (any path echoed raw,
a request held until a file appears) or the http-mode tests' own (proxy_upstream.py, for
WebSockets). What the service receives is read from its answers.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests

from tests.integration.conftest import script_output
from tests.integration.controller_fixture import (
    PASSWORD,
    USER,
    ControllerFactory,
    ControllerProcess,
    wait_until,
)

pytestmark = pytest.mark.integration

PROXY_UPSTREAM = Path(__file__).with_name("proxy_upstream.py")
SERVER_SCRIPT = 'exec "$PYTHON" "$APP"\n'
# Every path and query answered as the server received them (raw); /hold answers its
# headers and a first line, and the rest once the file $RELEASE exists.
ECHO_APP = '''
import asyncio, os, pathlib
from aiohttp import web

async def any_path(request):
    if request.path == "/hold":
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"started\\n")
        release = pathlib.Path(os.environ["RELEASE"])
        while not release.exists():  # another process's file: polled
            await asyncio.sleep(0.05)
        await response.write(b"done\\n")
        await response.write_eof()
        return response
    seen = {"raw": request.raw_path, "version": os.environ.get("VERSION")}
    if "Authorization" in request.headers:
        seen["authorization"] = request.headers["Authorization"]
    return web.json_response(seen)

app = web.Application()
app.router.add_route("*", "/{tail:.*}", any_path)
web.run_app(app, host="127.0.0.1", port=int(os.environ["upstream_port"]), print=None)
'''
# A WebSocket handshake as a plain HTTP client sends it, to see the whole answer.
HANDSHAKE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.fixture
def echo_app(tmp_path: Path) -> Path:
    app = tmp_path / "echo_app.py"
    app.write_text(ECHO_APP)
    return app


def exposed(name: str, app: Path, script: str = SERVER_SCRIPT, variables: dict[str, str] | None
            = None, **fields: Any) -> dict[str, Any]:
    """An exposed service whose server is `app`, run by this Python."""
    expose = {"api_port": 8081, **fields.pop("expose", {})}
    env = {"PYTHON": sys.executable, "APP": str(app), **(variables or {})}
    return {"name": name, "script": script, "environment": {"variables": env, **fields.pop(
        "environment", {})}, "expose": expose, **fields}


def raw_request(controller: ControllerProcess, method: str, target: str,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """`target` sent byte for byte (requests would normalise some escapes)."""
    connection = http.client.HTTPConnection("127.0.0.1", controller.port, timeout=60)
    try:
        connection.request(method, target, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_served(controller: ControllerProcess, name: str, path: str = "/",
                timeout: float = 60) -> requests.Response:
    url = f"{controller.url}/system/services/{name}/exposed{path}"
    return wait_until(lambda: (r := requests.get(url, timeout=60)).status_code == 200 and r,
                      timeout, f"service {name} answering", controller)


# ---- paths and queries ------------------------------------------------------------------

RAW_TAILS = ["/file%3Fname.txt", "/a%2Fb", "/x%23y", "/p%2541", "/%E2%82%AC/%20",
             "/q?x=%23frag&y=a+b%20c%26d", "/semi;colon"]


@pytest.mark.timeout(120)
def test_the_service_gets_the_path_and_query_as_the_client_encoded_them(
    controller: ControllerProcess, echo_app: Path
) -> None:
    """Decoded and pasted into a URL again, `%3F` became a query, `%23` a fragment, `%2F`
    a separator and `%2541` an `A` (a review found each)."""
    controller.create(exposed("raw", echo_app))
    wait_served(controller, "raw")
    for tail in RAW_TAILS:
        status, body = raw_request(controller, "GET", f"/system/services/raw/exposed{tail}")
        assert (status, json.loads(body)["raw"]) == (200, tail)
    for target, raw in [("/system/services/raw/exposed", "/"),
                        ("/system/services/raw/exposed?k=%23v", "/?k=%23v")]:
        status, body = raw_request(controller, "GET", target)
        assert (status, json.loads(body)["raw"]) == (200, raw)


@pytest.mark.timeout(120)
def test_an_authorization_is_the_services_own_unless_set_auth_asked_for_ours(
    controller: ControllerProcess, echo_app: Path
) -> None:
    """Without set_auth the controller asks for no credentials, and OSCAR's Ingress passes
    the client's Authorization on to the service's server (its own login, its API's
    bearer): the controller dropped it (a review found it). With set_auth the credentials
    were the controller's (the service's token, or the admin's): never passed on; nor are
    the admin's ever."""
    controller.create(exposed("open", echo_app))
    controller.create(exposed("guarded", echo_app, expose={"set_auth": True}))
    wait_served(controller, "open")
    own = {"Authorization": "Bearer the-apps-own-token"}
    answer = requests.get(f"{controller.url}/system/services/open/exposed/x", headers=own,
                          timeout=60)
    assert (answer.status_code, answer.json().get("authorization")) == (
        200, "Bearer the-apps-own-token")
    # The admin's, which a browser logged in to /system/ sends to every path below it.
    answer = requests.get(f"{controller.url}/system/services/open/exposed/x",
                          auth=controller.auth, timeout=60)
    assert (answer.status_code, "authorization" in answer.json()) == (200, False)
    answer = wait_until(lambda: (r := requests.get(
        f"{controller.url}/system/services/guarded/exposed/x", auth=controller.auth,
        timeout=60)).status_code == 200 and r, 60, "service guarded answering", controller)
    assert "authorization" not in answer.json()


@pytest.mark.timeout(120)
def test_run_passes_the_query_as_the_client_encoded_it(controller: ControllerProcess) -> None:
    controller.create({"name": "query",
                       "script": 'printf %s "$Http_Query" > "$TMP_OUTPUT_DIR/query"\n'})
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    status, body = raw_request(controller, "POST", "/run/query?x=%23frag&y=a%2Bb%20c",
                               {"Authorization": f"Basic {auth}", "Content-Length": "0"})
    assert status == 200, body
    assert base64.b64decode(body) == b"x=%23frag&y=a%2Bb%20c"


# Answers with no Content-Type at all (as Node's `res.end(html)` does): /small a short
# body, anything else one over the controller's whole-answer size (streamed).
UNTYPED_APP = """
import asyncio, os

async def serve(reader, writer):
    while True:
        head = await reader.readuntil(b"\\r\\n\\r\\n")
        body = b"<p>hi</p>" if head.split()[1] == b"/small" else b"x" * 100000
        writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
        await writer.drain()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(os.environ["upstream_port"]))
    await server.serve_forever()

asyncio.run(main())
"""


@pytest.mark.timeout(120)
def test_an_answer_without_content_type_gets_none(controller: ControllerProcess,
                                                  tmp_path: Path) -> None:
    """aiohttp gives a body without Content-Type `application/octet-stream`: a page a
    server sent untyped (left to the browser to sniff) was offered as a download. The
    watchdog passes it on untyped; the controller added the type on both of its paths."""
    app = tmp_path / "untyped.py"
    app.write_text(UNTYPED_APP)
    controller.create(exposed("untyped", app))
    wait_served(controller, "untyped", "/small")
    for path, size in (("/small", 9), ("/large", 100000)):
        response = requests.get(f"{controller.url}/system/services/untyped/exposed{path}",
                                timeout=60)
        assert (response.status_code, len(response.content)) == (200, size)
        assert "Content-Type" not in response.headers, (path, response.headers)


@pytest.mark.timeout(120)
def test_rewrite_target_keeps_the_prefix(controller: ControllerProcess, echo_app: Path) -> None:
    """As OSCAR's Ingress (and this project's manifests) with `rewrite_target`: the whole
    path, `/system/services/NAME/exposed` and all."""
    controller.create(exposed("rw", echo_app, expose={"rewrite_target": True}))
    wait_served(controller, "rw")
    for target, raw in [
        ("/system/services/rw/exposed/p%2Fq?x=%23", "/system/services/rw/exposed/p%2Fq?x=%23"),
        ("/system/services/rw/exposed", "/system/services/rw/exposed/"),
    ]:
        status, body = raw_request(controller, "GET", target)
        assert (status, json.loads(body)["raw"]) == (200, raw)


# ---- WebSockets -------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_a_websocket_is_relayed_both_ways_with_close_codes(
    controller: ControllerProcess,
) -> None:
    """The exposed route is the only way in on the local backend: an upgrade must reach
    the service as one, not as a plain GET stripped of its Upgrade."""
    controller.create(exposed("sockets", PROXY_UPSTREAM))
    base = f"{controller.url}/system/services/sockets/exposed"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{base}/ws", protocols=("x", "chat")) as ws:
            assert ws.protocol == "chat"  # the server's choice, passed back
            await ws.send_str("hello")
            assert (await ws.receive_str(timeout=10)) == "hello"
            payload = os.urandom(1 << 20)
            await ws.send_bytes(payload)
            assert (await ws.receive_bytes(timeout=10)) == payload
            await ws.send_str("close-me")  # the server closes with 4001
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4001, "asked to")

        async with session.ws_connect(f"{base}/ws") as ws:
            await ws.send_str("again")
            assert (await ws.receive_str(timeout=10)) == "again"
            await ws.close(code=4002)  # the client closes: the server sees 4002
        async with session.get(f"{base}/last-close") as answer:
            assert (await answer.json()) == {"code": 4002}

        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{base}/no-ws-here")
        assert refused.value.status == 404


@pytest.mark.timeout(120)
async def test_a_stopping_controller_ends_websocket_sessions_going_away(
    controller: ControllerProcess,
) -> None:
    """Its server waits for the handlers in flight before it stops, which a WebSocket
    session would hold for ever: each is closed 1001 instead, and the controller goes."""
    controller.create(exposed("sockets", PROXY_UPSTREAM))
    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"{controller.url}/system/services/sockets/exposed/ws") as ws:
        await ws.send_str("hello")
        assert (await ws.receive_str(timeout=10)) == "hello"
        controller.process.send_signal(signal.SIGTERM)
        msg = await ws.receive(timeout=30)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    assert await asyncio.to_thread(controller.process.wait, 30) == 0


@pytest.mark.timeout(120)
def test_a_refused_websocket_handshake_is_relayed_whole(controller: ControllerProcess) -> None:
    controller.create(exposed("refuses", PROXY_UPSTREAM))
    wait_served(controller, "refuses", "/pid")
    url = f"{controller.url}/system/services/refuses/exposed"
    refused = requests.get(f"{url}/status/401", headers=HANDSHAKE, timeout=30)
    assert (refused.status_code, refused.text) == (401, "status 401\n")
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="exposed"'
    moved = requests.get(f"{url}/status/302", headers=HANDSHAKE, allow_redirects=False,
                         timeout=30)
    assert (moved.status_code, moved.headers.get("Location")) == (302, "/elsewhere")


# ---- a service starting, updated, restarting -------------------------------------------


@pytest.mark.timeout(120)
def test_a_starting_service_is_waited_for_at_most_sync_wait(
    controllers: ControllerFactory, echo_app: Path
) -> None:
    controller = controllers(args=["--sync-wait", "2"])
    # A server that never listens (within its upstream_start_timeout, 120 s).
    controller.create(exposed("late", echo_app, script="exec sleep 300\n"))
    for method, path in [("GET", "/system/services/late/exposed/"), ("POST", "/run/late")]:
        started = time.monotonic()
        answer = controller.request(method, path, timeout=30)
        assert (answer.status_code, time.monotonic() - started < 10) == (503, True), answer.text
        assert "not answering yet" in answer.text


@pytest.mark.timeout(120)
def test_an_update_keeps_the_service_answering(
    controller: ControllerProcess, echo_app: Path, tmp_path: Path
) -> None:
    """The new watchdogs start first and the old ones drain, as a restart does: stopped
    first, the old ones left the service answering 503 for as long as their drain took."""
    release = tmp_path / "release"
    variables = {"RELEASE": str(release)}
    controller.create(exposed("up", echo_app, variables={**variables, "VERSION": "1"}))
    wait_served(controller, "up")
    held = requests.get(f"{controller.url}/system/services/up/exposed/hold", stream=True,
                        timeout=60)
    assert held.raw.read(8) == b"started\n"  # in flight on the old watchdog

    updated: dict[str, int] = {}
    new = exposed("up", echo_app, variables={**variables, "VERSION": "2"})
    update = threading.Thread(target=lambda: updated.update(
        status=controller.request("PUT", "/system/services", json=new).status_code))
    update.start()
    try:
        # Stored, so the backend's deploy has begun (nothing awaited between the two).
        wait_until(lambda: controller.request("GET", "/system/services/up").json()
                   ["environment"]["variables"]["VERSION"] == "2", 30, "the update", controller)
        answer = controller.request("GET", "/system/services/up/exposed/now", auth=None)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"raw": "/now", "version": "2"}
    finally:
        release.touch()
        update.join(60)
    assert held.raw.read() == b"done\n"  # the old watchdog finished what it had
    assert updated == {"status": 204}


def begun(controller: ControllerProcess, path: str) -> socket.socket:
    """A POST to `path` the controller has begun to handle (its answer still to read,
    with http.client.HTTPResponse): sent with `Expect: 100-continue`, which aiohttp
    answers as it starts the route's handler, its body sent once that came. The exposed
    route reads no body before its service's watchdog is found: such a request to a
    starting service is waiting for it, an event the test can await."""
    sock = socket.create_connection(("127.0.0.1", controller.port), timeout=60)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n"
                 "Expect: 100-continue\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # byte by byte: nothing of the answer read
        byte = sock.recv(1)
        assert byte, f"connection closed after {head!r}"
        head += byte
    assert head.startswith(b"HTTP/1.1 100 "), head
    sock.sendall(b"x")
    return sock


def answer_of(sock: socket.socket, within: float) -> tuple[int, bytes]:
    sock.settimeout(within)
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        return response.status, response.read()
    except TimeoutError:
        pytest.fail(f"no answer within {within} s")
    finally:
        response.close()
        sock.close()


@pytest.mark.timeout(120)
def test_a_request_waiting_for_a_starting_service_gets_its_update(
    controllers: ControllerFactory, echo_app: Path
) -> None:
    """An update while a request waits for the service's first watchdog: the request
    waited on the replaced watchdog, all of --sync-wait, and got a 503 while the new
    one answered (a review found it)."""
    controller = controllers(args=["--sync-wait", "30"])
    controller.create(exposed("slow", echo_app, script="exec sleep 300\n"))  # never listens
    waiting = begun(controller, "/system/services/slow/exposed/path")
    answer = controller.request("PUT", "/system/services",
                                json=exposed("slow", echo_app, variables={"VERSION": "2"}))
    assert answer.status_code == 204, answer.text
    status, body = answer_of(waiting, 20)
    assert status == 200, body
    assert json.loads(body) == {"raw": "/path", "version": "2"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method, path", [("DELETE", "/system/services/slow"),
                                          ("POST", "/system/services/slow/stop")])
def test_a_request_waiting_for_a_service_stopped_or_deleted_is_answered_at_once(
    controllers: ControllerFactory, echo_app: Path, method: str, path: str
) -> None:
    """It waited all of --sync-wait for the watchdog dropped meanwhile."""
    controller = controllers(args=["--sync-wait", "30"])
    controller.create(exposed("slow", echo_app, script="exec sleep 300\n"))  # never listens
    waiting = begun(controller, "/system/services/slow/exposed/")
    answer = controller.request(method, path)
    assert answer.status_code in (200, 204), answer.text
    status, body = answer_of(waiting, 10)
    assert (status, b"is not running" in body) == (503, True), body


# /run: a call held until $MARKS/release exists (its query: `hold`), the others at once;
# each says which definition of the service ran it.
VERSIONED = ('if [ "$Http_Query" = hold ]; then\n'
             '  : > "$MARKS/held"\n'
             '  until [ -e "$MARKS/release" ]; do sleep 0.05; done\n'
             'fi\n'
             'echo "version $VERSION"\n')


@pytest.mark.timeout(120)
def test_a_run_refused_by_a_watchdog_an_update_stops_goes_to_the_new_one(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    """An update stops the old watchdog as soon as the new one is made: a call that had
    the old one's address by then reached it draining, and got its own `503 the watchdog
    is shutting down` (a review found it). Refused so, before anything of it ran, and its
    body in hand, it goes once more: to the new watchdog."""
    marks = tmp_path / "marks"
    marks.mkdir()

    def versioned(version: str) -> dict[str, Any]:
        return {"name": "moving", "script": VERSIONED,
                "environment": {"variables": {"MARKS": str(marks), "VERSION": version}}}

    controller.create(versioned("1"))
    log = controller.data_dir / "services" / "moving" / "watchdog.log"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        # In flight on the old watchdog: once stopped, it drains until this one ends.
        held = pool.submit(controller.request, "POST", "/run/moving?hold", data=b"{}")
        try:
            wait_until((marks / "held").exists, 60, "the held call running", controller)
            # Begun: the controller has its watchdog's address (the old one's), and waits
            # for the body (Expect: 100-continue) before it sends the call there.
            credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            sock = socket.create_connection(("127.0.0.1", controller.port), timeout=60)
            sock.sendall("POST /run/moving HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Authorization: Basic {credentials}\r\nContent-Length: 2\r\n"
                         "Expect: 100-continue\r\n\r\n".encode())
            head = b""
            while not head.endswith(b"\r\n\r\n"):  # byte by byte: nothing more read
                byte = sock.recv(1)
                assert byte, f"connection closed after {head!r}"
                head += byte
            assert head.startswith(b"HTTP/1.1 100 "), head
            update = pool.submit(controller.request, "PUT", "/system/services",
                                 json=versioned("2"))
            wait_until(lambda: b"shutting down" in log.read_bytes(), 60,
                       "the old watchdog stopping", controller)
            sock.sendall(b"{}")
            status, body = answer_of(sock, 60)
        finally:
            (marks / "release").touch()
        answer = held.result(timeout=60)
        assert (answer.status_code, script_output(answer.text)) == (200, "version 1\n")
        assert update.result(timeout=60).status_code == 204
    assert (status, script_output(body)) == (200, b"version 2\n"), body


@pytest.mark.timeout(180)
def test_a_server_slower_than_a_minute_to_listen_is_given_its_upstream_start_timeout(
    controllers: ControllerFactory, echo_app: Path
) -> None:
    """A server loading a model for longer than the controller's own 60 s: the watchdog
    waits for it (upstream_start_timeout, here 90 s) and the controller must not kill
    it at 60 s and start it again, for ever. A minute's wait: no shorter limit shows it."""
    controller = controllers(args=["--sync-wait", "5"])
    script = "sleep 63\n" + SERVER_SCRIPT
    controller.create(exposed("model", echo_app, script=script,
                              environment={"secrets": {"upstream_start_timeout": "90"}}))
    wait_served(controller, "model", timeout=120)
    assert "never became healthy" not in controller.log_text()


# ---- the deployment, as the dashboard sees it -------------------------------------------


@pytest.mark.timeout(120)
def test_an_instance_waiting_to_be_restarted_is_affected(
    controller: ControllerProcess, echo_app: Path, tmp_path: Path
) -> None:
    """min_scale 2, one server that keeps exiting: while its watchdog waits out its
    restart's backoff (no process), the deployment said "0 of 2 instances are affected"."""
    lock = tmp_path / "lock"
    script = f'mkdir "{lock}" 2>/dev/null || exit 1\n' + SERVER_SCRIPT  # one server only
    controller.create(exposed("half", echo_app, script=script, expose={"min_scale": 2}))

    def backing_off() -> dict[str, Any] | None:
        status: dict[str, Any] = controller.request(
            "GET", "/system/services/half/deployment").json()
        return status if (status["state"], status["active_instances"]) == (
            "degraded", 1) else None

    status = wait_until(backing_off, 60, "one instance ready, one backing off", controller)
    assert (status["affected_instances"], status["reason"]) == (
        1, "1 of 2 instances are affected.")


# ---- OSCAR's expose fields the local backend cannot use --------------------------------------


@pytest.mark.timeout(120)
def test_default_command_is_refused_and_node_port_kept_on_the_local_backend(
    controller: ControllerProcess, echo_app: Path
) -> None:
    """`default_command` (the image's own command) was stored and ignored, the script run
    instead: the local backend runs no image, and refuses it, on create and on update
    (the service answering on as it was). `nodePort` was dropped: it is kept and shown,
    and the exposed route serves the service as before."""
    refused = controller.request("POST", "/system/services", json=exposed(
        "dc", echo_app, expose={"default_command": True}))
    assert refused.status_code == 400, refused.text
    assert refused.text.startswith("expose.default_command: ") and "\n" not in refused.text
    assert controller.request("GET", "/system/services/dc").status_code == 404

    shown = controller.create(exposed("np", echo_app, expose={"nodePort": 30081}))
    assert shown["expose"]["nodePort"] == [30081]
    assert wait_served(controller, "np", "/x").json()["raw"] == "/x"
    update = controller.request("PUT", "/system/services", json=exposed(
        "np", echo_app, expose={"nodePort": 30081, "default_command": True}))
    assert update.status_code == 400 and "expose.default_command" in update.text
    assert controller.request("GET", "/system/services/np").json()["expose"][
        "default_command"] is False
    answer = controller.request("GET", "/system/services/np/exposed/y", auth=None)
    assert (answer.status_code, answer.json()["raw"]) == (200, "/y")
