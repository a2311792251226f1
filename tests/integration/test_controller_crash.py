"""The controller killed outright, whole (a host crash, a cgroup's OOM kill), and a second
controller on the same data folder: real controller processes on loopback.

A restart finds nothing of the dead controller's running and nothing of its invocations
in the services' TMPDIRs; a controller never takes another's live processes (whose data
folder only starts like its own, or shares it) for leftovers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import faas_command, free_port
from tests.integration.controller_fixture import (
    PASSWORD,
    USER,
    ControllerFactory,
    ControllerProcess,
    wait_until,
)
from tests.leftovers import Proc, descendants, processes, running_with

pytestmark = pytest.mark.integration

# Leaves in its folders what a removal must neither follow nor be stopped by: a link out
# (to $OUTSIDE), and a folder it took its own rights from.
LEAVER = """echo $$ >> "$MARKS/pids"
mkdir "$TMP_OUTPUT_DIR/kept" && touch "$TMP_OUTPUT_DIR/kept/f" && chmod 500 "$TMP_OUTPUT_DIR/kept"
ln -s "$OUTSIDE" "$TMP_OUTPUT_DIR/out"
ln -s "$OUTSIDE" "$TMPDIR/out-$$"
sleep 300
"""


def held(tmp: Path, pattern: str) -> set[str]:
    """The names matching `pattern` in a service's TMPDIR and in its jobs' own in it
    (`job-NAME`, itself left out: a job run again gets one of the same name)."""
    return {p.name for p in (*tmp.glob(pattern), *tmp.glob(f"job-*/{pattern}"))
            if not (p.parent == tmp and p.name.startswith("job-"))}


def kill_tree(root: int) -> None:
    """SIGKILL `root` and every process under it, as a host crash would: each is stopped
    first (SIGSTOP) until no new one appears, so that none forks, reaps or cleans up."""
    stopped: set[int] = set()
    while found := ({root} | descendants(root, processes())) - stopped:
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        stopped |= found
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def watchdog_of(controller: ControllerProcess, service: str) -> Proc:
    script = f"{controller.data_dir / 'services' / service / '.definition-'}".encode()
    return wait_until(
        lambda: next((p for p in processes().values()
                      if script in p.cmdline and b"watchdog" in p.cmdline and p.state != "Z"),
                     None),
        30, f"the watchdog of {service}", controller,
    )


def open_files(pid: int) -> list[str]:
    """What the process's descriptors name; one it closes while they are read is left
    out (a watchdog opens and closes files of its own as it runs)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            found.append(os.path.realpath(f"/proc/{pid}/fd/{fd}", strict=True))
    return found


def alive(proc: Proc) -> bool:
    now = processes().get(proc.pid)
    return now is not None and now.start == proc.start and now.state != "Z"


