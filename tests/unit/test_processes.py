"""processes.py: a child's group is signalled while the child is unreaped, never after."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from faas_supervisor import processes

pytestmark = pytest.mark.timeout(60)  # real child processes
ENV = {"PATH": os.environ["PATH"]}


def state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rfind(b")") + 2:].split()[0].decode()


def test_before_reap_runs_while_the_exited_child_still_holds_its_pid() -> None:
    async def main() -> tuple[int, list[str]]:
        child = processes.spawn(["/bin/sh", "-c", "exit 3"], env=ENV)
        seen: list[str] = []
        code = await processes.exited(child.popen, lambda: seen.append(state(child.pid)))
        return code, seen

    assert asyncio.run(main()) == (3, ["Z"])


def test_a_reaped_childs_group_is_never_signalled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once reaped, its group id may be another group's: nothing may reach it."""
    child = processes.spawn(["/bin/true"], env=ENV)
    assert asyncio.run(child.wait()) == 0
    sent: list[int] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: sent.append(pgid))
    child.kill_group()
    child.signal_group(signal.SIGTERM)
    assert asyncio.run(child.stop(grace=1)) == 0
    assert sent == []


def test_exit_status_leaves_the_child_unreaped_for_stop() -> None:
    """Watching a child's exit must not free its group id: stop() still reaches it."""
    async def main() -> tuple[int, str, int]:
        child = processes.spawn(["/bin/sh", "-c", "exit 5"], env=ENV)
        code = await child.exit_status()
        zombie = state(child.pid)
        return code, zombie, await child.stop(grace=1)

    assert asyncio.run(main()) == (5, "Z", 5)


def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace() -> None:
    async def main() -> int:
        ready = asyncio.Event()
        read_fd, write_fd = os.pipe()
        child = processes.spawn(
            ["/bin/sh", "-c", "trap '' TERM; echo ready; exec sleep 30"], env=ENV, stdout=write_fd
        )
        os.close(write_fd)
        loop = asyncio.get_running_loop()
        loop.add_reader(read_fd, ready.set)  # the trap is set once it says so
        await ready.wait()
        loop.remove_reader(read_fd)
        os.close(read_fd)
        return await child.stop(grace=0.5)

    assert asyncio.run(main()) == -signal.SIGKILL



def test_kill_groups_by_environ_kills_the_marked_groups_and_nothing_else(
    tmp_path: Path,
) -> None:
    """A marked process's whole group goes (a member that cleared its environment too);
    an unmarked group stays, and so does the caller's own group even if marked."""
    marker = f"{tmp_path}/services/"
    marked_env = {**ENV, "TMPDIR": f"{marker}svc/tmp"}
    # A marked script with a child that dropped its environment, in a group of its own.
    script = subprocess.Popen(
        ["/bin/sh", "-c", "env -i /bin/sleep 300 & exec /bin/sleep 300"],
        env=marked_env, start_new_session=True,
    )
    other = subprocess.Popen(
        ["/bin/sleep", "300"], env={**ENV, "TMPDIR": str(tmp_path)}, start_new_session=True
    )
    ours = subprocess.Popen(["/bin/sleep", "300"], env=marked_env)  # the caller's group
    try:
        members = until(lambda: _live_group(script.pid) if len(_live_group(script.pid)) == 2
                        else None)
        assert processes.kill_groups_by_environ("TMPDIR", marker) == [script.pid]
        assert script.wait(timeout=10) == -signal.SIGKILL
        # The unmarked member went with its group (then reaped by whoever adopted it).
        until(lambda: not any(pid in _live_group(script.pid) for pid in members) or None)
        assert other.poll() is None and ours.poll() is None
    finally:
        for process in (script, other, ours):
            process.kill()
            process.wait()


def test_only_processes_py_signals_process_groups() -> None:
    """The rules of a safe group signal live in one module (issue 9)."""
    package = Path(processes.__file__).parent
    callers = sorted(
        str(path.relative_to(package)) for path in package.rglob("*.py")
        if "killpg(" in path.read_text()
    )
    assert callers == ["processes.py"]


T = TypeVar("T")


def until(check: Callable[[], T | None], timeout: float = 10.0) -> T:
    """What `check` returns once it is not None; polled (a process table has no events)."""
    deadline = time.monotonic() + timeout
    while (found := check()) is None:
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return found


