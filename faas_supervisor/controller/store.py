"""The controller's memory: services, jobs, their statuses and logs, in SQLite.

One file under the data folder, written through at once (WAL), so a restart loses
nothing. Jobs found `Running` at start-up belonged to a controller that died: they are
marked `Failed` with that reason (jobs.py does it). Calls are short and synchronous:
SQLite answers in microseconds, far below what a thread hop would cost.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from faas_supervisor.controller.fdl import Service, from_record, to_record

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
FINISHED = (SUCCEEDED, FAILED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL,
    service TEXT NOT NULL,
    status TEXT NOT NULL,
    creation_time REAL NOT NULL,
    start_time REAL,
    finish_time REAL,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    logs BLOB
);
CREATE INDEX IF NOT EXISTS jobs_by_service ON jobs (service, seq);
"""


@dataclass(frozen=True)
class Job:
    name: str
    service: str
    status: str
    creation_time: float
    start_time: float | None
    finish_time: float | None
    exit_code: int | None
    reason: str


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        # Parsed definitions by name: every /run and /job looks its service up, and
        # parsing the stored JSON cost more than the rest of the lookup. This object is
        # the only writer of the services table, so it knows when an entry goes stale.
        self._services: dict[str, Service] = {}

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- services ----------------------------------------------------------------

    def add_service(self, service: Service) -> bool:
        """False when the name is taken."""
        try:
            self.db.execute(
                "INSERT INTO services (name, definition, created) VALUES (?, ?, ?)",
                (service.name, to_record(service), time.time()),
            )
        except sqlite3.IntegrityError:
            return False
        self._services.pop(service.name, None)
        return True

    def update_service(self, service: Service) -> None:
        self.db.execute(
            "UPDATE services SET definition = ? WHERE name = ?", (to_record(service), service.name)
        )
        self._services.pop(service.name, None)

    def service(self, name: str) -> Service | None:
        found = self._services.get(name)
        if found is not None:
            return found
        row = self.db.execute("SELECT definition FROM services WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        found = self._services[name] = from_record(row[0])
        return found

    def services(self) -> list[Service]:
        rows = self.db.execute("SELECT definition FROM services ORDER BY created").fetchall()
        return [from_record(row[0]) for row in rows]

    def remove_service(self, name: str) -> None:
        self._services.pop(name, None)
        with self._transaction() as db:
            db.execute("DELETE FROM services WHERE name = ?", (name,))
            db.execute("DELETE FROM jobs WHERE service = ?", (name,))

    # ---- jobs --------------------------------------------------------------------

    def add_job(self, name: str, service: str) -> None:
        self.db.execute(
            "INSERT INTO jobs (name, service, status, creation_time) VALUES (?, ?, ?, ?)",
            (name, service, PENDING, time.time()),
        )

    def job(self, name: str) -> Job | None:
        row = self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE name = ?", (name,)).fetchone()
        return Job(*row) if row else None

    def jobs(self, service: str | None = None, status: str | None = None) -> list[Job]:
        query, args = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE 1", []
        if service is not None:
            query += " AND service = ?"
            args.append(service)
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        return [Job(*row) for row in self.db.execute(query + " ORDER BY seq", args).fetchall()]

    def start_job(self, name: str) -> bool:
        """Pending -> Running; False if the job is gone or was already taken."""
        cursor = self.db.execute(
            "UPDATE jobs SET status = ?, start_time = ? WHERE name = ? AND status = ?",
            (RUNNING, time.time(), name, PENDING),
        )
        return cursor.rowcount == 1

    def finish_job(self, name: str, exit_code: int | None, logs: bytes, reason: str = "") -> None:
        status = SUCCEEDED if exit_code == 0 else FAILED
        self.db.execute(
            "UPDATE jobs SET status = ?, finish_time = ?, exit_code = ?, logs = ?, reason = ? "
            "WHERE name = ?",
            (status, time.time(), exit_code, logs, reason, name),
        )

    def job_logs(self, name: str) -> bytes | None:
        row = self.db.execute("SELECT logs FROM jobs WHERE name = ?", (name,)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def remove_job(self, name: str) -> None:
        self.db.execute("DELETE FROM jobs WHERE name = ?", (name,))

    def unfinished(self) -> tuple[list[str], list[str]]:
        """At start-up: the jobs left Running by a controller that died, and the Pending ones."""
        return (
            [job.name for job in self.jobs(status=RUNNING)],
            [job.name for job in self.jobs(status=PENDING)],
        )


_JOB_COLUMNS = "name, service, status, creation_time, start_time, finish_time, exit_code, reason"
