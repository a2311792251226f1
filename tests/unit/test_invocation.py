"""invocation.py: the script's process group is killed while it may live, never after."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from faas_supervisor.config import FunctionConfig
from faas_supervisor.invocation import Invocation, Runtime

pytestmark = pytest.mark.timeout(60)  # real child processes


def make_invocation(tmp_path: Path, script: str) -> Invocation:
    path = tmp_path / "script.sh"
    path.write_text(script)
    return Invocation(Runtime(config=FunctionConfig(), script=path, base_env={},
                              tmp_dir=tmp_path))


def test_close_after_the_script_ended_kills_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the group is killed and reaped, its id may be reused by a new group (another
    invocation's script, say): a later close() must leave that one alone."""
    invocation = make_invocation(tmp_path, "echo hi\n")
    assert asyncio.run(invocation.run_script({"PATH": os.environ["PATH"]})) == 0
    killed: list[int] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: killed.append(pgid))
    invocation.close()
    assert killed == []
    assert not invocation.root.exists()


def test_close_while_the_script_runs_kills_its_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    invocation = make_invocation(tmp_path, f'sleep 1000 &\necho "$$ $!" > "{pids}"\nwait\n')

    async def close_while_running() -> int:
        running = asyncio.ensure_future(invocation.run_script({"PATH": os.environ["PATH"]}))
        while not (pids.exists() and pids.read_text().endswith("\n")):
            await asyncio.sleep(0.02)  # the script writes the file when it runs
        invocation.close()
        try:
            return await asyncio.wait_for(running, 20)
        except Exception as exc:  # ScriptFailed: killed by SIGKILL
            return getattr(exc, "exit_status", -1)

    assert asyncio.run(close_while_running()) == 128 + 9
    for pid in (int(p) for p in pids.read_text().split()):
        # SIGKILL is sent; the process may take a moment to be gone (or a zombie).
        deadline = time.monotonic() + 10
        while not _gone(pid):
            assert time.monotonic() < deadline, f"process {pid} still runs"
            time.sleep(0.02)  # /proc has no event to await


def _gone(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
