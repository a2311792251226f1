"""Processes as /proc shows them: for tests that check nothing outlives what started it, and
for the end-of-session check that the test run itself leaves nothing behind.

A process is named by (pid, start time): pids get reused, the pair does not.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int  # clock ticks since boot
    state: str
    cmdline: bytes

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start)

    @property
    def command(self) -> str:
        return self.cmdline.replace(b"\0", b" ").decode(errors="replace").strip()[:200]

    def environ(self) -> bytes:
        try:
            return Path(f"/proc/{self.pid}/environ").read_bytes()
        except OSError:
            return b""


def processes() -> dict[int, Proc]:
    """Every process now, zombies included (state "Z")."""
    found: dict[int, Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        pid = int(entry.name)
        found[pid] = Proc(pid, int(fields[1]), int(fields[19]), fields[0].decode(), cmdline)
    return found


def running_with(marker: str) -> list[Proc]:
    """Live processes (not zombies) whose command line holds `marker`."""
    needle = marker.encode()
    return [p for p in processes().values() if needle in p.cmdline and p.state != "Z"]


def descendants(root: int, table: dict[int, Proc]) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill(procs: list[Proc]) -> None:
    """SIGKILL each one that is still the same process (same pid and start time)."""
    now = processes()
    for proc in procs:
        same = now.get(proc.pid)
        if same is not None and same.start == proc.start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGKILL)
