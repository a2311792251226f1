"""The hostile-inputs catalogue: malformed, oversized, slow, forged and racing inputs
against real processes (issue 8, docs/RELIABILITY.md).

Each case is a row of `CASES`: an id, a category, a target (`watchdog`: a real
`faas-supervisor watchdog`; `run`: `faas-supervisor run`; `controller`: a real controller
on the local backend), what is sent, and the status (or exit status) the SPEC and the
issue promise. One test runs them all; each records what it observed for the tables of
docs/RELIABILITY.md (tests/reliability.py writes them under `make reliability`).

A case whose fix is being made on another branch names it (`pending="api"`): it is a
strict xfail, so once that branch is merged the case passes, the xfail fails, and the
marker comes off.

One watchdog, one controller and one S3 server (moto) serve every case of their target;
every case is bounded in time, and after each the target is checked: still alive, no
invocation folder left behind.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import gzip
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.integration.conftest import (
    S3Server,
    WatchdogFactory,
    WatchdogProcess,
    faas_command,
)
from tests.integration.controller_fixture import ControllerFactory, ControllerProcess
from tests.reliability import HostileRow, record_hostile

pytestmark = [pytest.mark.integration, pytest.mark.reliability(catalogue="hostile"),
              pytest.mark.timeout(90)]

CASE_TIMEOUT = 15.0  # seconds any one request may take before it counts as "no answer"
READ_TIMEOUT = 2  # the watchdog's read_timeout, short so that slow clients are cut soon
EXEC_TIMEOUT = 3  # the watchdog's exec_timeout
MAX_BODY = 1 << 20  # the watchdog's max_body_size
SECRET = b"TOP SECRET of another service\n"
# The service's input bucket, and another's, on the session's S3 server (no other test
# module uses these names).
IN, SECRET_BUCKET = "hostile-input", "hostile-secret"

# ---- what is sent ----------------------------------------------------------------------


@dataclass(frozen=True)
class Http:
    """One request through `requests`. `auth`: None, "admin" (basic), or a service name
    whose token goes in as `Bearer` (the controller only)."""

    method: str = "POST"
    path: str = "/"
    body: bytes | None = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: str | None = None
    chunked: bool = False


@dataclass(frozen=True)
class Raw:
    """Bytes written to a socket in parts, `interval` seconds apart (a slow client); the
    parts stop once the server answers or closes."""

    parts: tuple[bytes, ...]
    interval: float = 0.0


@dataclass(frozen=True)
class Run:
    """`faas-supervisor run` with `event` on standard input and the script in `mode`."""

    event: bytes
    mode: str = "copy"
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    """Several requests at once, or a request and what must follow it: `act` returns the
    observed outcome as a short text, compared with the expected text."""

    act: Callable[[Any], str]
    what: str


Input = Http | Raw | Run | Action


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    target: str  # watchdog | run | controller
    description: str
    input: Input
    expect: int | tuple[int | str, ...] | str
    pending: str | None = None  # the branch i8-<pending> fixes it
    known: str | None = None  # found here, not fixed yet: why, for the lead
    check: Callable[[Any, Observed], str | None] | None = None  # extra: None when it holds


@dataclass
class Observed:
    status: int | str  # an HTTP status, an exit status, or "closed", "no answer", a text
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def summary(self, target: str) -> str:
        if isinstance(self.status, str):
            return self.status
        if target == "run":
            return f"exit {self.status}"
        first = self.body.split(b"\n", 1)[0][:70].decode(errors="replace").strip()
        return f"{self.status} {first}".strip()


def expected_text(case: Case) -> str:
    if isinstance(case.expect, str):
        return case.expect
    values = case.expect if isinstance(case.expect, tuple) else (case.expect,)
    prefix = "exit " if case.target == "run" else ""
    return " or ".join(f"{prefix}{v}" for v in values)


def holds(case: Case, observed: Observed) -> bool:
    if isinstance(case.expect, str):
        return observed.status == case.expect
    values = case.expect if isinstance(case.expect, tuple) else (case.expect,)
    return observed.status in values


# ---- the script every watchdog and run case uses -----------------------------------------

# What to do comes in the header X-Mode (Http_X_Mode) or, for `run`, the variable MODE;
# X-Token names the case, for the files it leaves in $MARKS.
SCRIPT = r"""#!/bin/sh
mode="${Http_X_Mode:-$MODE}"
mark="$MARKS/${Http_X_Token:-$TOKEN}"
case "$mode" in
  copy)
    if [ -n "${INPUT_FILE_PATH:-}" ]; then cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/out"; fi
    echo copied ;;
  env-input)
    if [ -n "${INPUT_FILE_PATH+set}" ]; then echo "INPUT_FILE_PATH=$INPUT_FILE_PATH"; exit 7; fi ;;
  env-http)
    env > "$TMP_OUTPUT_DIR/env" ;;
  link-passwd) ln -s /etc/passwd "$TMP_OUTPUT_DIR/passwd"; echo linked ;;
  link-dir) ln -s /etc "$TMP_OUTPUT_DIR/etc"; echo linked ;;
  link-loop) ln -s loop "$TMP_OUTPUT_DIR/loop"; echo linked ;;
  fifo) mkfifo "$TMP_OUTPUT_DIR/fifo"; echo made ;;
  socket)
    "$PYTHON" -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' \
      "$TMP_OUTPUT_DIR/sock"; echo made ;;
  swap-output) rm -rf "$TMP_OUTPUT_DIR"; ln -s / "$TMP_OUTPUT_DIR"; echo swapped ;;
  remove-folders) rm -rf "$TMP_INPUT_DIR" "$TMP_OUTPUT_DIR"; echo removed ;;
  many-files)
    i=0; while [ $i -lt 3000 ]; do : > "$TMP_OUTPUT_DIR/f$i"; i=$((i + 1)); done ;;
  deep-dirs)
    d="$TMP_OUTPUT_DIR"; i=0; while [ $i -lt 100 ]; do d="$d/d"; i=$((i + 1)); done
    mkdir -p "$d"; echo deep > "$d/f" ;;
  odd-names)
    printf x > "$TMP_OUTPUT_DIR/$(printf 'new\nline')"
    printf y > "$TMP_OUTPUT_DIR/$(printf '\377\376')" ;;
  forks)
    i=0; while [ $i -lt 40 ]; do sleep 60 & echo $! >> "$mark.pids"; i=$((i + 1)); done
    echo forked ;;
  double-fork)
    i=0; while [ $i -lt 20 ]; do ( sleep 60 & echo $! >> "$mark.pids" ); i=$((i + 1)); done
    echo forked ;;
  setsid)
    setsid sh -c 'echo $$ >> "$1.pids"; exec sleep 60' sh "$mark" >/dev/null 2>&1 </dev/null &
    while [ ! -s "$mark.pids" ]; do sleep 0.01; done
    echo daemon ;;
  bg-stdout) sleep 60 & echo $! >> "$mark.pids"; echo left a child holding stdout ;;
  close-stdout) exec 1>&- 2>&-; echo written > "$TMP_OUTPUT_DIR/o" ;;
  garbage) head -c 65536 /dev/urandom ;;
  big-stdout) head -c 8388608 /dev/zero | tr '\0' x ;;
  exit255) echo failing; exit 255 ;;
  kill9) kill -9 $$ ;;
  segv) kill -SEGV $$ ;;
  sleep) echo $$ >> "$mark.pids"; sleep 60 ;;
  ignore-term) trap '' TERM; echo $$ >> "$mark.pids"; sleep 60 ;;
  stdin) cat > /dev/null; echo read stdin ;;
  *) echo "unknown mode $mode"; exit 9 ;;
esac
"""


# ---- the targets ---------------------------------------------------------------------------


@dataclass
class S3World:
    """The moto server, with a bucket the services read and one that is another's."""

    server: S3Server
    input_bucket: str
    secret_bucket: str

    def provider(self) -> dict[str, str]:
        s = self.server
        return {"endpoint": s.endpoint, "access_key": s.access_key,
                "secret_key": s.secret_key, "region": s.region}

    def config(self) -> dict[str, Any]:
        return {
            "name": "hostile",
            "log_level": "INFO",
            "storage_providers": {"minio": {"default": self.provider(),
                                            "other": self.provider()}},
            "input": [{"storage_provider": "minio", "path": f"{self.input_bucket}/input"}],
        }


