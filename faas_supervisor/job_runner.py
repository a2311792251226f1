"""The local backend's warm job runner: a process that forks a child per job, each
becoming exactly what `faas-supervisor run` would have been.

A fresh `faas-supervisor run` per job pays an interpreter start and its imports (boto3,
the storage providers) every time. The runner (`faas-supervisor job-runner FOLDER`,
started by the controller with the service's environment) imports what `run` uses once,
builds the command's parser, and waits on its control socket (its stdin). Each job is a
message there, with the job's log and event as descriptors; the runner forks a child
that runs `run`'s own code (`cli.main(["run", ...])`) and exits with its status:

* the job's environment, set whole into `os.environ` before any of `run`'s code runs
  (its C locale coerced as a fresh interpreter's start does: _coerce_c_locale);
  its standard input (the event file, or /dev/null), output and error (the log) on fds
  0, 1, 2 and no other descriptor of the runner; its own process group; the signal
  dispositions a fresh interpreter has; `run`'s exit status, or the signal that killed
  it; what an interpreter does at exit (non-daemon threads joined, atexit, flushes: 120
  if one fails);
* the runner forks only from a single-threaded state that never ran an event loop: it
  is a plain `poll` loop, and each child runs its own `asyncio.run`.

The child is forked ahead of its job (a "spare"): once fresh (its own group, fresh
dispositions, none of the runner's descriptors) it waits on a socket of its own for its
job's frame, which the runner passes on as it came, descriptors and all; the next spare
is forked once the job is on its way. A job's start so waits for no fork (about 2 ms on
a 64 MiB runner). A spare that died or could not be forked is replaced by a fork at the
job; a runner that stops, or whose controller is gone, ends its spare (which, the
runner gone, sees its socket close and exits by itself).

The runner reaps its children as `processes.Child.wait` does (SIGKILL to what is left of
the child's group, then reaped), so a signal it sends on the controller's behalf never
reaches a reused group id. Stopped (SIGTERM), it passes SIGTERM to every job (`run`
stops its script, removes its folders, exits 143) and exits once they are gone. Each
job gets one SIGTERM, never two (a second one reaching `run` once its own handler is
gone, in its last cleanup, would end it there): if the runner dies, its children come
to the controller (a subreaper), which stops each once. A controller killed outright
leaves its runners running their jobs to the end, as it left `run` processes before;
the runner then exits with its last job, and the next start stops what is left.

A job's log is kept bounded while it runs (`_CappedLog`): its `run` writes it through
sys.stdout and sys.stderr, and a log past twice its cap goes on in a new file holding its
end. Kept whole, a job printing without end filled the data folder's disk.

Messages both ways are length-prefixed JSON frames on a Unix stream socket; a job's fds
travel with the first byte of their frame (SCM_RIGHTS), so they are taken in order.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

from faas_supervisor import frozen, log_cut, processes

HEADER = struct.Struct("!I")
MAX_FDS = 8  # descriptors one receive may bring (a frame carries at most two)
READ_SIZE = 1 << 16
SPARE_DELAY = 0.1  # seconds after a job's start before the next spare is forked (_start)
EXIT_CHILD_FAILED = 70  # a child that could not become the job's `run` (printed)
EXIT_FLUSH_FAILED = 120  # as CPython when flushing stdout/stderr at exit fails
CONFIG_FILE = "function_config.yaml"  # in the service's folder, as the local backend writes it
UTF8_LOCALES = ("C.UTF-8", "C.utf8", "UTF-8")  # PEP 538's, in CPython's order (_coerce_c_locale)
WARM_MODULES = (
    # What `run` imports, at start or when a job needs it (with every module of the
    # packages named here: the event parsers and the storage providers).
    "faas_supervisor.cli",
    "faas_supervisor.invocation",
    "faas_supervisor.responses",
    "faas_supervisor.processes",
    "faas_supervisor.logs",
    "faas_supervisor.parsers",
    "faas_supervisor.storage_providers",
    "boto3.session",
    "botocore.client",  # what making an S3 client imports
    "boto3.s3.inject",
    "boto3.s3.transfer",
    "aiohttp",
    # Imported by `run` on first use rather than at start (docs/ARCHITECTURE.md, "What is
    # imported when"): the config's YAML, and the log lines' renderer.
    "yaml",
    "structlog",
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


def serve(folder: str) -> int:
    """The runner (`faas-supervisor job-runner FOLDER`); its stdin is the control socket."""
    try:
        control = socket.socket(fileno=os.dup(0))
    except OSError:  # started by hand: stdin is no socket
        print("faas-supervisor: error: job-runner is started by the controller's local "
              "backend, its stdin a socket", file=sys.stderr)
        return 2
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # A fresh interpreter's dispositions, for the children (the runner changes these two).
    fresh = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    warm_up()
    from faas_supervisor import config
    from faas_supervisor.cli import build_parser

    # The service's config, parsed once here: a job whose `--config` holds the same text
    # takes this parse instead of YAML's (config.parse_ahead; the file is still read).
    config.parse_ahead(Path(folder) / CONFIG_FILE)

    return _Runner(control, fresh, build_parser()).loop()


def warm_up() -> None:
    """Import what `run` uses, so that no job pays it. Nothing here starts a thread.

    botocore's S3 models are read too (storage_providers/s3.load_models): a job forked
    from here makes its S3 client from them in milliseconds instead of about 85 ms, for
    about 15 MiB more in the runner (shared with its jobs until written). Only the models:
    a job's boto3 session is its own, reading the AWS config files as they are then."""
    import importlib
    import pkgutil

    names = list(WARM_MODULES)
    while names:
        name = names.pop(0)
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # a warm-up: the job that needs it will say why
            print(f"job-runner: not preloaded: {name}: {exc}", file=sys.stderr)
            continue
        if name.startswith("faas_supervisor.") and hasattr(module, "__path__"):
            names += [f"{name}.{m.name}" for m in pkgutil.iter_modules(module.__path__)]
    try:
        from faas_supervisor.storage_providers import s3

        s3.load_models()
    except Exception as exc:  # e.g. AWS_PROFILE naming no profile: only the jobs that
        # use S3 must fail (and say why), as with a fresh `run`
        print(f"job-runner: S3 models not preloaded: {exc}", file=sys.stderr)


