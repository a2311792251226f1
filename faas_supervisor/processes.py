"""Child processes: spawned in their own process group, awaited from the event loop, stopped.

The one place that starts a child and stops it (the invocation's script, the http-mode
server, the local backend's watchdogs and jobs). The rules it keeps:

* Each child leads its own process group (`process_group=0`, a setpgid: CPython can still
  vfork; the fork that setsid or a preexec_fn forces costs 11 ms instead of about 1 ms
  per spawn from a process of the watchdog's size, README "Processes"). Stopping a child
  stops its group: what the child forked goes too.
* A group is signalled only while its leader is unreaped: a zombie leader keeps the
  group's id taken, so `killpg` cannot reach a stranger that reused it. `exited()` gives
  a hook between "has exited" (its pidfd turns readable) and "reaped".
  A process that is not our child (one a killed controller left) is pinned by a pidfd
  and seen alive before its group is signalled (`stop_stranger`,
  `kill_groups_by_environ`). No other module calls `killpg`.
* What leaves the group (`setsid cmd &`) is caught by making the long-lived supervisors
  child subreapers (Linux): orphaned descendants are re-parented to them instead of
  PID 1, and `Orphans` reaps them and kills those that are not wanted any more.
* A program's SIGTERM and SIGINT are handled in one place, `captured_signals()`: the
  first asks for a graceful stop, a second forces it, and children being stopped get
  that second signal too (see there).

A pidfd (Linux 5.3+) turns readable when its process exits, so the loop waits for it like
for a socket; elsewhere a worker thread waits. Children are started with plain
`subprocess.Popen` rather than asyncio's subprocess machinery: that skips the transport,
protocol and child watcher asyncio sets up for every child, a measurable share of an
`echo` invocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn, Protocol, cast

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_GRACE = 5.0  # seconds a stopped child gets after SIGTERM before SIGKILL
KILL_ROUNDS_DEADLINE = 5.0  # seconds to chase orphans that keep re-parenting to us

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What a child being stopped gets when the program is forced to exit. Not SIGTERM again:
# one still pending would merge with the SIGTERM stop() sent, and the child see only one.
FORCE_SIGNAL = signal.SIGINT

# Pids of the children spawned here and not reaped yet: `Orphans` leaves them alone (they
# are reaped by whoever waits for them) and takes every other child for an adopted orphan.
_spawned: set[int] = set()
# Pids `Orphans` must not kill though they may come to us: a warm job runner's jobs, which
# are re-parented to the controller if their runner dies and must then finish their own
# graceful stop (removing their folders). Zombies among them are still reaped. See kept().
_kept: set[int] = set()
# Children in stop(), and whether a second signal forced the program's exit: see
# captured_signals.
_stopping: set[Child] = set()
_forced = False


# ---- prctl ---------------------------------------------------------------------------------


def _prctl(option: int, arg: int) -> bool:
    """prctl(2) through libc; False where there is none (not Linux) or it refuses."""
    try:
        # The interpreter's own symbols: libc is linked in. (find_library would run
        # ldconfig in a child process.)
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Orphaned descendants come to this process instead of PID 1 (Linux 3.4+).

    False where the kernel offers no such thing: then what leaves a child's process
    group is not caught (the README says where that is the case)."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the thread that spawned it dies, however.

    A preexec_fn makes CPython fork instead of vfork: only for children spawned once (the
    http-mode server), never per invocation. The parent may have died before the prctl:
    then there is nobody left to serve.
    """
    parent = os.getppid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


# ---- one child -----------------------------------------------------------------------------