@dataclass
class WatchdogTarget:
    wd: WatchdogProcess
    marks: Path
    s3: S3World


@dataclass
class RunTarget:
    folder: Path
    marks: Path
    s3: S3World

    def __call__(self, run: Run, token: str) -> Observed:
        tmp = self.folder / f"tmp-{token}"
        tmp.mkdir()
        script = self.folder / "script.sh"
        config = self.folder / f"config-{token}.yaml"
        config.write_text(yaml.safe_dump({**self.s3.config(), **run.config}))
        env = {k: v for k, v in os.environ.items()
               if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT", "JOB_UUID", "EXEC_TIMEOUT",
                            "exec_timeout", "LOG_LEVEL")}
        env.update({"TMPDIR": str(tmp), "MODE": run.mode, "TOKEN": token,
                    "MARKS": str(self.marks), "PYTHON": sys.executable,
                    "EXEC_TIMEOUT": str(EXEC_TIMEOUT)})
        try:
            result = subprocess.run(
                [*faas_command(), "run", "--script", str(script), "--config", str(config)],
                input=run.event, env=env, capture_output=True, timeout=CASE_TIMEOUT)
        except subprocess.TimeoutExpired:
            return Observed("no exit")
        left = list(tmp.iterdir())
        if left:
            return Observed(f"exit {result.returncode}, left {[p.name for p in left]}")
        return Observed(result.returncode, result.stdout + result.stderr)


@dataclass
class ControllerTarget:
    ctl: ControllerProcess
    tokens: dict[str, str]
    marks: Path

    @property
    def port(self) -> int:
        return self.ctl.port


@pytest.fixture(scope="module")
def s3_world(moto_server: S3Server) -> S3World:
    world = S3World(moto_server, IN, SECRET_BUCKET)
    client = moto_server.client()
    for bucket in (IN, SECRET_BUCKET):
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=IN, Key="input/ok.txt", Body=b"fine\n")
    client.put_object(Bucket=IN, Key="other/private.txt", Body=SECRET)
    client.put_object(Bucket=IN, Key="input-evil/x.txt", Body=SECRET)
    client.put_object(Bucket=SECRET_BUCKET, Key="secret.txt", Body=SECRET)
    client.put_object(Bucket=SECRET_BUCKET, Key="input/secret.txt", Body=SECRET)
    return world


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "marks").mkdir()
    (folder / "script.sh").write_text(SCRIPT)
    return folder


@pytest.fixture(scope="module")
def hostile_watchdog(hostile_folder: Path, s3_world: S3World) -> Iterator[WatchdogTarget]:
    factory = WatchdogFactory(hostile_folder / "wd")
    factory.tmp_path.mkdir()
    marks = hostile_folder / "marks"
    factory(hostile_folder / "script.sh", yaml.safe_dump(s3_world.config()),
            env={"MARKS": str(marks), "PYTHON": sys.executable},
            args=["--max-body-size", str(MAX_BODY), "--read-timeout", str(READ_TIMEOUT),
                  "--exec-timeout", str(EXEC_TIMEOUT)])
    yield WatchdogTarget(factory.started[0], marks, s3_world)
    factory.close()


@pytest.fixture(scope="module")
def hostile_run(hostile_folder: Path, s3_world: S3World) -> RunTarget:
    return RunTarget(hostile_folder, hostile_folder / "marks", s3_world)


CONTROLLER_SCRIPT = r"""
case "$(cat "${INPUT_FILE_PATH:-/dev/null}" 2>/dev/null)" in
  sleep) echo $$ > "$MARKS/$SERVICE.$JOB_UUID.pid"; sleep 60 ;;
esac
if [ -n "${INPUT_FILE_PATH:-}" ]; then cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/out"; fi
"""


def service(name: str, marks: Path, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "script": CONTROLLER_SCRIPT,
        "environment": {"variables": {"MARKS": str(marks), "SERVICE": name}},
        "input": [{"storage_provider": "minio", "path": f"{name}/input"}],
        "output": [{"storage_provider": "minio", "path": f"{name}/output"}],
        **fields,
    }


@pytest.fixture(scope="module")
def hostile_controller(hostile_folder: Path) -> Iterator[ControllerTarget]:
    folder = hostile_folder / "ctl"
    folder.mkdir()
    factory = ControllerFactory(folder)
    try:
        ctl = factory(args=["--max-jobs", "4"])
        marks = hostile_folder / "marks"
        tokens = {name: ctl.create(service(name, marks))["token"] for name in ("alpha", "beta")}
        private = ctl.storage / "private"
        private.mkdir(parents=True, exist_ok=True)
        (private / "secret.txt").write_bytes(SECRET)
        yield ControllerTarget(ctl, tokens, marks)
    finally:
        factory.close()


# ---- how a case is sent ---------------------------------------------------------------------


def send_http(port: int, req: Http, tokens: Mapping[str, str] | None = None,
              admin: tuple[str, str] | None = None) -> Observed:
    headers = dict(req.headers)
    auth = None
    if req.auth == "admin":
        auth = admin
    elif req.auth is not None and tokens is not None:
        headers["Authorization"] = f"Bearer {tokens[req.auth]}"
    body: Any = req.body
    if req.chunked and req.body is not None:
        data = req.body
        body = (data[i:i + 65536] for i in range(0, len(data), 65536))
    try:
        response = requests.request(req.method, f"http://127.0.0.1:{port}{req.path}", data=body,
                                    headers=headers, auth=auth, timeout=CASE_TIMEOUT)
    except requests.ConnectionError as exc:
        return Observed(f"closed ({type(exc).__name__})")
    except requests.Timeout:
        return Observed("no answer")
    return Observed(response.status_code, response.content, dict(response.headers))


def send_raw(port: int, raw: Raw) -> Observed:
    with socket.create_connection(("127.0.0.1", port), timeout=CASE_TIMEOUT) as sock:
        for i, part in enumerate(raw.parts):
            if i and raw.interval:
                readable, _, _ = select.select([sock], [], [], raw.interval)
                if readable:
                    break  # the server answered (or closed): stop dripping
            try:
                sock.sendall(part)
            except OSError:
                break
        return read_answer(sock)


def read_answer(sock: socket.socket) -> Observed:
    """The status of the server's final answer (an interim `100 Continue` is skipped),
    "closed" when it closed without one, "no answer" past the case's deadline. A status
    line of any HTTP version counts as an answer: one naming another version than 1.x
    (what aiohttp writes back to an `HTTP/2.0` request line) is an answer all the same."""
    deadline = time.monotonic() + CASE_TIMEOUT
    data = b""
    while True:
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                return Observed("closed (reset)")
            if not chunk:
                break
            data += chunk
        if re.match(rb"HTTP/\d\.\d 1\d\d ", data) and b"\r\n\r\n" in data:
            data = data.split(b"\r\n\r\n", 1)[1]
            continue
        break
    match = re.match(rb"HTTP/\d\.\d (\d{3})", data)
    if match is None:
        return Observed("closed" if time.monotonic() < deadline else "no answer", data)
    return Observed(int(match.group(1)), data.partition(b"\r\n\r\n")[2])


def http_request(method: str, path: str, headers: Mapping[str, str], body: bytes,
                 length: int | None = None) -> bytes:
    """A request as raw bytes, for what `requests` would refuse to send."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers.items()]
    if length is not None:
        lines.append(f"Content-Length: {length}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def raw(method: str = "POST", path: str = "/", headers: Mapping[str, str] | None = None,
        body: bytes = b"", length: int | None = -1) -> Raw:
    return Raw((http_request(method, path, headers or {}, body,
                             len(body) if length == -1 else length),))


# ---- extra checks -------------------------------------------------------------------------


def pids_gone(target: Any, token: str, timeout: float = 5) -> str | None:
    """Every process the case's script recorded is gone (or a zombie) within `timeout`."""
    path = target.marks / f"{token}.pids"
    if not path.exists():
        return f"the script recorded no pid in {path.name}"
    pids = [int(p) for p in path.read_text().split()]
    deadline = time.monotonic() + timeout
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in pids if running(p)]
        if not alive:
            return None
        time.sleep(0.05)  # /proc has no event to await
    for pid in alive:  # leave nothing behind for the next cases
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return f"{len(alive)} of {len(pids)} processes still running"


