"""The controller's memory: services, jobs, their statuses and logs, in SQLite.

One file under the data folder, written through at once (WAL), so a restart loses
nothing. Jobs found `Running` at start-up belonged to a controller that stopped: they
are put back to `Pending`, to run again, but for those that ran to an end this store
could not record (jobs.py does it). Most calls are short and
synchronous: SQLite answers in microseconds, far below what a thread hop would cost.
A job's logs can be large: jobs.py writes them (`finish_job`, streamed from the log file
into the row a chunk at a time, its end kept when over LOG_MAX) and reads them
(`job_logs_chunk`, a chunk at a time) in worker threads. The connection is one, so every
public method holds `_lock` while it uses it (a transaction of one thread must not take in
another thread's statements); a short call on the event loop waits only while a job's
whole log is being written.

Besides services and jobs: the identity of every input object a job was started for
(identity.py), so that an object gets one job however often its event arrives, and the
input paths already listed once, whose objects then present were taken as old (a
baseline, without jobs), and which server the default provider's paths were listed on.

A full disk: new rows (a service, a job) are refused with a 507, and SQLite's journal
keeps the file intact. Writes that end or remove work (a job started or finished, a job
or a service deleted) must still succeed, or the space could never be freed through the
API: beside the database a reserve file holds `RESERVE` bytes, released when such a
write finds the disk full, and made again once deletions have given space back. Deleted
rows give their pages back to the file system (`auto_vacuum=INCREMENTAL`, on stores made
by this version) rather than only to SQLite.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Concatenate, NamedTuple, ParamSpec, TypeVar

from faas_supervisor.config import DEFAULT_PROVIDER
from faas_supervisor.controller.fdl import Service, from_record, to_record
from faas_supervisor.controller.identity import ObjectId
from faas_supervisor.errors import InsufficientStorage
from faas_supervisor.logs import get_logger

T = TypeVar("T")
P = ParamSpec("P")
# Room for the journal of a few deletions on a full disk (SQLite writes to delete).
RESERVE = 1 << 20
VACUUM_STEP = 256 << 10  # bytes of free pages given back per step
# Bytes of a job's log kept: its end, after a line saying what was cut. Far below SQLite's
# longest value (1e9 bytes), and the store's lock is held while a log is written.
LOG_MAX = 64 << 20
LOG_COPY_CHUNK = 1 << 20  # bytes of a log file copied into the store at a time
CUT_NOTE_MAX = 200  # bytes the line saying what was cut takes at most
logger = get_logger(component="store")



class JobStatus(StrEnum):
    """A job's status: stored as its value, and shown as it (the OSCAR manager's names)."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


# Short names, for the queries below and the jobs' queue.
PENDING, RUNNING = JobStatus.PENDING, JobStatus.RUNNING
SUCCEEDED, FAILED = JobStatus.SUCCEEDED, JobStatus.FAILED
FINISHED = (SUCCEEDED, FAILED)

_LISTED_PATHS = """CREATE TABLE IF NOT EXISTS listed_paths (
    service TEXT NOT NULL,
    provider TEXT NOT NULL,
    server TEXT NOT NULL,  -- "" on the default provider, else servers.server_id's digest
    bucket TEXT NOT NULL,
    prefix TEXT NOT NULL,
    listed REAL NOT NULL DEFAULT 0,  -- when its baseline was recorded (0: before this was)
    PRIMARY KEY (service, provider, server, bucket, prefix)
) WITHOUT ROWID"""
_SCHEMA = f"""
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
{_LISTED_PATHS};
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


class ListedPath(NamedTuple):
    """An input path as listed_paths records it: on which provider's server, where."""

    provider: str
    server: str  # "" on the default provider, else servers.server_id's digest
    bucket: str
    prefix: str


@dataclass(frozen=True)
class Job:
    name: str
    service: str
    status: JobStatus
    creation_time: float
    start_time: float | None
    finish_time: float | None
    exit_code: int | None
    reason: str


