"""The controller against real processes over loopback: its API, the local backend, jobs.

Every test starts a real `faas-supervisor controller` (controller_fixture.py), whose
services are real watchdog processes and whose jobs are real `faas-supervisor run`
processes; the storage is the embedded folder store under the data folder.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from faas_supervisor.controller.fdl import parse_service, to_record
from faas_supervisor.controller.store import Store
from tests.integration.conftest import free_port, script_output
from tests.integration.controller_fixture import (
    ControllerFactory,
    ControllerProcess,
    wait_until,
)
from tests.leftovers import processes, running_with

pytestmark = pytest.mark.integration

COPY_SCRIPT = 'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/result"\necho "copied $JOB_UUID"\n'


def copier(name: str = "copier", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "busybox",
        "script": COPY_SCRIPT,
        "input": [{"storage_provider": "minio", "path": f"{name}/input"}],
        "output": [{"storage_provider": "minio", "path": f"{name}/output"}],
        **fields,
    }


# ---- auth and system routes -------------------------------------------------------------


SYSTEM_ROUTES = [
    ("GET", "/system/info"),
    ("GET", "/system/config"),
    ("GET", "/system/status"),
    ("GET", "/system/services"),
    ("POST", "/system/services"),
    ("PUT", "/system/services"),
    ("GET", "/system/services/x"),
    ("DELETE", "/system/services/x"),
    ("GET", "/system/logs/x"),
    ("DELETE", "/system/logs/x"),
    ("GET", "/system/logs/x/j"),
    ("DELETE", "/system/logs/x/j"),
    ("GET", "/system/buckets"),
    ("POST", "/system/buckets"),
    ("PUT", "/system/buckets"),
    ("GET", "/system/buckets/x"),
    ("DELETE", "/system/buckets/x"),
]


@pytest.mark.timeout(120)
def test_system_routes_need_basic_auth(controller: ControllerProcess) -> None:
    health = requests.get(controller.url + "/health", timeout=10)
    assert (health.status_code, health.text) == (200, "Ok")
    for method, path in SYSTEM_ROUTES:
        assert controller.request(method, path, auth=None).status_code == 401, (method, path)
        wrong = controller.request(method, path, auth=("admin", "wrong"))
        assert wrong.status_code == 401, (method, path)
    info = controller.request("GET", "/system/info")
    assert info.status_code == 200
    assert info.json()["serverless_backend"]["name"] == "local"
    assert b'":' in info.content and b'": ' not in info.content and b", " not in info.content
    config = controller.request("GET", "/system/config").json()
    assert set(config) == {"config", "minio_provider", "allowed_image_repositories"}
    assert set(config["minio_provider"]) == {
        "endpoint",
        "verify",
        "access_key",
        "secret_key",
        "region",
    }
    status = controller.request("GET", "/system/status").json()
    assert status["cluster"]["nodes_count"] == 1
    assert status["cluster"]["metrics"]["cpu"]["total_schedulable_cores"] > 0
    assert status["cluster"]["metrics"]["memory"]["total_schedulable_bytes"] > 0
    assert {"oscar", "minio"} <= set(status)


@pytest.mark.timeout(120)
def test_generated_password_is_printed_once_and_kept(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    data = tmp_path / "gen"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_")}
    first = subprocess.Popen(
        [*_faas(), "controller", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data),
         "--s3-port", str(free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert first.stdout is not None
        line = first.stdout.readline().decode()
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)
    kept = (data / "admin-password").read_text().strip()
    assert len(kept) >= 24 and kept in line
    assert (data / "admin-password").stat().st_mode & 0o077 == 0
    # Started again without a password, it uses the kept one and does not print it.
    second = subprocess.Popen(
        [*_faas(), "controller", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data),
         "--s3-port", str(free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert _ready(second), "the second controller did not start"
    second.send_signal(signal.SIGTERM)
    out, err = second.communicate(timeout=30)
    assert kept.encode() not in out + err


def _faas() -> list[str]:
    from tests.integration.conftest import faas_command

    return faas_command()


def _ready(process: subprocess.Popen[bytes]) -> bool:
    """Read the log until the controller says it is ready (or exits)."""
    assert process.stderr is not None
    return any(b"controller ready" in line for line in iter(process.stderr.readline, b""))


# ---- services ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_service_lifecycle(controller: ControllerProcess) -> None:
    service = controller.create(copier())
    assert len(service["token"]) == 64 and int(service["token"], 16) >= 0
    assert service["labels"]["oscar_service"] == "copier"
    assert service["input"] == [{"storage_provider": "minio", "path": "copier/input"}]
    assert service["storage_providers"]["minio"]["default"]["access_key"] == "hidden"
    # The buckets of its paths exist on the default provider.
    assert (controller.storage / "copier" / "input").is_dir()
    assert (controller.storage / "copier" / "output").is_dir()

    duplicate = controller.request("POST", "/system/services", json=copier())
    assert duplicate.status_code == 409

    listed = controller.request("GET", "/system/services").json()
    assert [s["name"] for s in listed] == ["copier"]

    updated = controller.request("PUT", "/system/services", json=copier(log_level="DEBUG"))
    assert updated.status_code == 204
    again = controller.request("GET", "/system/services/copier").json()
    assert again["log_level"] == "DEBUG" and again["token"] == service["token"]

    assert controller.request("PUT", "/system/services", json=copier("ghost")).status_code == 404
    assert controller.request("DELETE", "/system/services/copier").status_code == 204
    assert controller.request("GET", "/system/services/copier").status_code == 404
    assert controller.request("DELETE", "/system/services/copier").status_code == 404
    assert controller.request("GET", "/system/services").json() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("definition", "field"),
    [
        ({"image": "x", "script": "echo"}, "name"),
        ({"name": "Bad_Name", "script": "echo"}, "name"),
        ({"name": "ok", "script": "echo", "cpu": "lots"}, "cpu"),
        # The manager's types: strings, as Go's decoder takes them (issue 8).
        ({"name": "ok", "script": "echo", "memory": 12}, "memory"),
        ({"name": "ok", "script": "echo", "cpu": 1}, "cpu"),
        (
            {
                "name": "ok",
                "script": "echo",
                "input": [{"storage_provider": "s3.none", "path": "a/b"}],
            },
            "input[0].storage_provider",
        ),
        ({"name": "ok"}, "script"),
    ],
)
def test_invalid_definitions_are_400_naming_the_field(
    controller: ControllerProcess, definition: dict[str, Any], field: str
) -> None:
    response = controller.request("POST", "/system/services", json=definition)
    assert response.status_code == 400
    assert response.text.startswith(field + ":"), response.text
    assert controller.request("POST", "/system/services", data=b"{not json").status_code == 400
    # RFC 8259 has no NaN: not JSON, whatever Python's json reads.
    nan = controller.request("POST", "/system/services",
                             data=b'{"name": "ok", "script": "echo", "expose": {"min_scale": NaN}}')
    assert nan.status_code == 400
    assert nan.text.startswith("service: not valid JSON"), nan.text


@pytest.mark.timeout(60)
def test_unknown_service_is_404(controller: ControllerProcess) -> None:
    for method, path in [
        ("GET", "/system/services/none"),
        ("DELETE", "/system/services/none"),
        ("GET", "/system/logs/none"),
        ("DELETE", "/system/logs/none"),
        ("GET", "/system/logs/none/job"),
        ("DELETE", "/system/logs/none/job"),
    ]:
        assert controller.request(method, path).status_code == 404, (method, path)
    for path in ("/run/none", "/job/none"):
        assert controller.request("POST", path, data=b"x").status_code == 404, path


# ---- synchronous invocations ------------------------------------------------------------


@pytest.mark.timeout(120)
def test_run_passes_the_body_through_with_curl(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed (apt-get install -y curl)")
    token = controller.create(copier())["token"]
    original = tmp_path / "photo.bin"
    original.write_bytes(os.urandom(3 << 20) + b"\n\x00end")
    result = tmp_path / "out.bin"
    # The recipe from the docs, as a user types it.
    subprocess.run(
        f'base64 {original} | {curl} -sS --fail -H "Authorization: Bearer {token}" -d @- '
        f"{controller.url}/run/copier | base64 -d > {result}",
        shell=True,
        check=True,
        timeout=60,
    )
    assert result.read_bytes() == original.read_bytes()
    # The response passes through with the watchdog's headers.
    response = requests.post(
        f"{controller.url}/run/copier",
        data=base64.b64encode(b"hello"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert response.status_code == 200
    assert base64.b64decode(response.text) == b"hello"
    assert response.headers["X-Exit-Code"] == "0"
    # Basic auth works too; a wrong or missing token does not.
    assert controller.request("POST", "/run/copier", data=base64.b64encode(b"x")).status_code == 200
    wrong = requests.post(
        f"{controller.url}/run/copier",
        data=b"eA==",
        headers={"Authorization": "Bearer " + "0" * 64},
        timeout=10,
    )
    assert wrong.status_code == 401
    assert (
        requests.post(f"{controller.url}/run/copier", data=b"eA==", timeout=10).status_code == 401
    )


@pytest.mark.timeout(120)
def test_run_passes_failures_back(controller: ControllerProcess) -> None:
    token = controller.create({"name": "fails", "script": "echo broken >&2\nexit 3\n"})["token"]
    response = requests.post(
        f"{controller.url}/run/fails",
        data=b"aGk=",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert response.status_code == 500
    assert response.headers["X-Exit-Code"] == "3"
    assert "broken" in response.text


# ---- asynchronous jobs ------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_job_runs_and_its_logs_are_kept(controller: ControllerProcess) -> None:
    token = controller.create(copier())["token"]
    response = requests.post(
        f"{controller.url}/job/copier",
        data=base64.b64encode(b"data"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 201
    name = response.json()["job"]
    assert name.startswith("copier-")
    jobs = controller.wait_jobs("copier", 1)
    assert jobs[name]["status"] == "Succeeded", controller.request(
        "GET", f"/system/logs/copier/{name}"
    ).text
    assert {"creation_time", "start_time", "finish_time"} <= set(jobs[name])
    logs = controller.request("GET", f"/system/logs/copier/{name}")
    # A job's log is what `run` wrote: its response (the output, base64) and its log lines,
    # which carry JOB_UUID, the job's name.
    assert logs.status_code == 200
    assert base64.b64encode(b"data").decode() in logs.text and name in logs.text

    failing = requests.post(
        f"{controller.url}/job/copier",
        data=b"not base64 nor json!",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()["job"]
    jobs = controller.wait_jobs("copier", 2)
    assert jobs[failing]["status"] == "Failed"

    assert controller.request("GET", "/system/logs/copier/copier-nope").status_code == 404
    assert controller.request("DELETE", f"/system/logs/copier/{name}").status_code == 204
    assert controller.request("GET", f"/system/logs/copier/{name}").status_code == 404
    assert controller.request("DELETE", "/system/logs/copier").status_code == 204
    assert controller.jobs("copier") == {}
    assert requests.post(f"{controller.url}/job/copier", data=b"x", timeout=10).status_code == 401


@pytest.mark.timeout(120)
def test_ceph_event_with_the_token_as_opaque_data_is_authenticated(
    controller: ControllerProcess,
) -> None:
    token = controller.create(copier())["token"]
    (controller.storage / "copier" / "input" / "leaf.txt").write_bytes(b"leaf")
    event = _ceph_event()
    record = event["Records"][0]
    record["s3"]["bucket"]["name"] = "copier"
    record["s3"]["object"]["key"] = "input/leaf.txt"
    record["opaqueData"] = "f" * 64
    assert requests.post(f"{controller.url}/job/copier", json=event, timeout=10).status_code == 401
    record["opaqueData"] = token
    accepted = requests.post(f"{controller.url}/job/copier", json=event, timeout=10)
    assert accepted.status_code == 201
    controller.wait_jobs("copier", 1)
    assert (controller.storage / "copier" / "output" / "result").read_bytes() == b"leaf"


@pytest.mark.timeout(120)
def test_a_ceph_event_whose_body_comes_in_pieces_is_authenticated(
    controller: ControllerProcess,
) -> None:
    """aiohttp's `read(n)` answers with what has arrived: a valid push whose body came in
    two writes (or two chunks) was a 401, its first piece taken for the whole."""
    token = controller.create(copier())["token"]
    event = _ceph_event()
    record = event["Records"][0]
    record.update(opaqueData=token)
    record["s3"]["bucket"]["name"] = "copier"
    record["s3"]["object"].update(key="input/leaf.txt", eTag="1")
    plain = json.dumps(event).encode()
    record["s3"]["object"]["eTag"] = "2"  # another object: a job of its own
    chunked = json.dumps(event).encode()

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    head = b"POST /job/copier HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    for first, rest in (
        (head + b"Content-Length: %d\r\n\r\n%s" % (len(plain), plain[:50]), plain[50:]),
        (head + b"Transfer-Encoding: chunked\r\n\r\n" + chunk(chunked[:50]),
         chunk(chunked[50:]) + b"0\r\n\r\n"),
    ):
        with socket.create_connection(("127.0.0.1", controller.port), timeout=30) as sock:
            sock.sendall(first)
            # Nothing answered before the body is whole (the refusal came at once).
            sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                sock.recv(1)
            sock.settimeout(30)
            sock.sendall(rest)
            answer = b""
            while piece := sock.recv(65536):
                answer += piece
        assert answer.startswith(b"HTTP/1.1 201 "), answer
    assert len(controller.jobs("copier")) == 2

    # Past CEPH_EVENT_MAX (1 MiB), it is refused as before, whatever it says.
    record["s3"]["object"]["eTag"] = "3"
    large = json.dumps(event).encode()[:-1] + b" " * (1 << 20) + b"}"
    assert requests.post(f"{controller.url}/job/copier", data=large, timeout=30).status_code == 401


def _ceph_event() -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventSource": "ceph:s3",
                "eventTime": "2026-01-01T00:00:00Z",
                "s3": {"bucket": {"name": ""}, "object": {"key": ""}},
                "opaqueData": "",
            }
        ]
    }


@pytest.mark.timeout(120)
def test_a_file_dropped_in_the_input_folder_starts_a_job(controller: ControllerProcess) -> None:
    controller.create(copier())
    incoming = controller.storage / "copier" / "input" / "sub dir"
    incoming.mkdir()
    staged = controller.storage / "copier" / ".drop.tmp"
    staged.write_bytes(b"dropped bytes")
    staged.rename(incoming / "my photo+1.txt")  # arrives whole, as an upload would
    result = controller.storage / "copier" / "output" / "result"
    wait_until(result.exists, 60, "the output of the dropped file", controller)
    assert result.read_bytes() == b"dropped bytes"
    (job,) = controller.wait_jobs("copier", 1).values()
    assert job["status"] == "Succeeded"


@pytest.mark.timeout(300)
def test_twenty_jobs_two_at_a_time_all_run_once(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    controller = controllers(args=["--max-jobs", "2"])
    record = tmp_path / "record.txt"
    script = f'echo "start $JOB_UUID" >> {record}\nsleep 0.3\necho "end $JOB_UUID" >> {record}\n'
    token = controller.create({"name": "counter", "script": script})["token"]
    names = [
        requests.post(
            f"{controller.url}/job/counter",
            data=b"aGk=",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ).json()["job"]
        for _ in range(20)
    ]
    assert len(set(names)) == 20
    jobs = controller.wait_jobs("counter", 20, timeout=240)
    assert all(job["status"] == "Succeeded" for job in jobs.values()), jobs
    lines = record.read_text().split("\n")[:-1]
    starts = [line.split()[1] for line in lines if line.startswith("start")]
    assert sorted(starts) == sorted(names)  # each ran, and none twice
    running, most = 0, 0
    for line in lines:
        running += 1 if line.startswith("start") else -1
        most = max(most, running)
    assert most == 2


@pytest.mark.timeout(60)
def test_deleting_all_jobs_starts_none_of_those_queued(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    """`?all=true` takes the queued jobs out before stopping the running ones: a worker
    a stop frees finds none of them to start. Without it, only the finished go."""
    controller = controllers(args=["--max-jobs", "2"])
    record, marker = tmp_path / "started.txt", f"faas-test-{uuid.uuid4().hex}"
    script = (f'echo "$JOB_UUID" >> {record}\n'
              'if grep -q done "$INPUT_FILE_PATH"; then exit 0; fi\n'
              f"sh -c 'sleep 300; true' {marker}\n")
    token = controller.create({"name": "queued", "script": script})["token"]

    def post(data: bytes) -> str:
        answer = requests.post(f"{controller.url}/job/queued", data=base64.b64encode(data),
                               headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 201, answer.text
        name: str = answer.json()["job"]
        return name

    done = post(b"done")
    names = [post(str(i).encode()) for i in range(12)]
    # The first ends, the next two run (they sleep), the other ten wait their turn.

    def settled() -> bool:
        statuses = [job["status"] for job in controller.jobs("queued").values()]
        return (statuses.count("Succeeded") == 1 and statuses.count("Running") == 2
                and record.exists() and len(record.read_text().split()) == 3)

    wait_until(settled, 60, "one job done, two running", controller)
    started = record.read_text().split()
    assert sorted(started) == sorted([done, *names[:2]])

    assert controller.request("DELETE", "/system/logs/queued").status_code == 204
    jobs = controller.jobs("queued")
    assert sorted(jobs) == sorted(names)
    assert [jobs[n]["status"] for n in names] == ["Running"] * 2 + ["Pending"] * 10

    answer = controller.request("DELETE", "/system/logs/queued?all=true")
    assert answer.status_code == 204, answer.text
    assert controller.jobs("queued") == {}
    wait_until(lambda: not running_with(marker), 30, "the running jobs' scripts stopped",
               controller)
    assert record.read_text().split() == started, "a queued job started after the DELETE"


@pytest.mark.timeout(120)
def test_a_job_sent_while_its_service_is_deleted_is_refused_not_accepted(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    """A delete waits for the service's watchdog to drain (a sync call in flight: up to
    its healthcheck_interval). A review found /job answering 201 all that while, for jobs
    that then failed ("not deployed") and went with the service: it is a 503 now, and a
    404 once the service is gone."""
    go = tmp_path / "go"
    os.mkfifo(go)
    started = tmp_path / "started"
    script = f'touch "{started}"\nread -r line < "{go}"\necho released\n'
    token = controller.create({"name": "going", "script": script})["token"]
    auth = {"Authorization": f"Bearer {token}"}

    def job() -> requests.Response:
        return requests.post(f"{controller.url}/job/going", data=base64.b64encode(b"e"),
                             headers=auth, timeout=30)

    with ThreadPoolExecutor(2) as pool:
        call = pool.submit(requests.post, f"{controller.url}/run/going", data=b"{}",
                           headers=auth, timeout=60)
        wait_until(started.exists, 30, "the sync call's script started", controller)
        delete = pool.submit(controller.request, "DELETE", "/system/services/going")
        # Accepted until the delete begins; then refused while it waits for the drain.
        refused = wait_until(lambda: (a := job()).status_code != 201 and (a.status_code, a.text),
                             30, "a job refused", controller)
        assert not delete.done()
        assert refused[0] == 503, refused
        assert "service going is being deleted" in refused[1]
        with open(go, "w") as release:  # the sync call ends: the drain, then the delete
            release.write("go\n")
        assert call.result().status_code == 200
        assert delete.result().status_code == 204
    assert job().status_code == 404
    assert controller.request("GET", "/system/logs/going").status_code == 404


@pytest.mark.timeout(300)
def test_a_restart_keeps_services_and_jobs(controllers: ControllerFactory) -> None:
    first = controllers()
    token = first.create(copier())["token"]
    sleeper = first.create({"name": "sleeper", "script": "echo started\nsleep 60\n"})
    done = requests.post(
        f"{first.url}/job/copier",
        data=base64.b64encode(b"kept"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()["job"]
    first.wait_jobs("copier", 1)
    cut = requests.post(
        f"{first.url}/job/sleeper",
        data=b"aGk=",
        headers={"Authorization": f"Bearer {sleeper['token']}"},
        timeout=30,
    ).json()["job"]
    first.wait_jobs("sleeper", 1, done=("Running",))
    first.stop(signal.SIGKILL)  # dies outright, as a crash would

    second = controllers(data_dir=first.data_dir)
    names = sorted(s["name"] for s in second.request("GET", "/system/services").json())
    assert names == ["copier", "sleeper"]
    assert second.jobs("copier")[done]["status"] == "Succeeded"
    logs = second.request("GET", f"/system/logs/copier/{done}").text
    assert base64.b64encode(b"kept").decode() in logs
    # The job the crash interrupted runs again, under the same name (one record).
    assert list(second.jobs("sleeper")) == [cut]
    second.wait_jobs("sleeper", 1, done=("Running",))
    logs = second.request("GET", f"/system/logs/sleeper/{cut}").text
    assert "the controller stopped while the job was running; it runs again" in logs
    # The same token still runs the service.
    response = requests.post(
        f"{second.url}/run/copier",
        data=base64.b64encode(b"again"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert base64.b64decode(response.text) == b"again"
    assert second.stop() == 0


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.timeout(180)
def test_a_second_signal_forces_the_controller_out(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    """SIGTERM: the controller waits for the requests in flight (aiohttp gives them 60 s)
    and its watchdogs drain (healthcheck_interval, inherited: 5 minutes). A second SIGTERM
    cuts both: it exits at once, and leaves no process and no invocation folder."""
    marks = tmp_path / "marks"
    marks.mkdir()
    controller = controllers(env={"MARKS": str(marks), "healthcheck_interval": "5m"})
    sleeper = controller.create(
        {"name": "sleeper", "script": 'echo $$ >> "$MARKS/pids"\nsleep 300\n'}
    )
    auth = {"Authorization": f"Bearer {sleeper['token']}"}
    job = requests.post(f"{controller.url}/job/sleeper", data=b"e30=", headers=auth,
                        timeout=30)
    assert job.status_code == 201, job.text
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(requests.post, f"{controller.url}/run/sleeper", data=b"e30=",
                                headers=auth, timeout=120)
        controller.wait_jobs("sleeper", 1, done=("Running",))
        pids = wait_until(
            lambda: (text := (marks / "pids").read_text() if (marks / "pids").exists() else "")
            and len(text.split()) == 2 and [int(p) for p in text.split()],
            30, "the job's script and the invocation's to run", controller,
        )
        controller.process.send_signal(signal.SIGTERM)
        wait_until(lambda: _refused(controller.port), 30, "the controller to stop listening",
                   controller)
        assert controller.process.poll() is None  # waiting for the request in flight
        started = time.monotonic()
        controller.process.send_signal(signal.SIGTERM)
        assert controller.process.wait(60) == 0, controller.log_text()
        assert time.monotonic() - started < 20, controller.log_text()
        with pytest.raises(requests.ConnectionError):
            in_flight.result(timeout=60)
    marker = str(controller.data_dir).encode()
    left = [p for p in processes().values()
            if (p.pid in pids or marker in p.cmdline) and p.state != "Z"]
    assert left == [], controller.log_text()
    service_tmp = controller.data_dir / "services" / "sleeper" / "tmp"
    assert [p.name for p in service_tmp.iterdir()] == []


# ---- buckets ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_bucket_api(controller: ControllerProcess) -> None:
    assert controller.request("GET", "/system/buckets").json() == []
    assert (
        controller.request("POST", "/system/buckets", json={"bucket_name": "photos"}).status_code
        == 201
    )
    assert (
        controller.request("POST", "/system/buckets", json={"bucket_name": "photos"}).status_code
        == 409
    )
    assert controller.request("POST", "/system/buckets", json={"nope": 1}).status_code == 400
    (controller.storage / "photos" / "a.jpg").write_bytes(b"12345")
    listed = controller.request("GET", "/system/buckets").json()
    assert [b["bucket_name"] for b in listed] == ["photos"]
    one = controller.request("GET", "/system/buckets/photos").json()
    assert [(o["object_name"], o["size_bytes"]) for o in one["objects"]] == [("a.jpg", 5)]
    assert one["returned_items"] == 1 and one["is_truncated"] is False
    assert (
        controller.request(
            "PUT", "/system/buckets", json={"bucket_name": "photos", "visibility": "public"}
        ).status_code
        == 204
    )
    assert controller.request("DELETE", "/system/buckets/photos").status_code == 204
    assert controller.request("GET", "/system/buckets/photos").status_code == 404
    assert controller.request("DELETE", "/system/buckets/photos").status_code == 404


@pytest.mark.timeout(60)
def test_a_bucket_body_that_is_not_json_is_said_so(controller: ControllerProcess) -> None:
    """As a service's body is: a review found "bucket_name: missing" for `zz`."""
    for method in ("POST", "PUT"):
        for body in (b"zz", b"", b'{"bucket_name": NaN}'):
            answer = controller.request(method, "/system/buckets", data=body)
            assert answer.status_code == 400, (method, body, answer.text)
            assert answer.text.startswith("bucket: not valid JSON ("), (method, body, answer.text)
            assert "\n" not in answer.text
    assert controller.request("GET", "/system/buckets").json() == []


