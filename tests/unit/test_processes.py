"""processes.py: a child's group is signalled while the child is unreaped, never after."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

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
