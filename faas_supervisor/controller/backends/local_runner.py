"""Warm jobs for the local backend: a runner per service forks a child per job.

A fresh `faas-supervisor run` per job pays an interpreter start and its imports (boto3,
the storage providers) every time. Instead the backend starts, at a service's first job,
one runner process (`faas-supervisor job-runner FOLDER`, with the service's environment)
that imports what `run` uses once and then waits on its control socket (its stdin). Each
job is a message there, with the job's log and event as descriptors; the runner forks a
child that becomes exactly what `faas-supervisor run` would have been, then runs `run`'s
own code (`cli.main(["run", ...])`) and exits with its status:

* the job's environment, set whole into `os.environ` before any of `run`'s code runs;
  its standard input (the event file, or /dev/null), output and error (the log) on fds
  0, 1, 2 and no other descriptor of the runner; its own process group; the signal
  dispositions a fresh interpreter has; `run`'s exit status, or the signal that killed it;
  what an interpreter does at exit (non-daemon threads joined, atexit, flushes: 120 if
  one fails);
* the runner forks only from a single-threaded state that never ran an event loop: it is
  a plain `poll` loop, and each child runs its own `asyncio.run`.

The runner reaps its children as `processes.Child.wait` does (SIGKILL to what is left of
the child's group, then reaped), so a signal it sends on the controller's behalf never
reaches a reused group id; it passes each child's pidfd to the controller. Stopped
(SIGTERM), it passes SIGTERM to every job (`run` stops its script, removes its folders,
exits 143) and exits once they are gone. Each child has PR_SET_PDEATHSIG=SIGTERM: if its
runner dies however (even by SIGKILL), its job stops the same way, and the controller
fails the job naming the cause. A controller killed outright leaves its runners running
their jobs to the end, as it left `run` processes before; the next start stops them.

Messages both ways are length-prefixed JSON frames on a Unix stream socket; descriptors
travel with the first byte of their frame (SCM_RIGHTS), so they are taken in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from faas_supervisor import processes

HEADER = struct.Struct("!I")
MAX_FDS = 8  # descriptors one receive may bring (a frame carries at most two)
READ_SIZE = 1 << 16
STOP_TIMEOUT = 15.0  # seconds a stopped runner gets to stop its jobs
READY_TIMEOUT = 60.0  # seconds a new runner may take to import what `run` uses
PR_SET_PDEATHSIG = 1
EXIT_RUNNER_GONE = 70  # a child whose runner died before it could arm PDEATHSIG
EXIT_FLUSH_FAILED = 120  # as CPython when flushing stdout/stderr at exit fails
WARM_MODULES = (
    # What `run` imports, at start or when a storage job needs it.
    "faas_supervisor.cli",
    "faas_supervisor.invocation",
    "faas_supervisor.responses",
    "faas_supervisor.processes",
    "faas_supervisor.logs",
    "faas_supervisor.parsers",
    "faas_supervisor.parsers.body",
    "faas_supervisor.storage_providers",
    "faas_supervisor.storage_providers.local",
    "faas_supervisor.storage_providers.s3",
    "faas_supervisor.storage_providers.webdav",
    "faas_supervisor.storage_providers.onedata",
    "boto3.session",
    "aiohttp",
)


# ---- frames ---------------------------------------------------------------------------------


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    return HEADER.pack(len(body)) + body


class Frames:
    """Messages out of a byte stream, with the descriptors that came along, in order."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.fds: deque[int] = deque()

    def feed(self, data: bytes, fds: Sequence[int]) -> None:
        self.buffer += data
        self.fds.extend(fds)

    def pop(self) -> dict[str, Any] | None:
        if len(self.buffer) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self.buffer)
        if len(self.buffer) < HEADER.size + size:
            return None
        body = bytes(self.buffer[HEADER.size:HEADER.size + size])
        del self.buffer[:HEADER.size + size]
        message: dict[str, Any] = json.loads(body)
        return message

    def take(self, count: int) -> list[int]:
        return [self.fds.popleft() for _ in range(min(count, len(self.fds)))]

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.popleft())


