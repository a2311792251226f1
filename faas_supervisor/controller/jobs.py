"""Asynchronous jobs: stored, queued, run at most `max_jobs` at once, and recorded.

A job's life, all in this file: `submit` writes its event to disk and its row (Pending)
to the store, then queues its name; a worker takes it (Pending -> Running, atomically,
so no job runs twice), has the backend run it with its output going to a log file,
and stores the outcome (Succeeded or Failed) with the logs. The queue is fed from the
store at start-up, so queued jobs survive a restart.

A job whose run the controller's stopping interrupts (SIGTERM, or `kill -9` and found
Running at the next start, after the backend has stopped what the last controller left)
goes back to Pending and runs again under the same name: one job record per event, its
script run at least once. The log keeps both runs, with a line between them.

A job that ran to its end is not run again because the store could not record that end
(a disk full even for the store's reserve, an I/O error): its script may have uploaded
its results already. The outcome is kept in a file beside its log, recorded later (with
the pruning, and at the next start, which leaves the job out of those run again); till
then the job shows Running, and the error is logged.

An event naming a stored object (identity.py) that has a job already starts none:
`submit` answers with that job instead. On the folder store, that object's version is
the one its listing gives it (`stored_version`), whatever ETag the event carries. Two of
a service's MinIO providers on one server with one key (servers.input_peers) name its
objects twice, each provider's input paths listed, and baselined, on their own: the
object one of them has a job for has it for the others too (listings and events alike).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path

from faas_supervisor import strict_json
from faas_supervisor.controller.backends import Backend, JobInterrupted, LiveLogs
from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.identity import EVENT_MAX, object_id, on_peers, stored_id
from faas_supervisor.controller.servers import View, input_peers
from faas_supervisor.controller.store import FINISHED, PENDING, RUNNING, Store, is_busy
from faas_supervisor.errors import NotFound, ServiceUnavailable, writing
from faas_supervisor.logs import get_logger

LOG_CHUNK = 256 << 10  # bytes of a job's log read at a time
INTERRUPTED = "the controller stopped while the job was running; it runs again"
# A backend whose jobs outlive the controller (it has `detach`) follows them again.
REATTACHED = "the controller stopped while the job was running; it is followed again"
LOST_END = "it ended, but its end could not be stored, nor its exit status kept"
# Seconds before a job the store could not start is taken again: doubled at each failure
# up to the last, back to the first once a job starts. Each failed try held the event loop
# for SQLite's busy wait (5 s): tried every second, a locked store would freeze the API.
STORE_RETRY = (1.0, 60.0)
# Seconds between tries of the ends kept aside (`_keep_end`): doubled while tries fail,
# up to the last.
ENDS_RETRY = (10.0, 300.0)
logger = get_logger(component="jobs")


def job_name(service: str) -> str:
    """`<service>-<uuid>`, the service's name cut to 16 characters when long, as OSCAR."""
    prefix = service[:16] if len(service) >= 25 else service
    return f"{prefix}-{uuid.uuid4()}"


