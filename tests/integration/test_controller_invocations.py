"""`/run`, `/job` and the exposed routes when the client misbehaves: it leaves while its
body comes, while the script runs, while the answer streams back; it sends a header that
is not UTF-8. And a service's answer that breaks half way.

A real controller (controller_fixture.py) on loopback runs each service as a real
watchdog; the client is a raw socket, so that it can leave at any point. What the script
or the user's server went through is read from marker files and /proc; what the
controller made of it, from its usage log (`GET /system/logs`) and its own log.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.controller_fixture import (
    ControllerFactory,
    ControllerProcess,
    wait_until,
)
from tests.leftovers import processes

pytestmark = pytest.mark.integration

# The user's server of an exposed service. /ok answers; any other path writes
# $MARKS/arrived, then: /wait never answers, /hold answers its headers and a first line
# and holds the rest, /cut sends a first line and breaks its connection. A request whose
# client goes writes $MARKS/left (handler_cancellation tells the handler).
HOLDING_APP = '''
import asyncio, os, pathlib
from aiohttp import web

async def any_path(request):
    if request.path == "/ok":
        return web.Response(text="ok")
    marks = pathlib.Path(os.environ["MARKS"])
    (marks / "arrived").write_text(request.path)
    try:
        if request.path in ("/hold", "/cut"):
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"started\\n")
            if request.path == "/cut":
                request.transport.abort()
                return response
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        (marks / "left").write_text(request.path)
        raise

app = web.Application()
app.router.add_route("*", "/{tail:.*}", any_path)
web.run_app(app, host="127.0.0.1", port=int(os.environ["upstream_port"]), print=None,
            handler_cancellation=True)
'''
EXPOSED = "/system/services/holder/exposed"
GONE_WITHIN = 15.0  # seconds; the script sleeps 60 and the server holds for ever


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    folder = tmp_path / "marks"
    folder.mkdir()
    return folder


@pytest.fixture
def holder(controller: ControllerProcess, marks: Path, tmp_path: Path) -> ControllerProcess:
    """The controller, serving the exposed service `holder` (HOLDING_APP)."""
    app = tmp_path / "holding_app.py"
    app.write_text(HOLDING_APP)
    variables = {"PYTHON": sys.executable, "APP": str(app), "MARKS": str(marks)}
    controller.create({"name": "holder", "script": 'exec "$PYTHON" "$APP"\n',
                       "expose": {"api_port": 8081}, "environment": {"variables": variables}})
    url = f"{controller.url}{EXPOSED}/ok"
    wait_until(lambda: requests.get(url, timeout=60).status_code == 200, 60,
               "the exposed service to answer", controller)
    return controller


def send(controller: ControllerProcess, method: str, target: str, headers: dict[str, str],
         body: bytes = b"") -> socket.socket:
    """A request written on a raw socket, which is the caller's to read and close."""
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items())
    sock = socket.create_connection(("127.0.0.1", controller.port), timeout=60)
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


def read_until(sock: socket.socket, size: int = 0, marker: bytes = b"") -> bytes:
    """What the controller sent, once it is `size` bytes or holds `marker`; all of it,
    until the connection closes, with neither."""
    data = b""
    while chunk := sock.recv(1 << 16):
        data += chunk
        if (size and len(data) >= size) or (marker and marker in data):
            break
    return data


def bearer(service: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {service['token']}"}


def usage(controller: ControllerProcess, path: str, count: int = 1) -> list[int]:
    """The statuses the usage log lists for `path`, once it lists `count`."""
    def statuses() -> list[int]:
        logs = controller.request("GET", "/system/logs").json()["logs"]
        return [entry["status"] for entry in logs if entry["path"] == path]
    return wait_until(lambda: len(found := statuses()) >= count and found, 30,
                      f"{count} usage entries for {path}", controller)


def marker(path: Path, controller: ControllerProcess, timeout: float = 30) -> str:
    """A file another process writes: there is no event to await, so it is polled."""
    return wait_until(lambda: path.exists() and path.read_text().strip(), timeout,
                      f"{path.name} to be written", controller)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def no_fault_logged(controller: ControllerProcess) -> None:
    log = controller.log_text()
    for fault in ("request failed", "Traceback", "service did not answer"):
        assert fault not in log, log


# ---- the client leaves ------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_client_leaving_run_while_the_script_runs_takes_the_script_along(
    controller: ControllerProcess, marks: Path
) -> None:
    """SPEC 4.1, as the watchdog does for a client of its own. The controller kept waiting
    on the watchdog, the script ran to its end, and the usage log said 200 (a review
    found it); it says 499, nginx's "client closed request"."""
    service = controller.create({
        "name": "sleeper", "script": 'echo $$ > "$MARKS/pid"\nexec sleep 60\n',
        "environment": {"variables": {"MARKS": str(marks)}}})
    with send(controller, "POST", "/run/sleeper", {**bearer(service), "Content-Length": "4"},
              b"aGk="):
        pid = int(marker(marks / "pid", controller))
    wait_until(lambda: not alive(pid), GONE_WITHIN, "the script to be killed", controller)
    assert usage(controller, "/run/sleeper") == [499]
    no_fault_logged(controller)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", ["/wait", "/hold"])