def _serialized(method: Callable[Concatenate[Store, P], T]) -> Callable[Concatenate[Store, P], T]:
    """The method holds the store's lock: one user of the connection at a time."""

    @functools.wraps(method)
    def locked(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class NoStore(Exception):
    """The store is missing or holds no tables, where one was expected (`Store(new=False)`)."""


class Store:
    def __init__(self, path: Path, *, new: bool = True) -> None:
        """The store in that file, made there if `new` (else NoStore, the file untouched).
        A file SQLite cannot read, or one whose pages do not hold together, is a
        sqlite3.Error: found now, before the controller starts anything, rather than by
        the first query that reads the damaged page."""
        self._lock = threading.RLock()  # re-entrant: methods call each other
        self.path = path
        self.reserve = path.with_name(path.name + ".reserve")
        self.db = _opened(path, new)
        # Before the first table, or it has no effect: then deleted rows can shrink the file.
        self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._migrate()
        self._page_size = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        self._vacuums = self.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
        # The journal's content soon moves into the database (a checkpoint never needs
        # more room than this), and the journal keeps up to this much of its file when it
        # starts again from its beginning: room already held, for deletions on a full disk.
        self.db.execute(f"PRAGMA wal_autocheckpoint={RESERVE // self._page_size}")
        self.db.execute(f"PRAGMA journal_size_limit={RESERVE}")
        self._keep_reserve()
        # Parsed definitions by name: every /run and /job looks its service up, and
        # parsing the stored JSON cost more than the rest of the lookup. This object is
        # the only writer of the services table, so it knows when an entry goes stale.
        self._services: dict[str, Service] = {}

    def _migrate(self) -> None:
        """An older store's tables brought to this version's: a data folder is kept."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(listed_paths)")}
        if "server" not in columns:
            # Made before the server of a path was recorded: its paths were all on the
            # default provider (`provider`, when there, was never released otherwise; a
            # row of another provider, on no recorded server, is listed anew). SQLite
            # adds no column to a primary key: the table is made anew, in one transaction.
            provider = "provider" if "provider" in columns else "?"
            with self._transaction() as db:
                db.execute("ALTER TABLE listed_paths RENAME TO listed_paths_old")
                db.execute(_LISTED_PATHS)
                db.execute(
                    "INSERT INTO listed_paths (service, provider, server, bucket, prefix) "
                    f"SELECT service, {provider}, '', bucket, prefix FROM listed_paths_old",
                    () if "provider" in columns else (DEFAULT_PROVIDER,),
                )
                db.execute("DROP TABLE listed_paths_old")
        elif "listed" not in columns:
            self.db.execute("ALTER TABLE listed_paths ADD COLUMN listed REAL NOT NULL DEFAULT 0")

    @_serialized
    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            if self.db.in_transaction:  # SQLite may have rolled back itself (disk full)
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- a full disk ---------------------------------------------------------------

    def _write(self, what: str, work: Callable[[], T], essential: bool = False) -> T:
        """`work()`, a write; a full disk is a 507 naming `what`. An `essential` write
        (one that ends or removes work) is tried again with the reserve's space."""
        try:
            return work()
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            if not (essential and self._release_reserve()):
                raise InsufficientStorage(f"no space left on device writing {what}") from None
        try:
            return work()
        except sqlite3.OperationalError as exc:
            if _is_full(exc):
                raise InsufficientStorage(f"no space left on device writing {what}") from None
            raise

    def _release_reserve(self) -> bool:
        try:
            self.reserve.unlink()
        except FileNotFoundError:
            return False
        logger.warning("the disk is full: the store's reserve is released", path=str(self.path))
        return True

    def _keep_reserve(self) -> None:
        """Make the reserve if it is missing; with no room for it, leave it for later."""
        if self.reserve.exists():
            return
        try:
            fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, RESERVE)
        except OSError:
            self.reserve.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def _give_back(self) -> None:
        """After a deletion: when the reserve is spent or much is free, the free pages go
        back to the file system (moved to the end, the file cut at a checkpoint), then
        the reserve is made again if it can be. Else nothing: this costs a few syncs."""
        step = VACUUM_STEP // self._page_size
        if self.reserve.exists() and (not self._vacuums or self._free_pages() < step):
            return
        # A few pages at a time, each step checkpointed: the journal reuses its own
        # file, so this works on a full disk too. Never TRUNCATE: that file is the room.
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
            free = self._free_pages() if self._vacuums else 0
            while free > 0:
                # fetchall: the pragma frees one page per step of its statement.
                self.db.execute(f"PRAGMA incremental_vacuum({step})").fetchall()
                self.db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
                free, before = self._free_pages(), free
                if free >= before:
                    break  # no progress (the disk too full even for this): next time
        self._keep_reserve()

    def _free_pages(self) -> int:
        return int(self.db.execute("PRAGMA freelist_count").fetchone()[0])

    # ---- services ----------------------------------------------------------------

    @_serialized
    def add_service(self, service: Service) -> bool:
        """False when the name is taken."""
        try:
            self._write("the service to the store", lambda: self.db.execute(
                "INSERT INTO services (name, definition, created) VALUES (?, ?, ?)",
                (service.name, to_record(service), time.time()),
            ))
        except sqlite3.IntegrityError:
            return False
        self._services.pop(service.name, None)
        return True

    @_serialized
    def update_service(self, service: Service) -> None:
        self._write("the service to the store", lambda: self.db.execute(
            "UPDATE services SET definition = ? WHERE name = ?", (to_record(service), service.name)
        ))
        self._services.pop(service.name, None)

    @_serialized
    def service(self, name: str) -> Service | None:
        found = self._services.get(name)
        if found is not None:
            return found
        row = self.db.execute("SELECT definition FROM services WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        found = self._services[name] = from_record(row[0])
        return found

    @_serialized
    def services(self) -> list[Service]:
        rows = self.db.execute("SELECT definition FROM services ORDER BY created").fetchall()
        return [from_record(row[0]) for row in rows]

    @_serialized
    def remove_service(self, name: str) -> None:
        self._services.pop(name, None)

        def delete() -> None:
            with self._transaction() as db:
                db.execute("DELETE FROM services WHERE name = ?", (name,))
                db.execute("DELETE FROM jobs WHERE service = ?", (name,))
                db.execute("DELETE FROM objects WHERE service = ?", (name,))
                db.execute("DELETE FROM listed_paths WHERE service = ?", (name,))

        self._write("the service's deletion to the store", delete, essential=True)
        self._give_back()

    # ---- jobs --------------------------------------------------------------------

    @_serialized
    def add_job(self, name: str, service: str, obj: ObjectId | None = None,
                peers: Collection[ObjectId] = ()) -> str | None:
        """A new Pending job for the object `obj` (if any); None when added, else the
        name of the job the object already has (and nothing is added). A baseline
        object (no job yet) gets this one. `peers` are the object's identities on other
        providers of the service's on its server (jobs.py): the job one of them has is
        the object's, recorded as its own (its provider's listings then find it)."""

        def add() -> str | None:
            with self._transaction() as db:
                if obj is not None:
                    taken = _job_of(db, service, obj)
                    if taken is not None:
                        return taken
                    taken = next(filter(None, (_job_of(db, service, p) for p in peers)), None)
                    db.execute(
                        "INSERT OR REPLACE INTO objects "
                        "(service, provider, bucket, key, version, job, recorded) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (service, *_fields(obj), taken or name, time.time()),
                    )
                    if taken is not None:
                        return taken
                db.execute(
                    "INSERT INTO jobs (name, service, status, creation_time) VALUES (?, ?, ?, ?)",
                    (name, service, PENDING, time.time()),
                )
            return None

        return self._write("the job to the store", add)

    @_serialized
    def job(self, name: str) -> Job | None:
        row = self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE name = ?", (name,)).fetchone()
        return _job(row) if row else None

    @_serialized
    def jobs(self, service: str | None = None, status: JobStatus | None = None) -> list[Job]:
        query, args = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE 1", []
        if service is not None:
            query += " AND service = ?"
            args.append(service)
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        return [_job(row) for row in self.db.execute(query + " ORDER BY seq", args).fetchall()]

    @_serialized
    def start_job(self, name: str) -> bool:
        """Pending -> Running; False if the job is gone or was already taken, or if not
        even the reserve leaves room to record it (it stays Pending, for a restart)."""
        try:
            cursor = self._write("the job's start to the store", lambda: self.db.execute(
                "UPDATE jobs SET status = ?, start_time = ? WHERE name = ? AND status = ?",
                (RUNNING, time.time(), name, PENDING),
            ), essential=True)
        except InsufficientStorage as exc:
            logger.error("job not started", job=name, error=exc.message)
            return False
        return cursor.rowcount == 1

    @_serialized
    def finish_job(
        self,
        name: str,
        exit_code: int | None,
        logs: bytes | Path,
        reason: str = "",
        *,
        failed: bool = False,
    ) -> None:
        """Record the outcome (Failed when `failed`, else as the exit code says) and the
        logs, given whole or as a file (missing: none), which is copied a chunk at a
        time, never held whole; past LOG_MAX only its end is kept, after a line saying
        so. When not even the reserve holds the logs, the outcome alone, with a reason
        that says so; when not even that fits, InsufficientStorage."""
        status = SUCCEEDED if exit_code == 0 and not failed else FAILED

        def record(logs: bytes | Path, reason: str) -> None:
            def work() -> None:
                with _log_file(logs) as (source, size), self._transaction() as db:
                    row = db.execute("SELECT seq FROM jobs WHERE name = ?", (name,)).fetchone()
                    if row is None:
                        return  # deleted meanwhile
                    room = min(LOG_MAX, db.getlimit(sqlite3.SQLITE_LIMIT_LENGTH))
                    kept = size if size <= room else room - CUT_NOTE_MAX
                    note = b"" if kept == size else cut_note(size, kept)
                    db.execute(
                        "UPDATE jobs SET status = ?, finish_time = ?, exit_code = ?, "
                        "logs = zeroblob(?), reason = ? WHERE seq = ?",
                        (status, time.time(), exit_code, len(note) + kept, reason, row[0]),
                    )
                    if note or kept:
                        source.seek(size - kept)
                        with db.blobopen("jobs", "logs", row[0]) as blob:
                            blob.write(note)
                            _copy(source, blob, kept)

            self._write("the job's outcome to the store", work, essential=True)

        try:
            record(logs, reason)
        except InsufficientStorage:
            note = "logs not kept: no space left on device"
            record(b"", f"{reason}; {note}" if reason else note)

    @_serialized
    def job_logs_chunk(self, name: str, offset: int, size: int) -> bytes:
        """Up to `size` bytes of a job's stored logs from `offset`; b"" past their end
        (or when there are none). Only those pages are read, not the whole log."""
        row = self.db.execute(
            "SELECT seq, length(logs) FROM jobs WHERE name = ?", (name,)
        ).fetchone()
        if row is None or row[1] is None or offset >= row[1]:
            return b""
        with self.db.blobopen("jobs", "logs", row[0], readonly=True) as blob:
            blob.seek(offset)
            return blob.read(size)

    @_serialized
    def remove_job(self, name: str) -> None:
        self._write("the job's deletion to the store", lambda: self.db.execute(
            "DELETE FROM jobs WHERE name = ?", (name,)
        ), essential=True)
        self._give_back()

    @_serialized
    def prune_jobs(self, finished_before: float) -> int:
        """Forget the jobs that finished before then (`--job-retention`); how many."""
        cursor = self._write("the pruning of old jobs", lambda: self.db.execute(
            "DELETE FROM jobs WHERE status IN (?, ?) AND finish_time < ?",
            (SUCCEEDED, FAILED, finished_before),
        ), essential=True)
        if cursor.rowcount:
            self._give_back()
        return int(cursor.rowcount)

    @_serialized
    def requeue_job(self, name: str) -> bool:
        """Running -> Pending, to run again (its run was interrupted); False if not Running."""
        cursor = self.db.execute(
            "UPDATE jobs SET status = ?, start_time = NULL WHERE name = ? AND status = ?",
            (PENDING, name, RUNNING),
        )
        return cursor.rowcount == 1

    @_serialized
    def requeue_running(self, ended: Collection[str] = ()) -> list[str]:
        """At start-up: the jobs a stopped controller left Running are Pending again, but
        those `ended` (they ran to their end, which could not be stored: jobs.py)."""
        running = [job.name for job in self.jobs(status=RUNNING) if job.name not in ended]
        with self._transaction() as db:
            db.executemany(
                "UPDATE jobs SET status = ?, start_time = NULL WHERE name = ? AND status = ?",
                [(PENDING, name, RUNNING) for name in running],
            )
        return running

    # ---- input objects -------------------------------------------------------------

    @_serialized
    def has_object(self, service: str, obj: ObjectId) -> bool:
        """Whether the object has a job, or was there when its path was first listed."""
        row = self.db.execute(
            f"SELECT 1 FROM objects WHERE {_OBJECT_KEY}", (service, *_fields(obj))
        ).fetchone()
        return row is not None

    @_serialized
    def objects_in(self, service: str, provider: str, bucket: str, prefix: str) -> set[ObjectId]:
        """The identities recorded for the service under a bucket and key prefix."""
        rows = self.db.execute(
            "SELECT key, version FROM objects WHERE service = ? AND provider = ? AND bucket = ?",
            (service, provider, bucket),
        ).fetchall()
        return {ObjectId(provider, bucket, k, v) for k, v in rows if k.startswith(prefix)}

    @_serialized
    def path_listed(self, service: str, path: ListedPath) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM listed_paths "
            "WHERE service = ? AND provider = ? AND server = ? AND bucket = ? AND prefix = ?",
            (service, *path),
        ).fetchone()
        return row is not None

    @_serialized
    def record_baseline(self, service: str, path: ListedPath, objects: list[ObjectId]) -> None:
        """An input path's first listing: its objects are old, and get no job. One that
        has a row already (a job) keeps its job, the row dated now: seen on this path's
        server (`keep_paths`)."""
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO objects "
                "(service, provider, bucket, key, version, job, recorded) "
                "VALUES (?, ?, ?, ?, ?, NULL, ?) "
                "ON CONFLICT (service, provider, bucket, key, version) "
                "DO UPDATE SET recorded = excluded.recorded",
                [(service, *_fields(obj), now) for obj in objects],
            )
            db.execute(
                "INSERT OR IGNORE INTO listed_paths "
                "(service, provider, server, bucket, prefix, listed) VALUES (?, ?, ?, ?, ?, ?)",
                (service, *path, now),
            )

    @_serialized
    def use_default_server(self, server: str) -> bool:
        """Records the default provider's server (`servers.default_server`), and whether it
        was another one: then its input paths and identities, the old server's, are
        forgotten, and each path gets a new baseline when listed, as one of a provider an
        update points elsewhere (else every object already on the new server would be
        taken as new). A store that recorded none (an earlier version) is taken as of
        this server: nothing is forgotten."""
        row = self.db.execute("SELECT value FROM meta WHERE name = 'default_server'").fetchone()
        changed = row is not None and row[0] != server

        def record() -> None:
            with self._transaction() as db:
                if changed:
                    db.execute("DELETE FROM listed_paths WHERE provider = ?", (DEFAULT_PROVIDER,))
                    db.execute("DELETE FROM objects WHERE provider = ?", (DEFAULT_PROVIDER,))
                db.execute("INSERT OR REPLACE INTO meta (name, value) "
                           "VALUES ('default_server', ?)", (server,))

        self._write("the default provider's server to the store", record)
        return changed

    @_serialized
    def keep_paths(self, service: str, paths: set[ListedPath]) -> None:
        """After an update: input paths the service no longer has (another provider,
        server, bucket or key prefix) are no longer listed (given back later, such a path
        gets a new baseline), and the identities recorded under them are forgotten, but
        for those a kept path holds too: no listing would prune them. A kept path on
        another server (its provider pointed elsewhere) holds only those recorded since
        its baseline (the objects seen there): the others name objects of the old server,
        and would keep a new object of the same key and bytes from its job."""
        rows = self.db.execute(
            "SELECT provider, server, bucket, prefix, listed FROM listed_paths WHERE service = ?",
            (service,),
        ).fetchall()
        dropped = [ListedPath(*row[:4]) for row in rows if ListedPath(*row[:4]) not in paths]
        if not dropped:
            return
        since = {ListedPath(*row[:4]): float(row[4]) for row in rows}

        def holding(obj: tuple[str, str, str], among: Collection[ListedPath]) -> list[ListedPath]:
            # An identity names no server: held by any path of its provider, bucket, prefix.
            provider, bucket, key = obj
            return [path for path in among if (path.provider, path.bucket) == (provider, bucket)
                    and key.startswith(path.prefix)]

        def kept(obj: tuple[str, str, str], recorded: float) -> bool:
            servers = {path.server for path in holding(obj, dropped)}
            return not servers or any(
                path.server in servers or recorded >= since.get(path, math.inf)
                for path in holding(obj, paths))

        objects = self.db.execute(
            "SELECT provider, bucket, key, version, recorded FROM objects WHERE service = ?",
            (service,),
        ).fetchall()
        forgotten = [(service, p, b, k, v) for p, b, k, v, recorded in objects
                     if not kept((p, b, k), recorded)]
        with self._transaction() as db:
            db.executemany(
                "DELETE FROM listed_paths WHERE service = ? AND provider = ? AND server = ? "
                "AND bucket = ? AND prefix = ?",
                [(service, *row) for row in dropped],
            )
            db.executemany(f"DELETE FROM objects WHERE {_OBJECT_KEY}", forgotten)

    @_serialized
    def forget_older(self, service: str, objects: set[ObjectId], before: float) -> None:
        """Identities of objects gone from their input path, recorded before `before`
        (when the listing that missed them began): the table stays as small as the
        paths are, and a later object with the same key and version is a new one."""
        with self._transaction() as db:
            db.executemany(
                f"DELETE FROM objects WHERE {_OBJECT_KEY} AND recorded < ?",
                [(service, *_fields(obj), before) for obj in objects],
            )


