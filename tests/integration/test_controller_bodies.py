"""Bodies the controller reads itself are bounded in time: a client trickling one never
holds its connection (and a file descriptor) for longer than that.

A real controller over loopback, raw sockets. Its API's bodies (a `/job` event with or
without credentials, a service's definition, a bucket's) must be whole within 60 s of
the request's first byte (api.BODY_TIMEOUT) without credentials, never 60 s without a
byte with them, else 408; its S3 endpoint's bodies may take
as long as they keep coming, but 60 s without a byte (s3/app.BODY_IDLE_TIMEOUT) is S3's
`RequestTimeout`. Both limits are constants of the controller's process: the clients run
side by side, so that the file waits for them once. `/run` bodies are not the
controller's to time (the watchdog's read_timeout bounds them): not tested here.

The limits themselves (`http_timeouts.bounded_body`) are tested with short times on an
in-process server at the end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import select
import socket
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import requests
from aiohttp import web
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from faas_supervisor.http_timeouts import (
    BodyLate,
    TimedAppRunner,
    bounded_body,
    request_started,
)
from tests.integration.conftest import TCP_ESTABLISHED, server_side_state
from tests.integration.controller_fixture import ControllerProcess, wait_until

pytestmark = pytest.mark.integration

LIMIT = 60.0  # api.BODY_TIMEOUT and s3/app.BODY_IDLE_TIMEOUT, the controller's
DECLARED = 100_000  # the Content-Length the slow clients announce
S3_TIMEOUT = b"<Code>RequestTimeout</Code>"


@dataclass
class Outcome:
    answer: bytes  # everything the server sent
    answered_after: float  # seconds from the head to the answer's first byte (inf: none)
    closed: bool  # the server closed the connection after its answer


def slow_client(port: int, head: bytes, *, every: float, until: float,
                last_byte: bytes | None = None) -> Outcome:
    """Sends `head` and then one byte of body every `every` seconds for `until` seconds
    (`last_byte` to end on, if given: then the body is whole), then waits, and reads
    what the server answers; at most LIMIT + 40 s in all."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        start = time.monotonic()
        sock.sendall(head)
        answer, answered, closed = b"", float("inf"), False
        sending = True
        next_send = start + every
        while time.monotonic() - start < LIMIT + 40:
            now = time.monotonic()
            wait = min(max(0.0, next_send - now) if sending else 1.0,
                       start + LIMIT + 40 - now)
            readable, _, _ = select.select([sock], [], [], wait)  # the pace: the client's
            if readable:
                piece = sock.recv(65536)
                if not piece:
                    closed = True
                    break
                if not answer:
                    answered = time.monotonic() - start
                answer += piece
                sending = False  # answered: nothing more is sent
                continue
            if not sending:
                continue
            if time.monotonic() - start >= until:
                sending = False
                if last_byte is not None:
                    sock.sendall(last_byte)
                continue
            sock.sendall(b" ")
            next_send += every
        return Outcome(answer, answered, closed)


def non_reader(port: int, head: bytes) -> float:
    """Sends `head` on a connection with a small receive buffer, then reads nothing:
    seconds until the server's end of it is let go (aborted: no longer ESTABLISHED), inf
    if not within LIMIT + 40 s. What the client is sent stays in the buffers meanwhile."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with sock:
        sock.connect(("127.0.0.1", port))
        start = time.monotonic()
        sock.sendall(head)
        client = sock.getsockname()[1]
        while time.monotonic() - start < LIMIT + 40:
            if server_side_state(port, client) != TCP_ESTABLISHED:
                return time.monotonic() - start
            time.sleep(0.5)  # the kernel's timer: no event of it reaches this process
        return float("inf")


def json_head(path: str, auth: str | None, length: int = DECLARED, extra: str = "") -> bytes:
    authorization = f"Authorization: {auth}\r\n" if auth else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{authorization}{extra}Content-Length: {length}\r\n\r\n{{"
    ).encode()


def s3_put_head(controller: ControllerProcess, key: str, body: bytes, keys: Credentials,
                extra: str = "") -> bytes:
    """A PutObject's head, signed (with the hash of `body`, the whole body to come)."""
    url = f"http://127.0.0.1:{controller.s3_port}/slow/{key}"
    request = AWSRequest("PUT", url, data=body)
    S3SigV4Auth(keys, "s3", "us-east-1").add_auth(request)
    head = f"PUT /slow/{key} HTTP/1.1\r\nHost: 127.0.0.1:{controller.s3_port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in request.headers.items()
                    if k.lower() not in ("host", "content-length"))
    return f"{head}{extra}Content-Length: {len(body)}\r\n\r\n".encode()


