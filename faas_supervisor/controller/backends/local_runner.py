"""The controller's side of the local backend's warm job runners (job_runner.py).

One `Runner` per service: the runner process is started at the service's first job
(again if it died), stopped with the service, replaced when the service is updated, and
stopped when it has had no job for `idle_stop` seconds (its ~64 MiB and its spare child
given back; the next job starts it again, as the first did). A
job is a message to it; `WarmJob` follows the job's child: forked (its pid), its exit
status, or the runner's death (RunnerDied). Signals to a job go through the runner,
which alone reaps its children, so they never reach a reused group id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faas_supervisor import processes
from faas_supervisor.job_runner import READ_SIZE, Frames, frame

STOP_TIMEOUT = 15.0  # seconds a stopped runner gets to stop its jobs
READY_TIMEOUT = 60.0  # seconds a new runner may take to import what `run` uses
IDLE_STOP = 300.0  # seconds a runner with no job is kept (--runner-idle)


@dataclass(frozen=True)
class JobLog:
    """A job's log as its `run` keeps it while it runs (job_runner._CappedLog): past
    2 x `cap` bytes, only its last `keep`, after a line saying what was cut."""

    path: Path
    cap: int
    keep: int


class RunnerDied(Exception):
    """The service's runner ended while a job was on it, or could not start."""


