"""The controller's memory: services, jobs, their statuses and logs, in SQLite.

One file under the data folder, written through at once (WAL), so a restart loses
nothing. Jobs found `Running` at start-up belonged to a controller that stopped: they
are put back to `Pending`, to run again (jobs.py does it). Calls are short and
synchronous: SQLite answers in microseconds, far below what a thread hop would cost.

Besides services and jobs: the identity of every input object a job was started for
(identity.py), so that an object gets one job however often its event arrives, and the
input paths already listed once, whose objects then present were taken as old (a
baseline, without jobs).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from faas_supervisor.controller.fdl import Service, from_record, to_record
from faas_supervisor.controller.identity import ObjectId

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
CREATE TABLE IF NOT EXISTS objects (
    service TEXT NOT NULL,
    provider TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    version TEXT NOT NULL,
    job TEXT,  -- NULL: present when its input path was first listed (a baseline)
    recorded REAL NOT NULL,
    PRIMARY KEY (service, provider, bucket, key, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS listed_paths (
    service TEXT NOT NULL,
    bucket TEXT NOT NULL,
    prefix TEXT NOT NULL,
    PRIMARY KEY (service, bucket, prefix)
) WITHOUT ROWID;
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
            db.execute("DELETE FROM objects WHERE service = ?", (name,))
            db.execute("DELETE FROM listed_paths WHERE service = ?", (name,))

    # ---- jobs --------------------------------------------------------------------

    def add_job(self, name: str, service: str, obj: ObjectId | None = None) -> str | None:
        """A new Pending job for the object `obj` (if any); None when added, else the
        name of the job the object already has (and nothing is added). A baseline
        object (no job yet) gets this one."""
        with self._transaction() as db:
            if obj is not None:
                found = db.execute(
                    f"SELECT job FROM objects WHERE {_OBJECT_KEY}", (service, *_fields(obj))
                ).fetchone()
                if found is not None and found[0] is not None:
                    return str(found[0])
                db.execute(
                    "INSERT OR REPLACE INTO objects "
                    "(service, provider, bucket, key, version, job, recorded) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (service, *_fields(obj), name, time.time()),
                )
            db.execute(
                "INSERT INTO jobs (name, service, status, creation_time) VALUES (?, ?, ?, ?)",
                (name, service, PENDING, time.time()),
            )
        return None

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

    def requeue_job(self, name: str) -> bool:
        """Running -> Pending, to run again (its run was interrupted); False if not Running."""
        cursor = self.db.execute(
            "UPDATE jobs SET status = ?, start_time = NULL WHERE name = ? AND status = ?",
            (PENDING, name, RUNNING),
        )
        return cursor.rowcount == 1

    def requeue_running(self) -> list[str]:
        """At start-up: the jobs a stopped controller left Running are Pending again."""
        running = [job.name for job in self.jobs(status=RUNNING)]
        self.db.execute(
            "UPDATE jobs SET status = ?, start_time = NULL WHERE status = ?", (PENDING, RUNNING)
        )
        return running

    # ---- input objects -------------------------------------------------------------

    def has_object(self, service: str, obj: ObjectId) -> bool:
        """Whether the object has a job, or was there when its path was first listed."""
        row = self.db.execute(
            f"SELECT 1 FROM objects WHERE {_OBJECT_KEY}", (service, *_fields(obj))
        ).fetchone()
        return row is not None

    def objects_in(self, service: str, provider: str, bucket: str, prefix: str) -> set[ObjectId]:
        """The identities recorded for the service under a bucket and key prefix."""
        rows = self.db.execute(
            "SELECT key, version FROM objects WHERE service = ? AND provider = ? AND bucket = ?",
            (service, provider, bucket),
        ).fetchall()
        return {ObjectId(provider, bucket, k, v) for k, v in rows if k.startswith(prefix)}

    def path_listed(self, service: str, bucket: str, prefix: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM listed_paths WHERE service = ? AND bucket = ? AND prefix = ?",
            (service, bucket, prefix),
        ).fetchone()
        return row is not None

    def record_baseline(
        self, service: str, bucket: str, prefix: str, objects: list[ObjectId]
    ) -> None:
        """An input path's first listing: its objects are old, and get no job."""
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO objects "
                "(service, provider, bucket, key, version, job, recorded) "
                "VALUES (?, ?, ?, ?, ?, NULL, ?)",
                [(service, *_fields(obj), now) for obj in objects],
            )
            db.execute(
                "INSERT OR IGNORE INTO listed_paths (service, bucket, prefix) VALUES (?, ?, ?)",
                (service, bucket, prefix),
            )

    def keep_paths(self, service: str, paths: set[tuple[str, str]]) -> None:
        """After an update: input paths the service no longer has are no longer listed
        (given back later, such a path gets a new baseline)."""
        rows = self.db.execute(
            "SELECT bucket, prefix FROM listed_paths WHERE service = ?", (service,)
        ).fetchall()
        with self._transaction() as db:
            db.executemany(
                "DELETE FROM listed_paths WHERE service = ? AND bucket = ? AND prefix = ?",
                [(service, b, p) for b, p in rows if (b, p) not in paths],
            )

    def forget_older(self, service: str, objects: set[ObjectId], before: float) -> None:
        """Identities of objects gone from their input path, recorded before `before`
        (when the listing that missed them began): the table stays as small as the
        paths are, and a later object with the same key and version is a new one."""
        with self._transaction() as db:
            db.executemany(
                f"DELETE FROM objects WHERE {_OBJECT_KEY} AND recorded < ?",
                [(service, *_fields(obj), before) for obj in objects],
            )


_OBJECT_KEY = "service = ? AND provider = ? AND bucket = ? AND key = ? AND version = ?"


def _fields(obj: ObjectId) -> tuple[str, str, str, str]:
    return (obj.provider, obj.bucket, obj.key, obj.version)


_JOB_COLUMNS = "name, service, status, creation_time, start_time, finish_time, exit_code, reason"