@pytest.mark.timeout(60)
def test_a_bucket_name_whose_folder_the_store_cannot_make_makes_nothing(
    controller: ControllerProcess,
) -> None:
    """The whole name is checked before the bucket is made: a segment over 255 bytes, a
    name that is not UTF-8 or over 1024 bytes, a hidden segment (the names the folder
    store keeps for itself, which it never lists) are one line of 400 and leave no bucket,
    so a retry is refused the same way, not found there (409)."""
    for name in ["longseg/" + "a" * 256, "surro/x\ud800", "newb/.s3-tmp", "newc/in/.hidden",
                 "newd/" + "a/" * 600]:
        for _ in range(2):
            answer = controller.request("POST", "/system/buckets", json={"bucket_name": name})
            assert answer.status_code == 400, (name[:20], answer.text)
            assert answer.text.startswith("bucket_name: folder ") and "\n" not in answer.text
    assert controller.request("GET", "/system/buckets").json() == []
    assert list(controller.storage.iterdir()) == []
    assert "Traceback" not in controller.log_text()


@pytest.mark.timeout(60)
def test_a_hidden_path_on_the_folder_store_is_400(controller: ControllerProcess) -> None:
    """Its listing skips hidden names (the store keeps them for itself), so an input
    folder `.in` would never start a job: refused, nothing stored, no bucket left."""
    for field in ("input", "output"):
        definition = copier(**{field: [{"storage_provider": "minio", "path": "copier/.in"}]})
        answer = controller.request("POST", "/system/services", json=definition)
        assert answer.status_code == 400, answer.text
        assert "starting with '.'" in answer.text and "\n" not in answer.text
    assert controller.request("GET", "/system/services").json() == []
    assert list(controller.storage.iterdir()) == []


