"""Watches the input paths of services, for stores that send no notifications themselves.

The folder store (and an S3 server the controller could not ask for notifications) is
polled every half second; a new object is announced once, with a MinIO-shaped event
(`eventSource: minio:s3`, the key URL-encoded as MinIO writes it), when two polls in a row
saw the same size and time: a file still being written does not start a job.
Objects present when watching starts are not events, as with MinIO.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import quote_plus

from faas_supervisor.controller.buckets import BucketStore, StoredObject
from faas_supervisor.controller.fdl import Service
from faas_supervisor.logs import get_logger

POLL_SECONDS = 0.5
logger = get_logger(component="watcher")

Submit = Callable[[Service, bytes], Awaitable[object]]
Target = tuple[str, str]  # (bucket, key prefix)
Seen = dict[str, tuple[int, float]]  # key -> (size, modified)


class InputWatcher:
    def __init__(self, store: BucketStore, submit: Submit) -> None:
        self.store = store
        self.submit = submit
        self._services: dict[str, tuple[Service, list[Target]]] = {}
        self._announced: dict[tuple[str, Target], set[tuple[str, int, float]]] = {}
        self._pending: dict[tuple[str, Target], Seen] = {}
        self._task: asyncio.Task[None] | None = None

    async def watch(self, service: Service) -> None:
        targets = [
            (entry.bucket, f"{entry.folder}/" if entry.folder else "")
            for entry in service.input
            if entry.provider == "minio.default"
        ]
        self.unwatch(service.name)
        if not targets:
            return
        for target in targets:
            existing = await asyncio.to_thread(self._list, target)
            self._announced[(service.name, target)] = {
                (o.key, o.size, o.modified) for o in existing
            }
            self._pending[(service.name, target)] = {}
        self._services[service.name] = (service, targets)

    def unwatch(self, name: str) -> None:
        entry = self._services.pop(name, None)
        for target in entry[1] if entry else []:
            self._announced.pop((name, target), None)
            self._pending.pop((name, target), None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="input-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _list(self, target: Target) -> list[StoredObject]:
        bucket, prefix = target
        if not self.store.bucket_exists(bucket):
            return []
        return self.store.list_objects(bucket, prefix)

    async def _run(self) -> None:
        while True:
            for name, (service, targets) in list(self._services.items()):
                for target in targets:
                    try:
                        await self._poll(service, target)
                    except Exception as exc:  # a store hiccup must not stop the watching
                        logger.warning(
                            "cannot list an input path",
                            service=name,
                            path="/".join(target),
                            error=str(exc),
                        )
            await asyncio.sleep(POLL_SECONDS)  # polling: the folder store has no events

    async def _poll(self, service: Service, target: Target) -> None:
        objects = await asyncio.to_thread(self._list, target)
        slot = (service.name, target)
        if slot not in self._announced:
            return  # unwatched while listing
        announced, pending = self._announced[slot], self._pending[slot]
        now: Seen = {}
        for obj in objects:
            version = (obj.key, obj.size, obj.modified)
            if version in announced:
                continue
            if pending.get(obj.key) == (obj.size, obj.modified):
                announced.add(version)
                logger.info("new input object", service=service.name, bucket=target[0], key=obj.key)
                await self.submit(service, minio_event(target[0], obj))
            else:
                now[obj.key] = (obj.size, obj.modified)
        self._pending[slot] = now


def minio_event(bucket: str, obj: StoredObject) -> bytes:
    """An `s3:ObjectCreated:Put` event as MinIO sends it (key URL-encoded, `/` too)."""
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
    return json.dumps(event, separators=(",", ":")).encode()
