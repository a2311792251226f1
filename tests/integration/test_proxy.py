"""http mode (SPEC 4.4): a real watchdog proxying to a real user server, over loopback.

The user's script starts `proxy_upstream.py` (an aiohttp app); the tests talk to the
watchdog and, to release held requests or check what arrived, to the upstream directly.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import requests
import urllib3

from tests.integration.conftest import EXAMPLES, WatchdogFactory, WatchdogProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

UPSTREAM_APP = Path(__file__).with_name("proxy_upstream.py")
MIB = 1 << 20
# environment.variables reach the server: the script finds Python and the app through them.
CONFIG = f"""
name: exposed
environment:
  variables:
    PYTHON: {sys.executable}
    APP: {UPSTREAM_APP}
    GREETING: hello from the config
"""
SERVER_SCRIPT = 'exec "$PYTHON" "$APP"\n'
# A WebSocket handshake as a plain HTTP client sends it, to see the whole answer.
HANDSHAKE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
LATE = "the server did not answer within exec_timeout (1 s)\n"


@dataclass
class Exposed:
    wd: WatchdogProcess
    upstream_port: int

    @property
    def url(self) -> str:
        return self.wd.url

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    def log(self) -> str:
        return self.wd.log.read_text(errors="replace")


def start_exposed(watchdog: WatchdogFactory, script: str = SERVER_SCRIPT, wait: bool = True,
                  **settings: str) -> Exposed:
    port = free_port()
    env = {"mode": "http", "upstream_port": str(port), **settings}
    return Exposed(watchdog(script, CONFIG, env=env, wait=wait), port)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll another process's state: across processes there is no event to await."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def health(url: str) -> int:
    try:
        return requests.get(f"{url}/_/health", timeout=5).status_code
    except requests.ConnectionError:
        return -1


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent may not have reaped it yet).
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def held(url: str) -> requests.Response:
    """A request the upstream holds open: returns once its first line came through."""
    response = requests.get(f"{url}/hold", stream=True, timeout=30)
    assert response.status_code == 200
    assert response.raw.read(8) == b"started\n"
    return response


def trickle(chunks: int, pause: float) -> Iterator[bytes]:
    """An upload that keeps coming, a chunk every `pause` seconds."""
    for _ in range(chunks):
        yield b"x" * 1000
        time.sleep(pause)


@pytest.fixture
def exposed(watchdog: WatchdogFactory) -> Iterator[Exposed]:
    yield start_exposed(watchdog)


# ---- forwarding ------------------------------------------------------------------------


def test_methods_paths_queries_and_headers_pass_through(exposed: Exposed) -> None:
    response = requests.get(
        f"{exposed.url}/echo/a%2Fb?x=1&y=%20z&x=2",
        headers={"X-Custom": "kept", "Connection": "keep-alive, X-Private", "X-Private": "hop"},
        timeout=10,
    )
    assert response.status_code == 200
    seen = response.json()
    assert seen["method"] == "GET"
    assert seen["path_qs"] == "/echo/a%2Fb?x=1&y=%20z&x=2"  # not decoded nor re-encoded
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-custom"] == "kept"
    assert "x-private" not in headers  # named in Connection: hop-by-hop
    assert headers["host"] == f"127.0.0.1:{exposed.wd.port}"  # the client's Host, kept
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert response.headers["X-Upstream"] == "yes"
    assert response.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]

    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        body = method.encode() * 1000
        answer = requests.request(method, f"{exposed.url}/echo/m", data=body, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["method"] == method
        assert answer.json()["sha256"] == hashlib.sha256(body).hexdigest()

    head = requests.head(f"{exposed.url}/echo", timeout=10)
    assert head.status_code == 200 and head.content == b""

    assert requests.get(f"{exposed.url}/env", timeout=10).json() == {
        "GREETING": "hello from the config"
    }


def test_a_gzip_body_reaches_the_server_as_sent(exposed: Exposed) -> None:
    plain = b"squeeze me " * 1000
    answer = requests.post(f"{exposed.url}/echo", data=gzip.compress(plain), timeout=10,
                           headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 200, answer.text
    seen = answer.json()
    # The server decodes it itself (aiohttp does): the watchdog passed the bytes on as
    # they came, with their Content-Encoding, instead of decoding them first.
    assert {k.lower(): v for k, v in seen["headers"]}["content-encoding"] == "gzip"
    assert (seen["sha256"], seen["length"]) == (hashlib.sha256(plain).hexdigest(), len(plain))


def test_statuses_are_the_servers_and_redirects_are_not_followed(exposed: Exposed) -> None:
    teapot = requests.get(f"{exposed.url}/status/418", timeout=10)
    assert (teapot.status_code, teapot.text) == (418, "status 418\n")
    assert requests.get(f"{exposed.url}/status/204", timeout=10).status_code == 204
    moved = requests.get(f"{exposed.url}/status/302", allow_redirects=False, timeout=10)
    assert (moved.status_code, moved.headers["Location"]) == (302, "/elsewhere")
    assert requests.get(f"{exposed.url}/nowhere", timeout=10).status_code == 404


def forwarded(answer: requests.Response) -> tuple[str, ...]:
    headers = {k.lower(): v for k, v in answer.json()["headers"]}
    return tuple(headers[name] for name in (
        "host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"))


CLIENT_SAID = {"Host": "example.org", "X-Forwarded-For": "203.0.113.7",
               "X-Forwarded-Host": "example.org", "X-Forwarded-Proto": "https"}


def test_a_loopback_peers_forwarded_headers_are_kept_as_sent(exposed: Exposed) -> None:
    """The controller reaches the watchdog on loopback and says who its client is: the
    server got 127.0.0.1 appended, the controller's hop (a review found it). A peer on
    loopback could send the server anything on its own port anyway."""
    answer = requests.get(f"{exposed.url}/echo", headers=CLIENT_SAID, timeout=10)
    assert forwarded(answer) == ("example.org", "203.0.113.7", "example.org", "https")


def non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a route looked up; nothing is sent
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_any_other_peer_is_appended_to_forwarded_for(watchdog: WatchdogFactory) -> None:
    """An Ingress, or a client: anyone may say anything, so the peer is appended."""
    address = non_loopback_address()
    if address is None:
        reason = "no address but loopback: no peer other than loopback can be made"
        print(reason)
        pytest.skip(reason)
    port = free_port()
    wd = watchdog(SERVER_SCRIPT, CONFIG, env={"mode": "http", "upstream_port": str(port)},
                  args=["--host", "0.0.0.0"])
    answer = requests.get(f"http://{address}:{wd.port}/echo", headers=CLIENT_SAID, timeout=10)
    assert forwarded(answer) == (
        "example.org", f"203.0.113.7, {address}", "example.org", "https")


def test_a_response_cut_by_the_server_is_cut_for_the_client(exposed: Exposed) -> None:
    # Passing the truncated body on as a complete one would hide the server's failure.
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(f"{exposed.url}/broken", timeout=10)
    assert requests.get(f"{exposed.url}/echo", timeout=10).status_code == 200


def test_exec_timeout_bounds_the_wait_for_the_servers_answer(watchdog: WatchdogFactory) -> None:
    exposed = start_exposed(watchdog, exec_timeout="1s")
    answer = requests.get(f"{exposed.url}/late", timeout=30)
    assert answer.status_code == 504
    assert answer.text == "the server did not answer within exec_timeout (1 s)\n"
    requests.post(f"{exposed.upstream}/release", timeout=10)
    assert requests.get(f"{exposed.url}/late", timeout=10).text == "late\n"
    assert requests.get(f"{exposed.url}/hold", timeout=10).text == "started\ndone\n"


def test_exec_timeout_does_not_count_the_clients_upload(watchdog: WatchdogFactory) -> None:
    # An upload longer than exec_timeout is no late answer (a review found it cut, 504).
    exposed = start_exposed(watchdog, exec_timeout="1s")
    started = time.monotonic()
    answer = requests.post(f"{exposed.url}/sha256", data=trickle(5, 0.4), timeout=30)
    assert time.monotonic() - started >= 2.0
    assert answer.status_code == 200, answer.text
    assert answer.json()["length"] == 5000
    # Once the body is in, the server still has exec_timeout to answer, no more.
    late = requests.post(f"{exposed.url}/late", data=trickle(3, 0.4), timeout=30)
    assert (late.status_code, late.text) == (504, LATE)
    requests.post(f"{exposed.upstream}/release", timeout=10)  # lets the server stop at once


def test_exec_timeout_bounds_a_server_that_takes_no_body(watchdog: WatchdogFactory) -> None:
    # /late reads nothing: once the socket buffers are full, the upload waits on the server,
    # and that wait is the server's time. Counting from the body's end only, it never ended.
    exposed = start_exposed(watchdog, exec_timeout="1s")
    late = requests.post(f"{exposed.url}/late", data=b"x" * (32 * MIB), timeout=20)
    assert (late.status_code, late.text) == (504, LATE)
    requests.post(f"{exposed.upstream}/release", timeout=10)


# aiohttp writes headers as UTF-8 and drops other bytes: passed on, `caf\xe9` would arrive
# as `caf` (a review found both directions altered).


def test_a_request_header_that_is_not_utf8_is_refused_not_altered(exposed: Exposed) -> None:
    seen = requests.get(f"{exposed.url}/echo", headers={"X-Name": "café".encode()}, timeout=10)
    assert {k.lower(): v for k, v in seen.json()["headers"]}["x-name"] == "café"
    latin1 = requests.get(f"{exposed.url}/echo", headers={"X-Name": "café".encode("latin-1")},
                          timeout=10)
    assert (latin1.status_code, latin1.text) == (400, "request header X-Name is not UTF-8\n")


def test_a_response_header_that_is_not_utf8_is_a_502_not_altered(exposed: Exposed) -> None:
    utf8 = requests.get(f"{exposed.url}/raw-header?charset=utf-8", timeout=10)
    assert utf8.status_code == 200  # requests reads header bytes as Latin-1
    sent = utf8.headers["Content-Disposition"].encode("latin-1")
    assert sent == 'attachment; filename="café.txt"'.encode()
    latin1 = requests.get(f"{exposed.url}/raw-header?charset=latin-1", timeout=10)
    assert (latin1.status_code, latin1.text) == (
        502, "the server's header Content-Disposition is not UTF-8\n")


def test_reserved_paths_stay_the_watchdogs(exposed: Exposed) -> None:
    assert requests.get(f"{exposed.url}/_/health", timeout=10).text == "OK\n"
    assert requests.get(f"{exposed.url}/_/ready", timeout=10).status_code == 200
    requests.get(f"{exposed.url}/echo", timeout=10)
    metrics = requests.get(f"{exposed.url}/metrics", timeout=10).text
    assert 'faas_invocations_total{code="200"}' in metrics
    assert requests.post(f"{exposed.url}/_/health", timeout=10).status_code == 405


def test_large_bodies_stream_both_ways_in_small_memory(exposed: Exposed) -> None:
    size = 64 * MIB
    chunk = os.urandom(MIB)
    before = peak_rss(exposed.wd.process.pid)

    def upload() -> Iterator[bytes]:  # chunked: the proxy cannot know the length up front
        for _ in range(size // MIB):
            yield chunk

    expected = hashlib.sha256(chunk * (size // MIB)).hexdigest()
    answer = requests.post(f"{exposed.url}/sha256", data=upload(), timeout=60)
    assert answer.status_code == 200
    assert (answer.json()["length"], answer.json()["sha256"]) == (size, expected)

    for query in ("mib=64", "mib=64&length=1"):  # chunked, then with a Content-Length
        digest, total = hashlib.sha256(), 0
        with requests.get(f"{exposed.url}/bytes?{query}", stream=True, timeout=60) as download:
            assert download.status_code == 200
            for data in download.iter_content(MIB):
                digest.update(data)
                total += len(data)
        reference = hashlib.sha256()
        for i in range(64):
            reference.update(hashlib.sha256(str(i).encode()).digest() * (MIB // 32))
        assert (total, digest.hexdigest()) == (size, reference.hexdigest())

    grown = peak_rss(exposed.wd.process.pid) - before
    print(f"watchdog peak RSS grew by {grown / MIB:.1f} MiB for 3 x 64 MiB through it")
    assert grown < 16 * MIB


def test_body_over_max_body_size_is_413(watchdog: WatchdogFactory) -> None:
    exposed = start_exposed(watchdog, max_body_size="1000")
    assert requests.post(f"{exposed.url}/sha256", data=b"x" * 2000, timeout=10).status_code == 413

    def chunked() -> Iterator[bytes]:
        yield b"x" * 600
        yield b"x" * 600

    assert requests.post(f"{exposed.url}/sha256", data=chunked(), timeout=10).status_code == 413
    assert requests.post(f"{exposed.url}/sha256", data=b"x" * 900, timeout=10).status_code == 200


def test_a_refusals_body_counts_in_bytes_out(watchdog: WatchdogFactory) -> None:
    """faas_bytes_out_total left out what answers.refusal sent (a review found it)."""
    exposed = start_exposed(watchdog, max_body_size="1000")

    def bytes_out() -> float:
        text = requests.get(f"{exposed.url}/metrics", timeout=10).text
        match = re.search(r"^faas_bytes_out_total (\S+)$", text, re.MULTILINE)
        assert match, text
        return float(match.group(1))

    before = bytes_out()
    refused = requests.post(f"{exposed.url}/sha256", data=b"x" * 2000, timeout=10)
    assert refused.status_code == 413 and refused.content
    assert bytes_out() - before == len(refused.content)


# ---- WebSockets ------------------------------------------------------------------------


async def test_websocket_echo_both_ways_with_close_codes(exposed: Exposed) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{exposed.url}/ws", protocols=("x", "chat")) as ws:
            assert ws.protocol == "chat"  # negotiated with the upstream, passed back
            await ws.send_str("hello")
            assert (await ws.receive_str(timeout=10)) == "hello"
            payload = os.urandom(MIB)
            await ws.send_bytes(payload)
            assert (await ws.receive_bytes(timeout=10)) == payload
            await ws.send_str("close-me")  # the upstream closes with 4001
            msg = await ws.receive(timeout=10)
            assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4001, "asked to")

        async with session.ws_connect(f"{exposed.url}/ws") as ws:
            await ws.send_str("ping?")
            assert (await ws.receive_str(timeout=10)) == "ping?"
            await ws.close(code=4002)  # the client closes: the upstream sees 4002
        async with session.get(f"{exposed.upstream}/last-close") as answer:
            assert (await answer.json()) == {"code": 4002}

        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{exposed.url}/no-ws-here")
        assert refused.value.status == 404


def counted(url: str, code: int) -> float:
    """faas_invocations_total for `code` (0 until counted once)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    match = re.search(rf'^faas_invocations_total{{code="{code}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_a_websocket_session_counts_as_101_however_it_ends(exposed: Exposed) -> None:
    """Every session was counted 499, client gone, even one closed cleanly: aiohttp
    cancels the handler of a WebSocket whose close it completed (a review found it)."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{exposed.url}/ws") as ws:
            await ws.send_str("hello")
            assert (await ws.receive_str(timeout=10)) == "hello"
            await ws.close()  # the client closes
        async with session.ws_connect(f"{exposed.url}/ws") as ws:
            await ws.send_str("close-me")  # the upstream closes
            assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.CLOSE
    # A session is counted when its handler ends, after the client saw the close.
    wait_until(lambda: counted(exposed.url, 101) + counted(exposed.url, 499) == 2,
               "both sessions counted")
    assert (counted(exposed.url, 101), counted(exposed.url, 499)) == (2, 0)


# aiohttp's ws_connect follows redirects and keeps only a refusal's status: a review found
# the proxy following them, and a 401 reaching the client without its WWW-Authenticate.


def test_a_websocket_handshake_redirect_is_passed_through(exposed: Exposed) -> None:
    moved = requests.get(f"{exposed.url}/status/302", headers=HANDSHAKE, allow_redirects=False,
                         timeout=10)
    assert (moved.status_code, moved.headers.get("Location")) == (302, "/elsewhere")


def test_a_refused_websocket_handshake_is_relayed_whole(exposed: Exposed) -> None:
    refused = requests.get(f"{exposed.url}/status/401", headers=HANDSHAKE, timeout=10)
    assert (refused.status_code, refused.text) == (401, "status 401\n")
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="exposed"'


def test_exec_timeout_bounds_the_websocket_handshake(watchdog: WatchdogFactory) -> None:
    # A handshake never answered held its max_inflight slot for good (a review found it).
    exposed = start_exposed(watchdog, exec_timeout="1s", max_inflight="1")
    late = requests.get(f"{exposed.url}/late", headers=HANDSHAKE, timeout=10)
    assert (late.status_code, late.text) == (504, LATE)
    assert requests.get(f"{exposed.url}/echo", timeout=10).status_code == 200  # slot freed
    requests.post(f"{exposed.upstream}/release", timeout=10)


# ---- limits and lifecycle --------------------------------------------------------------


def test_max_inflight_answers_429(watchdog: WatchdogFactory) -> None:
    exposed = start_exposed(watchdog, max_inflight="2")
    first, second = held(exposed.url), held(exposed.url)
    assert requests.get(f"{exposed.url}/echo", timeout=10).status_code == 429
    assert requests.get(f"{exposed.url}/_/ready", timeout=10).status_code == 503
    requests.post(f"{exposed.upstream}/release", timeout=10)  # straight to the upstream
    assert first.raw.read() == b"done\n" and second.raw.read() == b"done\n"
    wait_until(lambda: requests.get(f"{exposed.url}/_/ready", timeout=5).status_code == 200,
               "the watchdog to be ready again")
    assert requests.get(f"{exposed.url}/echo", timeout=10).status_code == 200
    metrics = requests.get(f"{exposed.url}/metrics", timeout=10).text
    assert 'faas_invocations_total{code="429"} 1.0' in metrics


def test_sigterm_drains_in_flight_requests_then_stops_the_server(exposed: Exposed) -> None:
    server_pid = requests.get(f"{exposed.url}/pid", timeout=10).json()["pid"]
    response = held(exposed.url)
    exposed.wd.process.send_signal(signal.SIGTERM)
    wait_until(lambda: health(exposed.url) == 503, "health to turn 503")
    assert requests.get(f"{exposed.url}/echo", timeout=10).status_code == 503
    assert is_running(server_pid)  # still serving what is in flight
    requests.post(f"{exposed.upstream}/release", timeout=10)
    assert response.raw.read() == b"done\n"
    assert exposed.wd.process.wait(30) == 0
    assert not is_running(server_pid)


def test_drain_gives_up_after_healthcheck_interval(watchdog: WatchdogFactory) -> None:
    exposed = start_exposed(watchdog, healthcheck_interval="1s")
    server_pid = requests.get(f"{exposed.url}/pid", timeout=10).json()["pid"]
    response = held(exposed.url)  # never released
    started = time.monotonic()
    exposed.wd.process.send_signal(signal.SIGTERM)
    assert exposed.wd.process.wait(30) == 0
    assert time.monotonic() - started < 15
    with contextlib.suppress(urllib3.exceptions.HTTPError):  # cut short: never "done"
        assert b"done" not in response.raw.read()
    assert not is_running(server_pid)


def test_server_exit_stops_the_watchdog_non_zero(exposed: Exposed) -> None:
    answer = requests.post(f"{exposed.url}/die", timeout=10)  # the server exits with 3
    assert answer.status_code == 502
    assert exposed.wd.process.wait(30) == 1
    assert "upstream server exited" in exposed.log()


def test_server_death_turns_health_503_while_draining(watchdog: WatchdogFactory) -> None:
    # The script stays the watched process; the app is its child, in the same group.
    exposed = start_exposed(watchdog, script='"$PYTHON" "$APP" &\nwait\n')
    pids = requests.get(f"{exposed.url}/pid", timeout=10).json()
    response = held(exposed.url)
    os.kill(pids["ppid"], signal.SIGKILL)  # the script dies; its server serves on
    wait_until(lambda: health(exposed.url) == 503, "health to turn 503")
    requests.post(f"{exposed.upstream}/release", timeout=10)
    assert response.raw.read() == b"done\n"
    assert exposed.wd.process.wait(30) == 1
    assert not is_running(pids["pid"])  # the group went with it


def test_server_that_never_listens_fails_start_up(
    watchdog: WatchdogFactory, tmp_path: Path
) -> None:
    pid_file = tmp_path / "server.pid"
    exposed = start_exposed(watchdog, script=f"echo $$ > {pid_file}\nexec sleep 60\n",
                            wait=False, upstream_start_timeout="1")
    assert exposed.wd.process.wait(30) == 2
    lines = exposed.log().strip().splitlines()
    assert lines[-1] == (
        f"faas-supervisor: error: the server did not listen on 127.0.0.1:{exposed.upstream_port}"
        " within upstream_start_timeout (1 s)"
    )
    assert "Traceback" not in exposed.log()
    assert not is_running(int(pid_file.read_text()))


def test_sigterm_while_the_server_starts_stops_cleanly(
    watchdog: WatchdogFactory, tmp_path: Path
) -> None:
    pid_file = tmp_path / "server.pid"
    exposed = start_exposed(watchdog, script=f"echo $$ > {pid_file}\nexec sleep 60\n",
                            wait=False)
    wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", "the script to start")
    assert health(exposed.url) == 503  # listening, but not ready while the server starts
    starting = requests.get(f"{exposed.url}/echo", timeout=10)
    assert (starting.status_code, starting.text) == (503, "the watchdog is starting\n")
    exposed.wd.process.send_signal(signal.SIGTERM)
    assert exposed.wd.process.wait(30) == 0
    assert not is_running(int(pid_file.read_text()))
    # Never ready, and not said to be: its log said `watchdog ready` as it stopped.
    assert "watchdog ready" not in exposed.log()
    assert "shutting down" in exposed.log()


def test_server_that_exits_at_start_fails_start_up(watchdog: WatchdogFactory) -> None:
    exposed = start_exposed(watchdog, script="echo cannot load the model >&2\nexit 3\n",
                            wait=False)
    assert exposed.wd.process.wait(30) == 2
    log = exposed.log()
    assert "cannot load the model" in log
    assert log.strip().splitlines()[-1] == (
        "faas-supervisor: error: the server exited with status 3 before listening on "
        f"127.0.0.1:{exposed.upstream_port}"
    )


def test_the_exposed_example_serves(watchdog: WatchdogFactory) -> None:
    port = free_port()
    example = EXAMPLES / "exposed"
    wd = watchdog(example / "script.sh", example / "function_config.yaml",
                  env={"mode": "http", "upstream_port": str(port)})
    hello = requests.get(f"{wd.url}/", timeout=10)
    assert hello.status_code == 200 and "exposed" in hello.text
    answer = requests.post(f"{wd.url}/predict", data="some text", timeout=10)
    assert answer.status_code == 200
    assert answer.json()["upper"] == "SOME TEXT"
    # In chunks (a body of unknown length): the example read Content-Length only, and
    # answered as if the body were empty (left alone in an earlier note).
    chunked = requests.post(f"{wd.url}/predict", data=iter([b"some ", b"text"]), timeout=10)
    assert chunked.request.headers["Transfer-Encoding"] == "chunked"
    assert chunked.json()["upper"] == "SOME TEXT"
    assert wd.stop() == 0


def test_a_request_the_server_drops_is_not_sent_again_unless_idempotent(
    watchdog: WatchdogFactory,
) -> None:
    """The server takes the request and closes without answering: a POST may have done
    its work, so it goes once (RFC 9112 9.3.1), a 502; a DELETE goes again at most once
    (aiohttp's own retry). A retry of our own made them 2 and 4 (a review found it)."""
    exposed = start_exposed(watchdog)
    assert requests.post(f"{exposed.url}/drop-post", timeout=30).status_code == 502
    assert requests.delete(f"{exposed.url}/drop-delete", timeout=30).status_code == 502
    hits = requests.get(f"{exposed.upstream}/dropped", timeout=5).json()
    assert hits["/drop-post"] == 1 and 1 <= hits["/drop-delete"] <= 2, hits
