"""Faults, with nothing lost (issue 8): a full disk, a store that goes down, a service's
watchdog killed. Real processes throughout: a watchdog or `run` whose TMPDIR is a tiny
tmpfs, a controller whose --data-dir is one, moto's server stopped and started again.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import (
    S3Server,
    WatchdogFactory,
    faas_command,
    free_port,
    mounted_tmpfs,
    wait_for_http,
)
from tests.integration.controller_fixture import (
    ControllerFactory,
    ControllerProcess,
    wait_until,
)
from tests.integration.servers import MotoProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

KiB = 1 << 10
MiB = 1 << 20
MINIO_EVENT = Path(__file__).resolve().parents[1] / "fixtures" / "events" / "minio.json"


# ---- a tiny disk -------------------------------------------------------------------------


@dataclass
class TinyDisk:
    path: Path

    def fill(self) -> Path:
        """Take every free byte with one file (another user of the disk, say)."""
        filler = self.path / f"filler-{uuid.uuid4().hex}"
        with open(filler, "wb", buffering=0) as out:
            try:
                while out.write(b"\0" * 4096):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        return filler

    def use_every_inode(self) -> list[Path]:
        made = []
        try:
            while True:
                path = self.path / f"inode-{len(made)}"
                path.touch()
                made.append(path)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        return made

    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize


@pytest.fixture
def tiny_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TinyDisk]:
    """A tmpfs (options by indirect parametrization, else 256 KiB), unmounted at the end."""
    with mounted_tmpfs(tmp_path / "tiny", getattr(request, "param", "size=256k")) as path:
        yield TinyDisk(path)


@pytest.fixture
def controllers(tmp_path: Path) -> Iterator[ControllerFactory]:
    """Asked for after tiny_disk: stopped before the disk is unmounted."""
    factory = ControllerFactory(tmp_path)
    yield factory
    factory.close()


def invocation_folders(folder: Path, timeout: float = 10) -> list[str]:
    """The invocation folders left once the last answer's clean-up had time to run (the
    watchdog answers before it removes the folder): polled, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = sorted(p.name for p in folder.iterdir()
                      if p.name.startswith("faas-") and not p.name.startswith("faas-runtime-"))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


# ---- a full TMPDIR: the watchdog ---------------------------------------------------------

ECHO = '#!/bin/sh\ncat "$INPUT_FILE_PATH"\n'