@pytest.mark.timeout(300)
def test_slow_bodies_are_cut_off_and_their_connections_closed(
    controller: ControllerProcess,
) -> None:
    """The repro of the file-descriptor exhaustion: `POST /job/<service>` without
    credentials (read to find a Ceph token), a body a byte a second, was never answered.
    Now one without credentials gets a 408 some 60 s after its first byte and its
    connection is closed, as does one with them that sends nothing for 60 s, while a
    `/job` with its token sending a byte every 5 s for 65 s is taken (a large event on a
    slow link takes its time); the same for S3: a PutObject stalled for 60 s gets
    RequestTimeout and is closed, one that sends a byte every 5 s for 65 s is stored.
    An answer nobody reads is given up too: its connection aborted 60 s on."""
    service = controller.create({
        "name": "slowbody", "image": "busybox", "script": "true\n",
        "input": [{"storage_provider": "minio", "path": "slowbody/input"}],
    })
    admin = "Basic " + base64.b64encode(":".join(controller.auth).encode()).decode()
    provider = controller.request("GET", "/system/config").json()["minio_provider"]
    keys = Credentials(provider["access_key"], provider["secret_key"])
    s3 = boto3.client(
        "s3", endpoint_url=provider["endpoint"], aws_access_key_id=keys.access_key,
        aws_secret_access_key=keys.secret_key, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    s3.create_bucket(Bucket="slow")
    s3.put_object(Bucket="slow", Key="big", Body=b"b" * (32 << 20))
    get_big = AWSRequest("GET", f"http://127.0.0.1:{controller.s3_port}/slow/big")
    S3SigV4Auth(keys, "s3", "us-east-1").add_auth(get_big)
    get_head = (f"GET /slow/big HTTP/1.1\r\nHost: 127.0.0.1:{controller.s3_port}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in get_big.headers.items()
                          if k.lower() != "host") + "\r\n").encode()
    # Without credentials: trickled until 2 s before the API's limit, then silent: its
    # answer, at the limit, races no byte of ours (one would make the closing kernel
    # reset the connection). With them: silent after the head's first byte of body.
    trickled = dict(every=1.0, until=LIMIT - 2)
    silent = dict(every=LIMIT * 3, until=0)
    token = f"Bearer {service['token']}"
    api_clients: dict[str, Callable[[], Outcome]] = {
        "job without credentials": lambda: slow_client(
            controller.port, json_head("/job/slowbody", None), **trickled),
        "job with the token": lambda: slow_client(
            controller.port, json_head("/job/slowbody", token), **silent),
        "service definition": lambda: slow_client(
            controller.port, json_head("/system/services", admin), **silent),
        "bucket": lambda: slow_client(
            controller.port, json_head("/system/buckets", admin), **silent),
    }
    # `{`, 12 spaces a byte every 5 s, `}`: 65 s in all, never 60 s without a byte.
    def slow_job() -> Outcome:
        return slow_client(
            # Closed after its answer only because it asks.
            controller.port,
            json_head("/job/slowbody", token, length=14, extra="Connection: close\r\n"),
            every=5.0, until=LIMIT + 2, last_byte=b"}")
    s3_clients: dict[str, Callable[[], Outcome]] = {
        "stalled put": lambda: slow_client(
            controller.s3_port, s3_put_head(controller, "stalled", b"0" * 1000, keys) + b"0123",
            every=LIMIT * 3, until=0),
        # 14 bytes, a byte every 5 s: 65 s in all, never 60 s without one.
        "slow put": lambda: slow_client(
            controller.s3_port,
            # Closed after its answer only because it asks (the others' is the server's doing).
            s3_put_head(controller, "slow", b" " * 13 + b"!", keys, "Connection: close\r\n")
            + b" ",
            every=5.0, until=LIMIT + 2, last_byte=b"!"),
    }
    clients = {**api_clients, **s3_clients, "slow job": slow_job}
    with ThreadPoolExecutor(len(clients) + 1) as pool:
        futures = {name: pool.submit(call) for name, call in clients.items()}
        # A GetObject (sendfile) whose client reads nothing: its connection is aborted
        # once nothing has been taken for 60 s (server.SEND_TIMEOUT). It was held, with
        # the object's file open, for as long as the client kept it.
        not_read = pool.submit(non_reader, controller.s3_port, get_head)
        # Meanwhile the controller serves others.
        assert controller.request("GET", "/health", auth=None, timeout=10).status_code == 200
        outcomes = {name: future.result() for name, future in futures.items()}
        let_go = not_read.result()
    assert LIMIT - 2 <= let_go < LIMIT + 40, let_go
    log = controller.log_text()
    for name in api_clients:
        outcome = outcomes[name]
        assert outcome.answer.startswith(b"HTTP/1.1 408 "), (name, outcome, log)
        assert b"the request body was not received in time" in outcome.answer, name
        assert LIMIT - 2 <= outcome.answered_after < LIMIT + 10, (name, outcome)
        assert outcome.closed, (name, outcome)
    stalled = outcomes["stalled put"]
    assert stalled.answer.startswith(b"HTTP/1.1 400 "), (stalled, log)
    assert S3_TIMEOUT in stalled.answer, stalled
    assert LIMIT - 1 <= stalled.answered_after < LIMIT + 10, stalled
    assert stalled.closed, stalled
    slow = outcomes["slow put"]
    assert slow.answer.startswith(b"HTTP/1.1 200 "), (slow, log)
    assert slow.answered_after > LIMIT, slow
    job = outcomes["slow job"]
    assert job.answer.startswith(b"HTTP/1.1 201 "), (job, log)
    assert job.answered_after > LIMIT, job
    # Nothing was made of the cut bodies; each is one line in the log, no traceback.
    assert len(controller.jobs("slowbody")) == 1  # the slow job's
    services = controller.request("GET", "/system/services").json()
    assert [s["name"] for s in services] == ["slowbody"]
    assert log.count("request body too slow") == len(api_clients), log
    assert log.count("S3 request body stalled") == 1, log
    assert "Traceback" not in log, log


