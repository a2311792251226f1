"""Services as Kubernetes objects, through the official `kubernetes` client (SPEC 7.3).

`deploy` has the API server check every object first (a server-side dry run, so that a
refused definition makes nothing), applies them (create; on 409 Conflict, replace, if the
object is the service's own: its label says whose it is), deletes what the service no
longer has (found by its labels), and then waits, at most `sync_wait` seconds, until a
pod of its Deployment has its images or cannot pull them (`ErrImagePull`,
`ImagePullBackOff`): a service whose image cannot be pulled is refused with the kubelet's
reason. `remove` deletes all of it (found by its labels), its jobs included, with
foreground propagation, so that nothing it owns outlives it.

What the backend needs to know of the cluster's state, it learns from watches, not by
polling: one watch per kind (Jobs, Pods, Deployments; every object carrying the
`managed-by: faas-supervisor` label), each in a thread of its own, listed once at start
and resumed from its last resourceVersion after a disconnect (or a silence longer than a
watch lasts: a dead connection), or listed again after a 410 Gone. Their events update a
cache on the event loop, and wake what waits on it: a job waiting for its Job's end,
`/run` waiting (`sync_wait`) for a ready replica, a deploy waiting for its pod's images.
A job costs two requests of its own: the Job's creation and the reading of its pod's logs
when it ends (and one more read for each time its logs are asked for while it runs).
A job whose pod cannot start fails (its Job deleted) rather than holding its worker: at
once when its image cannot be pulled (PULL_ERRORS), after `start_error_grace` seconds
when a container cannot be made or started (START_ERRORS: a Secret that an update deleted
under it; the kubelet retries these, which a busy runtime may also report for a while),
after `pending_limit` seconds in one state otherwise (unschedulable, a volume that cannot
be mounted).

A controller restarted during jobs runs them again under the same names (jobs.py):
their creation answers 409, and the cache, listed at start, already has the Job, so the
job is followed from where it is, a Job that ended while the controller was down
included, and its script is not run twice.

The client is synchronous, so every call runs in a thread. Services and Jobs are left
running when the controller stops (a restart of the controller must not take them
down: it re-attaches to them).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import threading
from collections.abc import AsyncGenerator, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from urllib3.exceptions import HTTPError, ReadTimeoutError

from faas_supervisor.controller import manifests
from faas_supervisor.controller.deployments import Deployment, LogLine, parse_stamped
from faas_supervisor.controller.fdl import Service
from faas_supervisor.errors import (
    ConfigError,
    InvalidService,
    KubernetesError,
    ServiceUnavailable,
)
from faas_supervisor.logs import get_logger

T = TypeVar("T")
# An event travels in the `EVENT` variable, as OSCAR passes it; Linux refuses a single
# variable over 128 KiB at exec, so larger events cannot be jobs here.
EVENT_MAX = 96 * 1024
WATCH_SECONDS = 60  # one watch request; then another from where it left off
# The API server ends a watch after WATCH_SECONDS, so one silent for longer is a dead
# connection (half-open: a node or a load balancer gone without a reset), given up then;
# else its thread would wait in recv for ever, and every job with it.
WATCH_MARGIN = 15.0
CONNECT_SECONDS = 10.0
LOG_CHUNK = 256 << 10  # bytes of a running job's pod's log read at a time
GONE_POD = "the job's pod was deleted before its logs could be read"
POD_GRACE = 2.0  # seconds a Job's end waits for its pod's events before asking
RETRY_SECONDS = 1.0  # after a watch failed for another reason than 410 Gone
DEFAULT_SYNC_WAIT = 60.0
FOREGROUND = {"propagationPolicy": "Foreground"}
DRY_RUN = "All"
# The annotations the OSCAR manager's stop, start and restart write on a Deployment.
PREVIOUS_REPLICAS = "oscar.grycap.io/previous-replicas"
STOPPED = "oscar.grycap.io/stopped"
RESTARTED_AT = "oscar.grycap.io/restarted-at"
CLUSTER_DOMAIN = "cluster.local"
# The waiting reasons of a container whose image the kubelet cannot have.
PULL_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
# ...and of one the kubelet cannot make or start: a Secret, ConfigMap or key it names
# is missing (an update deleted it under a pending job), its command cannot run. A Job
# sets no deadline for its pending phase, so a job's pod waiting so would hold its worker
# (one of --max-jobs) for ever: it fails the job once it has lasted START_ERROR_GRACE
# (the kubelet retries them, and a busy container runtime reports these for a moment
# too: "failed to reserve container name", a deadline exceeded).
START_ERRORS = (*PULL_ERRORS, "CreateContainerConfigError", "CreateContainerError",
                "RunContainerError")
START_ERROR_GRACE = 60.0
# Seconds a job's pod may stay Pending in one state (unschedulable, a volume it cannot
# mount, an image still pulling: only the pod's events, which the controller does not
# read, tell these apart) before its job fails; each change of state (scheduled, an
# image pulled, the init container run) starts the count again. Generous: a cluster
# autoscaler adding a node, or a pull of a large image, takes minutes.
PENDING_LIMIT = 600.0
# Tries of a read-modify-replace of a Deployment (stop, restart), which a write made
# between the read and the replace (the deployment controller's status, the HPA's
# scale) turns into a 409 Conflict.
CONFLICT_TRIES = 5
# The client's API class and the name in its method names, per kind.
_KINDS: dict[str, tuple[str, str]] = {
    "Secret": ("CoreV1Api", "secret"),
    "ConfigMap": ("CoreV1Api", "config_map"),
    "Deployment": ("AppsV1Api", "deployment"),
    "Service": ("CoreV1Api", "service"),
    "HorizontalPodAutoscaler": ("AutoscalingV2Api", "horizontal_pod_autoscaler"),
    "Ingress": ("NetworkingV1Api", "ingress"),
    "Job": ("BatchV1Api", "job"),
    "Pod": ("CoreV1Api", "pod"),
}
_SERVICE_KINDS = [kind for _, kind in manifests.MANIFEST_KINDS]
_WATCHED = ("Job", "Pod", "Deployment")
_MANAGED = ",".join(f"{k}={v}" for k, v in manifests.MANAGED_BY.items())
logger = get_logger(component="kubernetes-backend")


class _NoPod(str):
    """The condition of a Job that ended with no pod in the cache."""


@dataclass
class _Stall:
    """A job's pod not started, in one state (`_pending_state`) since `timer` was set;
    the timer marks it `over` once that has lasted the backend's `pending_limit`."""

    state: tuple[str, ...]
    timer: asyncio.TimerHandle
    over: bool = False


