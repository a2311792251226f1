"""A job that ran to its end is not run again because the store could not record that end.

A store that cannot write (a disk full even for its reserve, an I/O error: a fake store
here) used to leave such a job Running, and the next start put it back to Pending and
ran its script a second time (an upload made twice). Its end is now kept beside its log
and recorded later: at the next start, or while the controller runs, once the store can.
The real store and jobs; the backend is a fake that counts the runs.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from faas_supervisor.controller.fdl import Service, parse_service
from faas_supervisor.controller.jobs import Jobs
from faas_supervisor.controller.store import FINISHED, Job, Store

pytestmark = pytest.mark.timeout(30)

SERVICE = parse_service({"name": "svc", "script": "true"})


class Counting:
    """A backend whose jobs write a line of log and exit 0, each run listed."""

    name = "counting"

    def __init__(self) -> None:
        self.runs: list[str] = []

    async def run_job(self, service: Service, job: str, event: Path, log: Path) -> int:
        self.runs.append(job)
        with open(log, "ab") as out:
            out.write(b"uploaded\n")
        return 0


class Failing(Store):
    """A store that cannot record a job's end, its first `failures` tries; `refused` is
    set once they are used up."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.refused = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def finish_job(self, name: str, exit_code: int | None, logs: bytes | Path,
                   reason: str = "", *, failed: bool = False) -> None:
        if self.failures > 0:
            self.failures -= 1
            if self.failures == 0:  # called in a worker thread
                self._loop.call_soon_threadsafe(self.refused.set)
            raise sqlite3.OperationalError("disk I/O error")
        super().finish_job(name, exit_code, logs, reason, failed=failed)


def jobs_of(store: Store, backend: Counting, folder: Path, retention: float = 3600.0) -> Jobs:
    return Jobs(store, backend, folder, 1, lambda name: SERVICE,  # type: ignore[arg-type]
                retention=retention)


def stored_log(store: Store, job: str) -> bytes:
    return store.job_logs_chunk(job, 0, 1 << 20)


async def ended(store: Store, job: str) -> Job:
    # The store tells no one when a row changes: polled, with a deadline.
    deadline = time.monotonic() + 10
    while (found := store.job(job)) is None or found.status not in FINISHED:
        assert time.monotonic() < deadline, f"{job} never ended: {found}"
        await asyncio.sleep(0.01)
    return found


async def test_a_job_whose_end_cannot_be_stored_is_not_run_again_at_the_next_start(
    tmp_path: Path,
) -> None:
    folder, backend = tmp_path / "jobs", Counting()
    store = Failing(tmp_path / "store.sqlite3", failures=2)  # the log, then the end alone
    jobs = jobs_of(store, backend, folder)
    await jobs.start()
    try:
        job, _ = await jobs.submit(SERVICE, b"{}")
        await store.refused.wait()
    finally:
        await jobs.close()  # waits for the worker's recording to give up
        store.close()
    assert backend.runs == [job]

    # The next start, with a store that writes again: the end is recorded, not run again.
    writing, backend = Store(tmp_path / "store.sqlite3"), Counting()
    jobs = jobs_of(writing, backend, folder)
    await jobs.start()
    try:
        found = writing.job(job)
        assert found is not None
        assert (found.status, found.exit_code) == ("Succeeded", 0)
        assert stored_log(writing, job) == b"uploaded\n"  # one run, and no note of a second
        # A job submitted now runs after any job that start queued: run alone, it ran next.
        later, _ = await jobs.submit(SERVICE, b"{}")
        assert (await ended(writing, later)).status == "Succeeded"
        assert backend.runs == [later]
        assert not list(folder.iterdir())  # both jobs' files gone
    finally:
        await jobs.close()
        writing.close()


async def test_an_end_kept_half_written_is_recorded_failed_not_run_again(
    tmp_path: Path,
) -> None:
    """A controller that stopped after its job's event became its end file, before the
    outcome was written in it: the exit status is lost, the job Failed."""
    folder, backend = tmp_path / "jobs", Counting()
    store = Store(tmp_path / "store.sqlite3")
    store.add_job("svc-1", "svc")
    store.start_job("svc-1")
    folder.mkdir()
    (folder / "svc-1.end").write_bytes(b'{"Records": []}')  # the event, renamed
    (folder / "svc-1.log").write_bytes(b"uploaded\n")
    jobs = jobs_of(store, backend, folder)
    await jobs.start()
    try:
        later, _ = await jobs.submit(SERVICE, b"{}")
        assert (await ended(store, later)).status == "Succeeded"
        found = store.job("svc-1")
        assert found is not None
        assert (found.status, found.exit_code) == ("Failed", None)
        assert "exit status" in found.reason  # says it is not known
        assert stored_log(store, "svc-1") == b"uploaded\n"
        assert backend.runs == [later]
    finally:
        await jobs.close()
        store.close()