def test_accepts_failing_for_want_of_descriptors_are_one_line_now_and_then(
    controller: ControllerProcess,
) -> None:
    """A controller out of file descriptors cannot accept connections; asyncio retries
    each a second later and logged every failure with its traceback (58 385 of them,
    25 MB, in under a minute of the exhaustion above). Now: a line at most every 10 s,
    and the controller serves again once descriptors are free."""
    pid = controller.process.pid
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 8, hard))
    clients = []
    try:
        for _ in range(40):  # past the limit: the kernel still queues them (the backlog)
            clients.append(socket.create_connection(("127.0.0.1", controller.port), timeout=10))
        wait_until(lambda: "accept" in controller.log_text(), 30,
                   "a word of the failed accepts", controller)
        # Failures go on (a retry a second): they are counted, not logged each.
        time.sleep(3)  # nothing to await: the point is what is *not* logged meanwhile
    finally:
        for client in clients:
            client.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert requests.get(controller.url + "/health", timeout=30).status_code == 200
    log = controller.log_text()
    assert "out of system resource" not in log and "Traceback" not in log, log[-3000:]
    assert log.count("cannot accept connections") == 1, log
    assert "Too many open files" in log


# ---- the limits themselves, on an in-process server with short times ------------------

IDLE = 0.5
DEADLINE = 1.0


async def bounded(request: web.Request) -> web.Response:
    """Reads the body under the limits the query names; says how long it took."""
    idle = IDLE if "idle" in request.query else None
    deadline = request_started(request) + DEADLINE if "deadline" in request.query else None
    started = asyncio.get_running_loop().time()
    try:
        with bounded_body(request, deadline=deadline, idle=idle):
            body = await request.read()
    except BodyLate as late:
        answer = web.Response(status=408, text=str(late))
        answer.force_close()  # as the controller's answers do: the rest is not read
        return answer
    took = asyncio.get_running_loop().time() - started
    return web.Response(text=json.dumps({"size": len(body), "took": took}))


@pytest.fixture
async def server() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_post("/", bounded)
    runner = TimedAppRunner(app, head_timeout=30, keepalive_timeout=30, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def call(port: int, query: str, body: bytes, every: float) -> tuple[int, Any]:
    """A POST whose body comes a byte every `every` seconds: the status and the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode())

    async def trickle() -> None:
        for byte in body:
            await asyncio.sleep(every)  # the client's pace is what is tested
            writer.write(bytes([byte]))

    sending = asyncio.ensure_future(trickle())
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        rest = await reader.read()  # to the end: every answer closes the connection
    finally:
        sending.cancel()
        writer.close()
    status = int(head.split()[1])
    return status, json.loads(rest) if status == 200 else rest.decode()


async def test_an_idle_limit_counts_silence_not_the_whole_body(server: int) -> None:
    # A byte every IDLE / 3: longer in all than IDLE (and than the deadline), never late.
    status, answer = await call(server, "idle", b"x" * 12, IDLE / 3)
    assert status == 200 and answer["size"] == 12 and answer["took"] > DEADLINE, answer
    status, answer = await call(server, "idle", b"x" * 2, IDLE * 3)
    assert (status, answer) == (408, f"the request body did not come for {IDLE:g} s")


async def test_a_deadline_counts_the_whole_body(server: int) -> None:
    status, answer = await call(server, "deadline", b"x" * 100, DEADLINE / 8)
    assert (status, answer) == (408, "the request body did not come in time")
    status, answer = await call(server, "deadline", b"x" * 4, DEADLINE / 8)
    assert status == 200 and answer["size"] == 4, answer
