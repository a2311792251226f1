"""Listing a service's input paths: the baseline a path starts from, and reconciliation.

Events get lost: a webhook target down while the storage server fires, a Ceph RGW topic
that stalls after a failed delivery, a controller that was stopped. So on start and every
`--reconcile-interval` seconds, each input path of each service (on the default provider,
or on a MinIO provider the service defines: through that server's store, intake.py) is
listed, and

* a path listed for the first time (a new service, or a path an update added) records
  the objects in it as a baseline, with no jobs: as with OSCAR and MinIO, objects there
  before the service are not its events;
* each object without an identity (identity.py) gets a job, with the event MinIO would
  have sent (delegated to the path's provider if not the default one: the job downloads
  from there). A watched path is left to the watcher, which lists it at every poll and
  waits until a file stops changing (a file being copied into the folder store is not
  complete): for it, the listing only does the other two;
* identities of objects no longer there are forgotten, so the store holds as many as
  the paths hold objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection

from faas_supervisor.config import StoragePath
from faas_supervisor.controller.buckets import StoredObject
from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.identity import listed_id
from faas_supervisor.controller.notifications import Inputs, list_input
from faas_supervisor.controller.queue import Submit
from faas_supervisor.controller.store import Store
from faas_supervisor.controller.watcher import input_event
from faas_supervisor.logs import get_logger

DEFAULT_INTERVAL = 60.0
logger = get_logger(component="reconcile")


class Reconciler:
    def __init__(self, store: Store, submit: Submit, interval: float) -> None:
        self.store = store
        self.submit = submit
        self.interval = interval
        # name -> (service, its input paths and their stores, those the watcher lists)
        self._services: dict[str, tuple[Service, Inputs, frozenset[StoragePath]]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, service: Service, inputs: Inputs, watched: Collection[StoragePath]) -> None:
        """List the service's input paths each round; the objects without a job in those
        not `watched` are submitted here."""
        self._services[service.name] = (service, dict(inputs), frozenset(watched))

    def remove(self, name: str) -> None:
        self._services.pop(name, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reconcile")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def baseline(self, service: Service, inputs: Inputs) -> None:
        """The objects already in the service's new input paths are old: no jobs.
        Raises when a path's store cannot be listed."""
        kept = {(p.provider, p.bucket, p.key_prefix) for p in inputs}
        self.store.keep_paths(service.name, kept)
        for path, store in inputs.items():
            if not self.store.path_listed(
                service.name, path.provider, path.bucket, path.key_prefix
            ):
                objects = await asyncio.to_thread(list_input, store, path)
                self._record_baseline(service, path, objects)

    def _record_baseline(
        self, service: Service, path: StoragePath, objects: list[StoredObject]
    ) -> None:
        self.store.record_baseline(
            service.name,
            path.provider,
            path.bucket,
            path.key_prefix,
            [listed_id(path.bucket, o, path.provider) for o in objects],
        )
        logger.info(
            "input path listed: its objects are taken as old",
            service=service.name,
            provider=path.provider,
            path=f"{path.bucket}/{path.key_prefix}",
            objects=len(objects),
        )

    async def offer(self, service: Service, path: StoragePath, obj: StoredObject) -> None:
        """A complete object in one of the service's input paths: a job, unless it has
        one (or was there first). Until the path's baseline is recorded, nothing."""
        if not self.store.path_listed(service.name, path.provider, path.bucket, path.key_prefix):
            return
        if self.store.has_object(service.name, listed_id(path.bucket, obj, path.provider)):
            return
        logger.info("new input object", service=service.name, provider=path.provider,
                    bucket=path.bucket, key=obj.key)
        await self.submit(service, input_event(path, obj))

    async def reconcile(self, service: Service) -> None:
        entry = self._services.get(service.name)
        if entry is None or entry[0] is not service:
            return
        _, inputs, watched = entry
        for path, store in inputs.items():
            started = time.time()
            objects = await asyncio.to_thread(list_input, store, path)
            if self._services.get(service.name) is not entry:
                return  # detached (deleted or updated) while listing
            if not self.store.path_listed(
                service.name, path.provider, path.bucket, path.key_prefix
            ):
                self._record_baseline(service, path, objects)
                continue
            listed = {listed_id(path.bucket, obj, path.provider): obj for obj in objects}
            known = self.store.objects_in(
                service.name, path.provider, path.bucket, path.key_prefix
            )
            if path not in watched:
                for identity, obj in listed.items():
                    if identity not in known:
                        logger.info(
                            "an input object without a job (its event was lost)",
                            service=service.name,
                            provider=path.provider,
                            bucket=path.bucket,
                            key=obj.key,
                        )
                        await self.submit(service, input_event(path, obj))
            self.store.forget_older(service.name, known - listed.keys(), started)

    async def _run(self) -> None:
        while True:
            for name, (service, _, _) in list(self._services.items()):
                try:
                    await self.reconcile(service)
                except Exception as exc:  # the store is down: the next round tries again
                    logger.warning("cannot list the input paths", service=name, error=str(exc))
            await asyncio.sleep(self.interval)  # a period: there is no event to await