def _opened(path: Path, new: bool) -> sqlite3.Connection:
    """A connection to the store in `path`, checked whole (`PRAGMA quick_check` reads every
    page: about a second for half a GiB read from disk, far less from the page cache)."""
    uri = f"{path.absolute().as_uri()}?mode={'rwc' if new else 'rw'}"
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.OperationalError:
        if new or path.exists():
            raise
        raise NoStore(f"{path.name} is missing") from None
    try:
        if not new and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
            raise NoStore(f"{path.name} is empty")
        found = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if found != "ok":
            # Its first line names the database ("*** in database main ***"); then where.
            where = found.splitlines()[-1]
            raise sqlite3.DatabaseError(f"damaged: {where}")
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def _log_file(logs: bytes | Path) -> Iterator[tuple[IO[bytes], int]]:
    """The logs as a file to read, and their size."""
    if isinstance(logs, bytes):
        yield io.BytesIO(logs), len(logs)
        return
    try:
        source = open(logs, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        yield io.BytesIO(), 0
        return
    with source:
        yield source, os.fstat(source.fileno()).st_size


def cut_note(size: int, kept: int) -> bytes:
    """The line before a cut log's end (the job runner's cut of a running log too)."""
    note = (f"faas-supervisor: the log had {size} bytes; its first {size - kept} are not "
            f"kept, only its last {kept}\n").encode()
    assert len(note) <= CUT_NOTE_MAX  # numbers of 20 digits at most
    return note


def _copy(source: IO[bytes], blob: sqlite3.Blob, size: int) -> None:
    """`size` bytes of `source` into `blob`, a chunk at a time."""
    while size > 0:
        chunk = source.read(min(size, LOG_COPY_CHUNK))
        if not chunk:
            # Cannot happen to a job's log (its job has ended, nothing writes it): the
            # zeros the row was made of stay.
            break
        blob.write(chunk)
        size -= len(chunk)


_OBJECT_KEY = "service = ? AND provider = ? AND bucket = ? AND key = ? AND version = ?"


def _job_of(db: sqlite3.Connection, service: str, obj: ObjectId) -> str | None:
    """The job the object has (None: none, or a baseline's object)."""
    row = db.execute(f"SELECT job FROM objects WHERE {_OBJECT_KEY}",
                     (service, *_fields(obj))).fetchone()
    return None if row is None or row[0] is None else str(row[0])


def _fields(obj: ObjectId) -> tuple[str, str, str, str]:
    return (obj.provider, obj.bucket, obj.key, obj.version)


def is_busy(exc: BaseException) -> bool:
    """Whether SQLite gave up waiting for another process's lock on the store."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _is_full(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


_JOB_COLUMNS = "name, service, status, creation_time, start_time, finish_time, exit_code, reason"


def _job(row: tuple[Any, ...]) -> Job:
    name, service, status, *times = row
    try:
        return Job(name, service, JobStatus(status), *times)
    except ValueError:  # written by no version of this store: damage
        raise sqlite3.DatabaseError(f"job {name!r} has an unknown status {status!r}") from None