class WarmJob:
    """One job given to a runner: its pid once forked, its exit status."""

    def __init__(self, name: str, sock: socket.socket | None,
                 sending: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        self.name = name
        self.sock = sock  # the connection to the runner process it was given to
        self.sending = sending  # its frame on the way: a signal for it goes after
        self.started: asyncio.Future[int] = loop.create_future()
        self.done: asyncio.Future[int] = loop.create_future()
        self.pid = 0

    def _fail(self, error: BaseException) -> None:
        for future in (self.started, self.done):
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: not every job awaits both

    @property
    def runner_died(self) -> bool:
        return self.done.done() and isinstance(self.done.exception(), RunnerDied)


class Runner:
    """The controller's handle on one service's runner: started at its first job (and
    again after dying), stopped with the service."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path,
                 record: Callable[[int], Path], idle_stop: float = IDLE_STOP,
                 files: Sequence[Path] = ()) -> None:
        self.name = name
        self.command = command
        self.env = env
        # What its jobs read of its definition (the backend's own links to the script and
        # config it was made with): removed once it is stopped for good.
        self.files = tuple(files)
        self.log = log
        self.record = record  # a pid file, so that a later controller finds the runner
        self.jobs: dict[str, WarmJob] = {}
        self.idle = asyncio.Event()
        self.idle.set()
        self._lock = asyncio.Lock()  # one start at a time
        self._send_lock = asyncio.Lock()  # frames are never interleaved
        self._process: processes.Child | None = None
        self._socket: socket.socket | None = None
        self._watch: asyncio.Task[None] | None = None
        # Those of runner processes that died and were replaced, still finishing.
        self._ending: set[asyncio.Task[None]] = set()
        self.stopped = False
        self.idle_stop = idle_stop
        self._idle_timer: asyncio.TimerHandle | None = None
        self._parking: asyncio.Task[None] | None = None

    async def ensure(self) -> None:
        """The runner started and ready (its imports done)."""
        async with self._lock:
            if self.stopped:
                raise RunnerDied(f"the job runner of service {self.name} is stopped")
            if self._watch is not None and not self._watch.done():
                assert self._process is not None
                # Dead, not yet seen by _supervise: replaced now, not given a job.
                if not self._process.has_exited():
                    return
                self._ending.add(self._watch)
                self._watch.add_done_callback(self._ending.discard)
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                ours.setblocking(False)
                with open(self.log, "ab") as out:
                    process = processes.spawn(self.command, env=self.env, stdin=theirs.fileno(),
                                              stdout=out, stderr=subprocess.STDOUT)
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            pid_file = self.record(process.pid)
            ready = asyncio.get_running_loop().create_future()
            self._process, self._socket = process, ours
            self._watch = asyncio.create_task(self._supervise(process, ours, ready, pid_file),
                                              name=f"job-runner-{self.name}")
            try:
                await asyncio.wait_for(asyncio.shield(ready), READY_TIMEOUT)
            except TimeoutError:
                process.kill_group()
                raise RunnerDied(f"the job runner of service {self.name} did not start in "
                                 f"{READY_TIMEOUT:g} s (its log: {self.log})") from None
            finally:
                # However the wait ends: cancelled too (the job that started the runner
                # deleted meanwhile), or the runner and its spare would stay with no job
                # and no clock. A job, if any, is submitted next: that stops the clock.
                if self.idle.is_set():
                    self._idle_from_now()

    async def _supervise(self, process: processes.Child, sock: socket.socket,
                         ready: asyncio.Future[int], pid_file: Path) -> None:
        reader = asyncio.ensure_future(self._read(sock, ready))
        try:
            status = await process.wait()
            # What it sent before it died is read first (EOF comes once all is read).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), 5)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            pid_file.unlink(missing_ok=True)
            sock.close()
        how = (f"killed by {signal.Signals(-status).name}" if status < 0
               else f"exit status {status}")
        error = RunnerDied(f"the job runner of service {self.name} ended ({how}; "
                           f"its log: {self.log})")
        if not ready.done():
            ready.set_exception(error)
            ready.exception()
        for job in list(self.jobs.values()):
            if job.sock is sock:  # not those given to the runner that replaced it
                job._fail(error)
                self._forget(job)

    async def _read(self, sock: socket.socket, ready: asyncio.Future[int]) -> None:
        frames = Frames()
        try:
            while True:
                await processes.readable(sock.fileno())
                try:
                    data = sock.recv(READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return
                if not data:
                    return
                frames.feed(data, ())
                while (message := frames.pop()) is not None:
                    self._dispatch(message, ready)
        finally:
            frames.close()

    def _dispatch(self, message: dict[str, Any], ready: asyncio.Future[int]) -> None:
        if "ready" in message:
            if not ready.done():
                ready.set_result(int(message["ready"]))
            return
        job = self.jobs.get(message["job"])
        if job is None:
            return
        if "pid" in message:
            job.pid = int(message["pid"])
            if not job.started.done():
                job.started.set_result(job.pid)
        elif "error" in message:
            job._fail(RuntimeError(message["error"]))
            self._forget(job)
        elif "status" in message:
            if not job.done.done():
                job.done.set_result(int(message["status"]))
            self._forget(job)

    def _forget(self, job: WarmJob) -> None:
        self.jobs.pop(job.name, None)
        if not self.jobs:
            self.idle.set()
            self._idle_from_now()

    def _idle_from_now(self) -> None:
        """Stop the runner process once it has had no job for `idle_stop` seconds."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(self.idle_stop,
                                                                 self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if self.idle.is_set() and not self.stopped and self._parking is None:
            self._parking = asyncio.create_task(self._park(), name=f"park-runner-{self.name}")
            self._parking.add_done_callback(self._parked)

    def _parked(self, task: asyncio.Task[None]) -> None:
        self._parking = None
        if not task.cancelled() and task.exception() is not None:
            task.exception()  # retrieved: a runner that would not stop is stop()'s to kill

    async def _park(self) -> None:
        """The idle runner process stopped; this Runner stays, and its next ensure()
        starts a new one. A job given meanwhile (ensure() waits for this lock, then
        submit()) finds the runner stopped and started again."""
        async with self._lock:
            process = self._process
            if not self.idle.is_set() or self.stopped or process is None or process.has_exited():
                return
            await asyncio.shield(process.stop(STOP_TIMEOUT))
            if self._watch is not None:
                await asyncio.shield(self._watch)

    async def _send(self, sock: socket.socket | None, message: dict[str, Any],
                    fds: Sequence[int] = ()) -> None:
        """One frame, whole, to the runner process `sock` leads to; `fds` are closed once
        sent (or not)."""
        try:
            if sock is None or sock.fileno() < 0:
                raise RunnerDied(f"the job runner of service {self.name} is not running")
            data = memoryview(frame(message))
            async with self._send_lock:
                first = True
                while data:
                    try:
                        if first and fds:
                            sent = socket.send_fds(sock, [data], list(fds))
                        else:
                            sent = sock.send(data)
                    except (BlockingIOError, InterruptedError):
                        await processes.writable(sock.fileno())
                        continue
                    except OSError as exc:
                        raise RunnerDied(f"the job runner of service {self.name} is gone: "
                                         f"{exc}") from None
                    first = False
                    data = data[sent:]
        finally:
            for fd in fds:
                os.close(fd)

    def submit(self, job: str, args: list[str], env: dict[str, str],
               fds: Sequence[int], log: JobLog | None = None) -> WarmJob:
        """Give the job to the runner (ensure() first). `fds`: its log, then its stdin if
        not /dev/null; copied, so the caller may close them. `log`: the log's file and
        cap, for the job to keep it bounded. Await `started`, then `done`."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        copies = [os.dup(fd) for fd in fds]
        message: dict[str, Any] = {"op": "run", "job": job, "args": args, "env": env,
                                   "fds": len(copies)}
        if log is not None:
            message["log"] = {"path": str(log.path), "cap": log.cap, "keep": log.keep}
        # A task of its own: a frame is never cut halfway, whatever is cancelled.
        sending = asyncio.ensure_future(self._send(self._socket, message, copies))
        warm = WarmJob(job, self._socket, sending)
        self.jobs[job] = warm
        self.idle.clear()

        def sent(task: asyncio.Future[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                warm._fail(task.exception() or RunnerDied(self.name))
                self._forget(warm)

        sending.add_done_callback(sent)
        return warm

    async def signal(self, job: WarmJob, sig: int) -> None:
        """`sig` to the job's process group, through the runner (which alone reaps it)."""
        with contextlib.suppress(Exception):
            await asyncio.shield(job.sending)  # the runner knows the job first
        if job.done.done():
            return
        with contextlib.suppress(RunnerDied):
            await self._send(job.sock, {"op": "signal", "job": job.name, "signal": sig})

    async def stop_job(self, job: WarmJob, grace: float) -> None:
        """As processes.Child.stop: SIGTERM to its group, SIGKILL after `grace`; returns
        once it is reaped (or its runner died)."""
        await self.signal(job, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(job.done), grace)
        except TimeoutError:
            await self.signal(job, signal.SIGKILL)
        except Exception:  # it never started, or the runner died
            return
        with contextlib.suppress(Exception):
            await asyncio.shield(job.done)

    async def stop(self) -> None:
        """SIGTERM (its jobs get SIGTERM and it exits once they are gone), SIGKILL to
        its group after a grace period. No start after this."""
        self.stopped = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._parking is not None:  # it stops the process or, stopped=True, nothing
            with contextlib.suppress(Exception):
                await asyncio.shield(self._parking)
        async with self._lock:
            if self._process is not None:
                await asyncio.shield(self._process.stop(STOP_TIMEOUT))
            await asyncio.shield(asyncio.gather(
                *([self._watch] if self._watch is not None else []), *self._ending))
        for path in self.files:  # no job of it is left to read them
            path.unlink(missing_ok=True)