# ---- the OSCAR Python client, unchanged ---------------------------------------------------


@pytest.mark.timeout(180)
def test_the_oscar_python_client_works_unchanged(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    oscar_python_round_trip(controller, tmp_path, "ghcr.io/grycap/cowsay", "local")


def oscar_python_round_trip(
    controller: ControllerProcess, tmp_path: Path, image: str, backend: str
) -> None:
    """Every call of oscar-python's Client against the controller (the docker backend's
    tests run it too, with an image of their own)."""
    try:
        from oscar_python.client import Client
    except ImportError:
        pytest.fail("oscar-python is not installed: pip install -e '.[test]' installs it")
    from tests.integration.conftest import EXAMPLES
    from tests.integration.controller_fixture import PASSWORD, USER

    (tmp_path / "cowsay.sh").write_bytes((EXAMPLES / "cowsay" / "script.sh").read_bytes())
    fdl = tmp_path / "cowsay.yaml"
    fdl.write_text(
        "functions:\n  oscar:\n  - local-cluster:\n      name: cowsay\n"
        f"      image: {image}\n      cpu: '0.5'\n      memory: 256Mi\n"
        "      log_level: CRITICAL\n      script: cowsay.sh\n"
    )
    client = Client(
        {
            "cluster_id": "local-cluster",
            "endpoint": controller.url,
            "user": USER,
            "password": PASSWORD,
            "ssl": False,
        }
    )
    assert client.health_check().text == "Ok"
    assert client.get_cluster_info().json()["serverless_backend"]["name"] == backend
    assert "minio_provider" in client.get_cluster_config().json()
    assert client.get_cluster_status().json()["cluster"]["nodes_count"] == 1

    assert client.create_service(str(fdl)).status_code == 201
    with pytest.raises(ValueError, match="already present"):
        client.create_service(str(fdl))
    assert [s["name"] for s in client.list_services().json()] == ["cowsay"]
    assert client.get_service("cowsay").json()["cpu"] == "0.5"

    # Synchronous: the client base64-encodes the input and gets the token itself.
    sync = client.run_service("cowsay", input='{"message": "hello client"}')
    assert sync.status_code == 200 and "< hello client >" in sync.text

    started = client.run_service("cowsay", input='{"message": "async hello"}', async_call=True)
    assert started.status_code == 201
    job = started.json()["job"]
    jobs = controller.wait_jobs("cowsay", 1)
    assert (
        client.list_jobs("cowsay").json()["jobs"][job]["status"]
        == jobs[job]["status"]
        == "Succeeded"
    )
    assert "< async hello >" in client.get_job_logs("cowsay", job).text
    assert client.remove_job("cowsay", job).status_code == 204
    assert client.list_jobs("cowsay").json()["jobs"] == {}
    assert client.remove_all_jobs("cowsay").status_code == 204

    # The storage client asks for `/system/config/` (with the slash: redirected, as OSCAR's
    # manager does) and then talks S3 to the endpoint it names.
    assert client.create_bucket("cowsay-files").status_code == 201
    storage = client.create_storage_client("cowsay")
    (tmp_path / "note.txt").write_text("from the client")
    storage.upload_file("minio.default", str(tmp_path / "note.txt"), "cowsay-files/docs")
    listed = storage.list_files_from_path("minio.default", "cowsay-files/docs")
    assert [entry["Key"] for entry in listed["Contents"]] == ["docs/note.txt"]
    (tmp_path / "back").mkdir()
    storage.download_file("minio.default", str(tmp_path / "back"), "cowsay-files/docs/note.txt")
    assert (tmp_path / "back" / "note.txt").read_text() == "from the client"
    assert client.delete_bucket("cowsay-files").status_code == 204

    assert client.remove_service("cowsay").status_code == 204
    assert client.list_services().json() == []


@pytest.mark.timeout(180)
def test_with_a_minio_endpoint_buckets_and_inputs_are_on_that_server(
    controllers: ControllerFactory, moto_server: Any
) -> None:
    controller = controllers(
        args=[
            "--minio-endpoint",
            moto_server.endpoint,
            "--minio-access-key",
            moto_server.access_key,
            "--minio-secret-key",
            moto_server.secret_key,
            "--minio-region",
            moto_server.region,
        ]
    )
    s3 = moto_server.client()
    config = controller.request("GET", "/system/config").json()["minio_provider"]
    assert config["endpoint"] == moto_server.endpoint
    controller.create(copier("s3copier"))
    assert "s3copier" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    listed = [b["bucket_name"] for b in controller.request("GET", "/system/buckets").json()]
    assert "s3copier" in listed
    # moto sends no webhooks: the controller watches the input path itself.
    s3.put_object(Bucket="s3copier", Key="input/a b.txt", Body=b"from s3")

    output = functools.partial(s3_object, s3, "s3copier", "output/result")
    assert wait_until(output, 90, "the output on the S3 server", controller) == b"from s3"
    (job,) = controller.wait_jobs("s3copier", 1).values()
    assert job["status"] == "Succeeded"


def s3_object(s3: Any, bucket: str, key: str) -> bytes | None:
    """The object's bytes, or None while it does not exist (a wait_until condition)."""
    try:
        body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    return body


def _own_minio(server: Any) -> dict[str, str]:
    """A service's own MinIO provider's settings for an S3 server (conftest.S3Server)."""
    return {"endpoint": server.endpoint, "access_key": server.access_key,
            "secret_key": server.secret_key, "region": server.region, "verify": "false"}


@pytest.mark.timeout(120)
def test_the_buckets_on_a_services_own_minio_provider_are_made_on_its_server(
    controller: ControllerProcess, moto_server: Any
) -> None:
    # SPEC 7.2: creating a service makes the buckets of its paths on their provider, the
    # default one or another MinIO server the service defines (here moto, as `minio.ext`).
    controller.create(copier(
        "extcopier",
        input=[{"storage_provider": "minio.ext", "path": "extcopier-in/input"}],
        output=[{"storage_provider": "minio.ext", "path": "extcopier-out/output"}],
        storage_providers={"minio": {"ext": _own_minio(moto_server)}},
    ))
    s3 = moto_server.client()
    assert {"extcopier-in", "extcopier-out"} <= {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="extcopier-in")["Contents"]] == ["input/"]
    assert not (controller.storage / "extcopier-in").exists()  # not on the default store
    # A run's output goes to the bucket made there (it failed with "no such bucket").
    ran = controller.request("POST", "/run/extcopier", data=base64.b64encode(b"to ext"))
    assert ran.status_code == 200, ran.text
    result = s3.get_object(Bucket="extcopier-out", Key="output/result")["Body"].read()
    assert result == b"to ext"
    # An update makes the buckets of its new paths there too.
    updated = controller.request("PUT", "/system/services", json=copier(
        "extcopier",
        input=[{"storage_provider": "minio.ext", "path": "extcopier-in/input"}],
        output=[{"storage_provider": "minio.ext", "path": "extcopier-new/output"}],
        storage_providers={"minio": {"ext": _own_minio(moto_server)}},
    ))
    assert updated.status_code == 204, updated.text
    assert "extcopier-new" in {b["Name"] for b in s3.list_buckets()["Buckets"]}


