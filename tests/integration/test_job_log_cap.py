"""A running job's log on the local backend stays bounded (the store's 64 MiB cap, its end
kept), and what a reader gets of it still ends with what the script printed last.

A real controller on loopback; jobs whose scripts print far past twice the cap. Before:
the running job's `<data-dir>/jobs/NAME.log` grew with all the job printed (a job that
printed for ever filled the data folder's disk, then every service answered 507); only
the copy stored at the job's end was cut.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faas_supervisor.controller.store import CUT_NOTE_MAX, LOG_MAX
from tests.integration.controller_fixture import ControllerProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LINE = b"a line of a job that prints a lot\n"
PRINTED = len(LINE) * 9_000_000  # bytes a script prints: over twice the cap (134 MB)
LAST = b"the script's last line\n"
# The bound on disk: twice the cap, plus what one write adds past it (the copier's reads
# are 64 KiB) and a line or two of the runtime's.
BOUND = 2 * LOG_MAX + (1 << 20)
NOTE = re.compile(rb"faas-supervisor: the log had (\d+) bytes; its first (\d+) are not kept, "
                  rb"only its last (\d+)\n")


def printer(name: str, then: str) -> dict[str, object]:
    return {
        "name": name,
        "image": "busybox",
        "script": f"yes '{LINE.decode().strip()}' | head -c {PRINTED}\n"
                  f"printf \"%s\\n\" \"{LAST.decode().strip()}\"\n{then}\n",
        "input": [{"storage_provider": "minio", "path": f"{name}/input"}],
        "output": [{"storage_provider": "minio", "path": f"{name}/output"}],
    }


def tail(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            return f.read()
    except FileNotFoundError:  # between its start and the runner's open, or being replaced
        return b""


def test_a_running_jobs_log_stays_bounded_and_ends_with_its_last_line(
    controller: ControllerProcess,
) -> None:
    controller.create(printer("forever", "exec sleep 600"))  # runs until deleted
    job = controller.request("POST", "/job/forever", data=b'{"a": 1}').json()["job"]
    log = controller.data_dir / "jobs" / f"{job}.log"
    # Its size looked at as it grows (no event tells it): never past the bound.
    largest = 0
    deadline = time.monotonic() + 120
    while not tail(log, len(LAST)).endswith(LAST):
        assert time.monotonic() < deadline, f"no last line in {log}:\n{controller.log_text()}"
        with contextlib.suppress(FileNotFoundError):  # not opened yet
            largest = max(largest, log.stat().st_size)
        assert largest <= BOUND, f"the running job's log holds {largest} bytes"
        time.sleep(0.02)
    assert log.stat().st_size <= BOUND
    assert controller.jobs("forever")[job]["status"] == "Running"
    # The live read: the log's end, after the line saying what was cut.
    live = controller.request("GET", f"/system/logs/forever/{job}")
    assert live.status_code == 200
    assert live.content.endswith(LAST), live.content[-200:]
    assert len(live.content) <= BOUND
    note = NOTE.match(live.content)
    assert note is not None, live.content[:200]
    had, cut, kept = (int(n) for n in note.groups())
    assert had == cut + kept and had > 2 * LOG_MAX and kept == LOG_MAX - CUT_NOTE_MAX
    # What is kept is the end of what was printed, whole: lines of it, then the last one.
    body = live.content[note.end():]
    body = body[body.index(b"\n") + 1:]  # from the first whole line
    assert body == LINE * ((len(body) - len(LAST)) // len(LINE)) + LAST
    assert [p.name for p in log.parent.iterdir() if ".cut." in p.name] == []
    assert controller.request("DELETE", f"/system/logs/forever/{job}").status_code == 204
    wait_until(lambda: not log.exists(), 30, "the deleted job's log to go", controller)


def test_a_finished_jobs_stored_log_counts_all_it_printed(
    controller: ControllerProcess,
) -> None:
    controller.create(printer("once", "exit 0"))
    job = controller.request("POST", "/job/once", data=b'{"a": 1}').json()["job"]
    jobs = controller.wait_jobs("once", 1, timeout=120)
    assert jobs[job]["status"] == "Succeeded", jobs
    stored = controller.request("GET", f"/system/logs/once/{job}")
    assert stored.status_code == 200
    content = stored.content
    assert LINE + LAST in content[-200:], content[-200:]  # then `run`'s last line
    # The store's promise (README): of a log over 64 MiB, its end (64 MiB less 200 bytes)
    # after a line counting what the job wrote in all, not what was on disk at its end.
    note = NOTE.match(content)
    assert note is not None, content[:200]
    had, cut, kept = (int(n) for n in note.groups())
    assert had > PRINTED and had == cut + kept and kept == LOG_MAX - CUT_NOTE_MAX
    assert len(content) == note.end() + kept
    assert list((controller.data_dir / "jobs").glob(f"{job}*")) == []



# ---- the cut itself, with a small cap: a real process whose fds 1 and 2 are the log (opened
# as the controller opens it for a job), as a job's `run` has them, told what to print
# through its stdin; it answers on a pipe of its own when it has printed it.

CAP, KEEP = 4000, 3800
CHILD = f"""
import os, sys
from faas_supervisor.job_runner import _CappedLog
log = _CappedLog.install({{"path": sys.argv[1], "cap": {CAP}, "keep": {KEEP}}})
for command in sys.stdin:
    first, last = map(int, command.split())
    for i in range(first, last):  # both streams, as `run` writes both
        print(f"line {{i}}", file=sys.stderr if i % 2 else sys.stdout, flush=True)
    os.write(int(sys.argv[2]), b"printed")