def test_a_client_leaving_an_exposed_route_takes_the_call_along(
    holder: ControllerProcess, marks: Path, path: str
) -> None:
    """Before its answer, or while the answer streams: the user's server sees its client
    go. The controller kept the call open for as long as the server held it."""
    with send(holder, "GET", EXPOSED + path, {}) as sock:
        assert marker(marks / "arrived", holder) == path
        if path == "/hold":  # the answer has begun
            assert read_until(sock, marker=b"started").startswith(b"HTTP/1.1 200 ")
    assert marker(marks / "left", holder, GONE_WITHIN) == path
    no_fault_logged(holder)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["run", "exposed", "websocket"])
def test_a_client_leaving_while_its_service_starts_makes_no_call(
    controller: ControllerProcess, marks: Path, tmp_path: Path, how: str
) -> None:
    """Gone while the controller waits for the service to answer (up to --sync-wait): the
    watch began after that wait, so the call was still made once the service came up,
    a small /run body was a 500 with a traceback, and a WebSocket a 500 with a session
    opened for nobody (a review found them)."""
    app = tmp_path / "holding_app.py"
    app.write_text(HOLDING_APP)
    variables = {"PYTHON": sys.executable, "APP": str(app), "MARKS": str(marks)}
    # Its server starts once $MARKS/go is there: until then the controller waits for it.
    service = controller.create({
        "name": "holder", "expose": {"api_port": 8081}, "environment": {"variables": variables},
        "script": 'while [ ! -e "$MARKS/go" ]; do sleep 0.05; done\nexec "$PYTHON" "$APP"\n'})
    target, headers, body = {
        "run": ("/run/holder", {**bearer(service), "Content-Length": "4"}, b"aGk="),
        "exposed": (EXPOSED + "/wait", {}, b""),
        "websocket": (EXPOSED + "/ws", {"Connection": "Upgrade", "Upgrade": "websocket",
                                        "Sec-WebSocket-Version": "13",
                                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, b""),
    }[how]
    with send(controller, "GET" if how != "run" else "POST", target, headers, body):
        pass  # sent, and gone at once
    if how == "run":  # its end is in the usage log: the call made nothing
        assert usage(controller, "/run/holder") == [499]
    (marks / "go").touch()
    url = f"{controller.url}{EXPOSED}/ok"
    wait_until(lambda: requests.get(url, timeout=60).status_code == 200, 60,
               "the exposed service to answer", controller)
    # Once it answers, a call still waiting would have gone to it before this one.
    assert not (marks / "arrived").exists(), (marks / "arrived").read_text()
    no_fault_logged(controller)


@pytest.mark.timeout(120)
def test_the_script_gets_the_clients_headers_only(controller: ControllerProcess) -> None:
    """aiohttp's client added `Accept: */*` to every call to the watchdog: the script saw
    an Http_Accept the client never sent (a review found it)."""
    service = controller.create({"name": "headers", "log_level": "CRITICAL",
                                 "script": 'echo "accept=${Http_Accept-unset}"\n'})
    with send(controller, "POST", "/run/headers",
              {**bearer(service), "Content-Length": "0", "Connection": "close"}) as sock:
        answer = read_until(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(b"\r\n\r\naccept=unset\n"), answer


@pytest.mark.timeout(120)
def test_a_client_leaving_mid_answer_keeps_the_status_sent(
    controller: ControllerProcess,
) -> None:
    """A streamed answer (over 64 KiB) whose client leaves: the failed write was taken for
    the service failing, logged so, and the usage log said 502 (or 400) for a 200."""
    service = controller.create({
        "name": "big", "script": 'head -c 20000000 /dev/zero > "$TMP_OUTPUT_DIR/out"\n'})
    with send(controller, "POST", "/run/big", {**bearer(service), "Content-Length": "4"},
              b"aGk=") as sock:
        assert read_until(sock, size=1 << 20).startswith(b"HTTP/1.1 200 ")
    assert usage(controller, "/run/big") == [200]
    no_fault_logged(controller)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("route", ["job", "run"])
def test_a_client_leaving_mid_body_is_a_400_not_a_controller_fault(
    controller: ControllerProcess, marks: Path, route: str
) -> None:
    """A body cut short, as a broken chunk is: `/job` took it for a fault of its own (a
    500, a traceback logged), and so did `/run` for a body small enough to be read whole.
    Nothing comes of it: no job, no event file, no script run."""
    service = controller.create({
        "name": "left", "script": 'touch "$MARKS/ran"\n',
        "environment": {"variables": {"MARKS": str(marks)}}})
    # Over 64 KiB (streamed to the watchdog by /run), and under (read whole first).
    for length, sent in ((10 << 20, 1 << 20), (4000, 1000)):
        with send(controller, "POST", f"/{route}/left",
                  {**bearer(service), "Content-Length": str(length)}, b"A" * sent):
            pass
    assert usage(controller, f"/{route}/left", 2) == [400, 400]
    no_fault_logged(controller)
    assert controller.jobs("left") == {}
    assert list((controller.data_dir / "jobs").iterdir()) == []
    assert not marks.joinpath("ran").exists()


# ---- the service's answer breaks --------------------------------------------------------


@pytest.mark.timeout(120)
def test_an_answer_the_service_breaks_half_way_is_cut_not_ended(holder: ControllerProcess) -> None:
    """Its headers sent, the only honest signal left is a cut connection, as the watchdog
    gives: an error answered after them was written inside the first answer's body, and a
    clean end would pass the short body for whole."""
    with send(holder, "GET", f"{EXPOSED}/cut", {}) as sock:
        data = read_until(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower()
    assert b"started" in body
    assert not body.endswith(b"0\r\n\r\n") and b"HTTP/1.1" not in body, data


# ---- headers ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_header_that_is_not_utf8_is_refused_not_altered(
    holder: ControllerProcess, marks: Path
) -> None:
    """aiohttp reads `caf\\xe9` with a lone surrogate and writes it as `caf`: the script
    got `Http_X_Latin=caf` (a review found it). Refused, as the watchdog refuses it."""
    service = holder.create({
        "name": "latin", "script": 'env > "$MARKS/env"\n',
        "environment": {"variables": {"MARKS": str(marks)}}})
    for url in (f"{holder.url}/run/latin", f"{holder.url}{EXPOSED}/ok"):
        refused = requests.post(url, data=b"aGk=", timeout=60,
                                headers={**bearer(service), "X-Latin": "café".encode("latin-1")})
        assert (refused.status_code, refused.text) == (400, "request header X-Latin is not UTF-8")
    assert not marks.joinpath("env").exists()
    passed = requests.post(f"{holder.url}/run/latin", data=b"aGk=", timeout=60,
                           headers={**bearer(service), "X-Latin": "café".encode()})
    assert passed.status_code == 200
    assert "Http_X_Latin=café\n" in marks.joinpath("env").read_text()


def test_a_call_on_a_replaced_watchdog_runs_the_script_of_its_definition(
    controllers: ControllerFactory,
) -> None:
    """A watchdog being replaced drains: a call whose body was still coming runs once it
    has come, after the update had written the service's new script.sh, which the old
    watchdog was given by name: the new script with the old secrets (`v2 S=s1`)."""
    controller = controllers()
    script = "echo {v} S=$SEC\n"
    old = {"name": "draining", "script": script.format(v="v1"),
           "environment": {"secrets": {"SEC": "s1"}}}
    new = {**old, "script": script.format(v="v2"), "environment": {"secrets": {"SEC": "s2"}}}
    controller.create(old)
    first = controller.request("POST", "/run/draining", data=b"{}")  # its watchdog is up
    assert first.status_code == 200 and "v1 S=s1" in first.text, first.text
    folder = str(controller.data_dir / "services" / "draining").encode()
    watchdog = wait_until(lambda: next(
        (p for p in processes().values() if b"watchdog" in p.cmdline and folder in p.cmdline
         and p.state != "Z"), None), 30, "the service's watchdog", controller)
    args = watchdog.cmdline.split(b"\0")
    metrics = f"http://127.0.0.1:{int(args[args.index(b'--port') + 1])}/metrics"

    rest = threading.Event()

    def body() -> Iterator[bytes]:
        yield b'{"a": '
        rest.wait(60)
        yield b"1}"

    answers: dict[str, requests.Response] = {}
    call = threading.Thread(target=lambda: answers.setdefault(
        "call", controller.request("POST", "/run/draining", data=body())))
    call.start()
    wait_until(lambda: "faas_inflight 1.0" in requests.get(metrics, timeout=10).text, 30,
               "the call to reach the watchdog", controller)
    update = threading.Thread(target=lambda: answers.setdefault(
        "update", controller.request("PUT", "/system/services", json=new)))
    update.start()
    script_file = controller.data_dir / "services" / "draining" / "script.sh"
    wait_until(lambda: script_file.read_text().startswith("echo v2"), 30,
               "the update to write the new script", controller)
    rest.set()
    call.join(60)
    update.join(60)
    assert answers["update"].status_code == 204, answers["update"].text
    assert answers["call"].status_code == 200, answers["call"].text
    printed = [line for line in answers["call"].text.splitlines() if line.startswith("v")]
    assert printed == ["v1 S=s1"], answers["call"].text