class Child:
    """A child leading its own process group."""

    def __init__(self, popen: Process) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._stop_leader_only = False  # how stop() signals it: see there

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def has_exited(self) -> bool:
        """Whether it has exited, reaped or not: a zombie nobody has awaited yet counts."""
        if self.popen.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere
            return True
        return info is not None and info.si_pid != 0

    def signal_group(self, sig: int) -> None:
        """`sig` to the child's group, as long as the child is not reaped (see above)."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def kill_group(self) -> None:
        self.signal_group(signal.SIGKILL)

    def signal_stop(self, sig: int) -> None:
        """`sig` as stop() sends it: to the group, or to the child alone (leader_only)."""
        if not self._stop_leader_only:
            self.signal_group(sig)
        elif self.popen.returncode is None:  # unreaped: the pid is still the child's
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)

    async def wait(self, kill_group: bool = True) -> int:
        """Its exit status once it exited; first, by default, SIGKILL to what is left of
        its group (background children), while the exited leader still holds the id."""
        return await exited(self.popen, self.kill_group if kill_group else None)

    async def exit_status(self) -> int:
        """Its exit status once it exited, leaving it unreaped: its group can still be
        signalled (by stop()) after this returns, and the exit only watched."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        await _exited_unreaped(self.pid)
        if self.popen.returncode is not None:  # reaped meanwhile
            return self.popen.returncode
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if info is None:  # cannot be: it has exited
            return await self.wait()
        return -info.si_status if info.si_code != os.CLD_EXITED else info.si_status

    async def stop(self, grace: float = STOP_GRACE, *, leader_only: bool = False) -> int:
        """SIGTERM to the group, SIGKILL to the group after `grace`; reaped.

        Once the program is forced to exit (captured_signals), FORCE_SIGNAL too: a
        watchdog or `run` of ours then skips its own graceful drain.

        `leader_only`: SIGTERM (and FORCE_SIGNAL) to the child alone, the SIGKILL after
        `grace` still to its group. For a watchdog, which drains on SIGTERM and stops its
        scripts itself, as it is stopped in a container (Kubernetes and Docker signal the
        main process only). Its group holds, for a moment, each script it spawns:
        posix_spawn's child joins its own group only after it started, its signals held
        and then back at their defaults; a group's SIGTERM then killed the script of a
        request just accepted (its answer a 500, "exited with status -15")."""
        self._stop_leader_only = leader_only
        self.signal_stop(signal.SIGTERM)
        if _forced:
            self.signal_stop(FORCE_SIGNAL)
        _stopping.add(self)
        waiting = asyncio.ensure_future(self.wait())
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), grace)
        except TimeoutError:
            self.kill_group()
            return await waiting
        finally:
            _stopping.discard(self)
            if not waiting.done():  # we were cancelled: the child still goes
                self.kill_group()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(waiting)


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | Path | None = None,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    die_with_parent: bool = False,
) -> Child:
    """Start `argv` leading a new process group. Call it from the event loop's thread:
    `Orphans` (same thread) must never see a child that is not registered yet.

    `die_with_parent`: SIGKILLed if this process dies, even by SIGKILL (PR_SET_PDEATHSIG;
    forces a fork, so only for children started once; the parent's thread must live as long
    as the child: the loop's thread does).
    """
    fds = None if die_with_parent else _plain_fds(stdin, stdout, stderr)
    spawner = _posix_spawner() if fds is not None else None
    if spawner is not None and fds is not None:
        process: Process = _Spawned(spawner.spawn(argv, env, cwd, fds))
    else:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            process_group=0,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    _spawned.add(process.pid)
    return Child(process)