def _live_group(pgid: int) -> list[int]:
    """The processes of group `pgid` that have not exited."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and os.getpgid(int(entry)) == pgid and state(int(entry)) != "Z":
                found.append(int(entry))
    return found


# ---- the program's signals -----------------------------------------------------------------


def test_signals_are_captured_for_the_context_and_the_previous_handlers_restored() -> None:
    def mine(_signum: int, _frame: object) -> None:
        raise AssertionError("the captured handler should have run")

    before = {sig: signal.signal(sig, mine) for sig in processes.HANDLED_SIGNALS}
    try:
        async def main() -> tuple[int | None, bool, bool]:
            with processes.captured_signals() as stop:
                assert signal.getsignal(signal.SIGTERM) is not mine
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.wait_for(stop.requested.wait(), 10)
                first_forced = stop.forced.is_set()
                os.kill(os.getpid(), signal.SIGINT)  # either signal counts as the second
                await asyncio.wait_for(stop.forced.wait(), 10)
                return stop.signal, first_forced, processes._forced

        assert asyncio.run(main()) == (signal.SIGTERM, False, True)
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is mine
        assert processes._forced is False  # the next program starts unforced
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


# Ignores SIGTERM (a drain that would last the whole grace), ends at SIGINT (forced).
DRAINING = "trap '' TERM; trap 'exit 7' INT; : > \"$1\"; while :; do sleep 0.05; done"


async def started_draining(tmp_path: Path, name: str) -> processes.Child:
    ready = tmp_path / name
    child = processes.spawn(["/bin/sh", "-c", DRAINING, "sh", str(ready)], env=ENV)
    while not ready.exists():  # no event tells that the traps are set
        await asyncio.sleep(0.02)
    return child


def test_a_forced_exit_gives_children_being_stopped_the_force_signal(tmp_path: Path) -> None:
    async def main() -> tuple[int, int, float]:
        loop = asyncio.get_running_loop()
        with processes.captured_signals() as stop:
            under_way = await started_draining(tmp_path, "one")
            later = await started_draining(tmp_path, "two")
            stopping = asyncio.ensure_future(under_way.stop(grace=60))
            await asyncio.sleep(0)  # stop() runs to its wait: SIGTERM sent (and ignored)
            started = loop.time()
            os.kill(os.getpid(), signal.SIGTERM)
            await stop.requested.wait()
            os.kill(os.getpid(), signal.SIGTERM)
            await stop.forced.wait()
            first = await stopping
            second = await later.stop(grace=60)  # begun after the force: sent at once
            return first, second, loop.time() - started

    first, second, seconds = asyncio.run(main())
    assert (first, second) == (7, 7)
    assert seconds < 30  # not the grace period


# Another process of a child's group (a script a watchdog is spawning): notes the signals
# it gets in $1, says it is ready in $2.
MEMBER = """
import signal, sys, time
def note(number, _frame):
    with open(sys.argv[1], "a") as notes:
        notes.write(f"{number}\\n")
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, note)
open(sys.argv[2], "w").close()
while True:
    time.sleep(1)
"""


def test_a_leader_only_stop_signals_the_child_alone_and_then_kills_its_group(
    tmp_path: Path,
) -> None:
    """A watchdog's stop (local backend): SIGTERM and, forced, FORCE_SIGNAL to it alone;
    what is left of its group is SIGKILLed once it has ended, as for any child."""
    notes, ready = tmp_path / "notes", tmp_path / "member-ready"

    async def main() -> tuple[int, int | None, str]:
        with processes.captured_signals() as stop:
            leader = await started_draining(tmp_path, "leader")
            member = subprocess.Popen([sys.executable, "-c", MEMBER, str(notes), str(ready)],
                                      process_group=leader.pid)
            while not ready.exists():  # no event tells that its handlers are set
                await asyncio.sleep(0.02)
            stopping = asyncio.ensure_future(leader.stop(grace=60, leader_only=True))
            await asyncio.sleep(0)  # stop() runs to its wait: SIGTERM sent (and ignored)
            os.kill(os.getpid(), signal.SIGTERM)
            await stop.requested.wait()
            os.kill(os.getpid(), signal.SIGTERM)  # forced: FORCE_SIGNAL ends the leader
            code = await stopping
            return code, member.wait(10), notes.read_text() if notes.exists() else ""

    assert asyncio.run(main()) == (7, -signal.SIGKILL, "")


def test_adopted_orphans_are_found_with_and_without_the_kernels_children_lists() -> None:
    """`_adopted` reads the kernel's lists of our children where it has them, and every
    /proc/PID/stat where not: both find the same orphan. In a child interpreter, so that
    this test run does not become a subreaper itself."""
    program = """
import os, subprocess, sys, time
from faas_supervisor import processes
assert processes.become_subreaper()
subprocess.run(["sh", "-c", "sleep 60 &"], check=True)  # the sleep is orphaned to us
deadline = time.monotonic() + 10
while not processes._adopted() and time.monotonic() < deadline:
    time.sleep(0.01)  # re-parenting has no event to await