class _Runner:
    def __init__(self, control: socket.socket, fresh: dict[signal.Signals, Any],
                 parser: argparse.ArgumentParser) -> None:
        self.control = control
        self.parser = parser  # the command's parser, built once (as `main` would build it)
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
        # The next job's child, forked ahead and waiting on its socket for the job: a
        # job's start does not wait for a fork (_fork_spare).
        self.spare: tuple[int, socket.socket] | None = None
        self.spare_due: float | None = None  # time.monotonic() when the next one is forked

    def _on_signal(self, _sig: int, _frame: object) -> None:
        self.signalled = True  # acted on in the loop (the wakeup fd wakes the poll)

    def loop(self) -> int:
        signal.set_wakeup_fd(self.wake_w)
        for sig in self.fresh:
            signal.signal(sig, self._on_signal)
        self.poll.register(self.control, select.POLLIN)
        self.poll.register(self.wake_r, select.POLLIN)
        gc.freeze()  # what is here now stays in place: children do not copy it on write
        self._fork_spare()
        self._send({"ready": self.pid})
        while self.children or not (self.stopping or self.controller_gone):
            if self.stopping or self.controller_gone:
                self._drop_spare()  # no job comes any more
            # Without pidfds, children are checked every 50 ms.
            timeout = 50 if any(fd is None for _, fd in self.children.values()) else None
            if self.spare_due is not None:
                due = max(0, math.ceil((self.spare_due - time.monotonic()) * 1000))
                timeout = due if timeout is None else min(timeout, due)
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
            if self.spare_due is not None and time.monotonic() >= self.spare_due:
                self._fork_spare()
        self._drop_spare()
        return 0

    def _stop_all(self) -> None:
        self.stopping = True
        for pid in self.children:
            self._signal(pid, signal.SIGTERM)

    def _signal(self, pid: int, sig: int) -> None:
        if pid in self.children:  # not reaped: its group's id is still its own
            processes.signal_forked_group(pid, sig)

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
            pid = self._hand_to_spare(message, fds)
            if pid is None:  # no spare (it died, or its fork failed): forked now
                pid = self._fork(lambda: self._child(message, fds))
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
        self._send({"job": job, "pid": pid})
        # The next spare, once this job has started its script: its fork and rehearsal
        # take a few ms of CPU, which now would compete for the cores with this job's
        # start. Sooner if a job ends first (_reap).
        if self.spare is None and self.spare_due is None:
            self.spare_due = time.monotonic() + SPARE_DELAY

    def _fork(self, child: Callable[[], NoReturn]) -> int:
        """A child in its own process group, running `child()`."""
        # Nothing buffered is written twice, by the runner and by the child.
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked across the fork: one sent to the child before it has a fresh
        # interpreter's dispositions waits for them (and is not taken by the
        # runner's handler, copied into the child).
        signal.pthread_sigmask(signal.SIG_BLOCK, self.fresh)
        try:
            pid = os.fork()
            if pid == 0:
                child()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self.fresh)
        with contextlib.suppress(OSError):  # the child does it too: whoever is first
            os.setpgid(pid, pid)
        return pid

    def _fork_spare(self) -> None:
        self.spare_due = None
        if self.spare is not None or self.stopping or self.controller_gone:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = self._fork(lambda: self._spare_child(ours, theirs))
        except OSError as exc:  # the next job forks its own child (and reports if it cannot)
            print(f"job-runner: no spare child: {exc}", file=sys.stderr)
            ours.close()
            return
        finally:
            theirs.close()
        self.spare = (pid, ours)

    def _hand_to_spare(self, message: dict[str, Any], fds: list[int]) -> int | None:
        """The spare child's pid once the job is its own, or None (no spare, or it died)."""
        if self.spare is None:
            return None
        pid, sock = self.spare
        self.spare = None
        try:
            data = memoryview(frame(message))
            sent = socket.send_fds(sock, [data], fds)
            if sent < len(data):
                sock.sendall(data[sent:])
        except OSError:
            self._end_spare(pid, sock)
            return None
        sock.close()
        return pid

    def _drop_spare(self) -> None:
        if self.spare is not None:
            self._end_spare(*self.spare)
            self.spare = None

    def _end_spare(self, pid: int, sock: socket.socket) -> None:
        """A spare that has no job: ended, reaped."""
        sock.close()
        processes.signal_forked_group(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

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
        if self.spare_due is not None:
            self.spare_due = time.monotonic()  # forked now, its job done: no one to slow

    def _send(self, message: dict[str, Any]) -> None:
        if self.controller_gone:
            return
        try:
            self.control.sendall(frame(message))
        except OSError:  # the controller is gone
            self.controller_gone = True
            with contextlib.suppress(KeyError, ValueError):
                self.poll.unregister(self.control)

    # ---- in the child ---------------------------------------------------------------------

    def _spare_child(self, ours: socket.socket, theirs: socket.socket) -> NoReturn:
        """Forked ahead of its job: becomes a fresh child, then waits for its job's frame
        (and descriptors) on `theirs`; ends quietly if the runner closes it instead."""
        status = EXIT_CHILD_FAILED
        try:
            ours.close()
            self._become_fresh()
            self._rehearse()
            frames = Frames()
            while (message := frames.pop()) is None:
                data, fds, _flags, _addr = socket.recv_fds(theirs, READ_SIZE, MAX_FDS)
                if not data:
                    frames.close()
                    os._exit(0)  # no job for it: dropped by the runner
                frames.feed(data, fds)
            theirs.close()
            self._job(message, frames.take(message["fds"]))
        except BaseException:  # whatever happens, the child never returns
            with contextlib.suppress(BaseException):
                sys.excepthook(*sys.exc_info())
        os._exit(status)

    def _rehearse(self) -> None:
        """Run, to no effect, what every job runs first: parse a `run` command line, and
        an event loop's whole life (`asyncio.run`). The pages that writes (reference
        counts, caches, the interpreter's frame stack) are copied from the runner now,
        while the spare waits, instead of one page fault at a time in the job's start:
        about 550 fewer faults there. Nothing of it is left: the loop is closed, the
        signal handlers and wakeup fd it set are put back, the parse is dropped."""
        import asyncio

        with contextlib.suppress(Exception):
            self.parser.parse_args(["run", "--script", "-", "--config", "-"])
            asyncio.run(asyncio.sleep(0))

    def _child(self, message: dict[str, Any], fds: list[int]) -> NoReturn:
        status = EXIT_CHILD_FAILED
        try:
            self._become_fresh()
            self._job(message, fds)
        except BaseException:  # whatever happens, the child never returns
            with contextlib.suppress(BaseException):
                sys.excepthook(*sys.exc_info())
        os._exit(status)

    def _become_fresh(self) -> None:
        """In a child: its own group, a fresh interpreter's signal dispositions, none of
        the runner's descriptors."""
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for sig, handler in self.fresh.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.fresh)
        os.close(self.control.detach())
        os.close(self.wake_r)
        os.close(self.wake_w)
        for _job, pidfd in self.children.values():
            if pidfd is not None:
                os.close(pidfd)
        if self.spare is not None:  # another spare's end (not forked from here as is)
            self.spare[1].close()
        self.frames.close()

    def _job(self, message: dict[str, Any], fds: list[int]) -> NoReturn:
        """In a fresh child: become the job's `run`, exit with its status."""
        status = EXIT_CHILD_FAILED
        try:
            log = fds[0]
            stdin = fds[1] if len(fds) > 1 else os.open(os.devnull, os.O_RDONLY)
            os.dup2(stdin, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            for fd in {stdin, log}:
                os.close(fd)
            os.environ.clear()
            os.environ.update(message["env"])
            _coerce_c_locale()
            capped = _CappedLog.install(message["log"]) if "log" in message else None
            sys.argv = [sys.argv[0], *message["args"]]
            status = _as_main(message["args"], self.parser)
            if capped is not None:
                capped.finish()
        except BaseException:  # whatever happens, the child never returns
            with contextlib.suppress(BaseException):
                sys.excepthook(*sys.exc_info())
        os._exit(status)


class _CappedLog:
    """A job's log (fds 1 and 2 of its `run`) kept under about twice `cap` bytes while the
    job runs, its end kept: a job printing for ever would fill the data folder's disk long
    before its end, where the store keeps only the log's end anyway (`cap` bytes, the
    store's LOG_MAX, after a line saying what was cut).

    `run` writes the log through sys.stdout and sys.stderr (its log stream: the script's
    output, as its copier thread reads it, and its own lines), which `install` puts over
    this. Past twice `cap`, the log's last `keep` bytes, after that line (the store's
    words, counting what the job wrote in all), go into a new file (log_cut.rotate), which
    takes the log's name and fds 1 and 2. Nothing written is lost: no one else
    writes the log while its `run` runs (the controller writes its notes between runs),
    and a write waits while the log is cut. At the job's end, a log past `cap` is cut so
    once more, so that the store keeps it whole, its first line counting all."""

    def __init__(self, path: str, cap: int, keep: int) -> None:
        self.path = path
        self.cap = cap
        self.keep = keep  # cap less the room of the line saying what was cut
        # Re-entrant: a signal handler that prints, run while its thread holds the lock,
        # writes (the cut is not started again from there).
        self.lock = threading.RLock()
        # The log's file, read (its size, the end a cut copies): opened again, as the
        # descriptor the job was given is write-only.
        self.fd = os.open("/proc/self/fd/1", os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size  # what it holds (an earlier run's lines too)
        self.total = self.size  # what it held, what was cut from it too
        self.limit = 2 * cap  # the size at which it is cut
        self._cutting = False

    @classmethod
    def install(cls, spec: dict[str, Any]) -> _CappedLog | None:
        """sys.stdout and sys.stderr writing the log through a new _CappedLog, with their
        encodings, error handlers and buffering. None if it cannot be read (no /proc):
        the job runs all the same, its log not kept bounded, and says so."""
        try:
            log = cls(str(spec["path"]), int(spec["cap"]), int(spec["keep"]))
        except OSError as exc:
            print(f"faas-supervisor: the log is not kept bounded: {exc}", file=sys.stderr)
            return None
        sys.stdout = _LogOutput.over(sys.stdout, log, 1)
        sys.stderr = _LogOutput.over(sys.stderr, log, 2)
        return log

    def write(self, fd: int, data: ReadableBuffer) -> int:
        with self.lock:
            written = os.write(fd, data)
            self.size += written
            self.total += written
            if self.size > self.limit and not self._cutting:
                self._cut(self.limit)
            return written

    def finish(self) -> None:
        """At the job's end: the log cut to at most `cap` (the store's note then counts
        what the job wrote in all)."""
        with self.lock:
            self._cut(self.cap)

    def _cut(self, limit: int) -> None:
        """The log cut to its last `keep` bytes if it holds over `limit`. Never raises: a
        cut that fails (a full disk) is tried again once the log has grown by `cap`."""
        self._cutting = True
        try:
            size = os.fstat(self.fd).st_size
            # What went by another way than write() (a descriptor written directly),
            # or past the log (fd 2 sent to /dev/null by `run`, its log stream gone).
            self.total += size - self.size
            self.size = size
            if size <= limit:
                return
            # The store's own line; imported at the first cut only (a job whose log never
            # grows that far does without the store's module).
            from faas_supervisor.controller.store import cut_note

            note = cut_note(self.total, self.keep)
            try:
                self._rotate(size, note)
            except OSError:
                log_cut.cut_in_place(self.fd, size, self.keep, note)  # needs no room
            self.size = len(note) + self.keep
            self.limit = 2 * self.cap
        except OSError as exc:
            self.limit = self.size + self.cap
            with contextlib.suppress(OSError):
                os.write(2, f"faas-supervisor: the log could not be cut: {exc}\n".encode())
        finally:
            self._cutting = False

    def _rotate(self, size: int, note: bytes) -> None:
        """Its end into a new file, that takes the log's name (unless the log was removed:
        its job deleted) and fds 1 and 2 (those not sent elsewhere meanwhile)."""
        old = os.fstat(self.fd)
        new = log_cut.rotate(self.fd, Path(self.path), size, self.keep, note)
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                if log_cut.same_file(os.fstat(fd), old):
                    os.dup2(new, fd)
        os.close(self.fd)
        self.fd = new


class _LogOutput(io.RawIOBase):
    """One of the job's descriptors for its log (1 or 2), written through its _CappedLog."""

    def __init__(self, log: _CappedLog, fd: int) -> None:
        super().__init__()
        self.log = log
        self.fd = fd

    @classmethod
    def over(cls, stream: TextIO, log: _CappedLog, fd: int) -> TextIO:
        """A text stream as `stream` (sys.stdout or sys.stderr), writing through `log`."""
        if not isinstance(stream, io.TextIOWrapper):
            return stream  # None: the runner started with it closed
        return io.TextIOWrapper(
            io.BufferedWriter(cls(log, fd)), encoding=stream.encoding, errors=stream.errors,
            line_buffering=stream.line_buffering, write_through=stream.write_through,
        )

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def write(self, data: ReadableBuffer, /) -> int:
        return self.log.write(self.fd, data)


def _coerce_c_locale() -> None:
    """The job's LC_CTYPE locale, set from `os.environ` (the job's) as a fresh interpreter
    sets it at its start, C locale coercion (PEP 538) included: a locale that resolves to
    C (or POSIX: unset, or not installed), with LC_ALL unset or empty and
    PYTHONCOERCECLOCALE not "0", becomes the first of UTF8_LOCALES installed, in this
    process and in LC_CTYPE, which `run`'s script inherits. The runner's own start did it
    to its own environment only, which the job's replaces. The frozen build's interpreter
    (PyInstaller's isolated pre-config) coerces nothing. The warning of
    PYTHONCOERCECLOCALE=warn is not repeated here: the runner's start wrote it to its log.
    """
    import locale

    try:
        ctype = locale.setlocale(locale.LC_CTYPE, "")
    except locale.Error:  # not installed: a fresh interpreter's LC_CTYPE stays C
        ctype = locale.setlocale(locale.LC_CTYPE, "C")
    if (ctype != "C" or os.environ.get("LC_ALL") or frozen.is_frozen()
            or os.environ.get("PYTHONCOERCECLOCALE") == "0"):
        return
    for name in UTF8_LOCALES:
        try:
            locale.setlocale(locale.LC_CTYPE, name)
        except locale.Error:
            continue
        os.environ["LC_CTYPE"] = name
        return


def _as_main(args: list[str], parser: argparse.ArgumentParser) -> int:
    """`sys.exit(main(args))` in a fresh interpreter, up to its exit: the status."""
    from faas_supervisor.cli import main

    try:
        code: object = main(args, parser)
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