log.finish()
"""


class Child:
    def __init__(self, log: Path) -> None:
        self.printed, answer = os.pipe()
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(log), str(answer)], stdin=subprocess.PIPE,
                stdout=out, stderr=subprocess.STDOUT, pass_fds=(answer,),
            )
        os.close(answer)

    def print(self, first: int, last: int) -> None:
        """Lines `first` to `last` printed (and the child waiting for more)."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{first} {last}\n".encode())
        self.process.stdin.flush()
        assert os.read(self.printed, 16) == b"printed"

    def end(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(30) == 0
        os.close(self.printed)


def lines(first: int, last: int) -> bytes:
    return b"".join(b"line %d\n" % i for i in range(first, last))


def cut(content: bytes) -> tuple[int, int, bytes]:
    """The note's numbers (bytes the log had, bytes cut), and the whole lines after it."""
    note = NOTE.match(content)
    assert note is not None, content[:200]
    had, cut_bytes, kept = (int(n) for n in note.groups())
    assert kept == KEEP and had == cut_bytes + kept
    after = content[note.end():]
    return had, cut_bytes, after[after.index(b"\n") + 1:]


def test_a_cut_log_keeps_its_end_and_counts_all_it_had(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"an earlier run's line\n")
    child = Child(log)
    for first in range(0, 3000, 500):
        child.print(first, first + 500)
        assert log.stat().st_size <= 2 * CAP + 20
    child.end()
    content = log.read_bytes()
    had, cut_bytes, rest = cut(content)
    written = b"an earlier run's line\n" + lines(0, 3000)
    assert (had, cut_bytes) == (len(written), len(written) - KEEP)
    assert written.endswith(content[-KEEP:]) and rest.endswith(b"line 2999\n")
    assert len(content) <= CAP and list(tmp_path.iterdir()) == [log]


def test_a_reader_that_opened_the_log_before_a_cut_reads_it_whole(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    child = Child(log)
    child.print(0, 300)  # under twice the cap: not cut yet
    with open(log, "rb") as reader:
        child.print(300, 3000)  # cut, more than once
        old = reader.read()
    assert old.startswith(lines(0, 300)) and lines(0, 3000).startswith(old)
    _had, _cut, rest = cut(log.read_bytes())  # the log's name: the new file
    assert rest and lines(0, 3000).endswith(rest)
    child.end()


def test_a_deleted_log_is_not_made_again_and_stays_bounded(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    child = Child(log)
    child.print(0, 100)
    log.unlink()  # its job deleted, while its `run` stops
    child.print(100, 3000)
    assert os.stat(f"/proc/{child.process.pid}/fd/1").st_size <= 2 * CAP + 20
    child.end()
    assert list(tmp_path.iterdir()) == []