class Process(Protocol):
    """What Child and exited() use of a child: a subprocess.Popen, or a _Spawned."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def stdout(self) -> IO[bytes] | None: ...
    def wait(self) -> int: ...


class _Spawned:
    """A child started by posix_spawn: the little of Popen that Child needs."""

    stdout: IO[bytes] | None = None  # never a pipe: those children are Popen's

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def wait(self) -> int:
        """Reap it (blocking: call it once it has exited) and keep its status, as Popen."""
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:  # reaped elsewhere: Popen says 0 then too
                status = 0
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _plain_fds(
    stdin: int | IO[Any] | None, stdout: int | IO[Any] | None, stderr: int | IO[Any] | None
) -> tuple[int, int, int] | None:
    """The descriptors to give a child as 0, 1 and 2, when the three are /dev/null, an open
    file or (stderr) stdout; else None (a pipe, inherited streams: Popen's work)."""
    fds: list[int] = []
    for stream in (stdin, stdout, stderr):
        if stream is None:
            return None
        if stream == subprocess.DEVNULL:
            fd = _devnull()
        elif stream == subprocess.STDOUT and len(fds) == 2:  # stderr to stdout
            fd = fds[1]
        elif isinstance(stream, int):
            fd = stream  # a descriptor (PIPE is negative: refused below)
        else:
            fd = stream.fileno()
        # 0-2 would be dup2'ed onto themselves and keep their close-on-exec flag.
        if fd <= 2:
            return None
        fds.append(fd)
    return fds[0], fds[1], fds[2]


@functools.cache
def _devnull() -> int:
    """One /dev/null for every child's stdin, opened once (Popen opens one per child)."""
    return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


class _PosixSpawn:
    """posix_spawn(3) from libc, for children of the common kind (see spawn).

    It costs the watchdog half the CPU of subprocess.Popen per child: no pipe to learn
    whether exec worked (libc's vfork-like clone reports it), no Python between fork and
    exec. os.posix_spawn cannot set the working directory, so libc is called through
    ctypes, with what Popen does for us: the child leads a new process group, gets
    SIGPIPE and SIGXFSZ back at their defaults (Python ignores them), descriptors 0-2 as
    asked and no other (closefrom: Popen's close_fds), and runs in `cwd`.
    """

    SETPGROUP = 0x02  # POSIX_SPAWN_SETPGROUP and _SETSIGDEF, as glibc and musl number them
    SETSIGDEF = 0x04
    # posix_spawn_file_actions_t and posix_spawnattr_t are opaque: room for any libc's.
    OPAQUE = 1024

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._init = libc.posix_spawn_file_actions_init
        self._destroy = libc.posix_spawn_file_actions_destroy
        self._dup2 = libc.posix_spawn_file_actions_adddup2
        self._closefrom = libc.posix_spawn_file_actions_addclosefrom_np  # glibc 2.34
        self._chdir = libc.posix_spawn_file_actions_addchdir_np  # glibc 2.29, musl 1.1.24
        self._spawn = libc.posix_spawn
        for function in (self._init, self._destroy, self._dup2, self._closefrom, self._chdir,
                         self._spawn):
            function.restype = ctypes.c_int
        self._spawn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_void_p,
                                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        # The same attributes for every child: made once. The signals set back to their
        # defaults: Python's two, and those libc keeps for itself (below SIGRTMIN), which
        # its posix_spawn would otherwise leave ignored in the child (Popen does not).
        self._attr = ctypes.create_string_buffer(self.OPAQUE)
        bits = 8 * ctypes.sizeof(ctypes.c_ulong)
        sigset = (ctypes.c_ulong * (self.OPAQUE // ctypes.sizeof(ctypes.c_ulong)))()
        for number in (signal.SIGPIPE, signal.SIGXFSZ, *range(32, signal.SIGRTMIN)):
            sigset[(number - 1) // bits] |= 1 << ((number - 1) % bits)  # as sigaddset
        steps = [
            libc.posix_spawnattr_init(self._attr),
            libc.posix_spawnattr_setsigdefault(self._attr, sigset),
            libc.posix_spawnattr_setpgroup(self._attr, 0),
            libc.posix_spawnattr_setflags(self._attr, self.SETPGROUP | self.SETSIGDEF),
        ]
        if any(steps):
            raise OSError("posix_spawnattr set-up failed")

    def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: str | Path | None,
        fds: tuple[int, int, int],
    ) -> int:
        """The child's pid; OSError as Popen raises it if it cannot run (no such
        program, no such folder)."""
        # As os.fsencode, without a call per string: the environment has a hundred or so,
        # and this runs for every invocation. The strings are joined with NULs, checked
        # (Popen's checks), encoded and split in one pass each: NUL encodes to NUL, and
        # nothing else does, so the split gives back each string's own bytes.
        if "=" in "".join(env):
            raise ValueError("illegal environment variable name")
        texts = list(argv)
        texts += [f"{name}={value}" for name, value in env.items()]
        joined = "\0".join(texts)
        if joined.count("\0") != len(texts) - 1:  # a C string would end at one of its own
            raise ValueError("embedded null byte")
        encoded = joined.encode(_FS_ENCODING, _FS_ERRORS).split(b"\0")
        args, envp = encoded[: len(argv)], encoded[len(argv):]
        # NULL-terminated: one slot more, left NULL. Filled by a slice: half the time of
        # passing a hundred arguments to the array's constructor (which keeps the bytes
        # alive all the same).
        c_argv = (ctypes.c_char_p * (len(args) + 1))()
        c_argv[: len(args)] = cast(_CStrings, args)  # (the stubs want a list of their type)
        c_envp = (ctypes.c_char_p * (len(envp) + 1))()
        c_envp[: len(envp)] = cast(_CStrings, envp)
        actions = ctypes.create_string_buffer(self.OPAQUE)
        if self._init(actions):
            raise OSError("posix_spawn_file_actions_init failed")
        try:
            steps = [self._dup2(actions, fd, target) for target, fd in enumerate(fds)]
            steps.append(self._closefrom(actions, 3))
            if cwd is not None:
                steps.append(self._chdir(actions, os.fsencode(cwd)))
            if any(steps):
                raise OSError(next(step for step in steps if step), "posix_spawn set-up failed")
            pid = ctypes.c_int()
            error = self._spawn(ctypes.byref(pid), args[0], actions, self._attr, c_argv, c_envp)
        finally:
            self._destroy(actions)
        if error:
            missing = cwd if cwd is not None and not os.path.isdir(cwd) else argv[0]
            raise OSError(error, os.strerror(error), str(missing))
        return pid.value


_CStrings = list[ctypes.c_char_p | bytes | None]
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


@functools.cache
def _posix_spawner() -> _PosixSpawn | None:
    """None where libc lacks what is needed (then Popen starts every child)."""
    try:
        return _PosixSpawn()
    except (OSError, AttributeError):
        return None


async def exited(
    process: Process, before_reap: Callable[[], None] | None = None
) -> int:
    """The process's exit status, once it has exited and been reaped.

    `before_reap` runs after it exited and before it is reaped: the moment its process
    group can still be signalled safely.
    """
    if process.returncode is not None:
        return process.returncode
    await _exited_unreaped(process.pid)
    if before_reap is not None and process.returncode is None:
        before_reap()
    code = process.wait()  # it has exited: this only reaps it
    _spawned.discard(process.pid)
    return code


async def _exited_unreaped(pid: int) -> None:
    """Returns once `pid` (a child) has exited; it is left a zombie, not reaped."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd here: a thread waits instead
        await asyncio.to_thread(os.waitid, os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        return
    try:
        await readable(pidfd)
    finally:
        os.close(pidfd)


async def stop_stranger(pid: int, marker: bytes, grace: float = STOP_GRACE) -> None:
    """Stop a process that is not our child (one a killed controller left), and its group.

    Only if `marker` is in its command line (pids get reused); a pidfd, opened first, pins
    the process read and tells when it exits. SIGTERM to its group, SIGKILL to the group
    after `grace` if it is still alive (once it is gone, its group id may be reused).
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone already (or no pidfd here: then nothing safe can be done)
        return
    try:
        try:
            if marker not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return
        except OSError:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(readable(pidfd), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
    finally:
        os.close(pidfd)


def kill_groups_by_environ(name: str, prefix: str) -> list[int]:
    """SIGKILL the process group of every process whose variable `name` starts with
    `prefix` (a marker that every process some owner started inherits), this process's
    own group excepted; the groups killed. For strangers a killed owner left behind.

    Blocking (reads every /proc/PID/environ): run it in a thread. A group is signalled
    only through a member pinned by a pidfd, opened before its environment is read (so
    the pid names the process checked) and seen alive just before the signal: a live
    member keeps its group's id from being reused.
    """
    own = os.getpgrp()
    killed: list[int] = []
    for pid in _pids():
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # gone (or no pidfd here: then nothing safe can be done)
            continue
        try:
            value = environ_value(pid, name)
            stat = _stat(pid)
            if value is None or not value.startswith(prefix) or stat is None:
                continue
            group = stat[2]
            if group in (own, *killed) or _has_exited(pidfd):
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
                killed.append(group)
        finally:
            os.close(pidfd)
    return killed


def signal_forked_group(pid: int, sig: int) -> None:
    """`sig` to the group led by `pid`: a child the caller forked itself (not a `Child`)
    and has not reaped, the caller alone reaping it, so that the id is still its own.
    For the local backend's job runner (job_runner.py)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@contextlib.contextmanager
def kept(pid: int) -> Iterator[None]:
    """While inside, `Orphans` reaps `pid` once it is a zombie but never kills it: for a
    process we stop gracefully ourselves (stop_stranger) should it come to us, so that a
    sweep for another reason does not SIGKILL it in the middle of its own cleanup."""
    _kept.add(pid)
    try:
        yield
    finally:
        _kept.discard(pid)


def _has_exited(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])


async def readable(fd: int) -> None:
    """Returns once `fd` (a pidfd, a socket) is readable, from the event loop."""
    await _ready(fd, write=False)


async def writable(fd: int) -> None:
    """Returns once `fd` (a socket) is writable, from the event loop."""
    await _ready(fd, write=True)


async def _ready(fd: int, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


# ---- the program's signals -----------------------------------------------------------------


class Stop:
    """What SIGTERM/SIGINT asked of the program: `requested` (the first: stop taking
    work, let what is in flight finish) and `forced` (a second: stop waiting, kill what
    is left, exit)."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self.signal: int | None = None  # the first one received

    def _received(self, sig: int) -> None:
        global _forced
        if not self.requested.is_set():
            self.signal = sig
            self.requested.set()
            return
        self.forced.set()
        _forced = True
        for child in list(_stopping):  # stops under way; later ones send it themselves
            child.signal_stop(FORCE_SIGNAL)

    async def unless_forced(
        self, waiting: Callable[[], Awaitable[object]], timeout: float
    ) -> None:
        """Await `waiting()` (a graceful drain) at most `timeout` seconds, and no longer
        than until the exit is forced."""
        drain = asyncio.ensure_future(waiting())
        forced = asyncio.ensure_future(self.forced.wait())
        try:
            await asyncio.wait((drain, forced), timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (drain, forced):
                task.cancel()
            await asyncio.gather(drain, forced, return_exceptions=True)


@contextlib.contextmanager
def captured_signals() -> Iterator[Stop]:
    """SIGTERM and SIGINT for the program's lifetime (the watchdog's, `run`'s, the
    controller's), as a `Stop`; the handlers there before are put back on leaving.

    The first signal sets `requested`; a second sets `forced`, and every child being
    stopped (Child.stop), or stopped from then on, gets FORCE_SIGNAL: for a watchdog or
    `run` of ours, a second signal of its own. Python's default would end the program at
    once (SIGTERM) or raise KeyboardInterrupt anywhere (SIGINT), leaving children and
    folders behind. Enter it in the event loop's thread, the loop running.
    """
    global _forced
    loop = asyncio.get_running_loop()
    stop = Stop()
    previous = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
    for sig in HANDLED_SIGNALS:
        loop.add_signal_handler(sig, stop._received, sig)
    # Held by the command until now (cli.signals_held): one that came meanwhile is taken
    # by the handler at once.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    try:
        yield stop
    finally:
        _forced = False
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:  # None: set outside Python, which cannot put it back
                signal.signal(sig, handler)


async def until_signalled(work: Awaitable[int]) -> tuple[int, bool]:
    """(`work`'s status, False); or, when SIGTERM or SIGINT came first (a job deleted,
    `kill`, Ctrl-C), (128 plus the signal's number, True) once `work` was cancelled and
    its cleanup ran (Python's default for SIGTERM would end the process at once and
    leave it undone), one line saying so on stderr. A second signal changes nothing:
    the first already stopped the work."""
    with captured_signals() as stop:
        task = asyncio.ensure_future(work)
        signalled = asyncio.ensure_future(stop.requested.wait())
        await asyncio.wait((task, signalled), return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if stop.signal is None or not task.cancelled():
            return task.result(), False
    if sys.stderr is not None:  # started with it closed (`2>&-`): print would take stdout
        with contextlib.suppress(OSError, ValueError):  # its reader gone: the status says it
            print(f"faas-supervisor: error: stopped by {signal.Signals(stop.signal).name}",
                  file=sys.stderr, flush=True)
    return 128 + stop.signal, True


def exit_now(status: int) -> NoReturn:
    """End the process with `status` once the standard streams are flushed (the log lines
    with them), without waiting for any thread, as asyncio.run's executor shutdown and
    the interpreter's exit would: one still blocked on a stalled store holds them for as
    long as its client's timeouts (boto3's retries: up to a minute)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed, or its reader gone: nothing to keep
            stream.flush()
    os._exit(status)


# ---- orphans re-parented to a subreaper ----------------------------------------------------


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent, state, process group) of `pid`, None if it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        stat = os.read(fd, 1024)
    except OSError:
        return None
    finally:
        os.close(fd)
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    fields = stat[stat.rfind(b")") + 2:].split(maxsplit=3)
    if len(fields) < 3:
        return None
    return int(fields[1]), fields[0].decode(), int(fields[2])


def _adopted() -> list[int]:
    """Children of ours not spawned here; what it finds is checked again before anything
    is done to it. With CONFIG_PROC_CHILDREN the kernel lists each thread's children
    (`/proc/PID/task/TID/children`): a few reads, whatever the machine runs. Without it,
    every /proc/PID/stat is read (milliseconds with a few hundred processes), which is
    why callers may run this in a worker thread."""
    me = os.getpid()
    listed = _listed_children(me)
    if listed is not None:
        return [pid for pid in listed if pid not in _spawned]
    found = []
    for pid in _pids():
        if pid in _spawned:
            continue
        stat = _stat(pid)
        if stat is not None and stat[0] == me:
            found.append(pid)
    return found


async def _adopted_soon() -> list[int]:
    """_adopted(), in the loop's thread where the kernel lists our children (a few reads,
    cheaper than a worker thread's round trip); else in a worker thread."""
    listed = _listed_children(os.getpid())
    if listed is not None:
        return [pid for pid in listed if pid not in _spawned]
    return await asyncio.to_thread(_adopted)


def _listed_children(me: int) -> list[int] | None:
    """The children the kernel lists for our threads; None where it lists none. A child
    forked, or handed from an ending thread to another, right now may be missed: the next
    sweep sees it."""
    try:
        tids = os.listdir(f"/proc/{me}/task")
    except OSError:
        return None
    found: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{me}/task/{tid}/children") as file:
                found.extend(int(pid) for pid in file.read().split())
        except FileNotFoundError:
            if os.path.isdir(f"/proc/{me}/task/{tid}"):
                return None  # the thread is there, its file is not: no CONFIG_PROC_CHILDREN
    return found


def _pids() -> list[int]:
    """Every process of the machine (of this pid namespace) now."""
    with os.scandir("/proc") as entries:
        return [int(entry.name) for entry in entries if entry.name.isdigit()]


def environ_value(pid: int, name: str) -> str | None:
    """A variable of the environment `pid` was started with; None if unreadable or unset."""
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = name.encode() + b"="
    for item in data.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode("utf-8", "surrogateescape")
    return None


def _nobody(_pid: int) -> bool:
    return False


class Orphans:
    """Processes re-parented to this subreaper: reaped, and killed when not wanted.

    `sweep(wanted)` reaps the zombies and SIGKILLs each live orphan (and the group it
    leads) for which `wanted(pid)` is False. Killing our own unreaped child is safe from
    pid reuse; its group too while it leads it. Only the loop's thread acts (see spawn
    and _act).
    """

    def __init__(self) -> None:
        self.enabled = become_subreaper()

    def _act(self, pids: list[int], wanted: Callable[[int], bool]) -> int:
        """Reap or kill each of `pids` still an orphan of ours; how many it reaped or killed.

        In the loop's thread, the only one that reaps: a pid found by a scan in another
        thread may have been reaped and reused since, so it is checked again here, and
        nothing can reap it between this check and the signal."""
        me = os.getpid()
        done = 0
        for pid in pids:
            stat = _stat(pid)
            if pid in _spawned or stat is None or stat[0] != me:
                continue
            _, state, pgrp = stat
            if state in ("Z", "X"):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                    done += 1
                continue
            if pid in _kept or wanted(pid):
                continue
            done += 1
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if pgrp == pid:
                    os.killpg(pid, signal.SIGKILL)  # it leads its group: the id is its own
                os.kill(pid, signal.SIGKILL)
        return done

    def sweep(self, wanted: Callable[[int], bool] = _nobody) -> int:
        """One pass; returns how many orphans it killed or reaped (0: nothing happened)."""
        return self._act(_adopted(), wanted) if self.enabled else 0

    async def kill_all(self, wanted: Callable[[int], bool] = _nobody) -> None:
        """Sweep until a pass kills and reaps nothing: a killed orphan's own children come
        to us in their turn, once it is dead. Bounded in time; what is still there then
        is left for a later sweep. Without the kernel's lists of children, /proc is read
        in a worker thread: with hundreds of processes on the machine that is
        milliseconds the loop keeps for requests."""
        if not self.enabled:
            return
        deadline = time.monotonic() + KILL_ROUNDS_DEADLINE
        delay = 0.001
        while self._act(await _adopted_soon(), wanted):
            if time.monotonic() > deadline:
                return
            # A killed process becomes a zombie a moment later: no event tells us when.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def kill_all_now(self) -> None:
        """kill_all for code outside an event loop (the end of `run`)."""
        deadline = time.monotonic() + KILL_ROUNDS_DEADLINE
        delay = 0.001
        while self.sweep() and time.monotonic() < deadline:
            time.sleep(delay)  # see kill_all
            delay = min(delay * 2, 0.05)