def _prctl(option: int, arg: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


# ---- the runner process ---------------------------------------------------------------------


def serve() -> int:
    """The runner (`faas-supervisor job-runner FOLDER`); its stdin is the control socket."""
    control = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # A fresh interpreter's dispositions, for the children (the runner changes these two).
    fresh = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    warm_up()
    return _Runner(control, fresh).loop()


def warm_up() -> None:
    """Import what `run` uses, and what building an S3 client imports (botocore loads
    most of itself then), so that no job pays it. Nothing here starts a thread."""
    import importlib

    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # an optional extra missing: `run` would fail alike
            print(f"job-runner: not preloaded: {name}: {exc}", file=sys.stderr)
    with contextlib.suppress(Exception):
        import boto3.session

        boto3.session.Session().client(
            "s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
            aws_access_key_id="warm-up", aws_secret_access_key="warm-up",
        )


class _Runner:
    def __init__(self, control: socket.socket, fresh: dict[signal.Signals, Any]) -> None:
        self.control = control
        self.fresh = fresh
        self.frames = Frames()
        self.children: dict[int, tuple[str, int | None]] = {}  # pid: (job, pidfd)
        self.by_job: dict[str, int] = {}
        self.signalled = False
        self.stopping = False
        self.controller_gone = False
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poll = select.poll()
        self.pid = os.getpid()

    def _on_signal(self, _sig: int, _frame: object) -> None:
        self.signalled = True  # acted on in the loop (the wakeup fd wakes the poll)

    def loop(self) -> int:
        signal.set_wakeup_fd(self.wake_w)
        for sig in self.fresh:
            signal.signal(sig, self._on_signal)
        self.poll.register(self.control, select.POLLIN)
        self.poll.register(self.wake_r, select.POLLIN)
        gc.freeze()  # what is here now stays in place: children do not copy it on write
        self._send({"ready": self.pid})
        while self.children or not (self.stopping or self.controller_gone):
            # Without pidfds, children are checked every 50 ms.
            timeout = 50 if any(fd is None for _, fd in self.children.values()) else None
            events = self.poll.poll(timeout)
            if self.signalled and not self.stopping:
                self._stop_all()
            for fd, _event in events:
                if fd == self.wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self.wake_r, 512)
                elif fd == self.control.fileno() and not self.controller_gone:
                    self._read_control()
            for pid in list(self.children):
                self._reap(pid)
        return 0

    def _stop_all(self) -> None:
        self.stopping = True
        for pid in self.children:
            self._signal(pid, signal.SIGTERM)

    def _signal(self, pid: int, sig: int) -> None:
        if pid in self.children:  # not reaped: its group's id is still its own
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)

    def _read_control(self) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.control, READ_SIZE, MAX_FDS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        if not data:
            # The controller is gone (killed outright): the jobs run to their end, as
            # `run` processes would; the next controller stops what is left.
            for fd in fds:
                os.close(fd)
            self.controller_gone = True
            self.poll.unregister(self.control)
            return
        self.frames.feed(data, fds)
        while (message := self.frames.pop()) is not None:
            if message["op"] == "run":
                self._start(message, self.frames.take(message["fds"]))
            elif message["op"] == "signal" and message["job"] in self.by_job:
                self._signal(self.by_job[message["job"]], int(message["signal"]))

    def _start(self, message: dict[str, Any], fds: list[int]) -> None:
        job = message["job"]
        try:
            if self.stopping:
                raise RuntimeError("the service's job runner is stopping")
            # Nothing buffered is written twice, by the runner and by the child.
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                self._child(message, fds)
            with contextlib.suppress(OSError):  # the child does it too: whoever is first
                os.setpgid(pid, pid)
        except (OSError, RuntimeError) as exc:
            self._send({"job": job, "error": str(exc)})
            return
        finally:
            for fd in fds:
                os.close(fd)
        try:
            pidfd: int | None = os.pidfd_open(pid)  # unreaped: it names this very child
        except (AttributeError, OSError):
            pidfd = None
        self.children[pid] = (job, pidfd)
        self.by_job[job] = pid
        if pidfd is not None:
            self.poll.register(pidfd, select.POLLIN)
        self._send({"job": job, "pid": pid, "pidfd": pidfd is not None},
                   [pidfd] if pidfd is not None else [])

    def _reap(self, pid: int) -> None:
        """As processes.Child.wait: once exited, SIGKILL to the rest of its group, reaped."""
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None or info.si_pid == 0:
            return
        self._signal(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        job, pidfd = self.children.pop(pid)
        self.by_job.pop(job, None)
        if pidfd is not None:
            self.poll.unregister(pidfd)
            os.close(pidfd)
        self._send({"job": job, "status": os.waitstatus_to_exitcode(status)})

    def _send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        if self.controller_gone:
            return
        data = frame(message)
        try:
            sent = socket.send_fds(self.control, [data], list(fds)) if fds else 0
            self.control.sendall(data[sent:])
        except OSError:  # the controller is gone
            self.controller_gone = True
            with contextlib.suppress(KeyError, ValueError):
                self.poll.unregister(self.control)

    # ---- in the child ---------------------------------------------------------------------

    def _child(self, message: dict[str, Any], fds: list[int]) -> NoReturn:
        status = EXIT_RUNNER_GONE
        try:
            os.setpgid(0, 0)
            # Dies with its runner as `run` does when stopped: SIGTERM.
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != self.pid:  # the runner died before that
                os._exit(EXIT_RUNNER_GONE)
            signal.set_wakeup_fd(-1)
            for sig, handler in self.fresh.items():
                signal.signal(sig, handler)
            # The runner's descriptors are not the job's.
            os.close(self.control.detach())
            os.close(self.wake_r)
            os.close(self.wake_w)
            for _job, pidfd in self.children.values():
                if pidfd is not None:
                    os.close(pidfd)
            self.frames.close()
            log = fds[0]
            stdin = fds[1] if len(fds) > 1 else os.open(os.devnull, os.O_RDONLY)
            os.dup2(stdin, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            for fd in {stdin, log}:
                os.close(fd)
            os.environ.clear()
            os.environ.update(message["env"])
            sys.argv = [sys.argv[0], *message["args"]]
            status = _as_main(message["args"])
        except BaseException:  # whatever happens, the child never returns
            with contextlib.suppress(BaseException):
                sys.excepthook(*sys.exc_info())
        os._exit(status)


def _as_main(args: list[str]) -> int:
    """`sys.exit(main(args))` in a fresh interpreter, up to its exit: the status."""
    from faas_supervisor.cli import main

    try:
        code: object = main(args)
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # as the interpreter: printed, status 1
        sys.excepthook(*sys.exc_info())
        code = 1
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    return _finalize(status)


def _finalize(status: int) -> int:
    """What the interpreter does at exit: wait for non-daemon threads, run atexit, flush."""
    import atexit
    import threading

    threading._shutdown()  # type: ignore[attr-defined]  # as multiprocessing's children
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            status = EXIT_FLUSH_FAILED
    return status


# ---- the controller's side ------------------------------------------------------------------


class RunnerDied(Exception):
    """The service's runner ended while a job was on it, or could not start."""


class WarmJob:
    """One job given to a runner: its pid and pidfd once forked, its exit status."""

    def __init__(self, name: str, sending: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        self.name = name
        self.sending = sending  # its frame on the way: a signal for it goes after
        self.started: asyncio.Future[int] = loop.create_future()
        self.done: asyncio.Future[int] = loop.create_future()
        self.pid = 0
        self.pidfd: int | None = None

    def _fail(self, error: BaseException) -> None:
        for future in (self.started, self.done):
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: not every job awaits both

    @property
    def runner_died(self) -> bool:
        return self.done.done() and isinstance(self.done.exception(), RunnerDied)

    async def after_runner_died(self, grace: float) -> None:
        """The runner died: its children got SIGTERM (PDEATHSIG) and stop as `run` does.
        Wait for this one (`grace`), then SIGKILL its group if it is still alive."""
        if self.pidfd is None:
            return
        try:
            await asyncio.wait_for(_readable(self.pidfd), grace)
        except TimeoutError:
            if not select.select([self.pidfd], [], [], 0)[0]:  # alive: the group is its own
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class Runner:
    """The controller's handle on one service's runner: started at its first job (and
    again after dying), stopped with the service."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path,
                 pids: Any) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log = log
        self.pids = pids  # the backend's _Pids: record(pid) -> Path
        self.jobs: dict[str, WarmJob] = {}
        self.idle = asyncio.Event()
        self.idle.set()
        self._lock = asyncio.Lock()  # one start at a time
        self._send_lock = asyncio.Lock()  # frames are never interleaved
        self._process: processes.Child | None = None
        self._socket: socket.socket | None = None
        self._watch: asyncio.Task[None] | None = None
        self.stopped = False

    async def ensure(self) -> None:
        """The runner started and ready (its imports done)."""
        async with self._lock:
            if self.stopped:
                raise RunnerDied(f"the job runner of service {self.name} is stopped")
            if self._watch is not None and not self._watch.done():
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            ours.setblocking(False)
            try:
                with open(self.log, "ab") as out:
                    process = processes.spawn(self.command, env=self.env, stdin=theirs.fileno(),
                                              stdout=out, stderr=subprocess.STDOUT)
            finally:
                theirs.close()
            ready = asyncio.get_running_loop().create_future()
            self._process, self._socket = process, ours
            self._watch = asyncio.create_task(self._supervise(process, ours, ready),
                                              name=f"job-runner-{self.name}")
            try:
                await asyncio.wait_for(asyncio.shield(ready), READY_TIMEOUT)
            except TimeoutError:
                process.kill_group()
                raise RunnerDied(f"the job runner of service {self.name} did not start in "
                                 f"{READY_TIMEOUT:g} s (its log: {self.log})") from None

    async def _supervise(self, process: processes.Child, sock: socket.socket,
                         ready: asyncio.Future[int]) -> None:
        pid_file = self.pids.record(process.pid)
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
            job._fail(error)
            self._forget(job)

    async def _read(self, sock: socket.socket, ready: asyncio.Future[int]) -> None:
        frames = Frames()
        try:
            while True:
                await _readable(sock.fileno())
                try:
                    data, fds, _flags, _addr = socket.recv_fds(sock, READ_SIZE, MAX_FDS)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return
                if not data:
                    return
                frames.feed(data, fds)
                while (message := frames.pop()) is not None:
                    self._dispatch(message, frames, ready)
        finally:
            frames.close()

    def _dispatch(self, message: dict[str, Any], frames: Frames,
                  ready: asyncio.Future[int]) -> None:
        if "ready" in message:
            if not ready.done():
                ready.set_result(int(message["ready"]))
            return
        fds = frames.take(1) if message.get("pidfd") else []
        job = self.jobs.get(message["job"])
        if job is None:
            for fd in fds:
                os.close(fd)
            return
        if "pid" in message:
            job.pid = int(message["pid"])
            job.pidfd = fds[0] if fds else None
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

    async def _send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        """One frame, whole; `fds` are closed once sent (or not)."""
        try:
            sock = self._socket
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
                        await _writable(sock.fileno())
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
               fds: Sequence[int]) -> WarmJob:
        """Give the job to the runner (ensure() first). `fds`: its log, then its stdin if
        not /dev/null; copied, so the caller may close them. Await `started`, then `done`."""
        copies = [os.dup(fd) for fd in fds]
        message = {"op": "run", "job": job, "args": args, "env": env, "fds": len(copies)}
        # A task of its own: a frame is never cut halfway, whatever is cancelled.
        sending = asyncio.ensure_future(self._send(message, copies))
        warm = WarmJob(job, sending)
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
            await self._send({"op": "signal", "job": job.name, "signal": sig})

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
        async with self._lock:
            if self._process is not None:
                await asyncio.shield(self._process.stop(STOP_TIMEOUT))
            if self._watch is not None:
                await asyncio.shield(self._watch)


async def _readable(fd: int) -> None:
    await _ready(fd, write=False)


async def _writable(fd: int) -> None:
    await _ready(fd, write=True)


async def _ready(fd: int, write: bool) -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await future
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