class Jobs:
    def __init__(
        self,
        store: Store,
        backend: Backend,
        folder: Path,
        max_jobs: int,
        services: Callable[[str], Service | None],
        retention: float = 7 * 86400.0,
        stored_version: Callable[[str, str], str | None] | None = None,
        default_view: View | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.folder = folder
        self.max_jobs = max(1, max_jobs)
        self.services = services
        self.retention = retention  # seconds a finished job is kept (--job-retention)
        # The folder store's `version` (the default provider's listing ETag of an object),
        # when that store is the default: None for an S3 server, whose events carry it.
        self.stored_version = stored_version
        # The default provider's S3 server (servers.server_view), if not the folder store.
        self.default_view = default_view
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.running: dict[str, asyncio.Task[int]] = {}
        self._refused: set[str] = set()  # services being deleted (`refusing`)
        self._workers: list[asyncio.Task[None]] = []
        # Jobs that ended, whose end is kept in a file until the store records it, and
        # the failures last logged of its recording: tried again with every pruning (as
        # often as every 0.05 s), the same failures are logged once.
        self._unrecorded: dict[str, tuple[str, str]] = {}
        self._store_retry = STORE_RETRY[0]

    def event_path(self, name: str) -> Path:
        return self.folder / f"{name}.event"

    def log_path(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def end_path(self, name: str) -> Path:
        return self.folder / f"{name}.end"

    async def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_strays()
        kept = [path.stem for path in self.folder.glob("*.end")]
        ended = await asyncio.to_thread(self._record_ends, kept)
        # The backend has started, so what the last controller's jobs left is stopped.
        interrupted = list(self.store.requeue_running(ended))
        for name in interrupted:
            self._note_interrupted(name)
        followed = getattr(self.backend, "interrupted", None)  # kubernetes: their Jobs
        if followed is not None:
            followed(interrupted)
        for job in self.store.jobs(status=PENDING):
            self.queue.put_nowait(job.name)
        self._workers = [
            asyncio.create_task(self._work(), name=f"job-worker-{i}") for i in range(self.max_jobs)
        ]
        self._workers.append(asyncio.create_task(self._prune(), name="job-pruner"))

    async def _prune(self) -> None:
        """Finished jobs older than the retention go, as OSCAR's TTL does to its Jobs:
        looked for a few times per retention period, at most hourly. Ends the store could
        not record are tried again within ENDS_RETRY seconds (a lock by another process
        ends in seconds: the job must not show Running for an hour), less often while
        the tries fail."""
        interval = max(0.05, min(3600.0, self.retention / 4))
        next_prune, ends_wait = 0.0, ENDS_RETRY[0]
        while True:
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + interval
                try:
                    pruned = self.store.prune_jobs(time.time() - self.retention)
                except Exception as exc:  # a full disk, say: tried again next time
                    logger.warning("cannot forget old jobs", error=str(exc))
                else:
                    if pruned:
                        logger.info("old jobs forgotten", jobs=pruned, retention=self.retention)
            if self._unrecorded:
                try:
                    await asyncio.to_thread(self._record_ends, list(self._unrecorded))
                except Exception as exc:  # the store not even read: tried again next time
                    logger.warning("cannot record the kept ends of jobs", error=str(exc))
            # A try that failed held the store's lock for SQLite's wait (the event loop's
            # store calls waited too): the next waits longer while ends are left.
            ends_wait = (min(2 * ends_wait, ENDS_RETRY[1]) if self._unrecorded
                         else ENDS_RETRY[0])
            # Awake that often at least: an end may be kept aside meanwhile.
            await asyncio.sleep(max(0.0, min(next_prune - time.monotonic(), ends_wait)))

    def _remove_strays(self) -> None:
        """Files with no job to own them (a controller stopped between writing a job's
        event and storing its row, or a finished job's files): their space back."""
        for path in self.folder.iterdir():
            if path.suffix not in (".event", ".log", ".end"):
                continue
            job = self.store.job(path.stem)
            if job is None or job.status in FINISHED:
                logger.warning("removing a file with no job to run", file=path.name)
                path.unlink(missing_ok=True)

    async def close(self) -> None:
        # A backend whose jobs outlive the controller (kubernetes: its Jobs) is told
        # first, so that the cancellations below leave them to the next controller.
        detach = getattr(self.backend, "detach", None)
        if detach is not None:
            detach()
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    # ---- submitting ------------------------------------------------------------------

    @contextlib.contextmanager
    def refusing(self, service: str) -> Iterator[None]:
        """No job of `service` accepted meanwhile: its delete is under way (the backend's
        removal waits for its watchdog's drain, seconds). A job accepted then would be
        answered 201, fail for want of a deployment, and go with the service. Refused
        with a 503, the event can be sent again: it gets a 404 once the service is gone,
        a job if the delete failed."""
        self._refused.add(service)
        try:
            yield
        finally:
            self._refused.discard(service)

    async def submit(
        self, service: Service, body: AsyncIterator[bytes] | bytes
    ) -> tuple[str, bool]:
        """The job for this event, and whether it is new: False when the event names a
        stored object that has a job already (that job's name is returned)."""
        name = job_name(service.name)
        path = self.event_path(name)
        # The event file and the job's row exist together or not at all: a full disk
        # (507) or a client gone leaves neither behind.
        try:
            with writing("the job's event"), open(path, "wb") as out:  # streamed to disk
                if isinstance(body, bytes):
                    out.write(body)
                else:
                    async for chunk in body:
                        out.write(chunk)
            if not isinstance(body, bytes):
                body = path.read_bytes() if path.stat().st_size <= EVENT_MAX else b""
            # Both checked with no await from here to the row.
            if service.name in self._refused:
                raise ServiceUnavailable(f"service {service.name} is being deleted")
            if self.services(service.name) is None:
                # Deleted while its event came in: a 201 would name a job never run, and
                # its object's row outlive the service.
                raise NotFound()
            identity = object_id(body)
            if self.stored_version is not None:
                identity = stored_id(identity, self.stored_version)
            peers = (on_peers(identity, input_peers(service, self.default_view))
                     if identity is not None else [])
            existing = self.store.add_job(name, service.name, identity, peers)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if existing is not None:
            path.unlink(missing_ok=True)
            logger.info("the object has a job already", service=service.name, job=existing)
            return existing, False
        self.queue.put_nowait(name)
        logger.info("job queued", service=service.name, job=name)
        return name, True

    # ---- running ---------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            name = await self.queue.get()
            try:
                job = self.store.job(name)
                service = self.services(job.service) if job else None
                started = service is not None and self.store.start_job(name)
            except sqlite3.Error as exc:
                # Locked by another process (a backup, a `sqlite3` shell) past SQLite's
                # wait: the job stays Pending, queued again, and this worker lives on.
                # It waits before its next try, whichever job that is: each try held the
                # event loop for SQLite's wait, and tries back to back froze the API.
                delay, self._store_retry = self._store_retry, min(2 * self._store_retry,
                                                                  STORE_RETRY[1])
                logger.warning("job not started: the store is busy or failing; it is tried "
                               "again", job=name, error=str(exc), retry_in=delay)
                self.queue.put_nowait(name)
                await asyncio.sleep(delay)
                continue
            self._store_retry = STORE_RETRY[0]
            if job is not None and service is None:
                # Accepted while its service was being deleted: nothing left to run it.
                logger.info("job dropped: its service is gone", job=name, service=job.service)
                await self.delete(name)
                continue
            if job is None or service is None or not started:
                continue  # deleted while queued, or taken already
            task = asyncio.create_task(
                self.backend.run_job(service, name, self.event_path(name), self.log_path(name))
            )
            self.running[name] = task
            try:
                code: int | None = await asyncio.shield(task)
                reason = "" if code == 0 else f"exit status {code}"
            except asyncio.CancelledError:
                # The job was deleted (its task cancelled), or the controller is stopping.
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                self.running.pop(name, None)
                # Not deleted: the controller is stopping. (A store that fails here: the
                # job is found Running at the next start, and requeued then.)
                with contextlib.suppress(sqlite3.Error):
                    if self.store.requeue_job(name):
                        self._note_interrupted(name)
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    raise
                continue
            except JobInterrupted as exc:  # it ran, but how it ended was lost
                logger.error("job interrupted", job=name, error=str(exc))
                code, reason = None, str(exc)
            except Exception as exc:  # the backend could not run it: the job failed
                logger.error("job could not run", job=name, error=str(exc))
                code, reason = None, f"could not run: {exc}"
            self.running.pop(name, None)
            if self._kept(name):
                if code is None:  # the backend's failure: its reason in the log too
                    self._note_failure(name, reason)
                await self._finish(name, code, reason)
            logger.info("job finished", job=name, status=code)

    def _kept(self, name: str) -> bool:
        """Whether the job that ran was not deleted meanwhile; taken as kept when the store
        cannot say (locked): `_record` then keeps its end aside, nothing is lost."""
        try:
            return self.store.job(name) is not None
        except sqlite3.Error:
            return True

    def _note_interrupted(self, name: str) -> None:
        logger.warning("job interrupted; it runs again", job=name)
        with open(self.log_path(name), "ab") as log:
            note = REATTACHED if hasattr(self.backend, "detach") else INTERRUPTED
            log.write(f"faas-supervisor: {note}\n".encode())

    def _note_failure(self, name: str, reason: str) -> None:
        """Why the backend failed the job, as the last line of its log: the stored reason
        is served by no route, and the log alone may mislead (a `run` the local backend
        stopped once its runner died ends it with `stopped by SIGTERM`) or be empty.
        Backends note only what does not fail the job this way (kubernetes: a pod gone, an
        OOM kill), so nothing is said twice. Best effort: the reason is stored anyway."""
        line = " ".join(reason.splitlines())
        try:
            with open(self.log_path(name), "a+b") as log:
                # On a line of its own, whatever the job's last output left unfinished.
                end = log.seek(0, os.SEEK_END)
                if end and os.pread(log.fileno(), 1, end - 1) != b"\n":
                    log.write(b"\n")
                log.write(f"faas-supervisor: the job failed: {line}\n".encode())
        except OSError as exc:  # a full disk
            logger.warning("cannot note the job's failure in its log", job=name,
                           error=str(exc))

    async def _finish(self, name: str, code: int | None, reason: str) -> None:
        """The outcome and the log into the store, in a thread: a log can be large.
        A controller stopping meanwhile waits for it (the outcome is not lost)."""
        recording = asyncio.ensure_future(asyncio.to_thread(self._record, name, code, reason))
        try:
            await asyncio.shield(recording)
        except asyncio.CancelledError:
            await recording
            raise

    def _record(self, name: str, code: int | None, reason: str) -> None:
        """Never raises: the worker calling it must live on to run the next jobs. A job
        whose log cannot be stored is Failed, saying why; one whose end cannot be stored
        at all stays Running, its log kept, and its end kept aside (`_keep_end`)."""
        told = self._unrecorded.get(name)
        try:
            # The log file itself: the store copies it a chunk at a time.
            self.store.finish_job(name, code, self.log_path(name), reason)
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            if is_busy(exc):
                # Locked by another process: not the log's fault (a full disk may be).
                # Kept aside whole, recorded with its log once the lock is gone; else
                # the try below could store it Failed, its log dropped, moments later.
                self._keep_end(name, code, reason, (failure, failure))
                return
            if told is None or told[0] != failure:
                logger.exception("job's log not stored", job=name)
            why = f"its log could not be stored ({failure})"
            try:
                self.store.finish_job(name, code, f"faas-supervisor: {why}\n".encode(),
                                      f"{reason}; {why}" if reason else why, failed=True)
            except Exception as again:
                self._keep_end(name, code, reason, (failure, f"{type(again).__name__}: {again}"))
                return
        self._unrecorded.pop(name, None)
        for path in (self.log_path(name), self.event_path(name), self.end_path(name)):
            path.unlink(missing_ok=True)

    def _keep_end(
        self, name: str, code: int | None, reason: str, failures: tuple[str, str]
    ) -> None:
        """The outcome into the job's end file, for `_record_ends`. The job's event, needed
        no more, becomes that file: a rename needs no free space, and the event's blocks
        then hold the outcome (a full disk). One kept already (a retry) is left as it is.
        `failures`: the store's, recording the log, then the end alone."""
        end, error = self.end_path(name), failures[1]
        try:
            if not end.exists():
                with contextlib.suppress(FileNotFoundError):  # a job of no event file
                    os.replace(self.event_path(name), end)
                with open(end, "w") as out:
                    json.dump({"exit_code": code, "reason": reason}, out)
        except OSError as exc:
            if not end.exists():
                logger.error("job's end not recorded nor kept; the next start runs it again",
                             job=name, error=error, kept=f"{type(exc).__name__}: {exc}")
                return
            # Half written: recorded later as an end of unknown exit status (_read_end).
        if self._unrecorded.get(name) != failures:  # else logged at an earlier try
            logger.error("job's end not recorded; it is kept, tried again, and the job not "
                         "run again", job=name, error=error)
        self._unrecorded[name] = failures

    def _record_ends(self, names: list[str]) -> set[str]:
        """The ends `_keep_end` kept, into the store; those it still cannot record."""
        for name in names:
            job = self.store.job(name)
            if job is None or job.status != RUNNING:  # deleted, or not left by its run
                self._unrecorded.pop(name, None)
                self.end_path(name).unlink(missing_ok=True)
                continue
            self._record(name, *_read_end(self.end_path(name)))
        return {name for name in names if name in self._unrecorded}

    # ---- reading and deleting --------------------------------------------------------

    async def logs(self, name: str) -> AsyncGenerator[bytes, None]:
        """What a running job has written so far, or a finished job's stored logs: a
        chunk at a time, each read in a thread, so that a large log holds neither the
        event loop nor the memory. Closed (`aclose`) by a reader that stops early."""
        if name in self.running and isinstance(self.backend, LiveLogs):
            live = await self.backend.live_logs(name)
            if live is not None:  # running where its log file is not written yet
                async with contextlib.aclosing(live):  # its connection, let go early
                    with contextlib.suppress(FileNotFoundError):  # an earlier run's notes
                        yield await asyncio.to_thread(self.log_path(name).read_bytes)
                    async for chunk in live:
                        yield chunk
                return
        try:
            log = await asyncio.to_thread(open, self.log_path(name), "rb")
        except FileNotFoundError:  # not started, or finished (its file goes once stored)
            log = None
        if log is None:
            offset = 0
            while chunk := await asyncio.to_thread(
                self.store.job_logs_chunk, name, offset, LOG_CHUNK
            ):
                yield chunk
                offset += len(chunk)
            return
        try:
            # Up to what was written when asked: a job writing fast must not keep this going.
            left = os.fstat(log.fileno()).st_size
            while left > 0 and (chunk := await asyncio.to_thread(log.read, min(left, LOG_CHUNK))):
                yield chunk
                left -= len(chunk)
        finally:
            log.close()

    async def delete(self, name: str) -> None:
        """Forget a job; a running one is stopped first."""
        await self.delete_many([name])

    async def delete_many(self, names: Iterable[str]) -> None:
        """Forget these jobs; the running ones are stopped, all at once.

        Every one is out of the store before any is stopped, with no await in between:
        a worker a stop frees finds the pending ones gone (`start_job` fails), so none
        of them starts (deleted one by one, each stop let the next queued job start).
        Their files go first: on a full disk the store may need their space to delete.
        """
        stopping: dict[str, asyncio.Task[int]] = {}
        try:
            for name in names:
                self.log_path(name).unlink(missing_ok=True)
                self.event_path(name).unlink(missing_ok=True)
                self.end_path(name).unlink(missing_ok=True)
                self.store.remove_job(name)
                self._unrecorded.pop(name, None)
                task = self.running.pop(name, None)
                if task is not None:
                    task.cancel()
                    stopping[name] = task
        finally:
            # Those cancelled are waited for even when the store fails half way: their
            # rows are gone, so a job left running would end unrecorded.
            try:
                if stopping:
                    await asyncio.wait(stopping.values())  # never raises their errors
            finally:
                for name in stopping:  # written to while being stopped
                    self.log_path(name).unlink(missing_ok=True)
                    self.event_path(name).unlink(missing_ok=True)


def _read_end(path: Path) -> tuple[int | None, str]:
    """The exit status and reason in a job's end file; one that cannot be read (its
    writing failed half way): none, and a reason saying so (the job is Failed)."""
    try:
        kept = strict_json.loads(path.read_bytes())
        code, reason = kept["exit_code"], kept["reason"]
    except (OSError, strict_json.NotJson, KeyError, TypeError):
        return None, LOST_END
    if (code is None or type(code) is int) and isinstance(reason, str):
        return code, reason
    return None, LOST_END