@pytest.mark.timeout(180)
def test_an_input_on_a_services_own_minio_provider_starts_one_job_reading_it_there(
    controller: ControllerProcess, moto_server: Any
) -> None:
    # SPEC 7.2: that server is not asked for notifications, so the controller watches the
    # input path there; the job's event is delegated to minio.ext (SPEC 6.1), so it reads
    # the object from that server (the default store has no such bucket).
    from tests.integration.test_controller_events import intake_of

    s3 = moto_server.client()
    s3.create_bucket(Bucket="owncopier-in")
    s3.put_object(Bucket="owncopier-in", Key="input/old.txt", Body=b"there before")
    token = controller.create(copier(
        "owncopier",
        input=[{"storage_provider": "minio.ext", "path": "owncopier-in/input"}],
        output=[{"storage_provider": "minio.ext", "path": "owncopier-out/output"}],
        storage_providers={"minio": {"ext": _own_minio(moto_server)}},
    ))["token"]
    assert intake_of(controller, "owncopier") == "watch"
    assert "/job/owncopier" not in controller.log_text()  # no warning to point the server
    s3.put_object(Bucket="owncopier-in", Key="input/new a.txt", Body=b"on ext")

    output = functools.partial(s3_object, s3, "owncopier-out", "output/result")
    assert wait_until(output, 90, "the output on minio.ext", controller) == b"on ext"
    # One job, for the new object: the old one was there first (a baseline), and the
    # watcher offers the objects of a listing in one poll, before the new one settled.
    (job,) = controller.wait_jobs("owncopier", 1).values()
    assert job["status"] == "Succeeded"
    assert not (controller.storage / "owncopier-in").exists()
    # The same object's event pushed to /job, delegated as the watcher's: the same job.
    etag = s3.head_object(Bucket="owncopier-in", Key="input/new a.txt")["ETag"].strip('"')
    event = json.loads((Path(__file__).parents[1] / "fixtures/events/minio.json").read_bytes())
    event["Records"][0]["s3"]["bucket"]["name"] = "owncopier-in"
    event["Records"][0]["s3"]["object"].update(key="input%2Fnew+a.txt", eTag=etag, size=6)
    pushed = requests.post(f"{controller.url}/job/owncopier",
                           json={"event": event, "storage_provider": "minio.ext"},
                           headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert (pushed.status_code, pushed.json()) == (200, {"job": next(iter(
        controller.jobs("owncopier")))}), pushed.text
    assert len(controller.jobs("owncopier")) == 1
    # Updated to another input path there: watched in its place, with its own baseline.
    s3.create_bucket(Bucket="owncopier-moved")
    s3.put_object(Bucket="owncopier-moved", Key="input/old.txt", Body=b"there before")
    updated = controller.request("PUT", "/system/services", json=copier(
        "owncopier",
        input=[{"storage_provider": "minio.ext", "path": "owncopier-moved/input"}],
        output=[{"storage_provider": "minio.ext", "path": "owncopier-out/moved"}],
        storage_providers={"minio": {"ext": _own_minio(moto_server)}},
    ))
    assert updated.status_code == 204, updated.text
    s3.put_object(Bucket="owncopier-moved", Key="input/b.txt", Body=b"moved")
    jobs = controller.wait_jobs("owncopier", 2)
    assert [j["status"] for j in jobs.values()] == ["Succeeded"] * 2
    moved = s3.get_object(Bucket="owncopier-out", Key="moved/result")["Body"].read()
    assert moved == b"moved"


@pytest.mark.timeout(120)
def test_a_services_own_minio_server_that_refuses_fails_its_create_with_nothing_left(
    controller: ControllerProcess, moto_server: Any
) -> None:
    # Its buckets on the default store and on minio.ext are made first; minio.dead (a
    # closed port) then fails: a 502 naming it, never its endpoint or keys, and what the
    # request made is removed again, on both servers.
    port = free_port()
    dead = {"endpoint": f"http://127.0.0.1:{port}", "access_key": "AKIADEADKEY",
            "secret_key": "dead-secret-key", "region": "us-east-1"}
    answer = controller.request("POST", "/system/services", json=copier(
        "extdead",
        input=[{"storage_provider": "minio.ext", "path": "extdead-in/input"}],
        output=[{"storage_provider": "minio.dead", "path": "extdead-out/output"},
                {"storage_provider": "minio", "path": "extdead/output"}],
        storage_providers={"minio": {"ext": _own_minio(moto_server), "dead": dead}},
    ))
    assert (answer.status_code, answer.text) == (
        502, "minio.dead: creation of the buckets of service extdead failed "
        "(EndpointConnectionError)")
    assert controller.request("GET", "/system/services/extdead").status_code == 404
    names = {b["Name"] for b in moto_server.client().list_buckets()["Buckets"]}
    assert "extdead-in" not in names
    assert not (controller.storage / "extdead").exists()


@pytest.mark.timeout(120)
def test_an_exposed_service_is_proxied(controller: ControllerProcess) -> None:
    from tests.integration.conftest import EXAMPLES

    script = (EXAMPLES / "exposed" / "script.sh").read_text()
    controller.create({"name": "web", "script": script, "expose": {"api_port": 8081}})
    response = wait_until(
        lambda: (
            (
                r := requests.get(f"{controller.url}/system/services/web/exposed/", timeout=30)
            ).status_code
            == 200
            and r
        ),
        60,
        "the exposed service",
        controller,
    )
    assert "Hello from an exposed service" in response.text
    assert (
        requests.get(f"{controller.url}/system/services/nope/exposed/", timeout=10).status_code
        == 404
    )


REDIRECTING_SERVER = """#!/bin/sh
exec python3 - <<'PY'
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", os.environ["ELSEWHERE"])
        self.send_header("Content-Length", "0")
        self.end_headers()

HTTPServer(("127.0.0.1", int(os.environ["upstream_port"])), Handler).serve_forever()
PY
"""


@pytest.mark.timeout(120)
def test_an_exposed_services_redirect_reaches_the_client(controller: ControllerProcess) -> None:
    """The 302 and its Location go to the client, as the watchdog's proxy passes them:
    followed by the controller, it would fetch any address a service names (here one
    where nothing listens: a 502), with the caller's headers."""
    elsewhere = f"http://127.0.0.1:{free_port()}/leak"
    controller.create({"name": "mover", "script": REDIRECTING_SERVER,
                       "expose": {"api_port": 8081},
                       "environment": {"variables": {"ELSEWHERE": elsewhere}}})
    response = wait_until(
        lambda: (r := requests.get(f"{controller.url}/system/services/mover/exposed/go",
                                   allow_redirects=False, timeout=30)).status_code != 503 and r,
        60, "the exposed service", controller)
    assert (response.status_code, response.headers.get("Location")) == (302, elsewhere)


PID_SERVER = """#!/bin/sh
exec python3 - <<'PY'
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", int(os.environ["upstream_port"])), Handler).serve_forever()
PY
"""


@pytest.mark.timeout(180)
def test_an_exposed_service_runs_min_scale_instances(controller: ControllerProcess) -> None:
    """min_scale: 2 is two watchdogs with a server each; the proxy takes turns over them."""
    controller.create(
        {"name": "twice", "script": PID_SERVER, "expose": {"api_port": 8081, "min_scale": 2}}
    )
    url = f"{controller.url}/system/services/twice/exposed/"
    wait_until(lambda: requests.get(url, timeout=30).status_code == 200, 60,
               "the exposed service", controller)
    seen: set[str] = set()

    def both_answered() -> bool:
        response = requests.get(url, timeout=30)
        if response.status_code == 200:
            seen.add(response.text)
        return len(seen) == 2

    wait_until(both_answered, 60, "answers from two server processes", controller)
    assert all(pid.isdigit() for pid in seen)


@pytest.mark.timeout(60)
def test_with_a_minio_endpoint_a_hidden_folder_is_the_servers_to_take(
    controllers: ControllerFactory, moto_server: Any
) -> None:
    """Only the folder store keeps hidden names for itself: on an S3 server (MinIO takes
    them, as the manager does) an input folder `.in` is made and served as before."""
    controller = controllers(args=[
        "--minio-endpoint", moto_server.endpoint, "--minio-access-key", moto_server.access_key,
        "--minio-secret-key", moto_server.secret_key, "--minio-region", moto_server.region,
    ])
    controller.create(copier("hidcopier", input=[{"storage_provider": "minio",
                                                  "path": "hidcopier/.in"}]))
    keys = [o["Key"] for o in moto_server.client().list_objects_v2(Bucket="hidcopier")["Contents"]]
    assert ".in/" in keys
    answer = controller.request("POST", "/system/buckets/hidcopier/presign",
                                json={"object_key": ".in/a.txt", "operation": "upload"})
    assert answer.status_code == 200, answer.text


# ---- hostile input: paths, nesting, encodings (issue 8) ----------------------------------


def drop(controller: ControllerProcess, bucket: str, folder: str, name: str, data: bytes) -> None:
    """A file arriving whole in a watched folder, as an upload would."""
    staged = controller.storage / bucket / f".{name}.tmp"
    staged.write_bytes(data)
    staged.rename(controller.storage / bucket / folder / name)


@pytest.mark.timeout(120)
def test_paths_and_bucket_names_that_leave_the_data_folder_are_400(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    for field, path in [
        ("input", "copier/../../../escaped"),
        ("output", "copier/out/../../../../escaped"),
        ("input", "../escaped/in"),
        ("input", "copier/./in"),
        ("output", "a..b/out"),
        ("output", "192.168.1.20/out"),
    ]:
        definition = copier(**{field: [{"storage_provider": "minio", "path": path}]})
        response = controller.request("POST", "/system/services", json=definition)
        assert response.status_code == 400, (path, response.text)
        assert response.text.startswith(f"{field}[0].path: "), response.text
        assert "\n" not in response.text
    for name in ["../escaped", "escaped/../../x", "photos/../../../x", "ab", "a..b", "UPPER",
                 "10.0.0.1", "photos//x", "photos/x\\..\\y"]:
        response = controller.request("POST", "/system/buckets", json={"bucket_name": name})
        assert response.status_code == 400, (name, response.text)
        assert response.text.startswith("bucket_name: ") and "\n" not in response.text
    for method in ("GET", "DELETE"):
        response = controller.request(method, "/system/buckets/UPPER")
        assert response.status_code == 400 and response.text.startswith("bucket_name: 'UPPER'")
    assert controller.request("GET", "/system/services").json() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(controller.storage.iterdir()) == []
    # The same API still makes what is valid.
    assert controller.request(
        "POST", "/system/buckets", json={"bucket_name": "photos/2024/june"}
    ).status_code == 201
    assert (controller.storage / "photos" / "2024" / "june").is_dir()


@pytest.mark.timeout(120)
def test_no_input_gives_a_5xx(controller: ControllerProcess) -> None:
    token = controller.create(copier())["token"]
    deep = b"[" * 200_000 + b"]" * 200_000
    deep_object = b'{"Records": ' + b"[" * 400_000 + b"]" * 400_000 + b"}"
    cases: list[tuple[str, str, Any, dict[str, str], int]] = [
        ("POST", "/system/services", "admin", {}, 400),
        ("PUT", "/system/services", "admin", {}, 400),
        ("POST", "/system/buckets", "admin", {}, 400),
        ("PUT", "/system/buckets", "admin", {}, 400),
    ]
    for method, path, auth, headers, status in cases:
        for body in (deep, b"\x1f\x8b\x08\x00garbage"):
            response = controller.request(
                method, path, auth=auth, data=body, headers={**headers, "Content-Encoding": "gzip"}
                if body.startswith(b"\x1f") else headers
            )
            assert response.status_code == status, (method, path, response.text[:200])
            assert "\n" not in response.text.strip(), response.text[:200]
    # /job without credentials reads the body only to find a Ceph event's token.
    unauthenticated = requests.post(f"{controller.url}/job/copier", data=deep_object, timeout=30)
    assert unauthenticated.status_code == 401
    # /run passes the body on as sent: the service's watchdog decodes it, or says why not.
    auth = {"Authorization": f"Bearer {token}", "Content-Encoding": "gzip"}
    import gzip

    good = requests.post(f"{controller.url}/run/copier", timeout=60, headers=auth,
                         data=gzip.compress(base64.b64encode(b"zipped")))
    assert good.status_code == 200 and base64.b64decode(good.text) == b"zipped", good.text
    bad = requests.post(f"{controller.url}/run/copier", data=b"\x1f\x8b\x08\x00garbage" * 10,
                        headers=auth, timeout=60)
    assert bad.status_code == 400, bad.text
    assert bad.text.startswith("request body cannot be read: "), bad.text
    # A chunked body that breaks after its first chunk, on every route that reads one.
    basic = "Basic " + base64.b64encode(":".join(controller.auth).encode()).decode()
    for path in ("/system/services", "/run/copier", "/job/copier"):
        answer = broken_chunked(controller.port, path, basic)
        assert answer.startswith(b"HTTP/1.1 400 "), (path, answer[:300])
        assert b"request body cannot be read: " in answer, answer
    assert "Traceback" not in controller.log_text()


def broken_chunked(port: int, path: str, authorization: str) -> bytes:
    """A request whose chunked body breaks once its handler is reading it."""
    import socket
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\na\r\neyJhIjoxfQ\r\n".encode())
        time.sleep(0.3)  # the client's pace is what is tested: the handler reads by now
        sock.sendall(b"zz\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def post_all(calls: list[tuple[str, str, dict[str, Any] | None]],
             controller: ControllerProcess) -> list[int]:
    """The calls at once: each from its own thread, released together."""
    import threading

    barrier = threading.Barrier(len(calls))

    def one(call: tuple[str, str, dict[str, Any] | None]) -> int:
        method, path, body = call
        barrier.wait(10)
        return controller.request(method, path, json=body).status_code

    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


@pytest.mark.timeout(240)
def test_creating_one_service_twice_at_once_leaves_it_whole(
    controller: ControllerProcess,
) -> None:
    names = [f"twice{i}" for i in range(4)]
    statuses = post_all([("POST", "/system/services", copier(n)) for n in names for _ in (1, 2)],
                        controller)
    for i, name in enumerate(names):
        assert sorted(statuses[2 * i: 2 * i + 2]) == [201, 409], (name, statuses)
    # The winner's input is still watched: a file dropped there gives its job.
    for name in names:
        drop(controller, name, "input", "in.txt", name.encode())
    for name in names:
        (job,) = controller.wait_jobs(name, 1).values()
        assert job["status"] == "Succeeded"
        assert (controller.storage / name / "output" / "result").read_bytes() == name.encode()


@pytest.mark.timeout(240)
def test_concurrent_updates_and_deletes_leave_what_is_stored_watched(
    controller: ControllerProcess,
) -> None:
    controller.create(copier())

    def moved(folder: str) -> dict[str, Any]:
        return copier(input=[{"storage_provider": "minio", "path": f"copier/{folder}"}])

    statuses = post_all([("PUT", "/system/services", moved(f"in{i}")) for i in range(4)],
                        controller)
    assert statuses == [204] * 4
    (entry,) = controller.request("GET", "/system/services/copier").json()["input"]
    folder = entry["path"].split("/", 1)[1]
    drop(controller, "copier", folder, "a.txt", b"after updates")
    (job,) = controller.wait_jobs("copier", 1).values()
    assert job["status"] == "Succeeded"

    # An update racing a delete: either order, but once the service is gone nothing of it
    # runs (an update finishing after the delete started its watchdog again).
    statuses = post_all([("PUT", "/system/services", moved("late")),
                         ("DELETE", "/system/services/copier", None)], controller)
    assert statuses[1] == 204 and statuses[0] in (204, 404), statuses
    assert controller.request("GET", "/system/services/copier").status_code == 404
    folder_mark = str(controller.data_dir / "services" / "copier").encode()
    wait_until(lambda: not any(folder_mark in cmdline for cmdline in _cmdlines()), 30,
               "no process of the deleted service", controller)
    # Made again, one file gives one job.
    controller.create(copier())
    drop(controller, "copier", "input", "b.txt", b"made again")
    (job,) = controller.wait_jobs("copier", 1).values()
    assert job["status"] == "Succeeded"



@pytest.mark.timeout(120)
def test_a_service_an_older_version_stored_is_read_back_at_start(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    """Versions before the ASCII and UTF-8 checks stored (201) cpu and memory in another
    script's digits and lone surrogates: on that data folder the controller exited 2 at
    every start, naming neither service nor store, and the service could not be deleted
    (the API was down). Now it starts, with the amounts in ASCII digits."""
    data = tmp_path / "upgraded"
    data.mkdir()
    Store(data / "controller.sqlite3").close()  # the schema, as any version makes it
    record = json.loads(to_record(parse_service(
        {"name": "older", "script": 'echo "older $(cat "$INPUT_FILE_PATH")"\n'})))
    record.update(cpu="\u0661", memory="\u0662\u0665\u0666Mi", image="x\udc80",
                  labels={"k": "v\udc81"}, token="older-token")
    # The row as the store wrote it: its record JSON, surrogates as \u escapes.
    with contextlib.closing(sqlite3.connect(data / "controller.sqlite3")) as db, db:
        db.execute("INSERT INTO services (name, definition, created) VALUES (?, ?, ?)",
                   ("older", json.dumps(record, separators=(",", ":")), time.time()))
    controller = controllers(data)

    got = controller.request("GET", "/system/services/older")
    assert got.status_code == 200, got.text
    shown = got.json()
    assert (shown["cpu"], shown["memory"], shown["image"]) == ("1", "256Mi", "x\ufffd")
    assert shown["labels"]["k"] == "v\ufffd" and shown["token"] == "older-token"
    listed = controller.request("GET", "/system/services")
    assert listed.status_code == 200 and [s["name"] for s in listed.json()] == ["older"]
    ran = controller.request("POST", "/run/older", data=base64.b64encode(b"in"))
    assert ran.status_code == 200, ran.text
    assert script_output(ran.text) == "older in\n"
    assert controller.request("DELETE", "/system/services/older").status_code == 204
    assert controller.request("GET", "/system/services/older").status_code == 404

def _cmdlines() -> list[bytes]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes())
            except OSError:
                continue
    return found


@pytest.mark.timeout(120)
def test_a_delete_the_store_refuses_leaves_the_service_whole(controller: ControllerProcess) -> None:
    """A review found a DELETE whose store write failed (the database locked by another
    process) answered 500 with the service's watchdog already stopped and its folder
    removed: still listed, its calls answered 503 (`not running`) until a retry or a
    restart. The service is made whole again: it answers its calls."""
    controller.create({"name": "kept", "script": 'cat "$INPUT_FILE_PATH"\n'})
    holder = sqlite3.connect(controller.data_dir / "controller.sqlite3", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # for longer than the controller's sqlite waits
        refused = controller.request("DELETE", "/system/services/kept")
    finally:
        holder.close()
    assert refused.status_code >= 500, refused.text
    assert controller.request("GET", "/system/services/kept").status_code == 200
    answer = controller.request("POST", "/run/kept", data=base64.b64encode(b"still here"))
    assert answer.status_code == 200 and answer.text.endswith("still here"), answer.text
    assert controller.request("DELETE", "/system/services/kept").status_code == 204