async def test_an_end_not_stored_is_recorded_once_the_store_writes_again(
    tmp_path: Path,
) -> None:
    """The controller running on: tried again with the pruning (every 0.05 s here)."""
    backend = Counting()
    store = Failing(tmp_path / "store.sqlite3", failures=2)
    jobs = jobs_of(store, backend, tmp_path / "jobs", retention=0.2)
    await jobs.start()
    try:
        job, _ = await jobs.submit(SERVICE, b"{}")
        found = await ended(store, job)
        assert (found.status, found.exit_code) == ("Succeeded", 0)
        assert stored_log(store, job) == b"uploaded\n"
        assert backend.runs == [job]
    finally:
        await jobs.close()
        store.close()


class Busy(Store):
    """A store locked by another process for its first `failures` job starts."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    def start_job(self, name: str) -> bool:
        if self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        return super().start_job(name)


async def test_a_job_the_store_cannot_start_waits_longer_each_time_then_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each failed start held the event loop for SQLite's busy wait: retried at a fixed
    second, or by a worker taking the next queued job at once, a locked store froze the
    controller. The worker also died of the first failure before, the job left Pending."""
    from faas_supervisor.controller import jobs as module

    monkeypatch.setattr(module, "STORE_RETRY", (0.01, 0.04))
    sleeps = RecordedSleeps()
    monkeypatch.setattr(module, "asyncio", sleeps)
    store, backend = Busy(tmp_path / "store.sqlite3", failures=4), Counting()
    jobs = jobs_of(store, backend, tmp_path / "jobs")
    await jobs.start()
    try:
        job, _ = await jobs.submit(SERVICE, b"{}")
        assert (await ended(store, job)).status == "Succeeded"
        assert backend.runs == [job]
        assert sleeps.delays == [0.01, 0.02, 0.04, 0.04]
        assert jobs._store_retry == 0.01  # back to the first once a job started
    finally:
        await jobs.close()
        store.close()


class BusyEnd(Store):
    """A store locked by another process for the first `failures` records of an end."""

    def __init__(self, path: Path, failures: int = 1) -> None:
        super().__init__(path)
        self.failures = failures

    def finish_job(self, name: str, exit_code: int | None, logs: bytes | Path,
                   reason: str = "", *, failed: bool = False) -> None:
        if self.failures > 0:
            self.failures -= 1
            busy = sqlite3.OperationalError("database is locked")
            busy.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
            raise busy
        super().finish_job(name, exit_code, logs, reason, failed=failed)


class RecordedSleeps:
    """The jobs module's asyncio, its short sleeps recorded (its workers' and pruner's
    waits, the bounds scaled down below a second)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __getattr__(self, name: str) -> object:
        return getattr(asyncio, name)

    async def sleep(self, delay: float) -> None:
        if delay < 1:
            self.delays.append(delay)
        await asyncio.sleep(delay)


async def test_an_end_the_locked_store_refused_is_recorded_soon_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock was taken for a full disk: the end stored at once Failed, its log dropped
    for a note, when the lock was gone by the second try; kept aside when it was not,
    then recorded only at the next pruning (hourly). Tries that fail wait longer each
    time (each held the store's lock for SQLite's wait), back to the first after."""
    from faas_supervisor.controller import jobs as module

    monkeypatch.setattr(module, "ENDS_RETRY", (0.01, 0.04))
    sleeps = RecordedSleeps()
    monkeypatch.setattr(module, "asyncio", sleeps)
    store, backend = BusyEnd(tmp_path / "store.sqlite3", failures=4), Counting()
    jobs = jobs_of(store, backend, tmp_path / "jobs")  # a retention of an hour
    await jobs.start()
    try:
        job, _ = await jobs.submit(SERVICE, b"{}")
        found = await ended(store, job)
        assert (found.status, found.exit_code) == ("Succeeded", 0)
        assert stored_log(store, job) == b"uploaded\n"
        assert backend.runs == [job]
        # The worker's try kept it aside; the pruner's three failed, the fourth recorded.
        first = sleeps.delays.index(0.02)
        assert sleeps.delays[first:first + 3] == [0.02, 0.04, 0.04]
        while len(sleeps.delays) < first + 4:
            await asyncio.sleep(0.01)
        assert sleeps.delays[first + 3] == 0.01
    finally:
        await jobs.close()
        store.close()
