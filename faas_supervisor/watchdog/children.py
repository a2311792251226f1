"""Waiting for scripts to exit: a pidfd in the event loop, not a thread per child.

Python 3.11's default child watcher starts a thread for every child only to block in
waitpid(); at one script per request that thread start is a measurable share of an
invocation (bench/RESULTS.md). A pidfd (Linux 5.3+) turns readable when its process
exits, so the event loop can wait for it like any socket. Python 3.12 and later do this
by default, so there this module does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

_installed = False


def use_pidfd_child_watcher() -> bool:
    """Install the pidfd watcher for this process, once; False where it cannot be used."""
    global _installed
    if _installed:
        return True
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # kernel before 5.3, or a seccomp profile that refuses the call
        return False
    asyncio.set_child_watcher(_pidfd_watcher())
    _installed = True
    return True


def _pidfd_watcher() -> Any:
    # Defined here, not at module level: the base class is deprecated in 3.12 and gone
    # in 3.14, where importing this module must still work.
    class PidfdWatcher(asyncio.AbstractChildWatcher):
        """asyncio.PidfdChildWatcher binds itself to the main thread's loop; this one
        uses the loop running when each child starts, so any loop works (a test's, say)."""

        def __init__(self) -> None:
            self._children: dict[int, tuple[int, asyncio.AbstractEventLoop]] = {}

        # The base's signature is generic over *args (TypeVarTuple); Any says as much here.
        def add_child_handler(  # type: ignore[override]
            self, pid: int, callback: Callable[..., object], *args: Any
        ) -> None:
            loop = asyncio.get_running_loop()
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:  # already reaped elsewhere: asyncio reports 255
                loop.call_soon(callback, pid, 255, *args)
                return
            self._children[pid] = (pidfd, loop)
            loop.add_reader(pidfd, self._reap, pid, callback, args)

        def _reap(self, pid: int, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
            self._forget(pid)
            try:
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                code = 255
            callback(pid, code, *args)

        def _forget(self, pid: int) -> bool:
            entry = self._children.pop(pid, None)
            if entry is None:
                return False
            pidfd, loop = entry
            with contextlib.suppress(Exception):  # the loop may be closed already
                loop.remove_reader(pidfd)
            os.close(pidfd)
            return True

        def remove_child_handler(self, pid: int) -> bool:
            return self._forget(pid)

        def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
            pass  # no loop of its own

        def is_active(self) -> bool:
            return True

        def close(self) -> None:
            for pid in list(self._children):
                self._forget(pid)

        def __enter__(self) -> PidfdWatcher:
            return self

        def __exit__(self, *_exc: object) -> None:
            pass

    return PidfdWatcher()
