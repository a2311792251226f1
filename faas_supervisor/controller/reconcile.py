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
from faas_supervisor.controller.keyed_tasks import KeyedTasks
from faas_supervisor.controller.notifications import Inputs
from faas_supervisor.controller.queue import Submit
from faas_supervisor.controller.servers import input_servers, list_path, shown_error
from faas_supervisor.controller.store import ListedPath, Store
from faas_supervisor.controller.watcher import input_event
from faas_supervisor.logs import get_logger

DEFAULT_INTERVAL = 60.0
logger = get_logger(component="reconcile")


class ListingFailed(Exception):
    """An input path that cannot be listed when the service gets it (its baseline): the
    service is not attached; `__cause__` says why (routes/services.py shows its type)."""

    def __init__(self, path: StoragePath) -> None:
        super().__init__(f"{path.provider}: cannot list {path.bucket}/{path.key_prefix}")
        self.path = path


class Reconciler:
    def __init__(self, store: Store, submit: Submit, interval: float) -> None:
        self.store = store
        self.submit = submit
        self.interval = interval
        # name -> (service, its input paths and their stores, those the watcher lists)
        self._services: dict[str, tuple[Service, Inputs, frozenset[StoragePath]]] = {}
        # name -> (service, its input paths as the store records them): from its definition
        self._listed: dict[str, tuple[Service, dict[StoragePath, ListedPath]]] = {}
        # name -> its listing in progress: a server that never answers holds up its own
        self._rounds: KeyedTasks[str] = KeyedTasks()
        self._task: asyncio.Task[None] | None = None

    def add(self, service: Service, inputs: Inputs, watched: Collection[StoragePath]) -> None:
        """List the service's input paths each round; the objects without a job in those
        not `watched` are submitted here."""
        self._services[service.name] = (service, dict(inputs), frozenset(watched))

    def remove(self, name: str) -> None:
        self._services.pop(name, None)
        self._listed.pop(name, None)
        # A listing in progress is left to end (not cancelled halfway through a submit):
        # it stops at its next path, and holds up no listing of a new definition.
        self._rounds.let_go(name)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reconcile")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._rounds.close()

    def _path(self, service: Service, path: StoragePath) -> ListedPath:
        """The input path as the store records it: on which server (servers.server_id)."""
        known = self._listed.get(service.name)
        if known is None or known[0] is not service:
            servers = input_servers(service)
            known = self._listed[service.name] = (service, {
                p: ListedPath(p.provider, server, p.bucket, p.key_prefix)
                for p, server in servers.items()
            })
        found = known[1].get(path)
        return found or ListedPath(path.provider, "", path.bucket, path.key_prefix)

    async def baseline(self, service: Service, inputs: Inputs) -> None:
        """The objects already in the service's new input paths are old: no jobs. Those it
        no longer has are left recorded (`keep`: once an update has gone through, so that a
        failed one leaves the service as it was). Raises ListingFailed when a path's store
        cannot be listed."""
        for path, store in inputs.items():
            if not self.store.path_listed(service.name, self._path(service, path)):
                try:
                    objects = await list_path(store, path)
                except Exception as exc:
                    raise ListingFailed(path) from exc
                self._record_baseline(service, path, objects)

    def keep(self, service: Service) -> None:
        """The input paths the service's definition does not have are forgotten: an update
        that went through (or its previous definition back after one that failed)."""
        listed = {self._path(service, path) for path in input_servers(service)}
        self.store.keep_paths(service.name, listed)

    def _record_baseline(
        self, service: Service, path: StoragePath, objects: list[StoredObject]
    ) -> None:
        self.store.record_baseline(
            service.name,
            self._path(service, path),
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
        if not self.store.path_listed(service.name, self._path(service, path)):
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
            try:
                objects = await list_path(store, path)
            except Exception as exc:  # this path only: the service's others are listed
                logger.warning("cannot list an input path", service=service.name,
                               provider=path.provider, path=f"{path.bucket}/{path.key_prefix}",
                               error=shown_error(path.provider, exc))
                continue
            if self._services.get(service.name) is not entry:
                return  # detached (deleted or updated) while listing
            listed_path = self._path(service, path)
            if not self.store.path_listed(service.name, listed_path):
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
            # Each service's listing its own task: one whose server never answers (until
            # its timeouts, buckets.py) holds up no other's, and is not started twice.
            for name, (service, _, _) in list(self._services.items()):
                if name not in self._rounds:
                    self._rounds.start(name, self._reconcile(name, service),
                                       name=f"reconcile-{name}")
            await asyncio.sleep(self.interval)  # a period: there is no event to await

    async def _reconcile(self, name: str, service: Service) -> None:
        try:
            await self.reconcile(service)
        except Exception as exc:  # the controller's store is down: the next round tries again
            logger.warning("cannot reconcile the input paths", service=name, error=str(exc))