@pytest.mark.timeout(300)
def test_a_restart_after_a_crash_removes_what_its_invocations_left(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    marks, outside = tmp_path / "marks", tmp_path / "outside"
    marks.mkdir()
    outside.mkdir()
    (outside / "precious").write_text("mine")
    first = controllers(env={"MARKS": str(marks), "OUTSIDE": str(outside)})
    leaver = first.create({
        "name": "leaver", "script": LEAVER,
        "input": [{"storage_provider": "minio", "path": "leaver/input"}],
        "output": [{"storage_provider": "minio", "path": "leaver/output"}],
    })
    auth = {"Authorization": f"Bearer {leaver['token']}"}
    job = requests.post(f"{first.url}/job/leaver", data=b"e30=", headers=auth, timeout=30)
    assert job.status_code == 201, job.text
    tmp = first.data_dir / "services" / "leaver" / "tmp"
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(requests.post, f"{first.url}/run/leaver", data=b"aGk=",
                                headers=auth, timeout=120)
        wait_until(lambda: (marks / "pids").exists()
                   and len((marks / "pids").read_text().split()) == 2,
                   30, "the job's and the invocation's scripts to run", first)
        # Their last steps (the links) done too: each script is in its sleep.
        wait_until(lambda: len(held(tmp, "out-*")) == 2, 30, "the scripts' links", first)
        left = held(tmp, "*")
        kill_tree(first.process.pid)
        first.process.wait(30)
        with pytest.raises(requests.ConnectionError):
            in_flight.result(timeout=60)
    assert running_with(str(first.data_dir)) == []
    assert sum(name.endswith("-input") for name in left) == 2  # the job's, the request's
    assert sum(name.startswith("faas-runtime-") for name in left) == 2  # watchdog, runner

    folder = first.data_dir / "services" / "leaver"
    links = {p.name for p in folder.glob(".definition-*")}
    assert len(links) == 4  # the runner's and the watchdog's script and config
    second = controllers(data_dir=first.data_dir)
    now = held(tmp, "*")  # the watchdog's and the job run again: new ones
    assert left & now == set(), second.log_text()
    # The dead controller's links are gone: the new runner's and watchdog's alone.
    now_links = {p.name for p in folder.glob(".definition-*")}
    assert len(now_links) == 4 and not links & now_links, now_links
    assert [p.name for p in outside.iterdir()] == ["precious"]  # never followed
    assert (outside / "precious").read_text() == "mine"
    # The job the crash cut runs again, in a TMPDIR of its own.
    second.wait_jobs("leaver", 1, done=("Running",))
    assert second.stop() == 0


@pytest.mark.timeout(180)
def test_a_controller_leaves_alone_those_of_a_data_dir_that_starts_like_its_own(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    """A pid file the crashed controller of `data` left names a pid now reused by a
    watchdog of the controller on `data2`: its command line holds `.../data` too."""
    other = controllers(data_dir=tmp_path / "data2")
    other.create({"name": "svc", "script": "echo hi\n"})
    watchdog = watchdog_of(other, "svc")
    pids = tmp_path / "data" / "pids"
    pids.mkdir(parents=True)
    (pids / f"{watchdog.pid}.pid").write_text(str(watchdog.pid))

    controllers(data_dir=tmp_path / "data")  # its start stops what that file names
    assert alive(watchdog), other.log_text()
    assert "service watchdog exited" not in other.log_text()


@pytest.mark.timeout(180)
def test_a_second_controller_on_the_data_dir_is_refused(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    first = controllers(env={"MARKS": str(marks)})
    sleeper = first.create({"name": "sleeper", "script": 'echo $$ >> "$MARKS/pids"\nsleep 300\n'})
    job = requests.post(f"{first.url}/job/sleeper", data=b"e30=",
                        headers={"Authorization": f"Bearer {sleeper['token']}"}, timeout=30)
    assert job.status_code == 201, job.text
    first.wait_jobs("sleeper", 1, done=("Running",))
    script = wait_until(lambda: (marks / "pids").exists() and (marks / "pids").read_text(),
                        30, "the job's script to run", first)
    script_pid = int(script.split()[0])

    env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_")}
    env["TMPDIR"] = str(tmp_path)
    second = subprocess.run(
        [*faas_command(), "controller", "--host", "127.0.0.1", "--port", str(free_port()),
         "--data-dir", str(first.data_dir), "--user", USER, "--password", PASSWORD,
         "--s3-port", str(free_port())],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
    )
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines() == [
        f"faas-supervisor: error: another controller is using --data-dir "
        f"{first.data_dir.resolve()} (pid {first.process.pid})"
    ]
    # The first one's job runs on, untouched.
    assert [j["status"] for j in first.jobs("sleeper").values()] == ["Running"]
    os.kill(script_pid, 0)
    assert processes()[script_pid].state != "Z"
    assert first.request("GET", "/health").status_code == 200
    assert first.stop() == 0


@pytest.mark.timeout(180)
def test_a_controller_killed_alone_restarts_while_its_watchdogs_run_on(
    controllers: ControllerFactory,
) -> None:
    """The lock goes with the controller: no process it started holds it after it."""
    first = controllers()
    first.create({"name": "svc", "script": "echo hi\n"})
    watchdog = watchdog_of(first, "svc")
    first.stop(signal.SIGKILL)
    assert alive(watchdog)  # orphaned, still running
    lock = str(first.data_dir / "controller.lock")
    assert lock not in open_files(watchdog.pid)

    second = controllers(data_dir=first.data_dir)  # not refused
    assert not alive(watchdog)  # stopped as the dead controller's leftover
    assert second.stop() == 0


@pytest.mark.timeout(60)
def test_a_data_dir_from_the_environment_is_named_so_in_its_error(tmp_path: Path) -> None:
    """FAAS_DATA_DIR, not a --data-dir that was never given."""
    a_file = tmp_path / "file"
    a_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_")}
    env.update(TMPDIR=str(tmp_path), FAAS_DATA_DIR=str(a_file))
    refused = subprocess.run(
        [*faas_command(), "controller", "--host", "127.0.0.1", "--port", "0", "--s3-port", "0"],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
    )
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"faas-supervisor: error: FAAS_DATA_DIR {a_file}: not a folder"
    ]
