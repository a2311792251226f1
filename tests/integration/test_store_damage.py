"""A state database damaged or emptied between two runs of the controller: real
controller processes on loopback, the file changed while none runs.

The start must find it out before it starts anything (a service's watchdog, a job):
one line naming the file and what is wrong, exit 2, nothing left running, the file and
the data folder as they were.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import faas_command, free_port
from tests.integration.controller_fixture import PASSWORD, USER, ControllerFactory
from tests.leftovers import processes

pytestmark = pytest.mark.integration


def _prepared(controllers: ControllerFactory) -> Path:
    """A data folder with two services and a few finished jobs, its controller stopped."""
    first = controllers()
    for name in ("one", "two"):
        made = first.create({"name": name, "script": "echo hi\n"})
        for _ in range(3):
            job = requests.post(f"{first.url}/job/{name}", data=b"e30=",
                                headers={"Authorization": f"Bearer {made['token']}"}, timeout=30)
            assert job.status_code == 201, job.text
        first.wait_jobs(name, 3)
    assert first.stop() == 0, first.log_text()
    return first.data_dir


def _start(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*faas_command(), "controller", "--host", "127.0.0.1", "--port", str(free_port()),
         "--s3-port", str(free_port()), "--data-dir", str(data), "--user", USER,
         "--password", PASSWORD],
        capture_output=True, text=True, timeout=60, check=False,
    )


def _running_for(data: Path) -> list[int]:
    marker = str(data).encode()
    return [p.pid for p in processes().values() if marker in p.cmdline and p.state != "Z"]


@pytest.mark.timeout(180)
def test_a_damaged_page_of_the_jobs_table_stops_the_start_before_anything_runs(
    controllers: ControllerFactory,
) -> None:
    data = _prepared(controllers)
    database = data / "controller.sqlite3"
    with sqlite3.connect(database) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]
    db.close()
    with open(database, "r+b") as file:
        file.seek((root - 1) * page_size + 8)
        file.write(b"\xa5" * (page_size - 8))
    before = database.read_bytes()

    started = _start(data)
    assert started.returncode == 2, started.stdout + started.stderr
    assert started.stderr.startswith(
        f"faas-supervisor: error: --data-dir {data}: controller.sqlite3: damaged: "
    ), started.stderr
    assert started.stderr.count("\n") == 1 and started.stdout == "", started.stderr
    assert _running_for(data) == []
    assert database.read_bytes() == before


@pytest.mark.timeout(180)
def test_a_job_row_the_store_cannot_read_stops_the_start_and_what_it_started(
    controllers: ControllerFactory,
) -> None:
    """Damage no page check sees (a row's value), read once the services are deployed
    again, their watchdogs running (here: the row of a job whose log file is there). Those
    were left running before, with a traceback."""
    data = _prepared(controllers)
    with sqlite3.connect(data / "controller.sqlite3") as db:
        name = db.execute("SELECT name FROM jobs LIMIT 1").fetchone()[0]
        db.execute("UPDATE jobs SET status = 'Bogus' WHERE name = ?", (name,))
    db.close()
    (data / "jobs" / f"{name}.log").write_bytes(b"hi\n")

    started = _start(data)
    assert started.returncode == 2, started.stdout + started.stderr
    assert started.stderr.strip().splitlines()[-1] == (
        f"faas-supervisor: error: --data-dir {data}: controller.sqlite3: "
        f"job {name!r} has an unknown status 'Bogus'"), started.stderr
    assert "Traceback" not in started.stderr
    assert _running_for(data) == []
    assert not list((data / "pids").iterdir())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["emptied", "removed"])
def test_a_store_gone_from_a_folder_with_services_is_not_made_anew(
    controllers: ControllerFactory, how: str
) -> None:
    """A new, empty store was made before: the services' folders orphaned (their
    watchdogs' files removed with them at the next deploy) and the pending jobs' files
    deleted as strays."""
    data = _prepared(controllers)
    (data / "jobs" / "one-pending.event").write_bytes(b"{}")  # a job's, not yet run
    for suffix in ("", "-wal", "-shm"):
        (data / f"controller.sqlite3{suffix}").unlink(missing_ok=True)
    if how == "emptied":
        (data / "controller.sqlite3").touch()
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))

    started = _start(data)
    assert started.returncode == 2, started.stdout + started.stderr
    assert started.stderr == (
        f"faas-supervisor: error: --data-dir {data}: controller.sqlite3 is "
        f"{'empty' if how == 'emptied' else 'missing'}, but the folder holds "
        "services/one and 2 more: restore the file, or remove services/ and jobs/ "
        "to start anew\n"), started.stderr
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before
    assert _running_for(data) == []
