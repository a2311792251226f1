"""How a service's new input objects become its jobs: the one place where that is chosen.

For the inputs of a service on the default provider (`minio.default`), in this order:

1. the embedded folder store: the controller watches the input folders (watcher.py);
2. an S3 server and `--events-queue`: the server notifies an SQS queue the controller
   reads (queue.py), since the operator said this server notifies that way;
3. an S3 server that keeps a push endpoint on an SNS topic (Ceph RGW): the server
   pushes each event to `/job/{name}`, the service token as the topic's `OpaqueData`;
4. any other S3 server (MinIO, Amazon S3 without a queue, moto): watched, as 1.

Rule 3 is found by trying (notifications.py): nothing in an S3 server's answers says
more reliably whether it will push.

The inputs on a MinIO provider the service defines (`minio.ID`, SPEC 7.2) are watched, as
in 4, whatever the way of its default ones: no notifications are set up on those servers
(their keys are the service's, and the operator did not point them at the controller).
Each is listed through its server's store (servers.py: one per server, shared by the
services on it), and its jobs' events are delegated (SPEC 6.1) to that provider, so the
job downloads from there. The log's `service events` line gives the way of the default
inputs (`watch` for a service with only such inputs) and, in `watched`, those providers.

Whichever way, the input paths are also listed at start and every `--reconcile-interval`
(reconcile.py): an object whose event was lost still gets its job, and the objects
already in a path when the service got it get none. Each object gets one job however
many times its event arrives (jobs.py, identity.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from enum import StrEnum
from urllib.parse import quote

from faas_supervisor.config import DEFAULT_PROVIDER, StoragePath
from faas_supervisor.controller.buckets import BucketStore, S3Access, S3Store
from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.notifications import Inputs, S3Notifications, input_paths
from faas_supervisor.controller.queue import QueuePoller, Submit
from faas_supervisor.controller.reconcile import DEFAULT_INTERVAL, ListingFailed, Reconciler
from faas_supervisor.controller.servers import ServerFailed, ServerStores, own_inputs, shown_error
from faas_supervisor.controller.store import Store
from faas_supervisor.controller.watcher import InputWatcher
from faas_supervisor.errors import ConfigError
from faas_supervisor.logs import get_logger


class IntakeKind(StrEnum):
    """How a service's new input objects reach it (the value is what the log shows)."""

    NONE = "none"  # no inputs
    WATCH = "watch"  # listed every few seconds by InputWatcher
    QUEUE = "queue"  # the storage server's notifications, read from --events-queue
    PUSH = "push"  # the storage server's webhook to /job


logger = get_logger(component="intake")


