"""Watches the input paths of services, for stores that send no notifications themselves.

The folder store (and an S3 server the controller could not ask for notifications, and
the servers of the MinIO providers services define) is polled every half second, each
path through the store the intake gives with it; an object is offered (reconcile.py: a
job unless it has one, or was there before the service) when two polls in a row saw the
same size and time: a file still being written does not start a job. Nothing is taken
as old here: the store knows which objects have jobs, so an object that came while the
controller was stopped gets its job at the next start.

Each path is listed in a task of its own, one listing at a time: a server that accepts
and never answers holds up its own paths only (until its timeouts), not the others'.

A path that cannot be listed (the store down, its bucket refused) is listed again after
1 s, 2 s, 4 s... up to BACKOFF_MAX, not every half second: one warning when it starts
failing, one info line when it lists again. An object whose offer fails (a full disk)
holds up no other object of its path: it is offered again at the next poll, with one
warning until it goes through.

Memory: per path, the objects the last poll listed (offered, still changing, or whose
offer failed), and nothing of those since gone; per failing path, its count of failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

from faas_supervisor.config import DEFAULT_PROVIDER, StoragePath
from faas_supervisor.controller.buckets import BucketStore, StoredObject
from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.keyed_tasks import KeyedTasks
from faas_supervisor.controller.notifications import Inputs
from faas_supervisor.controller.servers import list_path, shown_error
from faas_supervisor.logs import get_logger

POLL_SECONDS = 0.5
BACKOFF_MAX = 30.0  # seconds at most between two listings of a path that keeps failing
logger = get_logger(component="watcher")

Offer = Callable[[Service, StoragePath, StoredObject], Awaitable[None]]
Seen = dict[str, tuple[int, float]]  # key -> (size, modified)
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class _Failing:
    """A path whose listings fail: how many in a row, and when to try again."""

    failures: int
    due: float


class InputWatcher:
    def __init__(
        self,
        offer: Offer,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.offer = offer
        self._clock, self._sleep = clock, sleep  # the tests' simulated time
        self._services: dict[str, Service] = {}
        self._paths: dict[str, dict[StoragePath, BucketStore]] = {}  # name -> its paths' stores
        # (service, path) -> objects offered, and objects seen once (maybe still changing)
        self._offered: dict[tuple[str, StoragePath], Seen] = {}
        self._pending: dict[tuple[str, StoragePath], Seen] = {}
        # (service, path) -> objects whose offer failed, warned of once (also in _pending)
        self._refused: dict[tuple[str, StoragePath], Seen] = {}
        self._failing: dict[tuple[str, StoragePath], _Failing] = {}
        # (service, path) -> its listing going on (held here until it ends, unwatched or not)
        self._listing: KeyedTasks[tuple[str, StoragePath]] = KeyedTasks()  # a path's listing
        self._task: asyncio.Task[None] | None = None

    async def watch(self, service: Service, paths: Inputs) -> None:
        """List these input paths of the service, each through its store."""
        self.unwatch(service.name)
        if not paths:
            return
        for path in paths:
            self._offered[(service.name, path)] = {}
            self._pending[(service.name, path)] = {}
            self._refused[(service.name, path)] = {}
        self._services[service.name] = service
        self._paths[service.name] = dict(paths)

    def unwatch(self, name: str) -> None:
        self._services.pop(name, None)
        for path in self._paths.pop(name, {}):
            self._offered.pop((name, path), None)
            self._pending.pop((name, path), None)
            self._refused.pop((name, path), None)
            self._failing.pop((name, path), None)
            # A listing going on is left to end (ignored: its definition is gone), and
            # holds up no listing of a new definition of the service.
            self._listing.let_go((name, path))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="input-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._listing.close()

    async def _run(self) -> None:
        while True:
            self._round()
            await self._sleep(POLL_SECONDS)  # polling: the folder store has no events

    def _round(self) -> list[asyncio.Task[None]]:
        """A listing of each input path started (the tasks), but of those failing whose
        time has not come, and of those whose last listing goes on: each path's its own
        task, so that a server that never answers holds up its paths only (its listing
        ends at its timeouts, buckets.py, and is then started again)."""
        started: list[asyncio.Task[None]] = []
        for name, service in list(self._services.items()):
            for path in list(self._paths.get(name, {})):
                slot = (name, path)
                failing = self._failing.get(slot)
                if slot in self._listing or (failing is not None and self._clock() < failing.due):
                    continue
                started.append(self._listing.start(slot, self._list(slot, service),
                                                   name=f"watch-{name}"))
        return started

    async def _list(self, slot: tuple[str, StoragePath], service: Service) -> None:
        name, path = slot
        try:
            await self._poll(service, path)
        except Exception as exc:  # a store hiccup must not stop the watching
            if self._services.get(name) is service:  # not a definition since replaced
                self._failed(slot, exc)
        else:
            recovered = self._services.get(name) is service and slot in self._failing
            if recovered:
                del self._failing[slot]
                logger.info("input path listed again", service=name, path=_shown(path))

    def _failed(self, slot: tuple[str, StoragePath], exc: Exception) -> None:
        failing = self._failing.get(slot)
        if failing is None:
            name, path = slot
            if slot not in self._offered:
                return  # unwatched (or watched with other paths) while listing
            logger.warning("cannot list an input path; trying again less and less often",
                           service=name, path=_shown(path),
                           error=shown_error(path.provider, exc))
            failing = self._failing[slot] = _Failing(0, 0.0)
        failing.failures += 1
        delay = min(POLL_SECONDS * 2**failing.failures, BACKOFF_MAX)
        failing.due = self._clock() + delay

    async def _poll(self, service: Service, path: StoragePath) -> None:
        store = self._paths.get(service.name, {}).get(path)
        if store is None:
            return  # unwatched (or watched with other paths) since the round began
        objects = await list_path(store, path)
        slot = (service.name, path)
        if self._services.get(service.name) is not service:
            return  # unwatched (or watched anew) while listing
        offered, pending, refused = self._offered[slot], self._pending[slot], self._refused[slot]
        now_offered: Seen = {}
        now_pending: Seen = {}
        now_refused: Seen = {}
        for obj in objects:
            stat = (obj.size, obj.modified)
            if offered.get(obj.key) == stat:
                now_offered[obj.key] = stat
            elif pending.get(obj.key) == stat:
                try:
                    await self.offer(service, path, obj)
                except Exception as exc:  # this object only: the others go on
                    if refused.get(obj.key) != stat:
                        logger.warning("an input object could not be offered; tried again "
                                       "at each poll", service=service.name,
                                       path=_shown(path), key=obj.key, error=str(exc))
                    # Still pending, unchanged: offered again at the next poll.
                    now_pending[obj.key] = now_refused[obj.key] = stat
                    continue
                now_offered[obj.key] = stat
            else:
                now_pending[obj.key] = stat
        if self._services.get(service.name) is service:
            # Only what this listing holds: an object deleted is forgotten.
            self._offered[slot], self._pending[slot] = now_offered, now_pending
            self._refused[slot] = now_refused


def _shown(path: StoragePath) -> str:
    where = f"{path.bucket}/{path.key_prefix}"
    return where if path.provider == DEFAULT_PROVIDER else f"{path.provider}/{where}"


def input_event(path: StoragePath, obj: StoredObject) -> bytes:
    """The event of an object listed in an input path: MinIO's, delegated (SPEC 6.1) to
    the path's provider when that is not the default one, so that the job downloads the
    object from that provider's server."""
    if path.provider == DEFAULT_PROVIDER:
        return minio_event(path.bucket, obj)
    delegated = {"event": _minio_event(path.bucket, obj), "storage_provider": path.provider}
    return json.dumps(delegated, separators=(",", ":")).encode()


def minio_event(bucket: str, obj: StoredObject) -> bytes:
    """An `s3:ObjectCreated:Put` event as MinIO sends it (key URL-encoded, `/` too)."""
    return json.dumps(_minio_event(bucket, obj), separators=(",", ":")).encode()


def _minio_event(bucket: str, obj: StoredObject) -> dict[str, Any]:
    key = quote_plus(obj.key, safe="")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(obj.modified)) + ".000Z"
    request_id = uuid.uuid4().hex[:16].upper()
    event = {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{bucket}/{key}",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "awsRegion": "",
                "eventTime": stamp,
                "eventName": "s3:ObjectCreated:Put",
                "userIdentity": {"principalId": "faas-supervisor"},
                "requestParameters": {
                    "principalId": "faas-supervisor",
                    "region": "",
                    "sourceIPAddress": "127.0.0.1",
                },
                "responseElements": {"x-amz-request-id": request_id},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "Config",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "faas-supervisor"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": {
                        "key": key,
                        "size": obj.size,
                        "eTag": obj.etag,
                        "sequencer": request_id,
                    },
                },
                "source": {"host": "127.0.0.1", "port": "", "userAgent": "faas-supervisor"},
            }
        ],
    }
    return event
