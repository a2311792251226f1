"""`--job-retention`: finished jobs older than it are forgotten, on every backend."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.jobs import Jobs
from faas_supervisor.controller.store import Store

pytestmark = pytest.mark.timeout(30)


class Idle:
    """A backend that runs nothing: the jobs here are made and ended by hand."""

    name = "idle"

    async def run_job(self, service: Service, job: str, event: Path, log: Path) -> int:
        raise AssertionError("not run here")


def test_only_finished_jobs_older_than_the_retention_go(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.sqlite3")
    try:
        for name in ("old-ok", "old-failed", "running", "pending", "recent"):
            store.add_job(name, "svc")
        for name, code in (("old-ok", 0), ("old-failed", 1), ("running", None)):
            store.start_job(name)
            if code is not None:
                store.finish_job(name, code, b"logs")
        cut = time.time() + 0.0005
        while time.time() <= cut + 0.0005:  # "recent" ends clearly after the cut
            pass
        store.start_job("recent")
        store.finish_job("recent", 0, b"")
        assert store.prune_jobs(cut) == 2
        assert {j.name for j in store.jobs()} == {"running", "pending", "recent"}
        assert store.prune_jobs(cut) == 0
    finally:
        store.close()


async def test_the_jobs_prune_on_their_own(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.sqlite3")
    jobs = Jobs(store, Idle(), tmp_path / "jobs", 1, lambda name: None,  # type: ignore[arg-type]
                retention=0.2)
    try:
        store.add_job("done", "svc")
        store.start_job("done")
        store.finish_job("done", 0, b"")
        await jobs.start()
        store.add_job("waiting", "svc")  # stored, not queued: Pending all along
        # The pruner has no event to await: polled, within the test's timeout.
        while store.job("done") is not None:
            await asyncio.sleep(0.05)
        assert store.job("waiting") is not None
    finally:
        await jobs.close()
        store.close()
