"""At most one task per key: the watcher's listing of a path, the reconciler's of a
service. A server that never answers holds up its own key only; the key is let go of
when its owner goes (an update, a delete), the task left to end (ignored by its owner,
not cut halfway through a submit), and every task still going is cancelled at close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class KeyedTasks(Generic[K]):
    def __init__(self) -> None:
        self._by_key: dict[K, asyncio.Task[None]] = {}
        self._all: set[asyncio.Task[None]] = set()

    def __contains__(self, key: K) -> bool:
        return key in self._by_key

    def start(self, key: K, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run(key, work), name=name)
        self._by_key[key] = task
        self._all.add(task)
        task.add_done_callback(self._all.discard)
        return task

    def let_go(self, key: K) -> None:
        """The key free for a new task; the one going on ends on its own."""
        self._by_key.pop(key, None)

    async def close(self) -> None:
        for task in list(self._all):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, key: K, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        finally:
            if self._by_key.get(key) is asyncio.current_task():
                del self._by_key[key]
