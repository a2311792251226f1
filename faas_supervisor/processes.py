"""Waiting for a child process from the event loop, without a thread per child.

A pidfd (Linux 5.3+) turns readable when its process exits, so the loop waits for it like
for a socket; elsewhere a worker thread waits. Scripts are started with plain
`subprocess.Popen` (which can vfork) rather than asyncio's subprocess machinery: that
skips the transport, protocol and child watcher asyncio sets up for every child, a
measurable share of an `echo` invocation (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import os
import subprocess


async def exited(process: subprocess.Popen[bytes]) -> int:
    """The process's exit status, once it has exited (and been reaped)."""
    if process.returncode is not None:
        return process.returncode
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # no pidfd here: a thread waits instead
        return await asyncio.to_thread(process.wait)
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    try:
        loop.add_reader(pidfd, readable)
        try:
            await ready
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)
    return process.wait()  # it has exited: this only reaps it