listed = processes._adopted()
processes._listed_children = lambda me: None  # as on a kernel without CONFIG_PROC_CHILDREN
scanned = processes._adopted()
for pid in listed:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(listed, scanned)
sys.exit(0 if listed and listed == scanned else 1)
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_spawned_child_starts_as_popen_would_start_it(tmp_path: Path) -> None:
    """spawn() starts the common child (no pipes) with posix_spawn where libc has what it
    needs: the child must not tell the difference from subprocess.Popen's: working folder,
    environment, descriptors, signal dispositions and mask, own process group."""
    script = ('pwd; echo "$MINE"; ls /proc/self/fd; grep -E "^Sig(Ign|Blk)" /proc/self/status;'
              ' [ "$(cut -d " " -f 5 /proc/$$/stat)" = "$$" ] && echo leads its group')
    env = {**ENV, "MINE": "x y"}

    def via_spawn() -> str:
        with open(tmp_path / "spawn.log", "wb") as log:
            child = processes.spawn(["/bin/sh", "-c", script], env=env, cwd=tmp_path,
                                    stdout=log, stderr=subprocess.STDOUT)
            if processes._posix_spawner() is not None:
                assert isinstance(child.popen, processes._Spawned)
            assert asyncio.run(child.wait()) == 0
        return (tmp_path / "spawn.log").read_text()

    def via_popen() -> str:
        with open(tmp_path / "popen.log", "wb") as log:
            assert subprocess.run(["/bin/sh", "-c", script], env=env, cwd=tmp_path,
                                  stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, process_group=0).returncode == 0
        return (tmp_path / "popen.log").read_text()

    seen = via_spawn()
    assert _without_libc_signals(seen) == _without_libc_signals(via_popen())
    assert "x y\n" in seen and "leads its group" in seen
    # Those libc keeps for itself are at their defaults in our child, whatever the state
    # the test process was left in by earlier tests (Popen's child inherits it).
    ignored = next(line for line in seen.splitlines() if line.startswith("SigIgn:"))
    assert int(ignored.split()[1], 16) & _LIBC_SIGNALS == 0


# glibc's own signals (32 up to SIGRTMIN): not for scripts; posix_spawn sets them back to
# their defaults (processes._PosixSpawn), where Popen's child inherits what the test
# process has, which varies with the tests run before in it (seen in the whole suite).
_LIBC_SIGNALS = sum(1 << (n - 1) for n in range(32, signal.SIGRTMIN))


def _without_libc_signals(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.startswith(("SigIgn:", "SigBlk:")):
            name, bits = line.split()
            line = f"{name} {int(bits, 16) & ~_LIBC_SIGNALS:016x}"
        lines.append(line)
    return "\n".join(lines)


def test_spawn_fails_as_popen_does(tmp_path: Path) -> None:
    with open(tmp_path / "log", "wb") as log:
        with pytest.raises(FileNotFoundError):
            processes.spawn(["/bin/sh"], env=ENV, cwd=tmp_path / "none", stdout=log,
                            stderr=subprocess.STDOUT)
        with pytest.raises(FileNotFoundError):
            processes.spawn([str(tmp_path / "none")], env=ENV, stdout=log,
                            stderr=subprocess.STDOUT)
        with pytest.raises(ValueError, match="embedded null byte"):
            processes.spawn(["/bin/sh"], env={"A": "x\0y"}, stdout=log, stderr=subprocess.STDOUT)
        with pytest.raises(ValueError, match="embedded null byte"):
            processes.spawn(["/bin/sh", "a\0b"], env=ENV, stdout=log, stderr=subprocess.STDOUT)
        with pytest.raises(ValueError, match="embedded null byte"):
            processes.spawn(["/bin/sh"], env={"A\0": "x"}, stdout=log, stderr=subprocess.STDOUT)
        with pytest.raises(ValueError, match="illegal environment variable name"):
            processes.spawn(["/bin/sh"], env={"A=B": "x"}, stdout=log, stderr=subprocess.STDOUT)


def test_spawn_passes_arguments_and_environment_byte_for_byte(tmp_path: Path) -> None:
    """Encoded as os.fsencode does: UTF-8, and bytes that were not UTF-8 (surrogates) as
    they were."""
    value = "caf\u00e9 \udcff="
    out = tmp_path / "out"

    async def main() -> int:
        with open(out, "wb") as log:
            child = processes.spawn(
                ["/bin/sh", "-c", 'printf "%s|%s|%s|%s" "$1" "$2" "$V" "${E-unset}"', "sh",
                 value, ""],
                env={**ENV, "V": value, "E": ""}, stdout=log, stderr=subprocess.STDOUT)
        return await child.wait()

    assert asyncio.run(main()) == 0
    expected = os.fsencode(value)
    # Empty strings stay strings of their own (the spawn joins and splits them).
    assert out.read_bytes() == expected + b"||" + expected + b"|"