class _WatchError(Exception):
    """An ERROR event on a watch: the API server's Status."""

    def __init__(self, status: int, reason: str | None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class KubernetesBackend:
    name = "kubernetes"

    def __init__(
        self,
        cluster: manifests.Cluster,
        kubeconfig: str = "",
        *,
        in_cluster: bool = False,
        sync_wait: float = DEFAULT_SYNC_WAIT,
        pending_limit: float = PENDING_LIMIT,
        start_error_grace: float = START_ERROR_GRACE,
    ) -> None:
        """`kubeconfig` (else, unless `in_cluster`, ~/.kube/config): as settings.py chose.
        `sync_wait`: seconds `/run` waits for a ready replica, and a deploy for its pod.
        `pending_limit`: seconds a job's pod may stay Pending in one state;
        `start_error_grace`: in one of START_ERRORS."""
        self.cluster = cluster
        self.namespace = cluster.namespace
        self.kubeconfig = kubeconfig
        self.in_cluster = in_cluster
        self.sync_wait = sync_wait
        self.pending_limit = pending_limit
        self.start_error_grace = start_error_grace
        self._services: dict[str, Service] = {}
        self._client: Any = None
        self._apis: dict[str, Any] = {}
        # The watched kinds' objects, by name; only the event loop touches them.
        self._cache: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in _WATCHED}
        self._job_pods: dict[str, set[str]] = {}  # job -> its pods' names
        self._wakers: dict[str, set[asyncio.Event]] = {}  # "job:NAME", "service:NAME"
        self._deleted_jobs: set[str] = set()  # Jobs deleted while a job waited on them
        # Jobs followed to their end, until the cluster deletes them (their TTL): their
        # objects are not cached, which with many jobs would be most of the memory.
        self._done: set[str] = set()
        self._stalls: dict[str, _Stall] = {}  # jobs whose pod has not started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._detached = False  # the controller is stopping: Jobs are left running
        self._released = False  # release_waiters: the controller is stopping
        self._listed_jobs: set[str] = set()  # the Jobs there were at start
        self._gone: set[str] = set()  # interrupted jobs whose Job was no longer there
        self._watchers: list[threading.Thread] = []
        self._streams: dict[str, Any] = {}  # kind -> its current watch

    # ---- connection ------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._connect)
        self._loop = asyncio.get_running_loop()
        # The state first (the jobs that a restart finds are judged on it), then a
        # watch per kind from where each listing left off.
        for kind in _WATCHED:
            version, items = await asyncio.to_thread(self._list_managed, kind)
            self._resync(kind, items)
            if kind == "Job":
                self._listed_jobs = {item["metadata"]["name"] for item in items}
            thread = threading.Thread(
                target=self._watch_kind, args=(kind, version),
                name=f"kubernetes-watch-{kind}", daemon=True,
            )
            thread.start()
            self._watchers.append(thread)
        logger.info(
            "kubernetes backend ready",
            server=self._client.configuration.host,
            namespace=self.namespace,
            runtime_image=self.cluster.runtime_image,
            jobs=len(self._cache["Job"]),
        )

    def _connect(self) -> None:
        try:
            from kubernetes import client, config
        except ImportError:  # not in the bundle, nor in an install without [controller]
            raise ConfigError("--backend kubernetes needs the kubernetes package: "
                              "pip install 'faas-supervisor[controller]'") from None

        configuration = client.Configuration()
        try:
            if self.in_cluster:
                config.load_incluster_config(client_configuration=configuration)
            else:
                # None: the client's own default, ~/.kube/config.
                config.load_kube_config(
                    config_file=self.kubeconfig or None, client_configuration=configuration
                )
        except (config.ConfigException, OSError) as exc:
            where = "in-cluster config" if self.in_cluster else self.kubeconfig or "~/.kube/config"
            raise ConfigError(f"kubernetes: cannot load {where}: {exc}") from None
        # The watches hold a connection each, besides the calls of the jobs' threads.
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, 32)
        self._client = client.ApiClient(configuration)
        self._apis = {
            name: getattr(client, name)(self._client) for name, _ in set(_KINDS.values())
        }

    def interrupted(self, jobs: Collection[str]) -> None:
        """The jobs a stopped controller had running, run again now: those whose Job was
        not listed at start had ended and were deleted by their TTL while no controller
        watched (or, rarely, were never made). Creating them again would run their script
        twice; they fail instead, saying so (`run_job`)."""
        self._gone = set(jobs) - self._listed_jobs

    def detach(self) -> None:
        """The controller is stopping: the jobs cancelled from now on keep their Jobs
        running (a restart re-attaches to them), as services keep theirs."""
        self._detached = True

    async def close(self) -> None:
        self._stopping.set()
        for response in list(self._streams.values()):
            with contextlib.suppress(Exception):  # a read interrupted from another thread
                response.shutdown()
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None

    def _method(self, verb: str, kind: str) -> Callable[..., Any]:
        api, noun = _KINDS[kind]
        method: Callable[..., Any] = getattr(self._apis[api], f"{verb}_namespaced_{noun}")
        return method

    def _call(self, verb: str, kind: str, name: str = "", **kwargs: Any) -> Any:
        """One request, its answer as plain JSON (the client's models would cost more
        than the request, and nothing here needs them); its failure turned into a
        KubernetesError naming it."""
        from kubernetes.client.exceptions import ApiException

        if name:
            kwargs["name"] = name
        try:
            response = self._method(verb, kind)(
                namespace=self.namespace, _preload_content=False, **kwargs
            )
            try:
                return json.loads(response.data)
            finally:
                response.release_conn()
        except ApiException as exc:
            raise _api_error(exc, verb, kind, name) from None
        except HTTPError as exc:  # no answer at all
            raise _unreachable(exc, verb, kind, name) from None

    # ---- the watches (each in its thread) --------------------------------------------

    def _list_managed(self, kind: str) -> tuple[str, list[dict[str, Any]]]:
        """Every object of the kind that this controller made, and the version to watch
        from. Plain JSON: the client's models would cost more than the request."""
        listed = self._call("list", kind, label_selector=_MANAGED)
        return str(listed["metadata"]["resourceVersion"]), list(listed.get("items") or [])

    def _watch_kind(self, kind: str, version: str | None) -> None:
        """The kind's events into the cache, for as long as the backend runs. The watch
        request is made here rather than through the client's `Watch`, whose plain-JSON
        mode cannot read an ERROR event (its models would cost more than the events)."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        while not self._stopping.is_set():
            try:
                if version is None:  # the history is gone: the state again, from a list
                    version, items = self._list_managed(kind)
                    self._post(self._resync, kind, items)
                response = self._streams[kind] = self._method("list", kind)(
                    namespace=self.namespace,
                    label_selector=_MANAGED,
                    resource_version=version,
                    timeout_seconds=WATCH_SECONDS,
                    allow_watch_bookmarks=True,
                    watch=True,
                    _preload_content=False,
                    _request_timeout=(CONNECT_SECONDS, WATCH_SECONDS + WATCH_MARGIN),
                )
                try:
                    for line in iter_resp_lines(response):
                        event = json.loads(line)
                        raw: dict[str, Any] = event["object"]
                        if event["type"] == "ERROR":  # a Status
                            raise _WatchError(int(raw.get("code") or 500), raw.get("message"))
                        version = raw["metadata"]["resourceVersion"]
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            self._post(self._apply_event, kind, event["type"], raw)
                except BaseException:
                    # Left unread: its connection must not serve another request.
                    response.close()
                    raise
                finally:
                    response.release_conn()
            except (_WatchError, ApiException) as exc:
                if exc.status == 410:
                    logger.info("watch expired; listing again", kind=kind)
                    version = None
                    continue
                self._watch_failed(kind, f"{exc.status} {exc.reason}")
            except ReadTimeoutError:
                # A dead connection: as after a disconnect, a new watch from the last
                # version (the events it missed are still in the server's history).
                logger.info("watch silent past its end; resuming", kind=kind)
            except Exception as exc:  # a watch must outlive any one failure
                if self._stopping.is_set() or (self._loop and self._loop.is_closed()):
                    return  # closed: the client, or the event loop under it
                self._watch_failed(kind, f"{type(exc).__name__}: {exc}")

    def _watch_failed(self, kind: str, error: str) -> None:
        if not self._stopping.is_set():
            logger.warning("watch failed; resuming", kind=kind, error=error)
            self._stopping.wait(RETRY_SECONDS)

    def _post(self, work: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(work, *args)

    # ---- the cache (on the event loop) --------------------------------------------------

    def _resync(self, kind: str, items: list[dict[str, Any]]) -> None:
        """A listing: what the cache had and it has not was deleted meanwhile."""
        fresh = {item["metadata"]["name"]: item for item in items}
        if kind == "Job":  # ended Jobs deleted meanwhile: their DELETED will never come
            self._done.intersection_update(fresh)
        for name, old in list(self._cache[kind].items()):
            if name not in fresh:
                self._apply_event(kind, "DELETED", old)
        for item in items:
            self._apply_event(kind, "MODIFIED", item)

    def _apply_event(self, kind: str, kind_of_event: str, raw: dict[str, Any]) -> None:
        name = raw["metadata"]["name"]
        labels = raw["metadata"].get("labels") or {}
        job_name = name if kind == "Job" else labels.get(manifests.JOB_LABEL)
        if job_name in self._done:  # followed to its end: no more kept of it
            if kind == "Job" and kind_of_event == "DELETED":
                self._done.discard(name)
            return
        objects = self._cache[kind]
        if kind_of_event == "DELETED":
            objects.pop(name, None)
        else:
            objects[name] = _slim(kind, raw)
        if kind == "Job":
            if kind_of_event == "DELETED" and f"job:{name}" in self._wakers:
                self._deleted_jobs.add(name)
            self._wake(f"job:{name}")
        elif kind == "Pod" and manifests.JOB_LABEL in labels:
            job = labels[manifests.JOB_LABEL]
            pods = self._job_pods.setdefault(job, set())
            if kind_of_event == "DELETED":
                pods.discard(name)
                if not pods:
                    del self._job_pods[job]
            else:
                pods.add(name)
            self._wake(f"job:{job}")
        elif manifests.SERVICE_LABEL in labels:  # a service's Deployment or its pods
            self._wake(f"service:{labels[manifests.SERVICE_LABEL]}")

    def _wake(self, key: str) -> None:
        for event in self._wakers.get(key, ()):
            event.set()

    async def _until(
        self, key: str, check: Callable[[], T | None], timeout: float | None = None
    ) -> T | None:
        """`check`'s first answer that is not None, tried again at each change of the
        cache that concerns `key`; None when `timeout` passes first."""
        woken = asyncio.Event()
        self._wakers.setdefault(key, set()).add(woken)
        try:
            async with asyncio.timeout(timeout):
                while (answer := check()) is None:
                    await woken.wait()
                    woken.clear()
                return answer
        except TimeoutError:
            return None
        finally:
            wakers = self._wakers[key]
            wakers.discard(woken)
            if not wakers:
                del self._wakers[key]

    # ---- services ----------------------------------------------------------------------

    async def check(self, service: Service) -> None:
        """The API server's verdict on every object (a server-side dry run), before the
        service is stored. An image that cannot be pulled shows only once its pod is
        made: `deploy` waits for that, and the route forgets the service then."""
        objects = manifests.service_objects(service, self.cluster)  # InvalidService first
        await asyncio.to_thread(self._check_all, objects)

    async def deploy(self, service: Service) -> None:
        objects = manifests.service_objects(service, self.cluster)  # InvalidService first
        await asyncio.to_thread(self._check_all, objects)
        await asyncio.to_thread(self._apply_all, service.name, objects)
        self._services[service.name] = service
        logger.info("service applied", service=service.name, objects=len(objects))
        await self._wait_for_images(service, objects)

    async def restore(self, service: Service) -> None:
        """A stored service at start-up: applied again (the cluster may have lost some of
        it), not checked, not waited for: the controller starts whatever its pods do."""
        objects = manifests.service_objects(service, self.cluster)
        try:
            await asyncio.to_thread(self._apply_all, service.name, objects)
        except (InvalidService, KubernetesError) as exc:
            # Stored before a check came in: its names another service's objects, or a
            # value the API server cannot decode (memory 1g: a 400). Left undeployed,
            # rather than the controller not starting; a 5xx or a lost connection is
            # the cluster's, and stops the start as before.
            if isinstance(exc, KubernetesError) and exc.status not in (400, 422):
                raise
            logger.warning("service not restored", service=service.name, error=str(exc))
            return
        self._services[service.name] = service

    def _check_all(self, objects: list[dict[str, Any]]) -> None:
        """The API server's verdict on every object, with nothing made: a server-side
        dry run. Its refusal (422 Invalid; 400 BadRequest, a body it cannot even decode)
        is the definition's fault, so a 400; so is a name another service's object has."""
        scale = _scale_bounds(objects)
        for obj in objects:
            try:
                self._apply(obj, dry_run=True, scale=scale)
            except KubernetesError as exc:
                if exc.status in (400, 422):
                    raise InvalidService(str(exc)) from None
                raise

    def _apply_all(self, name: str, objects: list[dict[str, Any]]) -> None:
        made: list[dict[str, Any]] = []
        scale = _scale_bounds(objects)
        try:
            for obj in objects:
                if self._apply(obj, scale=scale):
                    made.append(obj)
        except (KubernetesError, InvalidService):
            # What this call created goes again (what it replaced, the caller puts back
            # by deploying the previous definition).
            for obj in reversed(made):
                with contextlib.suppress(KubernetesError):
                    self._delete(obj["kind"], obj["metadata"]["name"])
            raise
        # What an earlier definition had and this one has not (its secrets, say, or the
        # objects of a sync service now exposed) goes, found by the service's labels.
        keep = {(o["kind"], o["metadata"]["name"]) for o in objects}
        self._delete_labelled(name, _SERVICE_KINDS, keep)

    def _apply(
        self, obj: dict[str, Any], dry_run: bool = False,
        scale: tuple[int, int] | None = None,
    ) -> bool:
        """Created (True) or replaced (False). `scale`: the bounds of the service's
        autoscaler, if it has one (`_scale_bounds`)."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        extra = {"dry_run": DRY_RUN} if dry_run else {}
        try:
            self._call("create", kind, body=obj, **extra)
            return True
        except KubernetesError as exc:
            if exc.status != 409:
                raise
        live = self._refuse_if_not_own(obj)
        if kind == "Deployment" and scale is not None and live is not None:
            obj = _with_live_replicas(obj, live, scale)
        # It exists and is the service's: replaced whole, as `kubectl replace`.
        # Unconditional (no resourceVersion): the definition in the store is the truth.
        self._call("replace", kind, name, body=obj, **extra)
        return False

    def _refuse_if_not_own(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The existing object of that name (None: gone meanwhile); InvalidService unless
        it is labelled as the same service's. Names are made from service names
        (`NAME-minio`, `NAME-svc`...), so one service's can be another's: service
        `foo-minio`'s Secret is `foo`'s MinIO keys, plain `foo-svc`'s Service is exposed
        `foo`'s. The first to make it keeps it; what no service of this controller made
        is not replaced either."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        service = obj["metadata"]["labels"][manifests.SERVICE_LABEL]
        # A list, not a get: what the controller's Role allows on every kind.
        found = self._call("list", kind, field_selector=f"metadata.name={name}")
        live: dict[str, Any] | None = None
        for item in found.get("items") or []:
            owner = (item["metadata"].get("labels") or {}).get(manifests.SERVICE_LABEL)
            if owner != service:
                whose = f"belongs to service {owner!r}" if owner else "is no service's"
                raise InvalidService(
                    f"name: {service!r} cannot be deployed: its {kind} {name!r} exists and "
                    f"{whose}; choose another name"
                )
            live = item
        return live

    def _delete_labelled(
        self, name: str, kinds: list[str], keep: Collection[tuple[str, str]] = ()
    ) -> None:
        selector = manifests.service_selector(name)
        for kind in reversed(kinds):  # the users of an object before the object
            found = self._call("list", kind, label_selector=selector)
            for item in found.get("items") or []:
                if (kind, item["metadata"]["name"]) not in keep:
                    self._delete(kind, item["metadata"]["name"])

    def _delete(self, kind: str, name: str) -> None:
        try:
            self._call("delete", kind, name, body=dict(FOREGROUND))
        except KubernetesError as exc:
            if exc.status != 404:  # gone already: what was wanted
                raise

    async def _wait_for_images(self, service: Service, objects: list[dict[str, Any]]) -> None:
        """Until a pod of the service's Deployment has pulled its images (or cannot: the
        deploy is refused with the kubelet's reason); at most `sync_wait` seconds, after
        which the service is left starting (a large image, a busy cluster)."""
        (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
        template = deployment["spec"]["template"]
        component = template["metadata"]["labels"][manifests.COMPONENT_LABEL]
        want = _images(template["spec"])

        def verdict() -> str | None:
            pods = [
                pod for pod in self._cache["Pod"].values()
                if _labelled(pod, service.name, component) and _images(pod["spec"]) == want
            ]
            for pod in pods:
                if error := _pull_error(pod):
                    return error
            return "" if any(_started(pod) for pod in pods) else None

        error = await self._until(f"service:{service.name}", verdict, self.sync_wait)
        if error:
            raise InvalidService(f"image: {error}")
        if error is None:
            logger.info("service still starting", service=service.name, waited=self.sync_wait)

    async def remove(self, name: str) -> None:
        self._services.pop(name, None)
        await asyncio.to_thread(self._delete_labelled, name, ["Job", *_SERVICE_KINDS])
        logger.info("service removed", service=name)

    def release_waiters(self) -> None:
        self._released = True
        for key in [k for k in self._wakers if k.startswith("service:")]:
            self._wake(key)  # each invoke_url waiting looks again, and is released

    async def invoke_url(self, name: str) -> str:
        """The Service's address once its Deployment has a ready replica: waited for at
        most `sync_wait` seconds (a service just made, or scaled up from nothing)."""
        service = self._services.get(name)
        if service is None:
            raise ServiceUnavailable(f"service {name} is not deployed")
        deployment = (
            manifests.exposed_names(name)["Deployment"] if service.exposed else name
        )

        def ready() -> bool | None:
            found = self._cache["Deployment"].get(deployment)
            replicas = ((found or {}).get("status") or {}).get("readyReplicas") or 0
            if replicas > 0:
                return True
            return False if self._released else None  # False: no more waiting

        if not await self._until(f"service:{name}", ready, self.sync_wait):
            raise ServiceUnavailable(
                f"service {name} has no ready replica after {self.sync_wait:g} s"
            )
        return manifests.service_url(service, self.cluster, CLUSTER_DOMAIN)

    # ---- jobs ---------------------------------------------------------------------------

    async def run_job(self, service: Service, job: str, event: Path, log: Path) -> int:
        if job in self._gone:
            self._gone.discard(job)
            raise KubernetesError(
                f"Job {job} is gone: it ended while the controller was down and was deleted "
                "by its ttlSecondsAfterFinished (or was never made); its outcome is unknown, "
                "and it is not run twice"
            )
        text = await asyncio.to_thread(_event_text, event)
        body = manifests.job(service, self.cluster, job, text)
        create = asyncio.ensure_future(asyncio.to_thread(self._create_job, body))
        try:
            await asyncio.shield(create)
            outcome: dict[str, Any] | str | None = await self._until(
                f"job:{job}", functools.partial(self._job_outcome, job)
            )
            if isinstance(outcome, _NoPod):
                # The Job's watch can run ahead of the pods': their events are given a
                # moment, then the pods are asked for once.
                condition = outcome
                outcome = await self._until(
                    f"job:{job}", functools.partial(self._job_outcome, job, True), POD_GRACE
                )
                if outcome is None:
                    outcome = await asyncio.to_thread(self._ended_pod, job, condition)
                    if isinstance(outcome, str) and condition.startswith("Complete"):
                        # The Job controller saw its pod succeed, and the pod is gone
                        # since (the pod garbage collector, an eviction): a success, its
                        # logs lost. Seen under load (bench/scale.py) as a failure.
                        await asyncio.to_thread(_note, log, GONE_POD)
                        return 0
                if outcome is None:
                    outcome = await self._until(
                        f"job:{job}", functools.partial(self._job_outcome, job, True)
                    )
            assert outcome is not None  # no timeout
            if isinstance(outcome, str):
                if job not in self._deleted_jobs:  # a pod that cannot start: stopped
                    with contextlib.suppress(KubernetesError):
                        await asyncio.to_thread(self._delete, "Job", job)
                raise KubernetesError(f"Job {job}: {outcome}")
            pod = outcome
            try:
                await asyncio.to_thread(self._copy_logs, pod["metadata"]["name"], log)
            except KubernetesError as exc:
                if exc.status != 404:
                    raise
                await asyncio.to_thread(_note, log, GONE_POD)  # ended, then deleted
            code = _exit_code(pod)
            if code is None:
                raise KubernetesError(f"Job {job}: the script never ran")
            if _terminated(pod).get("reason") == "OOMKilled":
                await asyncio.to_thread(_note, log, (
                    f"the job's container was killed for its memory (OOMKilled; "
                    f"its limit is {service.memory})"
                ))
            return code
        except asyncio.CancelledError:
            # The controller stopping (detached): the Job runs on, for the next
            # controller to follow. The job deleted: the Job goes with its pod, once
            # its creation has been answered (else the delete could overtake it).
            with contextlib.suppress(Exception):
                await create
            if not self._detached:
                with contextlib.suppress(KubernetesError):
                    await asyncio.shield(asyncio.to_thread(self._delete, "Job", job))
            raise
        finally:
            made = create.done() and not create.cancelled() and create.exception() is None
            self._forget(job, made)

    def _forget(self, job: str, made: bool) -> None:
        """`made`: its Job was created (or was there): its events may still come (its
        watch lags) and are ignored until its deletion is seen. A Job never made (a quota
        refused it) has no deletion to wait for: kept, its name would stay for ever."""
        if made and job not in self._deleted_jobs:
            self._done.add(job)
        self._deleted_jobs.discard(job)
        if (stall := self._stalls.pop(job, None)) is not None:
            stall.timer.cancel()
        self._cache["Job"].pop(job, None)
        for pod in self._job_pods.pop(job, ()):
            self._cache["Pod"].pop(pod, None)

    def _create_job(self, body: dict[str, Any]) -> None:
        """The Job made. One of that name exists when a controller stopped during the
        job, which now runs again: that Job is followed to its end (the cache, listed at
        start, has it) rather than its script run twice."""
        try:
            self._call("create", "Job", body=body)
        except KubernetesError as exc:
            if exc.status != 409:
                raise
            logger.info("following the Job of an interrupted job", job=body["metadata"]["name"])

    def _ended_pod(self, job: str, condition: str) -> dict[str, Any] | str | None:
        """The job's ended pod, as a listing has it; why it failed when it has none;
        None: it has one, still running (its events are waited for)."""
        pods = self._call("list", "Pod", label_selector=f"{manifests.JOB_LABEL}={job}")
        items = pods.get("items") or []
        if not items:
            return f"failed without a pod: {condition}"
        pod = max(items, key=lambda p: p["metadata"].get("creationTimestamp") or "")
        return pod if _pod_finished(pod) else None

    def _job_outcome(self, job: str, checked: bool = False) -> dict[str, Any] | str | None:
        """The job's ended pod; or why it cannot end well; or None: not yet (or _NoPod:
        the Job ended and no pod of it is known, which `checked` says was looked into)."""
        pods = [self._cache["Pod"][p] for p in self._job_pods.get(job, ())]
        pod = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)
        if pod is not None:
            if _pod_finished(pod):
                return pod
            if error := _pull_error(pod):
                return f"its pod {pod['metadata']['name']}: {error}"
            if (error := _start_error(pod)) and self._stalled(job, pod, self.start_error_grace):
                return f"its pod {pod['metadata']['name']}: {error}"
        if job in self._deleted_jobs:
            return "the Job was deleted before it finished"
        found = self._cache["Job"].get(job)
        condition = _job_condition(found) if found is not None else None
        if condition is not None and pod is None and not checked:
            return _NoPod(condition)
        if condition is None and (pod is None or not _started(pod)):
            return self._stalled(job, pod) or None
        return None  # the Job's condition can come before the pod's phase: waited for

    def _stalled(self, job: str, pod: Mapping[str, Any] | None,
                 limit: float | None = None) -> str:
        """Why the job's pod has not started, once it has been `limit` seconds (else
        `pending_limit`) in the state it is in (none made yet included); else "". A new
        state starts a new count, its timer waking the job's waiter when it is over."""
        state = _pending_state(pod)
        stall = self._stalls.get(job)
        if stall is None or stall.state != state:
            if stall is not None:
                stall.timer.cancel()
            assert self._loop is not None
            wait = self.pending_limit if limit is None else limit
            timer = self._loop.call_later(wait, self._stall_over, job, state)
            stall = self._stalls[job] = _Stall(state, timer)
        if not stall.over:
            return ""
        if pod is None:
            return (f"the Job made no pod in {self.pending_limit:g} s "
                    "(its events say why: kubectl describe job)")
        return (f"its pod {pod['metadata']['name']} has not started in "
                f"{self.pending_limit:g} s: {_pending_text(pod)} "
                "(its events say why: kubectl describe pod)")

    def _stall_over(self, job: str, state: tuple[str, ...]) -> None:
        stall = self._stalls.get(job)
        if stall is not None and stall.state == state:
            stall.over = True
            self._wake(f"job:{job}")

    async def live_logs(self, job: str) -> AsyncGenerator[bytes, None] | None:
        """What a running job's pod has written so far, streamed; None before it runs."""
        pods = [self._cache["Pod"][p] for p in self._job_pods.get(job, ())]
        if not any(_started(pod) or _pod_finished(pod) for pod in pods):
            return None
        pod = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
        return self._stream_log(pod["metadata"]["name"])

    async def _stream_log(self, pod: str) -> AsyncGenerator[bytes, None]:
        """The pod's log, LOG_CHUNK bytes at a time, each read in a thread: a pod's log
        can be larger than the controller's memory."""
        response = await asyncio.to_thread(self._read_log, pod)
        chunks = response.stream(LOG_CHUNK)
        reading: asyncio.Task[bytes | None] | None = None
        whole = False
        try:
            while True:
                # Shielded: a read cancelled (the controller stopping) goes on in its
                # thread, and the connection is closed only once it is over.
                reading = asyncio.ensure_future(asyncio.to_thread(_next_chunk, chunks, pod))
                chunk = await asyncio.shield(reading)
                if chunk is None:
                    whole = True
                    return
                yield chunk
        finally:
            if reading is not None and not reading.done():
                await asyncio.wait([reading])
            if not whole:  # left unread, its connection must not serve another request
                response.close()
            response.release_conn()

    def _copy_logs(self, pod: str, log: Path) -> None:
        response = self._read_log(pod)
        with open(log, "ab") as out:
            try:
                for chunk in response.stream(1 << 16):
                    out.write(chunk)
            finally:
                response.release_conn()

    def _read_log(self, pod: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        api = self._apis["CoreV1Api"]
        try:
            return api.read_namespaced_pod_log(
                pod, self.namespace, container=manifests.CONTAINER, _preload_content=False
            )
        except ApiException as exc:
            raise _api_error(exc, "read logs of", "Pod", pod) from None
        except HTTPError as exc:
            raise _unreachable(exc, "read logs of", "Pod", pod) from None

    # ---- the service's Deployment, as the dashboard sees it ------------------------------

    def _read_deployment(self, service: Service) -> Any:
        """The service's Deployment (as manifests.py names it), None if there is none,
        or if that name is another service's (both made before names were checked)."""
        try:
            found = self._call("read", "Deployment", manifests.deployment(
                service, self.cluster)["metadata"]["name"])
        except KubernetesError as exc:
            if exc.status == 404:
                return None
            raise
        labels = found["metadata"].get("labels") or {}
        return found if labels.get(manifests.SERVICE_LABEL) == service.name else None

    async def deployment(self, service: Service) -> Deployment | None:
        found = await asyncio.to_thread(self._read_deployment, service)
        if found is None:
            return None
        spec, status = found.get("spec") or {}, found.get("status") or {}
        conditions = list(status.get("conditions") or [])
        latest = max(conditions, key=lambda c: _stamp(c.get("lastUpdateTime")) or 0.0,
                     default=None)
        reason = ""
        if latest is not None:
            reason = f"{latest.get('reason') or ''}: {latest.get('message') or ''}".strip(": ")
        replicas = spec.get("replicas")
        return Deployment(
            desired=replicas if replicas is not None else 1,
            running=status.get("replicas") or 0,
            ready=status.get("availableReplicas") or 0,
            failed=any((c.get("type"), c.get("status")) in (("ReplicaFailure", "True"),
                                                            ("Progressing", "False"))
                       for c in conditions),
            reason=reason,
            since=_stamp(latest.get("lastUpdateTime")) if latest is not None else None,
        )

    async def deployment_logs(self, service: Service, tail: int) -> list[LogLine] | None:
        def read() -> list[LogLine] | None:
            found = self._read_deployment(service)
            if found is None:
                return None
            labels = ((found.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            selector = ",".join(f"{k}={v}" for k, v in labels.items())
            pods = self._call("list", "Pod", label_selector=selector).get("items") or []
            if not pods:
                return None
            lines: list[LogLine] = []
            for pod in pods:
                with contextlib.suppress(Exception):  # a pod not started yet: no logs
                    text = self._apis["CoreV1Api"].read_namespaced_pod_log(
                        pod["metadata"]["name"], self.namespace, container=manifests.CONTAINER,
                        timestamps=True, tail_lines=tail)
                    lines.extend(parse_stamped(line) for line in str(text).splitlines()
                                 if line.strip())
            return lines

        return await asyncio.to_thread(read)

    def _change_deployment(
        self, service: Service, change: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any] | None:
        """The service's Deployment read, changed by `change` (False: left as it is) and
        replaced; None if there is none. The replace carries the resourceVersion read, so
        that nothing written meanwhile is overwritten: it is a 409 Conflict then (the
        deployment controller writes the status during every rollout, the HPA the
        replicas), and all is read and changed again, CONFLICT_TRIES times at most.
        Not a patch: the Role grants `update` on Deployments, not `patch`."""
        for tries_left in reversed(range(CONFLICT_TRIES)):
            found: dict[str, Any] | None = self._read_deployment(service)
            if found is None or not change(found):
                return found
            try:
                self._call("replace", "Deployment", found["metadata"]["name"], body=found)
                return found
            except KubernetesError as exc:
                if exc.status != 409 or not tries_left:
                    raise
        raise AssertionError("unreachable: the last try returns or raises")

    async def stop_service(self, service: Service) -> None:
        def scale_to_zero(found: dict[str, Any]) -> bool:
            metadata, spec = found["metadata"], found["spec"]
            annotations = dict(metadata.get("annotations") or {})
            if spec.get("replicas"):
                annotations[PREVIOUS_REPLICAS] = str(spec["replicas"])
            annotations[STOPPED] = "true"
            metadata["annotations"] = annotations
            spec["replicas"] = 0
            return True

        def stop() -> None:
            if self._change_deployment(service, scale_to_zero) is None:
                return
            if service.exposed:  # else it would scale the Deployment up again
                self._delete("HorizontalPodAutoscaler",
                             manifests.exposed_names(service.name)["HorizontalPodAutoscaler"])

        await asyncio.to_thread(stop)

    async def start_service(self, service: Service) -> None:
        found = await asyncio.to_thread(self._read_deployment, service)
        if found is not None and (found.get("spec") or {}).get("replicas") == 0:
            await self.deploy(service)  # its replicas and its autoscaler, as defined

    async def restart_service(self, service: Service) -> None:
        def new_template(found: dict[str, Any]) -> bool:
            if (found.get("spec") or {}).get("replicas") == 0:
                return False  # stopped: it stays so
            # As `kubectl rollout restart`: a new pod template, so new pods replace the old.
            template = found["spec"]["template"].setdefault("metadata", {})
            template["annotations"] = {
                **(template.get("annotations") or {}),
                RESTARTED_AT: datetime.datetime.now(datetime.UTC).isoformat(),
            }
            return True

        await asyncio.to_thread(self._change_deployment, service, new_template)


def _stamp(text: str | None) -> float | None:
    """An RFC 3339 time of the API server's, in seconds since the epoch."""
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ---- helpers -------------------------------------------------------------------------------


def _event_text(event: Path) -> str:
    """Blocking (a file read): run in a thread. The size first: a large event is not read."""
    size = event.stat().st_size
    if size > EVENT_MAX:
        raise KubernetesError(
            f"the event is {size} bytes; a Kubernetes job takes at most {EVENT_MAX} "
            "(it travels in the EVENT variable)"
        )
    data = event.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if "\0" in text or (data and not text):
        raise KubernetesError("the event is not UTF-8 text, which the EVENT variable must be")
    return text


def _slim(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """What the backend reads of a Job or a pod: a fraction of it (a Job's pod template
    holds its event, up to 96 KiB)."""
    if kind == "Deployment":
        return raw
    meta = raw["metadata"]
    slim: dict[str, Any] = {
        "metadata": {k: meta[k] for k in ("name", "labels", "creationTimestamp") if k in meta},
        "status": raw.get("status") or {},
    }
    if kind == "Pod":
        spec = raw.get("spec") or {}
        slim["spec"] = {
            key: [{"name": c.get("name"), "image": c.get("image")} for c in spec.get(key) or []]
            for key in ("initContainers", "containers")
        }
    return slim


def _scale_bounds(objects: list[dict[str, Any]]) -> tuple[int, int] | None:
    """The replicas a service's autoscaler keeps its Deployment within, None if it has
    none (its Deployment then has the replicas manifests.py gives it)."""
    for obj in objects:
        if obj["kind"] == "HorizontalPodAutoscaler":
            spec = obj["spec"]
            return int(spec["minReplicas"]), int(spec["maxReplicas"])
    return None


def _with_live_replicas(
    obj: dict[str, Any], live: Mapping[str, Any], scale: tuple[int, int]
) -> dict[str, Any]:
    """An autoscaled Deployment's new body, with the replicas it has now (the HPA's
    choice) rather than its minimum: replaced with the minimum, an update or a restart
    of the controller would kill the pods the load needed, until the HPA scaled up
    again. Kept within the new bounds, as the HPA itself would; a stopped service's 0
    becomes the minimum (`start_service` deploys it to start it)."""
    replicas = (live.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int):
        return obj
    low, high = scale
    return {**obj, "spec": {**obj["spec"], "replicas": min(max(replicas, low), high)}}


def _note(log: Path, text: str) -> None:
    with open(log, "ab") as out:
        out.write(f"faas-supervisor: {text}\n".encode())


def _labelled(obj: Mapping[str, Any], service: str, component: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return bool(
        labels.get(manifests.SERVICE_LABEL) == service
        and labels.get(manifests.COMPONENT_LABEL) == component
    )


def _images(spec: Mapping[str, Any]) -> list[str]:
    return [c["image"] for key in ("initContainers", "containers") for c in spec.get(key) or []]


def _statuses(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _pull_error(pod: Mapping[str, Any]) -> str:
    """`ErrImagePull` and the like, with the kubelet's message; "" when none."""
    return _start_error(pod, PULL_ERRORS)


def _start_error(pod: Mapping[str, Any], reasons: Collection[str] = START_ERRORS) -> str:
    """A container waiting for one of `reasons`, with the kubelet's message on one line;
    "" when none."""
    for status in _statuses(pod):
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason not in reasons:
            continue
        image = status.get("image", "")
        message = " ".join(str(waiting.get("message") or "").split())
        if reason in PULL_ERRORS:
            return f"{image} cannot be pulled: {reason}: {message or image}"
        return f"container {status.get('name', '')} cannot start: {reason}: {message}"
    return ""


def _pending_state(pod: Mapping[str, Any] | None) -> tuple[str, ...]:
    """What a pod not started is waiting for, as a key that changes when it gets on
    (scheduled, an image pulled, a container made); no messages: a scheduler's changes
    as nodes come and go, without the pod getting any further."""
    if pod is None:
        return ()
    status = pod.get("status") or {}
    state = [pod["metadata"]["name"], str(status.get("phase") or "")]
    state += [f"{c.get('type')}={c.get('status')}:{c.get('reason') or ''}"
              for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"]
    for container in _statuses(pod):
        for kind, detail in (container.get("state") or {}).items():
            state.append(f"{container.get('name')}:{kind}:{(detail or {}).get('reason') or ''}")
    return tuple(state)


def _pending_text(pod: Mapping[str, Any]) -> str:
    """Why a pod has not started, as far as its status says: the scheduler's refusal,
    else what its containers wait for; on one line."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            why = ": ".join(str(condition[k]) for k in ("reason", "message") if condition.get(k))
            return " ".join((why or "not scheduled").split())
    waiting = []
    for container in _statuses(pod):
        state = container.get("state") or {}
        if "waiting" in state:
            reason = (state["waiting"] or {}).get("reason") or "waiting"
            waiting.append(f"{container.get('name')} {reason}")
    return " ".join(", ".join(waiting).split()) or str(status.get("phase") or "Pending")


def _started(pod: Mapping[str, Any]) -> bool:
    """Its images pulled: the main container running or ended."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == manifests.CONTAINER:
            state = status.get("state") or {}
            return "running" in state or "terminated" in state
    return False


def _job_condition(job: Mapping[str, Any]) -> str | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            why = ": ".join(
                str(condition[k]) for k in ("reason", "message") if condition.get(k)
            )
            return f"{condition['type']}{f' ({why})' if why else ''}"
    return None


def _pod_finished(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _terminated(pod: Mapping[str, Any]) -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == manifests.CONTAINER:
            terminated: dict[str, Any] = (status.get("state") or {}).get("terminated") or {}
            return terminated
    return {}


def _exit_code(pod: Mapping[str, Any]) -> int | None:
    terminated = _terminated(pod)
    return int(terminated.get("exitCode", 1)) if terminated else None


def _next_chunk(chunks: Iterator[bytes], pod: str) -> bytes | None:
    """The next chunk of a pod's log being read; None at its end."""
    try:
        return next(chunks, None)
    except HTTPError as exc:  # the connection broken half way
        raise _unreachable(exc, "read logs of", "Pod", pod) from None


def _unreachable(exc: Exception, verb: str, kind: str, name: str) -> KubernetesError:
    reason = getattr(exc, "reason", None) or exc
    return KubernetesError(f"kubernetes: {verb} {kind} {name}: no answer ({reason})")


def _api_error(exc: Any, verb: str, kind: str, name: str) -> KubernetesError:
    message = exc.reason or ""
    with contextlib.suppress(ValueError, TypeError):
        message = json.loads(exc.body).get("message") or message
    error = KubernetesError(
        f"kubernetes: {verb} {kind}{f' {name}' if name else ''}: {exc.status} {message}".strip()
    )
    error.status = exc.status
    return error