class Intake:
    def __init__(
        self,
        buckets: BucketStore,
        store: Store,
        submit: Submit,
        public_url: str,
        events_queue: str = "",
        reconcile_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.buckets = buckets
        self.public_url = public_url.rstrip("/")
        self.servers = ServerStores()  # of the services' own MinIO providers
        self.reconciler = Reconciler(store, submit, reconcile_interval)
        self.watcher = InputWatcher(self.reconciler.offer)
        self.notifications = S3Notifications(buckets) if isinstance(buckets, S3Store) else None
        self.queue: QueuePoller | None = None
        if events_queue:
            if not isinstance(buckets, S3Store):
                raise ConfigError("--events-queue needs --minio-endpoint (an S3 server)")
            self.queue = QueuePoller(buckets, events_queue, submit)
        self.modes: dict[str, IntakeKind] = {}

    async def open(self) -> None:
        """Before any service is attached: the events queue, made if missing."""
        if self.queue is not None:
            try:
                await asyncio.to_thread(self.queue.open)
            except Exception as exc:
                raise ConfigError(
                    f"--events-queue: cannot open {self.queue.shown}: "
                    f"{self.queue.shown_error(exc)}"
                ) from None

    def start(self) -> None:
        self.watcher.start()
        if self.queue is not None:
            self.queue.start()
        self.reconciler.start()

    async def close(self) -> None:
        if self.queue is not None:
            self.queue.close()
        await self.reconciler.close()
        await self.watcher.close()

    def mode(self, name: str) -> IntakeKind:
        return self.modes.get(name, IntakeKind.NONE)

    async def attach(self, service: Service, fallback: bool = False) -> IntakeKind:
        """Have the service's new input objects start its jobs; the way chosen (that of
        its inputs on the default provider; WATCH when all are on its own providers).

        A storage server that fails to set up its notifications fails the call, unless
        `fallback` (at start-up, where the controller must come up): then it is watched.
        """
        inputs = await self._inputs(service, fallback)
        try:
            mode = await self._attach(service, inputs)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await self._undo(service)
            if not fallback:
                self.servers.release(service.name)
                raise
            if isinstance(exc, ListingFailed):  # its baseline: taken at its first listing
                provider = exc.path.provider
                logger.warning("cannot list an input path; all the service's inputs are "
                               "watched", service=service.name, provider=provider,
                               path=f"{exc.path.bucket}/{exc.path.key_prefix}",
                               error=shown_error(provider, exc.__cause__ or exc))
            else:  # the default provider's server (the operator's: its message is kept)
                logger.warning(
                    "cannot set up the storage server's notifications; watching instead",
                    service=service.name,
                    error=shown_error(DEFAULT_PROVIDER, exc),
                )
            mode = IntakeKind.WATCH
            await self.watcher.watch(service, _watched(inputs, mode))
        self.modes[service.name] = mode
        if mode != IntakeKind.NONE:
            self.reconciler.add(service, inputs, _watched(inputs, mode).keys())
        if fallback:  # the stored definition, back: paths a failed update recorded go
            self.keep(service)
        own = sorted({path.provider for path in inputs if path.provider != DEFAULT_PROVIDER})
        # Whatever the way of its default inputs, those on its own providers are watched.
        watched = {"watched": ",".join(own)} if own else {}
        logger.info("service events", service=service.name, intake=mode.value, **watched)
        return mode

    def keep(self, service: Service) -> None:
        """The input paths the service no longer has are forgotten: called once its update
        has gone through, not before (a failed one leaves the old paths as they were, their
        objects that came meanwhile given jobs, not taken as old)."""
        self.reconciler.keep(service)

    async def _inputs(self, service: Service, fallback: bool) -> dict[StoragePath, BucketStore]:
        """The service's input paths, each with the store it is listed through: the
        default provider's through the controller's, those on its own MinIO providers
        through their servers' (held for it until `detach`)."""
        inputs: dict[StoragePath, BucketStore] = dict.fromkeys(input_paths(service), self.buckets)
        own = own_inputs(service)
        servers: dict[S3Access, str] = {}
        for path, access in own.items():
            servers.setdefault(access, path.provider)  # a provider to name it by
        try:
            stores = await self.servers.hold(service.name, servers)
        except ServerFailed as exc:  # a client boto3 cannot make (an endpoint it refuses)
            self.servers.release(service.name)
            if not fallback:
                raise
            # Its message may show the endpoint: the type only, as routes/services.py does.
            logger.warning("cannot reach the servers of the service's own MinIO providers; "
                           "its inputs there are not watched", service=service.name,
                           provider=exc.provider, error=type(exc.__cause__ or exc).__name__)
            return inputs
        inputs.update((path, stores[server]) for path, server in own.items())
        return inputs

    async def _attach(self, service: Service, inputs: Inputs) -> IntakeKind:
        """Baseline, then the way of its default inputs set up, and what is watched."""
        self.modes[service.name] = IntakeKind.NONE
        if not inputs:
            return IntakeKind.NONE
        # First, before any event can come: what is there now is old.
        await self.reconciler.baseline(service, inputs)
        mode = await self._announce(service)
        if mode == IntakeKind.NONE:  # all its inputs are on its own providers
            mode = IntakeKind.WATCH
        await self.watcher.watch(service, _watched(inputs, mode))
        return mode

    async def _announce(self, service: Service) -> IntakeKind:
        """How the new objects of the service's inputs on the default provider reach it;
        what is set up on the storage server recorded in `modes` first, for `detach`."""
        if not input_paths(service):
            return IntakeKind.NONE
        if self.notifications is None:
            return IntakeKind.WATCH
        if self.queue is not None:
            self.modes[service.name] = IntakeKind.QUEUE
            self.queue.add(service)
            await asyncio.to_thread(self.notifications.notify_queue, service, self.queue.arn)
            return IntakeKind.QUEUE
        url = f"{self.public_url}/job/{quote(service.name)}"
        arn = await asyncio.to_thread(self.notifications.make_push_topic, service, url)
        if arn is not None:
            self.modes[service.name] = IntakeKind.PUSH
            await asyncio.to_thread(self.notifications.push_to_topic, service, arn)
            return IntakeKind.PUSH
        return IntakeKind.WATCH

    async def detach(self, service: Service) -> None:
        """Undo `attach`; a storage server that fails here is logged, not raised: the
        service is going away either way."""
        await self._undo(service)
        self.servers.release(service.name)

    async def _undo(self, service: Service) -> None:
        """`detach` but for the stores of its own servers, which a fallback still lists."""
        mode = self.modes.pop(service.name, IntakeKind.NONE)
        self.reconciler.remove(service.name)
        self.watcher.unwatch(service.name)
        if self.queue is not None:
            self.queue.remove(service.name)
        if self.notifications is None or mode not in (IntakeKind.QUEUE, IntakeKind.PUSH):
            return
        notifications = self.notifications
        undo = notifications.remove_queue if mode == IntakeKind.QUEUE else notifications.remove_push
        try:
            await asyncio.to_thread(undo, service)
        except Exception as exc:
            logger.warning(
                "cannot remove the service's notifications", service=service.name, error=str(exc)
            )


def _watched(inputs: Inputs, mode: IntakeKind) -> Inputs:
    """The inputs the watcher lists: those on the service's own providers, and those on
    the default one when they are watched too."""
    return {path: store for path, store in inputs.items()
            if path.provider != DEFAULT_PROVIDER or mode == IntakeKind.WATCH}
