"""The controller's state database locked by another process (a backup tool, an
operator's `sqlite3` shell) while the controller runs: a real controller on loopback,
the lock held through Python's sqlite3 as such a process would hold it.

Writes wait SQLite's busy timeout, then fail. A request that needed one is answered with
a 503 that says why (not a 500 and a traceback); a job the store could not start stays
Pending and starts once the lock is gone; the job workers live on.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import requests

from tests.integration.controller_fixture import ControllerFactory, wait_until

pytestmark = pytest.mark.integration

# The first job waits on a FIFO until the test opens it: the one worker is busy meanwhile.
GATED = """if mkdir "$MARKS/first" 2>/dev/null; then cat "$GATE" > /dev/null; fi
echo done
"""


@pytest.mark.timeout(180)
def test_a_locked_store_is_a_503_and_delays_jobs_without_losing_them(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    os.mkfifo(gate)
    controller = controllers(args=["--max-jobs", "1"],
                             env={"MARKS": str(marks), "GATE": str(gate)})
    token = controller.create({"name": "gated", "script": GATED})["token"]
    auth = {"Authorization": f"Bearer {token}"}

    def submit() -> None:
        job = requests.post(f"{controller.url}/job/gated", data=b"e30=", headers=auth,
                            timeout=30)
        assert job.status_code == 201, job.text

    submit()
    wait_until(lambda: (marks / "first").exists(), 30, "the first job to start", controller)
    submit()  # queued behind it: the one worker is busy

    moved = {"name": "moved", "script": "echo hi\n",
             "input": [{"storage_provider": "minio", "path": "moved/a"}]}
    controller.create(moved)

    holder = sqlite3.connect(controller.data_dir / "controller.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as another process takes it
    try:
        # An input path: its baseline is recorded while the service is made (a 502 naming
        # the storage server before), and its bucket must not be left behind.
        refused = controller.request("POST", "/system/services", json={
            "name": "other", "script": "echo hi\n",
            "input": [{"storage_provider": "minio", "path": "other/in"}]})
        assert refused.status_code == 503, refused.text
        assert refused.text == ("the controller's state database is busy (locked by another "
                                "process); try again later"), refused.text
        # Its new input path's baseline is recorded as it is attached: a 502 naming the
        # storage server before.
        update = controller.request("PUT", "/system/services", json={
            **moved, "input": [{"storage_provider": "minio", "path": "moved/b"}]})
        assert update.status_code == 503, update.text
        with open(gate, "wb") as release:  # the first job ends: the worker takes the second
            release.write(b"go\n")
        wait_until(lambda: "job not started: the store is busy" in controller.log_text(),
                   60, "the second job's start to fail", controller)
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    submit()  # a worker is there to run it
    # All three: the first ended while the store was locked; its end, kept aside with its
    # log, is recorded soon after (it showed Running for an hour before).
    jobs = controller.wait_jobs("gated", 3, done=("Succeeded",))
    for name in jobs:  # each with its log
        log = controller.request("GET", f"/system/logs/gated/{name}")
        assert "done" in log.text.splitlines(), log.text
    assert controller.request("GET", "/system/services/other").status_code == 404
    assert not (controller.storage / "other").exists()