def running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def processes_gone(case_id: str) -> Callable[[Any, Observed], str | None]:
    return lambda target, _observed: pids_gone(target, case_id)


def lacks(data: bytes) -> Callable[[Any, Observed], str | None]:
    """Neither the bytes nor their base64 are in the answer."""
    def check(_target: Any, observed: Observed) -> str | None:
        if data in observed.body or base64.b64encode(data) in observed.body:
            return "the answer holds data it must not"
        return None
    return check


def body_has(data: bytes) -> Callable[[Any, Observed], str | None]:
    def check(_target: Any, observed: Observed) -> str | None:
        return None if data in observed.body else f"{data!r} not in the answer"
    return check


def env_check(_target: Any, observed: Observed) -> str | None:
    """Headers reach the script as Http_<name> only: never as a variable of the runtime."""
    lines = base64.b64decode(observed.body or b"").decode(errors="replace").splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    problems = []
    if env.get("Http_Method") != "POST":
        problems.append(f"Http_Method is {env.get('Http_Method')!r}")
    if "INPUT_FILE_PATH" in env:
        problems.append("INPUT_FILE_PATH is set")
    if any("letmein" in value for value in env.values()):
        problems.append("the Authorization header reached the script")
    return "; ".join(problems) or None


# ---- the events ---------------------------------------------------------------------------


def minio_event(bucket: str, key: str, source: str = "minio:s3") -> dict[str, Any]:
    return {"Records": [{
        "eventVersion": "2.0", "eventSource": source, "eventTime": "2026-11-30T10:00:00.000Z",
        "eventName": "s3:ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 5}},
    }]}


def event_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def ev(bucket: str, key: str, **kw: Any) -> bytes:
    return event_bytes(minio_event(bucket, key, **kw))


def delegated(provider: str, bucket: str, key: str) -> bytes:
    return event_bytes({"event": minio_event(bucket, key), "storage_provider": provider})


# ---- races and sequences --------------------------------------------------------------------


def at_once(n: int, call: Callable[[int], int]) -> list[int]:
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(call, range(n)))