@pytest.mark.reliability(
    fault="disk full",
    promise=(
        "a full TMPDIR is a 507 naming what did not fit; the next call works once space "
        "is back"
    ),
)
def test_watchdog_answers_507_when_the_input_does_not_fit_and_resumes(
    watchdog: WatchdogFactory, tiny_disk: TinyDisk
) -> None:
    wd = watchdog(ECHO, env={"TMPDIR": str(tiny_disk.path)})
    big = os.urandom(MiB)
    response = requests.post(wd.url, data=big, timeout=30,
                             headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 507, response.text
    first = response.content.split(b"\n", 1)[0]
    assert first == b"no space left on device writing the input", response.content[:300]
    assert invocation_folders(tiny_disk.path) == []  # no partial folder
    # The space came back with the folder: the next call succeeds.
    ok = requests.post(wd.url, data=b"small", timeout=30,
                       headers={"Content-Type": "application/octet-stream"})
    assert ok.status_code == 200, ok.text
    assert b"small" in ok.content
    assert invocation_folders(tiny_disk.path) == []
    assert b"Traceback" not in wd.log.read_bytes()


@pytest.mark.reliability(
    fault="disk full",
    promise="no free inodes for the invocation folders or log: 507, nothing left behind",
)
@pytest.mark.parametrize("tiny_disk", ["size=1m,nr_inodes=64"], indirect=True)
@pytest.mark.parametrize("free", [0, 1, 2], ids=["none", "one folder", "two folders"])
def test_watchdog_answers_507_when_its_folder_cannot_be_made(
    watchdog: WatchdogFactory, tiny_disk: TinyDisk, free: int
) -> None:
    """`free` inodes left: the input folder, then the output folder, then the script's log
    is the one that cannot be made; what was made before it goes."""
    wd = watchdog(ECHO, env={"TMPDIR": str(tiny_disk.path)})
    taken = tiny_disk.use_every_inode()
    for path in taken[:free]:
        path.unlink()
    taken = taken[free:]
    response = requests.post(wd.url, data=b"x", timeout=30,
                             headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 507, response.text
    assert response.text.splitlines()[0] == (
        "no space left on device writing the invocation's folders"
    )
    assert invocation_folders(tiny_disk.path) == []
    for path in taken:  # space comes back
        path.unlink()
    ok = requests.post(wd.url, data=b"back", timeout=30,
                       headers={"Content-Type": "application/octet-stream"})
    assert ok.status_code == 200, ok.text


# ---- a full TMPDIR: `run` ----------------------------------------------------------------


def run(tmp_path: Path, tmpdir: Path, *args: str, stdin: bytes = b"",
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    script = tmp_path / "script.sh"
    script.write_text('#!/bin/sh\necho "read $(wc -c < "$INPUT_FILE_PATH") bytes"\n')
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT", "JOB_UUID")}
    full_env["TMPDIR"] = str(tmpdir)
    full_env.update(env or {})
    return subprocess.run([*faas_command(), "run", "--script", str(script), *args],
                          input=stdin, env=full_env, capture_output=True, timeout=60)


@pytest.mark.reliability(
    fault="disk full",
    promise="`run` exits 4 with one line when the event does not fit",
)
def test_run_exits_4_with_one_line_when_the_event_does_not_fit(
    tmp_path: Path, tiny_disk: TinyDisk
) -> None:
    result = run(tmp_path, tiny_disk.path, stdin=b"A" * MiB)
    assert result.returncode == 4, result.stderr
    assert result.stderr == b"faas-supervisor: error: no space left on device writing the input\n"
    assert list(tiny_disk.path.iterdir()) == []  # nothing left: no folder, no runtime folder
    ok = run(tmp_path, tiny_disk.path, stdin=b"A" * KiB)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.reliability(
    fault="disk full",
    promise="`run` exits 4 naming the script's log when the script's output does not fit",
)
@pytest.mark.parametrize("output", [
    "head -c 4194304 /dev/zero | tr '\\0' x",  # pieces as big as the pipe gives
    # Short lines, one at a time: pieces smaller than a buffered file's buffer, which
    # would keep them and fail again, unnamed, when closed.
    "i=0; while [ $i -lt 400 ]; do head -c 999 /dev/zero | tr '\\0' x; echo; "
    "i=$((i + 1)); done",
], ids=["big pieces", "short lines"])
def test_run_exits_4_when_the_scripts_output_does_not_fit(
    tmp_path: Path, tiny_disk: TinyDisk, output: str
) -> None:
    """`run` copies the script's output to its log as it comes (and to stderr): a full
    disk there is the job's failure, named, not a script killed by SIGPIPE."""
    script = tmp_path / "loud.sh"
    script.write_text(f"#!/bin/sh\n{output}\necho done\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT", "JOB_UUID")}
    env["TMPDIR"] = str(tiny_disk.path)
    result = subprocess.run([*faas_command(), "run", "--script", str(script)], input=b"",
                            env=env, capture_output=True, timeout=60)
    assert result.returncode == 4, result.stderr[-300:]
    assert result.stderr.endswith(
        b"faas-supervisor: error: no space left on device writing the script's log\n"
    ), result.stderr[-300:]
    assert b"Traceback" not in result.stderr
    assert list(tiny_disk.path.iterdir()) == []


@pytest.mark.reliability(
    fault="disk full",
    promise="a job whose download does not fit is Failed naming it",
)
def test_a_job_whose_object_does_not_fit_fails_naming_it(
    tmp_path: Path, tiny_disk: TinyDisk
) -> None:
    store = tmp_path / "store"
    obj = store / "plants" / "input" / "rose+red.jpg"
    obj.parent.mkdir(parents=True)
    obj.write_bytes(os.urandom(MiB))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"storage_providers:\n  minio:\n    default: {{path: {store}}}\n"
        "input:\n  - {storage_provider: minio.default, path: plants/input}\n"
    )
    args = ["--config", str(config), "--event-file", str(MINIO_EVENT)]
    result = run(tmp_path, tiny_disk.path, *args)
    assert result.returncode == 4, result.stderr
    assert (b"faas-supervisor: error: no space left on device writing the download of "
            b"plants/input/rose+red.jpg (minio.default)") in result.stderr
    assert b"Traceback" not in result.stderr
    assert list(tiny_disk.path.iterdir()) == []
    obj.write_bytes(b"small now")  # the space the job needs is there again
    ok = run(tmp_path, tiny_disk.path, *args)
    assert ok.returncode == 0, ok.stderr
    assert b"read 9 bytes" in ok.stderr


# ---- a full --data-dir: the controller ---------------------------------------------------

# Prints as many bytes as the event's number says: the job's log, kept in the store.
PRINTER = 'head -c "$(cat "$INPUT_FILE_PATH")" /dev/zero | tr "\\0" x\necho\n'


def job_files(controller: ControllerProcess) -> dict[str, set[str]]:
    folder = controller.data_dir / "jobs"
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return {ext: {n[: -len(ext)] for n in names if n.endswith(ext)} for ext in (".event", ".log")}


def assert_store_consistent(controller: ControllerProcess, service: str) -> None:
    """SQLite's own check passes, and every job's event file has its row and every job
    waiting to run has its event file."""
    db = sqlite3.connect(f"file:{controller.data_dir / 'controller.sqlite3'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
    jobs = controller.jobs(service)
    events = job_files(controller)[".event"]
    assert events <= set(jobs), f"event files without a job: {events - set(jobs)}"
    pending = {name for name, job in jobs.items() if job["status"] == "Pending"}
    assert pending <= events, f"jobs without their event file: {pending - events}"


def submit(controller: ControllerProcess, service: str, body: bytes) -> requests.Response:
    return controller.request("POST", f"/job/{service}", data=body)


@pytest.mark.reliability(
    fault="disk full",
    promise=(
        "a full --data-dir: /job is a 507, no event file without its row, jobs deletable "
        "to free space"
    ),
)
@pytest.mark.parametrize("tiny_disk", ["size=16m"], indirect=True)
def test_a_full_data_dir_refuses_jobs_with_507_and_space_is_freed_through_the_api(
    tiny_disk: TinyDisk, controllers: ControllerFactory
) -> None:
    controller = controllers(data_dir=tiny_disk.path / "data")
    controller.create({"name": "printer", "script": PRINTER})
    for _ in range(4):  # 4 x 600 KB of logs, kept in the store
        assert submit(controller, "printer", b"600000").status_code == 201
    jobs = controller.wait_jobs("printer", 4)
    assert {job["status"] for job in jobs.values()} == {"Succeeded"}

    filler = tiny_disk.fill()  # another user takes every byte left
    refused = submit(controller, "printer", b"10")
    assert refused.status_code == 507, refused.text
    assert refused.text.strip() == "no space left on device writing the job's event"
    assert_store_consistent(controller, "printer")
    assert len(controller.jobs("printer")) == 4
    # The service's watchdog keeps its invocations under the data folder too.
    run = controller.request("POST", "/run/printer", data=b"10",
                             headers={"Content-Type": "application/octet-stream"})
    assert run.status_code == 507, run.text
    assert run.text.splitlines()[0] == "no space left on device writing the input"

    # Deleting works on the full disk: one job, then the service's finished jobs.
    first, *_ = jobs
    deleted = controller.request("DELETE", f"/system/logs/printer/{first}")
    assert deleted.status_code == 204, deleted.text
    deleted = controller.request("DELETE", "/system/logs/printer")
    assert deleted.status_code == 204, deleted.text
    assert controller.jobs("printer") == {}
    assert_store_consistent(controller, "printer")

    # The logs' space went back to the file system: jobs run again, the filler still there.
    assert filler.exists()
    accepted = submit(controller, "printer", b"10")
    assert accepted.status_code == 201, accepted.text
    (job,) = controller.wait_jobs("printer", 1).values()
    assert job["status"] == "Succeeded", controller.log_text()
    assert_store_consistent(controller, "printer")
    assert b"Traceback" not in controller.log.read_bytes()


@pytest.mark.reliability(
    fault="disk full",
    promise=(
        "a job that fills --data-dir fails naming the cause; the store stays intact and "
        "service resumes"
    ),
)
@pytest.mark.parametrize("tiny_disk", ["size=8m"], indirect=True)
def test_a_job_that_fills_the_data_dir_fails_naming_the_cause_and_resumes(
    tiny_disk: TinyDisk, controllers: ControllerFactory
) -> None:
    controller = controllers(data_dir=tiny_disk.path / "data")
    controller.create({"name": "counter", "script": 'wc -c < "$INPUT_FILE_PATH"\n'})
    # Room for the event once (the controller keeps it) but not twice (the job copies it).
    filler = tiny_disk.fill()
    size = 3 * MiB
    with open(filler, "r+b") as f:
        f.truncate(max(0, f.seek(0, os.SEEK_END) - (size + size // 2)))
    event = json.dumps({"data": "x" * size}).encode()
    assert submit(controller, "counter", event).status_code == 201
    (job,) = controller.wait_jobs("counter", 1).values()
    assert job["status"] == "Failed"
    name = next(iter(controller.jobs("counter")))
    logs = controller.request("GET", f"/system/logs/counter/{name}").text
    assert "faas-supervisor: error: no space left on device writing the input" in logs, logs
    assert_store_consistent(controller, "counter")
    assert invocation_folders(controller.data_dir / "services" / "counter" / "tmp") == []

    filler.unlink()  # space comes back: the same job succeeds
    assert submit(controller, "counter", event).status_code == 201
    jobs = controller.wait_jobs("counter", 2)
    assert sorted(job["status"] for job in jobs.values()) == ["Failed", "Succeeded"]
    assert_store_consistent(controller, "counter")


# ---- a store down, a service's watchdog killed -------------------------------------------


def moto_on(port: int, log: Path) -> MotoProcess:
    """moto's server on `port`, stopped again if it never answers (no orphan left)."""
    with open(log, "wb") as out:
        process = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        # Generous: moto takes seconds to import on a busy machine.
        wait_for_http(f"http://127.0.0.1:{port}/moto-api/", process, timeout=120, log=log)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return MotoProcess(process, S3Server(f"http://127.0.0.1:{port}"), log)


def s3_event(bucket: str, key: str) -> bytes:
    record = {"eventSource": "aws:s3", "eventTime": "2026-11-30T12:00:00.000Z",
              "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
    return json.dumps({"Records": [record]}).encode()


def job_logs(controller: ControllerProcess, service: str, job: str) -> str:
    return controller.request("GET", f"/system/logs/{service}/{job}").text


@pytest.mark.reliability(
    fault="store down",
    promise=(
        "a store stopped during stage-in fails the job in bounded time naming provider "
        "and object; the next job succeeds"
    ),
)
def test_a_store_down_during_stage_in_fails_the_job_naming_it_and_the_next_succeeds(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    port = free_port()
    motos = [moto_on(port, tmp_path / "moto.log")]
    try:
        server = motos[0].server
        server.client().create_bucket(Bucket="faults")
        server.client().put_object(Bucket="faults", Key="in/obj.bin", Body=b"x" * 1000)
        controller = controllers()
        # Its own S3 provider: the controller watches only the default one's inputs, so
        # the jobs here are the two this test submits.
        provider = {"endpoint": server.endpoint, "region": server.region,
                    "access_key": server.access_key, "secret_key": server.secret_key}
        controller.create({
            "name": "fetcher", "script": 'echo "got $(wc -c < "$INPUT_FILE_PATH") bytes"\n',
            "storage_providers": {"s3": {"default": provider}},
            "input": [{"storage_provider": "s3.default", "path": "faults/in"}],
        })
        motos[0].process.send_signal(signal.SIGSTOP)  # the store hangs...
        response = submit(controller, "fetcher", s3_event("faults", "in/obj.bin"))
        assert response.status_code == 201, response.text
        job = response.json()["job"]
        wait_until(lambda: "downloading" in job_logs(controller, "fetcher", job), 60,
                   "the job's stage-in", controller)
        motos[0].process.kill()  # ...then is gone, mid-download
        motos[0].process.wait(10)
        stopped = time.monotonic()
        jobs = controller.wait_jobs("fetcher", 1, timeout=120)
        elapsed = time.monotonic() - stopped
        assert jobs[job]["status"] == "Failed"
        # Reset, then refused: 3 attempts with backoff, far below the 20 s read timeout.
        assert elapsed < 60, elapsed
        logs = job_logs(controller, "fetcher", job)
        assert "s3.default: cannot download faults/in/obj.bin" in logs, logs
        assert "Traceback" not in logs

        # The store is back, on the same port (empty: moto keeps objects in memory).
        motos.append(moto_on(port, tmp_path / "moto-again.log"))
        server.client().create_bucket(Bucket="faults")
        server.client().put_object(Bucket="faults", Key="in/obj.bin", Body=b"y" * 1234)
        again = submit(controller, "fetcher", s3_event("faults", "in/obj.bin"))
        assert again.status_code == 201, again.text
        jobs = controller.wait_jobs("fetcher", 2, timeout=120)
        second = again.json()["job"]
        assert jobs[second]["status"] == "Succeeded", job_logs(controller, "fetcher", second)
        assert "got 1234 bytes" in job_logs(controller, "fetcher", second)
    finally:
        for moto in motos:
            if moto.process.poll() is None:
                moto.process.send_signal(signal.SIGCONT)
            moto.stop()


def service_watchdogs(controller: ControllerProcess, service: str) -> list[int]:
    """The pids the local backend recorded under the data folder's pids/ that are this
    service's watchdog (its command line names the service's folder)."""
    found = []
    folder = str(controller.data_dir / "services" / service).encode()
    for path in (controller.data_dir / "pids").glob("*.pid"):
        pid = int(path.stem)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"\0watchdog\0" in cmdline and folder in cmdline:
            found.append(pid)
    return found


@pytest.mark.reliability(
    fault="killed watchdog restarted",
    promise="a SIGKILLed service watchdog is restarted and later calls succeed",
)
def test_a_killed_service_watchdog_is_restarted_and_later_calls_succeed(
    controllers: ControllerFactory,
) -> None:
    controller = controllers()
    controller.create({"name": "echo", "script": 'echo "hello $(cat "$INPUT_FILE_PATH")"\n'})

    def run() -> requests.Response:
        return controller.request("POST", "/run/echo", data=b"world",
                                  headers={"Content-Type": "application/octet-stream"})

    first = wait_until(lambda: (r := run()).status_code == 200 and r, 60, "a first /run",
                       controller)
    assert "hello world" in first.text
    (pid,) = service_watchdogs(controller, "echo")
    os.kill(pid, signal.SIGKILL)
    # A call soon after may find it gone (502/503); a later one succeeds, on a new process.
    later = wait_until(lambda: (r := run()).status_code == 200 and r, 60,
                       "a /run after the watchdog was killed", controller)
    assert "hello world" in later.text
    (new_pid,) = service_watchdogs(controller, "echo")
    assert new_pid != pid
    assert "service watchdog exited; restarting" in controller.log_text()


@pytest.mark.reliability(
    fault="disk full",
    promise=(
        "SQLite on a full disk: new rows 507, deletions still work (the reserve), "
        "integrity_check ok"
    ),
)
@pytest.mark.parametrize("tiny_disk", ["size=4m"], indirect=True)
def test_the_store_on_a_full_disk_refuses_new_rows_and_still_deletes(tiny_disk: TinyDisk) -> None:
    """The worst case for a deletion: the journal holds no room of its own (truncated),
    so only the reserve lets SQLite write it. The file stays intact throughout."""
    from faas_supervisor.controller.store import RESERVE, Store
    from faas_supervisor.errors import InsufficientStorage

    store = Store(tiny_disk.path / "controller.sqlite3")
    try:
        for n in range(3):
            store.add_job(f"job-{n}", "svc")
            store.finish_job(f"job-{n}", 0, b"x" * 300_000)
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        assert store.reserve.stat().st_size == RESERVE
        filler = tiny_disk.fill()
        with pytest.raises(InsufficientStorage, match=r"^no space left on device writing the job"):
            store.add_job("job-new", "svc")
        store.remove_job("job-0")  # with the reserve's room
        assert [job.name for job in store.jobs()] == ["job-1", "job-2"]
        store.remove_job("job-1")
        store.remove_job("job-2")
        assert store.jobs() == []
        assert store.db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        # The logs' pages went back to the file system: new rows fit, the filler still there.
        store.add_job("job-new", "svc")
        assert filler.exists() and store.job("job-new") is not None
    finally:
        store.close()


def test_files_with_no_job_are_removed_at_start(controllers: ControllerFactory) -> None:
    """A controller stopped between writing a job's event and storing its row leaves an
    event file no job owns: the next start gives its space back."""
    controller = controllers()
    controller.create({"name": "echo", "script": "echo hi\n"})
    assert submit(controller, "echo", b"{}").status_code == 201
    controller.wait_jobs("echo", 1)
    assert controller.stop() == 0
    jobs = controller.data_dir / "jobs"
    stray = jobs / f"echo-{uuid.uuid4()}.event"
    stray.write_bytes(b"{}")
    (jobs / f"{stray.stem}.log").write_bytes(b"half a log\n")
    again = controllers(data_dir=controller.data_dir)
    assert job_files(again) == {".event": set(), ".log": set()}
    assert len(again.jobs("echo")) == 1  # the real job is kept


@pytest.mark.reliability(
    fault="disk full",
    promise="an S3 download that fills TMPDIR fails naming the object",
)
def test_an_s3_download_that_fills_tmpdir_fails_naming_the_object(
    tmp_path: Path, tiny_disk: TinyDisk, moto_server: S3Server
) -> None:
    """s3transfer's own writes (a temporary name, renamed when whole) hit the full disk."""
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    moto_server.client().create_bucket(Bucket=bucket)
    moto_server.client().put_object(Bucket=bucket, Key="in/big.bin", Body=os.urandom(MiB))
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "storage_providers": {"s3": {"default": {
            "endpoint": moto_server.endpoint, "region": moto_server.region,
            "access_key": moto_server.access_key, "secret_key": moto_server.secret_key}}},
        "input": [{"storage_provider": "s3.default", "path": f"{bucket}/in"}],
    }))
    event = tmp_path / "event.json"
    event.write_bytes(s3_event(bucket, "in/big.bin"))
    result = run(tmp_path, tiny_disk.path, "--config", str(config), "--event-file", str(event))
    assert result.returncode == 4, result.stderr
    assert (b"faas-supervisor: error: no space left on device writing the download of "
            + f"{bucket}/in/big.bin (s3.default)".encode()) in result.stderr
    assert list(tiny_disk.path.iterdir()) == []