def tally(statuses: Sequence[int | str]) -> str:
    counts: dict[int | str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{v}x{k}" for k, v in sorted(counts.items(), key=str))


def job_for(ctl: ControllerProcess, name: str, timeout: float = 8) -> bool:
    """A file dropped into the service's input folder gets a job within `timeout`."""
    folder = ctl.storage / name / "input"
    (folder / f"drop-{uuid.uuid4().hex[:6]}.txt").write_bytes(b"dropped\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = ctl.request("GET", f"/system/logs/{name}")
        if response.status_code == 200 and response.json()["jobs"]:
            return True
        time.sleep(0.2)  # the API has no push channel to await
    return False


def admin_headers(t: ControllerTarget) -> dict[str, str]:
    auth = "Basic " + base64.b64encode(":".join(t.ctl.auth).encode()).decode()
    return {"Authorization": auth, "Content-Type": "application/json"}


def together(t: ControllerTarget, request: bytes, n: int) -> list[int | str]:
    """`n` copies of a request that complete in the same instant: each is sent whole but
    its last byte on a connection of its own, then the last bytes go together, so the
    controller handles them at once rather than one after the other."""
    socks = [socket.create_connection(("127.0.0.1", t.port), timeout=CASE_TIMEOUT)
             for _ in range(n)]
    try:
        for sock in socks:
            sock.sendall(request[:-1])
        for sock in socks:
            sock.sendall(request[-1:])
        return [read_answer(sock).status for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def race_creates(t: ControllerTarget) -> str:
    """Eight creates of one name at once; then the winner's input must still be watched."""
    name = f"race-{uuid.uuid4().hex[:6]}"
    body = event_bytes(service(name, t.marks))
    statuses = together(t, http_request("POST", SVC, admin_headers(t), body, len(body)), 8)
    watched = job_for(t.ctl, name)
    t.ctl.request("DELETE", f"/system/services/{name}")
    return f"{tally(statuses)}; input watched: {'yes' if watched else 'no'}"


def create_delete_create(t: ControllerTarget) -> str:
    name = f"again-{uuid.uuid4().hex[:6]}"
    body = service(name, t.marks)
    statuses = [t.ctl.request("POST", "/system/services", json=body).status_code,
                t.ctl.request("DELETE", f"/system/services/{name}").status_code,
                t.ctl.request("POST", "/system/services", json=body).status_code]
    watched = job_for(t.ctl, name)
    t.ctl.request("DELETE", f"/system/services/{name}")
    return f"{' '.join(map(str, statuses))}; input watched: {'yes' if watched else 'no'}"


def concurrent_updates(t: ControllerTarget) -> str:
    name = f"upd-{uuid.uuid4().hex[:6]}"
    t.ctl.request("POST", "/system/services", json=service(name, t.marks))
    statuses = at_once(5, lambda i: t.ctl.request(
        "PUT", "/system/services", json=service(name, t.marks, memory=f"{100 + i}Mi")).status_code)
    token = t.ctl.request("GET", f"/system/services/{name}").json()["token"]
    run = requests.post(f"{t.ctl.url}/run/{name}", data=base64.b64encode(b"after"),
                        headers={"Authorization": f"Bearer {token}"}, timeout=CASE_TIMEOUT)
    t.ctl.request("DELETE", f"/system/services/{name}")
    return f"{tally(statuses)}; then /run {run.status_code}"


def start_sleeping_job(t: ControllerTarget, name: str) -> tuple[str, Path]:
    t.ctl.request("POST", "/system/services", json=service(name, t.marks))
    token = t.ctl.request("GET", f"/system/services/{name}").json()["token"]
    job = requests.post(f"{t.ctl.url}/job/{name}", data=base64.b64encode(b"sleep"),
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=CASE_TIMEOUT).json()["job"]
    pid_file = t.marks / f"{name}.{job}.pid"  # the local backend's JOB_UUID is the job's name
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text().strip()):
        if time.monotonic() > deadline:
            raise AssertionError(f"the job's script did not start:\n{t.ctl.log_text()[-2000:]}")
        time.sleep(0.05)  # the script's marker file: no event to await
    return job, pid_file


def script_gone(pid_file: Path, timeout: float = 5) -> bool:
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(pid):
            return True
        time.sleep(0.05)  # /proc has no event to await
    with contextlib.suppress(ProcessLookupError):  # leave nothing behind: the script leads
        os.killpg(pid, signal.SIGKILL)  # its own process group, its `sleep` in it
    return False


def concurrent_deletes(t: ControllerTarget) -> str:
    name = f"dels-{uuid.uuid4().hex[:6]}"
    t.ctl.request("POST", "/system/services", json=service(name, t.marks))
    return tally(together(t, http_request("DELETE", f"{SVC}/{name}", admin_headers(t), b""), 4))


def delete_service_during_job(t: ControllerTarget) -> str:
    name = f"del-{uuid.uuid4().hex[:6]}"
    _job, pid_file = start_sleeping_job(t, name)
    status = t.ctl.request("DELETE", f"/system/services/{name}").status_code
    return f"{status}; script gone: {'yes' if script_gone(pid_file) else 'no'}"


def delete_running_job(t: ControllerTarget) -> str:
    name = f"job-{uuid.uuid4().hex[:6]}"
    job, pid_file = start_sleeping_job(t, name)
    status = t.ctl.request("DELETE", f"/system/logs/{name}/{job}").status_code
    gone = script_gone(pid_file)
    t.ctl.request("DELETE", f"/system/services/{name}")
    return f"{status}; script gone: {'yes' if gone else 'no'}"


def job_flood(t: ControllerTarget) -> str:
    name = f"flood-{uuid.uuid4().hex[:6]}"
    t.ctl.request("POST", "/system/services", json=service(name, t.marks))
    token = t.ctl.request("GET", f"/system/services/{name}").json()["token"]
    statuses = at_once(8, lambda i: requests.post(
        f"{t.ctl.url}/job/{name}", data=base64.b64encode(f"job {i}".encode()),
        headers={"Authorization": f"Bearer {token}"}, timeout=CASE_TIMEOUT).status_code)
    jobs = t.ctl.wait_jobs(name, 8, timeout=60)
    done = sum(j["status"] == "Succeeded" for j in jobs.values())
    failed = [job for job, j in jobs.items() if j["status"] != "Succeeded"]
    why = ""
    if failed:  # the end of the first failed job's log says why
        log = t.ctl.request("GET", f"/system/logs/{name}/{failed[0]}").text
        why = f" ({log.strip().splitlines()[-1][:120] if log.strip() else 'no log'})"
    t.ctl.request("DELETE", f"/system/services/{name}")
    return f"{tally(statuses)}; {done} Succeeded of {len(jobs)}{why}"


def parallel_invocations(t: WatchdogTarget) -> str:
    def one(i: int) -> int:
        data = f"payload {i}\n".encode() * (i + 1)
        r = requests.post(t.wd.url, data=base64.b64encode(data), timeout=CASE_TIMEOUT,
                          headers={"X-Mode": "copy"})
        return 200 if r.status_code == 200 and base64.b64decode(r.content) == data else 0
    return tally(at_once(32, one))


def leave_mid_body(t: WatchdogTarget) -> str:
    before = set(t.wd.invocation_folders())
    with socket.create_connection(("127.0.0.1", t.wd.port), timeout=5) as sock:
        sock.sendall(http_request("POST", "/", {"X-Mode": "copy"}, b"aGVs", 4000))
        # Gone once the body is being read (its folders made), not before the request
        # began: else the case would pass without a body ever cut.
        deadline = time.monotonic() + 10
        while not set(t.wd.invocation_folders()) - before:
            if time.monotonic() > deadline:
                return "the body was never read"
            time.sleep(0.01)  # the watchdog's folders: no event to await from here
    return "left"


def leave_mid_script(t: WatchdogTarget) -> str:
    token = "leave-mid-script"
    with socket.create_connection(("127.0.0.1", t.wd.port), timeout=5) as sock:
        sock.sendall(http_request("POST", "/", {"X-Mode": "sleep", "X-Token": token}, b"", 0))
        path = t.marks / f"{token}.pids"
        deadline = time.monotonic() + 10
        while not (path.exists() and path.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.02)  # the script's marker file: no event to await
    problem = pids_gone(t, token)
    return "left; script killed" if problem is None else f"left; {problem}"


def slow_headers(t: WatchdogTarget) -> str:
    """A header line every 0.5 s, for twice the read_timeout and more: cut, or not."""
    with socket.create_connection(("127.0.0.1", t.wd.port), timeout=CASE_TIMEOUT) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        while time.monotonic() - started < 3 * READ_TIMEOUT:
            readable, _, _ = select.select([sock], [], [], 0.5)
            if readable:
                observed = read_answer(sock)
                return str(observed.status) if isinstance(observed.status, int) else "closed"
            try:
                sock.sendall(b"X-Slow: a\r\n")
            except OSError:
                return "closed"
    return f"still open after {3 * READ_TIMEOUT} s"


# ---- the catalogue ------------------------------------------------------------------------

B64 = base64.b64encode
DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJ = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
GZ = gzip.compress(B64(b"hello\n"))


def W(id: str, category: str, description: str, input: Input, expect: Any,
      **kw: Any) -> Case:
    return Case(id, category, "watchdog", description, input, expect, **kw)


def R(id: str, category: str, description: str, input: Input, expect: Any,
      **kw: Any) -> Case:
    return Case(id, category, "run", description, input, expect, **kw)


def C(id: str, category: str, description: str, input: Input, expect: Any,
      **kw: Any) -> Case:
    return Case(id, category, "controller", description, input, expect, **kw)


def mode(m: str, token: str = "", **headers: str) -> dict[str, str]:
    return {"X-Mode": m, "X-Token": token or m, **headers}


COPY = {"X-Mode": "copy"}
SVC = "/system/services"

CASES: list[Case] = [
    # -- bodies ----------------------------------------------------------------------------
    W("b64-bad-chars", "bodies", "base64 with characters outside the alphabet",
      Http(body=b"aGVs!!bG8=", headers=COPY), 400),
    W("b64-unpadded", "bodies", "base64 without its padding", Http(body=b"aGVsbG8", headers=COPY),
      400),
    W("b64-padding-mid", "bodies", "padding in the middle of base64",
      Http(body=b"aGk=aGk=", headers=COPY), 400),
    W("b64-lone-char", "bodies", "a single base64 character", Http(body=b"Q", headers=COPY), 400),
    W("text-nul", "bodies", "text with NUL bytes, no content type",
      Http(body=b"hello\x00world", headers=COPY), 400),
    W("binary-no-type", "bodies", "random binary without application/octet-stream",
      Http(body=bytes(range(256)) * 4, headers=COPY), 400),
    W("octet-nul", "bodies", "NUL bytes as application/octet-stream (taken raw)",
      Http(body=b"\x00" * 1000, headers={**COPY, "Content-Type": "application/octet-stream"}),
      200),
    W("json-truncated", "bodies", "JSON cut in the middle", Http(body=b'{"a": [1, 2', headers=COPY),
      400),
    W("json-nan", "bodies", "`{\"a\": NaN}` (not JSON by RFC 8259)",
      Http(body=b'{"a": NaN}', headers=COPY), 400),
    W("json-infinity", "bodies", "`[Infinity, -Infinity]`",
      Http(body=b"[Infinity, -Infinity]", headers=COPY), 400),
    W("json-bad-utf8", "bodies", "JSON with a string that is not UTF-8",
      Http(body=b'{"a": "\xff\xfe"}', headers=COPY), 400),
    W("json-lone-surrogate", "bodies", "JSON with an escaped lone surrogate (valid grammar)",
      Http(body=b'{"a": "\\ud800"}', headers=COPY), 200),
    W("json-deep-array", "bodies", "10^5-deep nested JSON array",
      Http(body=DEEP, headers=COPY), (200, 400)),
    W("json-deep-object", "bodies", "10^5-deep nested JSON object",
      Http(body=DEEP_OBJ, headers=COPY), (200, 400)),
    W("json-dup-keys", "bodies", "JSON object with the same key twice",
      Http(body=b'{"a": 1, "a": 2}', headers=COPY), 200),
    W("gzip-not-gzip", "bodies", "`Content-Encoding: gzip` on a body that is not gzip",
      Http(body=b"aGVsbG8=", headers={**COPY, "Content-Encoding": "gzip"}), 400),
    W("gzip-truncated", "bodies", "gzip cut in the middle, `Content-Encoding: gzip`",
      Http(body=GZ[: len(GZ) // 2], headers={**COPY, "Content-Encoding": "gzip"}), 400),
    W("gzip-bomb", "bodies", "gzip of 8 MiB of base64 (over max_body_size once inflated)",
      Http(body=gzip.compress(b"A" * (8 << 20)), headers={**COPY, "Content-Encoding": "gzip"}),
      413),
    W("encoding-unknown", "bodies", "`Content-Encoding: x-unknown`: taken as sent, as Go's "
      "net/http (under the OpenFaaS watchdogs) does",
      Http(body=b"aGk=", headers={**COPY, "Content-Encoding": "x-unknown"}), 200),
    W("oversize-length", "bodies", "2 MiB body with its Content-Length (max_body_size 1 MiB)",
      Http(body=B64(b"x" * (3 << 19)), headers=COPY), 413),
    W("oversize-chunked", "bodies", "2 MiB chunked body, no Content-Length",
      Http(body=B64(b"x" * (3 << 19)), headers=COPY, chunked=True), 413),
    W("oversize-declared", "bodies", "Content-Length 10 GiB announced, 4 bytes sent",
      raw(headers=COPY, body=b"aGk=", length=10 << 30), 413),
    W("slow-body", "bodies", "body dripped one byte every 0.4 s (read_timeout 2 s)",
      Raw((http_request("POST", "/", COPY, b"", 40),) + (b"Q",) * 40, interval=0.4), 408),
    W("stalled-body", "bodies", "Content-Length 40, 4 bytes sent, then nothing",
      raw(headers=COPY, body=b"aGk=", length=40), 408),
    W("length-negative", "bodies", "`Content-Length: -1`", raw(headers=COPY, body=b"", length=-5),
      400),
    W("length-garbage", "bodies", "`Content-Length: abc`",
      Raw((b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",)), 400),
    W("length-twice", "bodies", "two different Content-Length headers",
      Raw((b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 8\r\n\r\naGk=",)),
      400),
    W("length-and-chunked", "bodies", "Content-Length and chunked together (smuggling)",
      Raw((b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked"
           b"\r\n\r\n4\r\naGk=\r\n0\r\n\r\n",)), 400),
    W("chunk-size-garbage", "bodies", "a chunk size that is not hexadecimal",
      Raw((b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\naGk=\r\n"
           b"0\r\n\r\n",)), 400),
    W("apigw-bad-b64", "bodies", "API-gateway envelope, isBase64Encoded with invalid base64",
      Http(body=event_bytes({"httpMethod": "POST", "isBase64Encoded": True, "body": "!!!"}),
           headers=COPY), 400),
    W("apigw-body-number", "bodies", "API-gateway envelope whose body is a number",
      Http(body=event_bytes({"httpMethod": "POST", "body": 5}), headers=COPY), (200, 400)),
    W("multipart", "bodies", "a multipart/form-data upload (not base64)",
      Http(body=b"--b\r\nContent-Disposition: form-data; name=f\r\n\r\nhi\r\n--b--\r\n",
           headers={**COPY, "Content-Type": "multipart/form-data; boundary=b"}), 400),
    W("method-get", "bodies", "GET on an invocation path", Http(method="GET", body=None), 405),
    W("method-delete", "bodies", "DELETE on an invocation path",
      Http(method="DELETE", body=None), 405),
    W("method-unknown", "bodies", "an unknown method `BREW`", raw("BREW"), (400, 405, 501)),
    W("request-line-garbage", "bodies", "a request line that is not HTTP",
      Raw((b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",)), 400),
    # -- headers ---------------------------------------------------------------------------
    W("header-huge", "headers", "one 100 KiB header", Http(body=B64(b"x"),
      headers={**COPY, "X-Big": "a" * 100_000}), (400, 431)),
    W("headers-many", "headers", "1 000 headers", Http(body=B64(b"x"),
      headers={**COPY, **{f"X-H{i}": "v" for i in range(1000)}}), (200, 400, 431)),
    W("url-huge", "headers", "a 100 KiB path", Http(path="/" + "a" * 100_000, body=B64(b"x"),
      headers=COPY), (400, 414)),
    W("header-bare-lf", "headers", "a header value holding a bare LF (injection attempt)",
      Raw((b"POST / HTTP/1.1\r\nHost: x\r\nX-Mode: copy\r\nX-A: a\nInjected: b\r\n"
           b"Content-Length: 0\r\n\r\n",)), (200, 400)),
    W("header-cr-in-value", "headers", "a header value holding a bare CR",
      Raw((b"POST / HTTP/1.1\r\nHost: x\r\nX-Mode: copy\r\nX-A: a\rInjected: b\r\n"
           b"Content-Length: 0\r\n\r\n",)), 400),
    W("header-nul", "headers", "a header value holding NUL",
      Raw((b"POST / HTTP/1.1\r\nHost: x\r\nX-Mode: copy\r\nX-A: a\x00b\r\n"
           b"Content-Length: 0\r\n\r\n",)), 400),
    W("header-name-space", "headers", "a header name with a space",
      Raw((b"POST / HTTP/1.1\r\nHost: x\r\nX A: b\r\nContent-Length: 0\r\n\r\n",)), 400),
    W("header-name-equals", "headers", "a header name `A=B` (would be a variable assignment)",
      Raw((b"POST / HTTP/1.1\r\nHost: x\r\nX-Mode: copy\r\nPATH=/tmp: x\r\n"
           b"Content-Length: 0\r\n\r\n",)), 400),
    W("header-folded", "headers", "an obsolete folded header line",
      Raw((b"POST / HTTP/1.1\r\nHost: x\r\nX-Mode: copy\r\nX-A: a\r\n b\r\n"
           b"Content-Length: 0\r\n\r\n",)), (200, 400)),
    W("header-latin1", "headers", "a header value with bytes over 0x7f",
      Raw((b"POST / HTTP/1.1\r\nHost: x\r\nX-Mode: copy\r\nX-A: \xff\xfe\r\n"
           b"Content-Length: 0\r\n\r\n",)), (200, 400)),
    W("header-overrides-env", "headers", "headers named like the runtime's variables "
      "(`Http-Method`, `Input-File-Path`) and an `Authorization`: not in the script's view",
      Http(body=b"", headers={"X-Mode": "env-http", "Http-Method": "INJECTED",
                               "Input-File-Path": "/etc/passwd",
                               "Authorization": "Bearer letmein"}), 200, check=env_check),
    W("no-host", "headers", "HTTP/1.1 without Host", Raw((b"POST / HTTP/1.1\r\nX-Mode: copy\r\n"
                                                          b"Content-Length: 0\r\n\r\n",)),
      (200, 400)),
    W("expect-100-oversize", "headers", "`Expect: 100-continue` with Content-Length over the limit",
      raw(headers={**COPY, "Expect": "100-continue"}, body=b"", length=10 << 20), 413),
    W("transfer-encoding-unknown", "headers", "`Transfer-Encoding: x-unknown, chunked`",
      Raw((b"POST / HTTP/1.1\r\nHost: x\r\nX-Mode: copy\r\nTransfer-Encoding: x-unknown, "
           b"chunked\r\n\r\n0\r\n\r\n",)), 400),
    W("http-version", "headers", "`HTTP/2.0` in an HTTP/1 request line",
      Raw((b"POST / HTTP/2.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n",)),
      "closed"),
    W("accept-garbage", "headers", "an Accept header that parses as nothing",
      Http(body=B64(b"x"), headers={**COPY, "Accept": ";;;q=abc,*/*;q=zz"}), 200),
    W("slow-headers", "headers", "a header line every 0.5 s, never ending (slowloris)",
      Action(slow_headers, "headers dripped for 3x read_timeout"), ("408", "closed")),
    W("path-dotdot", "headers", "POST `/../../etc/passwd` (the path is data, not a file)",
      Raw((http_request("POST", "/../../etc/passwd", COPY, b"", 0),)), 200,
      check=lacks(b"root:x:0")),
    W("path-encoded-dotdot", "headers", "POST `/%2e%2e/%2e%2e/etc/passwd`",
      Raw((http_request("POST", "/%2e%2e/%2e%2e/etc/passwd", COPY, b"", 0),)), 200,
      check=lacks(b"root:x:0")),
    # -- events ----------------------------------------------------------------------------
    W("event-ok", "events", "control: an event for an object under the input path",
      Http(body=ev(IN, "input/ok.txt"), headers=COPY), 200, check=body_has(B64(b"fine\n"))),
    W("event-foreign-bucket", "events", "an event naming another service's bucket",
      Http(body=ev(SECRET_BUCKET, "secret.txt"), headers=COPY), 403,
      check=lacks(SECRET)),
    W("event-foreign-bucket-same-key", "events",
      "another bucket, with a key under the input path's folder",
      Http(body=ev(SECRET_BUCKET, "input/secret.txt"), headers=COPY), 403,
      check=lacks(SECRET)),
    W("event-outside-prefix", "events", "the input bucket, a key outside the input folder",
      Http(body=ev(IN, "other/private.txt"), headers=COPY), 403,
      check=lacks(SECRET)),
    W("event-prefix-trick", "events", "a key that starts like the input folder (`input-evil/`)",
      Http(body=ev(IN, "input-evil/x.txt"), headers=COPY), 403,
      check=lacks(SECRET)),
    W("event-dotdot-key", "events", "a key `input/../other/private.txt`",
      Http(body=ev(IN, "input/../other/private.txt"), headers=COPY), (400, 403),
      check=lacks(SECRET)),
    W("event-encoded-dotdot", "events", "a MinIO key `input%2F..%2F..%2Fetc%2Fpasswd`",
      Http(body=ev(IN, "input%2F..%2F..%2Fetc%2Fpasswd"), headers=COPY), (400, 403),
      check=lacks(b"root:x:0")),
    W("event-absolute-key", "events", "a key `/etc/passwd`",
      Http(body=ev(IN, "/etc/passwd"), headers=COPY), (400, 403),
      check=lacks(b"root:x:0")),
    W("event-key-dotdot-name", "events", "a key whose base name is `..`",
      Http(body=ev(IN, "input/.."), headers=COPY), 400),
    W("event-key-folder", "events", "a key ending in `/` (a folder marker)",
      Http(body=ev(IN, "input/sub/"), headers=COPY), 400),
    W("event-key-nul", "events", "a key holding NUL (`%00`)",
      Http(body=ev(IN, "input/a%00b.txt"), headers=COPY), 400),
    W("event-key-long", "events", "a key whose base name is 300 bytes",
      Http(body=ev(IN, "input/" + "a" * 300), headers=COPY), 400),
    W("event-missing-key", "events", "a MinIO event without `s3.object.key`",
      Http(body=event_bytes({"Records": [{"eventSource": "minio:s3",
                                           "s3": {"bucket": {"name": "b"}, "object": {}}}]}),
           headers=COPY), 400),
    W("event-missing-bucket", "events", "an S3 event without `s3.bucket`",
      Http(body=event_bytes({"Records": [{"eventSource": "aws:s3",
                                           "s3": {"object": {"key": "input/ok.txt"}}}]}),
           headers=COPY), 400),
    W("event-record-string", "events", "`Records[0]` is a string",
      Http(body=event_bytes({"Records": ["minio:s3"]}), headers=COPY), (200, 400)),
    W("event-key-number", "events", "a key that is a number",
      Http(body=event_bytes({"Records": [{"eventSource": "minio:s3",
                                           "s3": {"bucket": {"name": "b"},
                                                  "object": {"key": 5}}}]}), headers=COPY), 400),
    W("event-delegated-undefined", "events", "a delegated event to an undefined provider",
      Http(body=delegated("minio.nope", IN, "input/ok.txt"), headers=COPY), 400),
    W("event-delegated-type", "events", "a delegated event to an unknown provider type",
      Http(body=delegated("ftp.x", IN, "input/ok.txt"), headers=COPY), 400),
    W("event-delegated-foreign", "events",
      "a delegated event to a defined provider, naming a bucket outside the input paths",
      Http(body=delegated("minio.other", SECRET_BUCKET, "secret.txt"), headers=COPY), 403,
      check=lacks(SECRET)),
    W("event-delegated-nested", "events", "a delegated envelope inside a delegated envelope",
      Http(body=event_bytes({"event": {"event": minio_event(IN, "input/ok.txt"),
                                        "storage_provider": "minio"},
                             "storage_provider": "minio"}), headers=COPY), 400),
    W("event-onedata-no-provider", "events", "a Onedata event for a space no provider serves",
      Http(body=event_bytes({"Records": [{"eventSource": "OneTrigger", "Key": "space/x.txt",
                                           "eventTime": "2026-11-30T10:00:00Z"}]}),
           headers=COPY), 400),
    W("event-dcache-no-provider", "events", "a dCache event with no webdav provider",
      Http(body=event_bytes({"event": {"name": "x.txt"}, "subscription": "s"}), headers=COPY),
      400),
    W("event-apigw-foreign", "events", "an API-gateway envelope wrapping a foreign event",
      Http(body=event_bytes({"httpMethod": "POST", "isBase64Encoded": True,
                             "body": B64(ev(SECRET_BUCKET, "secret.txt")).decode()}),
           headers=COPY), 403, check=lacks(SECRET)),
    R("run-event-foreign", "events", "`run` given an event for another service's bucket",
      Run(ev(SECRET_BUCKET, "secret.txt")), 2, check=lacks(SECRET)),
    R("run-event-outside-prefix", "events", "`run` given a key outside the input folder",
      Run(ev(IN, "other/private.txt")), 2, check=lacks(SECRET)),
    R("run-event-missing-key", "events", "`run` given an event without its key",
      Run(event_bytes({"Records": [{"eventSource": "minio:s3",
                                     "s3": {"bucket": {"name": "b"}, "object": {}}}]})), 2),
    R("run-event-undefined-provider", "events", "`run` given a delegation to an undefined provider",
      Run(delegated("minio.nope", IN, "input/ok.txt")), 2),
    R("run-event-not-base64", "events", "`run` given text that is neither JSON nor base64",
      Run(b"this is not base64!"), 2),
    R("run-event-nan", "events", "`run` given `{\"a\": NaN}`", Run(b'{"a": NaN}'), 2),
    R("run-event-key-folder", "events", "`run` given a key ending in `/`",
      Run(ev(IN, "input/sub/")), 2),
    # -- outputs ---------------------------------------------------------------------------
    W("out-link-passwd", "outputs", "the only output is a symlink to /etc/passwd",
      Http(headers=mode("link-passwd")), 200, check=lacks(b"root:x:0")),
    W("out-link-dir", "outputs", "the only output is a symlink to /etc",
      Http(headers=mode("link-dir")), 200, check=lacks(b"root:x:0")),
    W("out-link-loop", "outputs", "a symlink to itself", Http(headers=mode("link-loop")), 200),
    W("out-fifo", "outputs", "a FIFO in the output folder (reading it would block)",
      Http(headers=mode("fifo")), 200),
    W("out-socket", "outputs", "a Unix socket in the output folder",
      Http(headers=mode("socket")), 200),
    W("out-folder-swapped", "outputs", "TMP_OUTPUT_DIR replaced by a symlink to /",
      Http(headers=mode("swap-output")), 200, check=lacks(b"root:x:0")),
    W("out-folders-removed", "outputs", "the script removes its input and output folders",
      Http(headers=mode("remove-folders")), 200),
    W("out-many-files", "outputs", "3 000 output files (a ZIP of them)",
      Http(headers=mode("many-files")), 200),
    W("out-deep-dirs", "outputs", "an output 100 folders deep", Http(headers=mode("deep-dirs")),
      200),
    W("out-odd-names", "outputs", "output names with a newline and bytes that are not UTF-8",
      Http(headers=mode("odd-names")), 200),
    # -- scripts ---------------------------------------------------------------------------
    W("script-forks", "scripts", "40 background children left running at exit",
      Http(headers=mode("forks")), 200, check=processes_gone("forks")),
    W("script-double-fork", "scripts", "20 double-forked children (re-parented)",
      Http(headers=mode("double-fork")), 200, check=processes_gone("double-fork")),
    W("script-setsid", "scripts", "a `setsid` daemon (leaves the process group)",
      Http(headers=mode("setsid")), 200, check=processes_gone("setsid")),
    W("script-bg-holds-stdout", "scripts", "a background child holding stdout open",
      Http(headers=mode("bg-stdout")), 200, check=processes_gone("bg-stdout")),
    W("script-closes-stdout", "scripts", "the script closes stdout and stderr",
      Http(headers=mode("close-stdout")), 200),
    W("script-garbage", "scripts", "64 KiB of random bytes on stdout",
      Http(headers=mode("garbage")), 200),
    W("script-big-stdout", "scripts", "8 MiB on stdout", Http(headers=mode("big-stdout")), 200),
    W("script-exit-255", "scripts", "exit status 255", Http(headers=mode("exit255")), 500,
      check=lambda _t, o: None if o.headers.get("X-Exit-Code") == "255" else "X-Exit-Code"),
    W("script-sigkill", "scripts", "killed by SIGKILL", Http(headers=mode("kill9")), 500,
      check=lambda _t, o: None if o.headers.get("X-Exit-Code") == "-9" else "X-Exit-Code"),
    W("script-sigsegv", "scripts", "killed by SIGSEGV", Http(headers=mode("segv")), 500),
    W("script-timeout", "scripts", "runs past exec_timeout (3 s)",
      Http(headers=mode("sleep", "timeout")), 504, check=processes_gone("timeout")),
    W("script-ignores-term", "scripts", "ignores SIGTERM and runs past exec_timeout",
      Http(headers=mode("ignore-term")), 504, check=processes_gone("ignore-term")),
    W("script-reads-stdin", "scripts", "the script reads its standard input to the end",
      Http(headers=mode("stdin"), body=B64(b"x")), 200),
    W("script-unknown", "scripts", "the script fails with a status of its own (9)",
      Http(headers=mode("nope")), 500),
    R("run-exit-255", "scripts", "`run`: the script exits 255", Run(b"", "exit255"), 255),
    R("run-sigkill", "scripts", "`run`: the script is killed by SIGKILL", Run(b"", "kill9"), 137),
    R("run-timeout", "scripts", "`run`: past EXEC_TIMEOUT (3 s)", Run(b"", "sleep"), 124,
      check=processes_gone("run-timeout")),
    R("run-forks", "scripts", "`run`: 40 background children at exit", Run(b"", "forks"), 0,
      check=processes_gone("run-forks")),
    R("run-setsid", "scripts", "`run`: a `setsid` daemon", Run(b"", "setsid"), 0,
    check=processes_gone("run-setsid")),
    R("run-env-input", "scripts", "`environment.variables` sets INPUT_FILE_PATH; empty event",
      Run(b"", "env-input", {"environment": {"variables": {"INPUT_FILE_PATH": "/etc/passwd"}}}),
      0),
    R("run-garbage", "scripts", "`run`: random bytes on stdout", Run(b"", "garbage"), 0),
    # -- API auth ----------------------------------------------------------------------------
    C("auth-none", "API auth", "`GET /system/services` without credentials",
      Http("GET", SVC, None), 401),
    C("auth-wrong-password", "API auth", "basic auth, wrong password",
      Http("GET", SVC, None, {"Authorization": "Basic " + B64(b"admin:nope").decode()}), 401),
    C("auth-wrong-user", "API auth", "basic auth, wrong user",
      Http("GET", SVC, None, {"Authorization": "Basic " + B64(b"root:controller-test-password")
                                .decode()}), 401),
    C("auth-basic-garbage", "API auth", "`Authorization: Basic !!!`",
      Http("GET", SVC, None, {"Authorization": "Basic !!!"}), 401),
    C("auth-basic-no-colon", "API auth", "basic auth without a colon",
      Http("GET", SVC, None, {"Authorization": "Basic " + B64(b"admin").decode()}), 401),
    C("auth-basic-not-utf8", "API auth", "basic auth credentials that are not UTF-8",
      Http("GET", SVC, None, {"Authorization": "Basic " + B64(b"\xff\xfe:\xff").decode()}), 401),
    C("auth-service-token-on-system", "API auth", "a service token on `/system/services`",
      Http("GET", SVC, None, auth="alpha"), 401),
    C("auth-huge-header", "API auth", "a 100 KiB Authorization header",
      Http("GET", SVC, None, {"Authorization": "Basic " + "A" * 100_000}), (400, 401, 431)),
    C("run-no-auth", "API auth", "`/run/alpha` without credentials",
      Http("POST", "/run/alpha", B64(b"x")), 401),
    C("run-wrong-token", "API auth", "`/run/alpha` with a made-up token",
      Http("POST", "/run/alpha", B64(b"x"), {"Authorization": "Bearer " + "0" * 64}), 401),
    C("run-other-token", "API auth", "`/run/alpha` with beta's token",
      Http("POST", "/run/alpha", B64(b"x"), auth="beta"), 401),
    C("run-empty-bearer", "API auth", "`/run/alpha` with `Bearer ` and nothing",
      Http("POST", "/run/alpha", B64(b"x"), {"Authorization": "Bearer "}), 401),
    C("run-token-non-ascii", "API auth", "`/run/alpha` with a token of non-ASCII bytes",
      Raw((http_request("POST", "/run/alpha", {"Authorization": "Bearer \xff\xfe"}, b"eA==",
                        4),)), 401),
    C("job-other-token", "API auth", "`/job/alpha` with beta's token",
      Http("POST", "/job/alpha", B64(b"x"), auth="beta"), 401),
    C("job-ceph-wrong-opaque", "API auth", "a Ceph event whose opaqueData is not the token",
      Http("POST", "/job/alpha", event_bytes({"Records": [{
          **minio_event("alpha", "input/x.txt", "ceph:s3")["Records"][0],
          "opaqueData": "0" * 64}]})), 401),
    C("job-deep-json-no-auth", "API auth", "`/job/alpha`, no credentials, 10^5-deep JSON",
      Http("POST", "/job/alpha", DEEP_OBJ), 401),
    C("system-deep-json", "API auth", "`POST /system/services` with 10^5-deep JSON",
      Http("POST", SVC, DEEP_OBJ, auth="admin"), 400),
    C("run-foreign-event", "events", "`/run/alpha`, alpha's token, an event for another bucket",
      Http("POST", "/run/alpha", ev("private", "secret.txt"), auth="alpha"), 403,
      check=lacks(SECRET)),
    C("run-other-service-event", "events", "`/run/alpha`, alpha's token, beta's input",
      Http("POST", "/run/alpha", ev("beta", "input/x.txt"), auth="alpha"), 403),
    # -- API paths and types -------------------------------------------------------------------
    *[C(f"name-{slug}", "API paths and types", f"service name {desc}",
        Http("POST", SVC, event_bytes({"name": name, "script": "echo"}), auth="admin"), 400)
      for slug, name, desc in [
          ("dotdot", "..", "`..`"), ("slash", "a/b", "`a/b`"),
          ("dotdot-path", "../../x", "`../../x`"),
          ("upper", "Alpha", "with upper case"), ("long", "a" * 300, "of 300 characters"),
          ("empty", "", "empty"), ("nul", "a\x00b", "with NUL"), ("unicode", "héllo", "`héllo`"),
          ("number", 5, "a number"), ("dash-first", "-a", "starting with `-`")]],
    C("bucket-dotdot-path", "API paths and types", "input path `../../../tmp/evil`",
      Http("POST", SVC, event_bytes(service("esc1", Path("/tmp"), input=[
          {"storage_provider": "minio", "path": "../../../tmp/evil"}])), auth="admin"), 400),
    C("path-dotdot-segments", "API paths and types", "input path `ok-bucket/../../../escape`",
      Http("POST", SVC, event_bytes(service("esc2", Path("/tmp"), input=[
          {"storage_provider": "minio", "path": "esc2/../../../escape"}])), auth="admin"), 400),
    C("output-dotdot-segments", "API paths and types", "output path `ok/../../x`",
      Http("POST", SVC, event_bytes(service("esc3", Path("/tmp"), output=[
          {"storage_provider": "minio", "path": "esc3/../../x"}])), auth="admin"), 400),
    C("bucket-double-dot", "API paths and types", "bucket name `a..b` (not valid for S3)",
      Http("POST", SVC, event_bytes(service("esc4", Path("/tmp"), input=[
          {"storage_provider": "minio", "path": "a..b/in"}])), auth="admin"), 400),
    C("bucket-upper", "API paths and types", "bucket name `ABC`",
      Http("POST", SVC, event_bytes(service("esc5", Path("/tmp"), input=[
          {"storage_provider": "minio", "path": "ABC/in"}])), auth="admin"), 400),
    C("bucket-ip", "API paths and types", "bucket name `192.168.1.1` (an IP address)",
      Http("POST", SVC, event_bytes(service("esc6", Path("/tmp"), input=[
          {"storage_provider": "minio", "path": "192.168.1.1/in"}])), auth="admin"), 400),
    C("bucket-api-dotdot", "API paths and types", "`POST /system/buckets` named `../evil`",
      Http("POST", "/system/buckets", event_bytes({"bucket_name": "../evil"}), auth="admin"),
      400),
    C("bucket-api-delete-dotdot", "API paths and types", "`DELETE /system/buckets/..%2Fdata`",
      Http("DELETE", "/system/buckets/..%2Fdata", None, auth="admin"), (400, 404)),
    C("get-encoded-dotdot", "API paths and types", "`GET /system/services/..%2F..%2Fetc`",
      Http("GET", "/system/services/..%2F..%2Fetc", None, auth="admin"), (400, 404)),
    C("logs-encoded-dotdot", "API paths and types", "`GET /system/logs/alpha/..%2F..%2Fx`",
      Http("GET", "/system/logs/alpha/..%2F..%2Fx", None, auth="admin"), (400, 404)),
    C("memory-number", "API paths and types", "`memory: 12` (a number)",
      Http("POST", SVC, event_bytes(service("mem1", Path("/tmp"), memory=12)), auth="admin"),
      400),
    C("memory-garbage", "API paths and types", "`memory: 12Xi`",
      Http("POST", SVC, event_bytes(service("mem2", Path("/tmp"), memory="12Xi")), auth="admin"),
      400),
    C("cpu-garbage", "API paths and types", "`cpu: \"lots\"`",
      Http("POST", SVC, event_bytes(service("cpu1", Path("/tmp"), cpu="lots")), auth="admin"),
      400),
    C("cpu-negative", "API paths and types", "`cpu: \"-1\"`",
      Http("POST", SVC, event_bytes(service("cpu2", Path("/tmp"), cpu="-1")), auth="admin"), 400),
    C("cpu-list", "API paths and types", "`cpu: [1]`",
      Http("POST", SVC, event_bytes(service("cpu3", Path("/tmp"), cpu=[1])), auth="admin"), 400),
    C("script-number", "API paths and types", "`script: 5`",
      Http("POST", SVC, event_bytes({"name": "scr1", "script": 5}), auth="admin"), 400),
    C("input-string", "API paths and types", "`input` a string, not a list",
      Http("POST", SVC, event_bytes(service("inp1", Path("/tmp"), input="x/y")), auth="admin"),
      400),
    C("variables-list", "API paths and types", "`environment.variables` a list",
      Http("POST", SVC, event_bytes({"name": "var1", "script": "echo",
                                     "environment": {"variables": ["A=1"]}}), auth="admin"), 400),
    C("variables-nested", "API paths and types", "a variable whose value is a mapping",
      Http("POST", SVC, event_bytes({"name": "var2", "script": "echo",
                                     "environment": {"variables": {"A": {"b": 1}}}}),
           auth="admin"), 400),
    C("provider-unknown", "API paths and types", "an input on an undefined provider",
      Http("POST", SVC, event_bytes(service("prov1", Path("/tmp"), input=[
          {"storage_provider": "minio.nope", "path": "prov1/in"}])), auth="admin"), 400),
    C("provider-type", "API paths and types", "a provider of type `ftp`",
      Http("POST", SVC, event_bytes({"name": "prov2", "script": "echo",
                                     "storage_providers": {"ftp": {"x": {"host": "h"}}}}),
           auth="admin"), 400),
    C("log-level", "API paths and types", "`log_level: LOUD`",
      Http("POST", SVC, event_bytes({"name": "lvl1", "script": "echo", "log_level": "LOUD"}),
           auth="admin"), 400),
    C("expose-garbage", "API paths and types", "`expose.min_scale: \"many\"`",
      Http("POST", SVC, event_bytes({"name": "exp1", "script": "echo",
                                     "expose": {"min_scale": "many"}}), auth="admin"), 400),
    C("body-array", "API paths and types", "a JSON array instead of a service",
      Http("POST", SVC, b"[]", auth="admin"), 400),
    C("body-not-json", "API paths and types", "a body that is not JSON",
      Http("POST", SVC, b"{name: x", auth="admin"), 400),
    C("body-nan", "API paths and types", "a service with an unknown field holding `NaN`",
      Http("POST", SVC, b'{"name": "nan1", "script": "echo", "extra": NaN}', auth="admin"), 400),
    C("body-empty", "API paths and types", "an empty body", Http("POST", SVC, b"", auth="admin"),
      400),
    C("body-bad-utf8", "API paths and types", "a body that is not UTF-8",
      Http("POST", SVC, b'{"name": "\xff"}', auth="admin"), 400),
    C("put-unknown", "API paths and types", "`PUT` of a service that does not exist",
      Http("PUT", SVC, event_bytes({"name": "nosuch", "script": "echo"}), auth="admin"), 404),
    C("method-patch", "API paths and types", "`PATCH /system/services`",
      Http("PATCH", SVC, b"{}", auth="admin"), 405),
    C("route-unknown", "API paths and types", "an unknown route",
      Http("GET", "/system/nothing", None, auth="admin"), 404),
    # -- races -----------------------------------------------------------------------------
    W("parallel-32", "races", "32 invocations at once, each its own payload",
      Action(parallel_invocations, "32 concurrent POSTs"), "32x200"),
    W("leave-mid-body", "races", "the client leaves in the middle of the body",
      Action(leave_mid_body, "a body cut by closing the socket"), "left"),
    W("leave-mid-script", "races", "the client leaves while the script runs",
      Action(leave_mid_script, "a request closed while its script sleeps"),
      "left; script killed"),
    C("race-creates", "races", "8 concurrent creates of the same service",
      Action(race_creates, "8 POST /system/services at once"),
      "1x201, 7x409; input watched: yes"),
    C("create-delete-create", "races", "create, delete, create again at once",
      Action(create_delete_create, "POST, DELETE, POST"), "201 204 201; input watched: yes"),
    C("concurrent-updates", "races", "5 concurrent updates of one service",
      Action(concurrent_updates, "5 PUT /system/services at once"), "5x204; then /run 200"),
    C("concurrent-deletes", "races", "4 concurrent deletes of one service",
      Action(concurrent_deletes, "4 DELETE /system/services/NAME at once"), "1x204, 3x404"),
    C("delete-service-during-job", "races", "delete a service while its job's script runs",
      Action(delete_service_during_job, "DELETE /system/services/NAME"),
      "204; script gone: yes"),
    C("delete-running-job", "races", "delete a job while its script runs",
      Action(delete_running_job, "DELETE /system/logs/NAME/JOB"), "204; script gone: yes"),
    C("job-flood", "races", "8 jobs posted at once (max-jobs 4)",
      Action(job_flood, "8 POST /job/NAME at once"), "8x201; 8 Succeeded of 8"),
]


def case_param(case: Case) -> Any:
    marks = []
    if case.pending:
        marks.append(pytest.mark.xfail(strict=True, reason=f"fixed on branch i8-{case.pending}"))
    elif case.known:
        marks.append(pytest.mark.xfail(strict=True, reason=f"not fixed yet: {case.known}"))
    return pytest.param(case, id=case.id, marks=marks)


def test_catalogue_size() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(CASES) >= 100


# ---- the test ---------------------------------------------------------------------------


def perform(case: Case, target: Any) -> Observed:
    item = case.input
    if isinstance(item, Action):
        return Observed(item.act(target))
    if case.target == "run":
        assert isinstance(item, Run)
        return target(item, case.id)
    port = target.wd.port if case.target == "watchdog" else target.port
    if isinstance(item, Raw):
        return send_raw(port, item)
    assert isinstance(item, Http)
    if case.target == "controller":
        return send_http(port, item, target.tokens, target.ctl.auth)
    return send_http(port, item)


def aftermath(case: Case, target: Any) -> str | None:
    """The target survived the case and kept nothing of it."""
    if case.target == "watchdog":
        wd: WatchdogProcess = target.wd
        if wd.process.poll() is not None:
            return f"the watchdog exited with {wd.process.returncode}"
        deadline = time.monotonic() + 10
        while wd.invocation_folders():
            if time.monotonic() > deadline:
                return f"folders left: {[p.name for p in wd.invocation_folders()]}"
            time.sleep(0.05)  # the folder is removed as the invocation ends: no event
        if requests.get(f"{wd.url}/_/health", timeout=5).status_code != 200:
            return "the watchdog is no longer healthy"
    if case.target == "controller":
        ctl: ControllerProcess = target.ctl
        if ctl.process.poll() is not None:
            return f"the controller exited with {ctl.process.returncode}"
        if requests.get(f"{ctl.url}/health", timeout=5).status_code != 200:
            return "the controller is no longer healthy"
    return None


@pytest.mark.parametrize("case", [case_param(c) for c in CASES])
def test_hostile(case: Case, request: pytest.FixtureRequest) -> None:
    target = request.getfixturevalue(f"hostile_{case.target}")
    started = time.monotonic()
    try:
        observed = perform(case, target)
    except Exception as exc:  # recorded as what was observed, then failed as any other
        observed = Observed(f"error: {type(exc).__name__}: {str(exc)[:150]}")
    problems = []
    if not holds(case, observed):
        problems.append(f"expected {expected_text(case)}")
    if isinstance(observed.status, int) and case.target != "run" and observed.status >= 500 \
            and case.expect not in (500, 504):
        problems.append("a 5xx for bad input")
    if case.check is not None and (extra := case.check(target, observed)):
        problems.append(extra)
    if after := aftermath(case, target):
        problems.append(after)
    summary = observed.summary(case.target)
    observed_text = "; ".join([summary, *(p for p in problems if not p.startswith("expected"))])
    record_hostile(request.config, HostileRow(
        case.id, case.category, case.target, case.description, expected_text(case),
        observed_text, not problems, case.pending, case.known))
    elapsed = time.monotonic() - started
    assert not problems, (f"{case.id}: {'; '.join(problems)}; observed {summary} "
                          f"in {elapsed:.1f} s")
