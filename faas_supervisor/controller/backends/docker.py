"""Services and jobs as containers of the service's image, through the `docker` SDK (SPEC 7.3).

Each service gets:

* the volume `faas-supervisor-bin-NAME-ID-CONTROLLER` (ID: the runtime image's id, 12 hex
  digits; CONTROLLER: this controller's identity), filled by the runtime image's entry
  point, mounted read-only at /oscar/bin: the Docker counterpart of the Kubernetes init
  container and its emptyDir. One volume per runtime image, never refilled with another:
  a build rewritten under a container running it breaks it (PyInstaller reads its files
  again by path). A new runtime image gets a new volume and new containers; a job still
  running keeps its own until it ends, and volumes no container holds any more are
  removed (`_drop_old_volumes`), all of them with the service;
* the folder `<data-dir>/services/NAME/` (script.sh, function_config.yaml) bind-mounted
  read-only at /oscar/config, where the runtime looks by default;
* one container (exposed services: `min_scale`) running `/oscar/bin/faas-supervisor
  watchdog` on the host's network, on a port the controller chose and wrote in a label,
  restarted by the engine when it dies.

Containers and volumes carry `oscar_service: NAME`, `app.kubernetes.io/managed-by:
faas-supervisor` and `faas-supervisor/controller: CONTROLLER`, and containers a hash of what
made them: a restarted controller deploying its stored services again finds the containers
it made by label, keeps those of the same definition and starts no duplicates. Services keep
running when the controller stops.

Several controllers may share one engine: each has an identity of its own (16 hex digits,
made at its first start and kept in its data folder, ID_FILE), and every list, filter and
event subscription of the backend names it, so that one never finds, replaces or removes
another's containers (a service of the same name, a running job) or volumes. What an
earlier version made, without that label, is taken as this controller's at its first start
with an identity (`_adopt`).

An exposed service with `max_scale` above `min_scale` is scaled between the two from its
containers' CPU (the Engine's stats), checked every SCALE_INTERVAL seconds, as the
Kubernetes HPA does from `cpu_threshold` (a percentage of the service's `cpu`): scaled up
at once, down only after a few checks in a row ask for fewer, newest container first.

A job is a container of the same image running `/oscar/bin/faas-supervisor run`, the
event in `EVENT` (or, when it cannot travel in a variable, a mounted file); its output is
followed into the job's log file, kept bounded as it grows (log_cut.LogWriter), its exit
status is the container's.

The SDK is synchronous: every call runs in a thread of this backend's own pool, since
following a job's logs holds a thread for the job's whole life.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import secrets
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

from faas_supervisor.config import Mode
from faas_supervisor.controller.deployments import Deployment, LogLine, parse_stamped
from faas_supervisor.controller.fdl import Service, manager_labels, to_record
from faas_supervisor.controller.function_config import function_config
from faas_supervisor.controller.manifests import (
    COMPONENT_LABEL,
    CONFIG_DIR,
    EXPOSED_PATH,
    JOB_LABEL,
    MANAGED_BY,
    RUNTIME,
    RUNTIME_DIR,
    SERVICE_LABEL,
)
from faas_supervisor.controller.resources import cpu_nanos, memory_bytes
from faas_supervisor.controller.store import CUT_NOTE_MAX, LOG_MAX
from faas_supervisor.errors import (
    ConfigError,
    DockerError,
    InvalidService,
    ServiceUnavailable,
)
from faas_supervisor.log_cut import LogWriter
from faas_supervisor.logs import get_logger

HOST = "127.0.0.1"  # host network: the watchdog listens on the controller's loopback
PORT_LABEL = "faas-supervisor/port"
# Which controller made a container or volume: controllers sharing an engine keep apart.
CONTROLLER_LABEL = "faas-supervisor/controller"
ID_FILE = "controller-id"  # in the data folder: the controller's identity (CONTROLLER_LABEL)
ID_DIGITS = 16  # hex: two controllers on one engine never draw the same
CONFIG_LABEL = "faas-supervisor/config"  # hash of what made the container: keep or replace
EVENT_DIR = "/oscar/event"
EVENT_IN_ENV_MAX = 96 * 1024  # Linux refuses one variable over 128 KiB at exec
READY_TIMEOUT = 60.0  # seconds invoke_url waits for a watchdog to answer its health check
# Seconds a watchdog's container gets after SIGTERM (a service replaced or removed), as
# the local backend's (local.STOP_TIMEOUT: the drain, a cut transfer's cleanup, the last
# answers).
STOP_TIMEOUT = 20
# Seconds a stopped job's container gets after SIGTERM (to its PID 1, `faas-supervisor
# run`, which kills its script and removes its folders) before SIGKILL.
JOB_STOP_TIMEOUT = 10
# A default POSIX ACL of u::rwx g::rwx o::rwx (the kernel's xattr form: version 2, then
# tag, permissions, id per entry): whatever is made under a folder carrying it is open to
# every user, whatever the maker's umask.
OPEN_DEFAULT_ACL = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, 7, 0xFFFFFFFF) for tag in (0x01, 0x04, 0x20))
SCALE_INTERVAL = 3.0  # seconds between two looks at an exposed service's CPU
SCALE_DOWN_AFTER = 3  # checks in a row asking for fewer replicas before one goes
SCALE_TOLERANCE = 0.1  # as the HPA's: within 10% of the target, the count stays
# Removals of a deleted service's volume, each after a sweep of its containers, before
# it is given up as held by a container not of ours.
VOLUME_ATTEMPTS = 2
_T = TypeVar("_T")
logger = get_logger(component="docker-backend")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def volume_name(service: str, image_id: str, controller: str) -> str:
    """The service's runtime volume for the runtime image `image_id` (sha256:...): a name
    of `controller`'s alone, as a volume's name is the engine's to share."""
    return f"faas-supervisor-bin-{service}-{image_id.removeprefix('sha256:')[:12]}-{controller}"


def _named_volumes(service: str, controller: str) -> re.Pattern[str]:
    """The names `volume_name` gives the service's runtime volumes, whatever the image."""
    return re.compile(re.escape(f"faas-supervisor-bin-{service}-") + "[0-9a-f]{12}"
                      + re.escape(f"-{controller}"))


def _labels(controller: str, name: str, component: str) -> dict[str, str]:
    return {SERVICE_LABEL: name, **MANAGED_BY, CONTROLLER_LABEL: controller,
            COMPONENT_LABEL: component}


def _selector(controller: str | None, name: str | None = None,
              component: str | None = None) -> dict[str, list[str]]:
    """A `filters` argument: the containers (or volumes) `controller` made for a service
    (None: made by any controller, or by a version that did not name it)."""
    labels = [f"{k}={v}" for k, v in MANAGED_BY.items()]
    if controller is not None:
        labels.append(f"{CONTROLLER_LABEL}={controller}")
    if name is not None:
        labels.append(f"{SERVICE_LABEL}={name}")
    if component is not None:
        labels.append(f"{COMPONENT_LABEL}={component}")
    return {"label": labels}


@dataclass
class _Replica:
    """One watchdog container, reachable at its port once its health check answers."""

    id: str
    port: int
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    checking: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


class DockerBackend:
    name = "docker"

    def __init__(
        self,
        data_dir: Path,
        default_provider: Mapping[str, Any],
        runtime_image: str,
        engine_env: Mapping[str, str],
        sync_wait: float = READY_TIMEOUT,
        job_log_cap: int = LOG_MAX,
    ) -> None:
        self.root = data_dir / "services"
        self.id_file = data_dir / ID_FILE
        # This controller's identity on the engine: read, or made, by start().
        self.controller = ""
        self.job_log_cap = job_log_cap  # a running job's log kept under twice this
        self.sync_wait = sync_wait  # seconds a request waits for a watchdog that starts
        self.default_provider = dict(default_provider)
        self.runtime_image = runtime_image
        self.engine_env = dict(engine_env)  # DOCKER_HOST and co., picked by settings.py
        self._client: Any = None
        # The engine's calls, in threads of their own: never the loop's default executor.
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="docker")
        # The streams that hold a thread for as long as they last (the engine's events,
        # each running job's log): apart, so that however many jobs run, an engine call
        # (a job's delete, a deploy) never waits for a free thread. Threads are made as
        # they are needed; the bound is only a backstop.
        self._streams = ThreadPoolExecutor(max_workers=4096, thread_name_prefix="docker-stream")
        self._replicas: dict[str, list[_Replica]] = {}
        self._volumes: dict[str, str] = {}  # each service's runtime volume, its latest deploy's
        self._by_id: dict[str, _Replica] = {}
        self._turn: dict[str, itertools.count[int]] = {}
        self._stopped: set[str] = set()  # services whose containers /stop removed
        # Services being removed, or removed: no container is made for them (_make) until
        # they are deployed again, so that none outlives the removal or holds its volume.
        self._gone: set[str] = set()
        # The containers being made for each service (a job's, a replica's): a removal
        # waits for them, and then finds them with the rest.
        self._making: dict[str, set[asyncio.Future[str]]] = {}
        self._events: Any = None
        self._events_task: asyncio.Future[None] | None = None
        self._closing = threading.Event()
        self._released = asyncio.Event()  # release_waiters: the controller is stopping
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scalers: dict[str, asyncio.Task[None]] = {}

    async def _run(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        loop = asyncio.get_running_loop()
        with _engine_errors():
            return await loop.run_in_executor(self._pool, lambda: function(*args, **kwargs))

    async def _stream(self, function: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        with _engine_errors():
            return await loop.run_in_executor(self._streams, lambda: function(*args))

    # ---- the engine ---------------------------------------------------------------------

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._share_store)
        try:
            import docker  # noqa: F401  (before any engine call: each maps the SDK's errors)
        except ImportError:  # not in the bundle, nor in an install without [controller]
            raise ConfigError("--backend docker needs the docker package: "
                              "pip install 'faas-supervisor[controller]'") from None
        kept = await asyncio.to_thread(_read_identity, self.id_file)
        self.controller = kept or secrets.token_hex(ID_DIGITS // 2)
        self._client = await self._run(self._connect)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        # The engine tells when a container dies or starts again: a replica is taken out
        # of rotation at once, and checked again when the engine has restarted it.
        self._events = await self._run(self._subscribe, None)
        self._events_task = asyncio.ensure_future(self._stream(self._follow_events))
        try:
            if kept is None:
                await self._adopt()
                # Kept only now: a start that failed before makes another, and adopts again.
                await asyncio.to_thread(_keep_identity, self.id_file, self.controller)
            # Before the jobs of an earlier controller are queued again: their containers go.
            left = await self._run(
                self._client.containers.list, all=True,
                filters=_selector(self.controller, component="job"), ignore_removed=True,
            )
            for container in left:
                logger.warning("removing a job container left by the last controller",
                               container=container.name)
                await self._run(self._remove_container, container.id)
        except BaseException:
            # Else the thread following the engine's events would keep the process from
            # exiting: the start's error printed, and no exit for a supervisor to see.
            await self.close()
            raise
        logger.info("docker backend ready", runtime_image=self.runtime_image,
                    controller=self.controller)

    async def _adopt(self) -> None:
        """What an earlier version made for this data folder's services (their folders
        under `root`), labelled without a controller, removed at this controller's first
        start with an identity: those containers and volumes are taken as its own, and
        go as its own would go at a start (jobs: queued again) or at the deploy that comes
        next (watchdogs of a definition whose digest named another volume; volumes no
        container holds).

        Safe enough: that version assumed one controller per engine (it removed every job
        container it found at its start), so what it made for these services was this
        controller's. Another controller's objects carry their controller's label, and
        an unlabelled service this folder never had is left alone."""
        ours = {p.name for p in self.root.iterdir() if p.is_dir()}
        if not ours:
            return

        def earlier(labels: Mapping[str, str] | None) -> bool:
            labels = labels or {}
            return CONTROLLER_LABEL not in labels and labels.get(SERVICE_LABEL) in ours

        # Every controller's: one removed while it is listed (another controller's job
        # ending) is passed over, not an error.
        found = await self._run(self._client.containers.list, all=True,
                                filters=_selector(None), ignore_removed=True)
        left = [c for c in found if earlier(c.labels)]
        for container in left:
            logger.warning("removing a container an earlier version left",
                           container=container.name)
        await asyncio.gather(*(self._run(self._remove_container, c.id) for c in left))
        volumes = await self._run(self._client.volumes.list, filters=_selector(None))
        for volume in volumes:
            if earlier(volume.attrs.get("Labels")) and \
                    not await self._run(self._remove_volume, volume.name):
                logger.warning("a volume an earlier version left is in use: kept",
                               volume=volume.name)

    def _share_store(self) -> None:
        """The embedded folder store (bind-mounted into every container) made writable
        by any user: an image may run as a user of its own (`USER 1000`) and must still
        write its outputs. Its folders get mode 0777 and a default ACL that every folder
        and file made under them inherits (whoever makes them, with whatever umask).

        Nothing is opened wider than it was to a container: a root one could already
        write it all; the data folder above stays the controller's alone (0700)."""
        store = self.default_provider.get("path")
        if not store or self.default_provider.get("endpoint"):
            return
        root = Path(store)
        try:
            if os.getxattr(root, "system.posix_acl_default") == OPEN_DEFAULT_ACL:
                return  # done by an earlier start: what was made since has inherited it
        except OSError:
            pass
        try:
            for folder, _dirs, _files in os.walk(root):
                os.chmod(folder, 0o777)
                os.setxattr(folder, "system.posix_acl_default", OPEN_DEFAULT_ACL)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            logger.warning("the store's filesystem has no ACLs: images running as a user "
                           "other than root cannot write their outputs there", store=store)

    def _connect(self) -> Any:
        """The engine's client, or a ConfigError (exit status 2) that never quotes the SDK:
        its messages carry DOCKER_HOST's text, which may hold a password."""
        import docker
        import requests

        host = self.engine_env.get("DOCKER_HOST")
        if host:  # the SDK's own check, made first so that its refusal is told apart
            try:
                docker.utils.parse_host(host, docker.constants.IS_WINDOWS_PLATFORM)
            except docker.errors.DockerException:
                raise ConfigError(
                    "docker: DOCKER_HOST is malformed (expected unix://PATH, tcp://HOST:PORT "
                    "or ssh://[USER@]HOST[:PORT], without a password)") from None
            if host.startswith("ssh://") and importlib.util.find_spec("paramiko") is None:
                # The SDK's own refusal, which the one line below could only name by type.
                raise ConfigError("docker: an ssh:// DOCKER_HOST needs the paramiko package, "
                                  "which is not installed (pip install paramiko)")
        try:
            # DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH as the docker CLI reads them.
            client = docker.DockerClient.from_env(environment=self.engine_env, max_pool_size=32)
            client.ping()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            # The client's first request (the API version) fails as a DockerException
            # wrapping requests' error; ping's fails as requests' error itself.
            failure = exc.__cause__ if isinstance(exc.__cause__, requests.RequestException) \
                else exc
            if isinstance(failure, requests.RequestException):
                raise ConfigError(
                    f"docker: the engine does not answer ({type(failure).__name__})") from None
            raise ConfigError(f"docker: the engine cannot be used ({type(failure).__name__})"
                              ) from None
        return client

    async def close(self) -> None:
        # Services stay up: a restarted controller finds them again by their labels.
        self._closing.set()
        if self._events is not None:
            self._events.close()
        if self._events_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._events_task, 10)
        for scaler in self._scalers.values():
            scaler.cancel()
        for replicas in self._replicas.values():
            for replica in replicas:
                if replica.checking is not None:
                    replica.checking.cancel()
        if self._session is not None:
            await self._session.close()
        if self._client is not None:
            await self._run(self._client.close)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._streams.shutdown(wait=False, cancel_futures=True)

    def _subscribe(self, since: int | None) -> Any:
        filters = {**_selector(self.controller), "type": ["container"], "event": ["die", "start"]}
        return self._client.events(decode=True, filters=filters, since=since)

    def _follow_events(self) -> None:
        """Events passed to the loop until close(); a stream the engine ends (a restart of
        the engine) is opened again from the last event's second, so none is missed (one
        seen twice is harmless: a die or start handled again)."""
        import docker.errors
        import requests

        assert self._loop is not None
        call = self._loop.call_soon_threadsafe
        since: int | None = None
        while not self._closing.is_set():
            if self._events is None:
                try:
                    self._events = self._subscribe(since)
                except (docker.errors.DockerException, requests.RequestException):
                    self._closing.wait(1.0)  # the engine is away: ask again in a second
                    continue
                if self._closing.is_set():  # close() came while subscribing
                    self._events.close()
                    return
            with contextlib.suppress(Exception):  # the stream ends with an error when closed
                for event in self._events:
                    since = event.get("time", since)
                    actor = (event.get("Actor") or {}).get("ID") or event.get("id")
                    call(self._on_event, event.get("Action", ""), actor)
            self._events = None

    def _on_event(self, action: str, container_id: str) -> None:
        replica = self._by_id.get(container_id)
        if replica is None:
            return
        if action == "die":
            replica.ready.clear()
            if replica.checking is not None:
                replica.checking.cancel()
                replica.checking = None
        elif action == "start":
            self._check(replica)

    # ---- services -----------------------------------------------------------------------

    async def check(self, service: Service) -> None:
        """A service whose image cannot be had is refused (400) before it is stored, as
        OSCAR refuses what Kubernetes cannot pull; so is `default_command`, whose image's
        own server would listen on api_port on the host's network: every replica (and
        every service) on one port, open beside the controller's credentials. A stored
        one (from before this check) is deployed as before, running its script."""
        if service.exposed and service.expose.default_command:
            raise InvalidService(
                "expose.default_command: not supported on Docker (containers share the "
                "host's network, where the image's own server would take api_port); run "
                "the server from the script instead (on $upstream_port)"
            )
        await self._check_image(service)

    async def _check_image(self, service: Service) -> None:
        if not service.image:
            raise InvalidService("image: missing (on Docker a service runs in its image)")
        await self._run(self._ensure_image, service.image, True)

    async def deploy(self, service: Service) -> None:
        self._stopped.discard(service.name)  # a new definition runs
        self._gone.discard(service.name)
        await self._check_image(service)  # a restart's deploys are not checked by the route
        await self._run(self._ensure_image, self.runtime_image)
        folder = self._write(service)
        volume = await self._run(self._fill_volume, service.name, folder)
        self._volumes[service.name] = volume
        mounts = self._mounts(volume, folder)
        digest = self._digest(service, volume)
        wanted = max(1, service.expose.min_scale) if service.exposed else 1
        ids = await self._run(self._reconcile, service, mounts, digest, wanted)
        self._forget(service.name)
        containers = await self._run(
            lambda: [self._client.containers.get(i) for i in ids]
        )
        replicas = [_Replica(c.id, int(c.labels[PORT_LABEL])) for c in containers]
        self._replicas[service.name] = replicas
        self._turn[service.name] = itertools.count()
        for replica in replicas:
            self._by_id[replica.id] = replica
            self._check(replica)
        if service.exposed and service.expose.max_scale > wanted:
            self._scalers[service.name] = asyncio.create_task(
                self._autoscale(service, mounts, digest, wanted))
        await self._drop_old_volumes(service.name)
        logger.info("service deployed", service=service.name, containers=len(replicas))

    def _ensure_image(self, image: str, users: bool = False) -> None:
        """The image here, pulled if need be; one that no registry has is the user's
        mistake (InvalidService) for a service's image, the operator's for the runtime's."""
        import docker.errors

        try:
            self._client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise DockerError(f"docker: inspect image {image}: {exc.explanation}") from None
        try:
            logger.info("pulling image", image=image)
            self._client.images.pull(image)
        except docker.errors.APIError as exc:
            if users:
                raise InvalidService(f"image: {image} cannot be found: not on the engine, "
                                     f"and the pull failed: {exc.explanation}") from None
            raise DockerError(f"docker: image {image} is not here and cannot be pulled: "
                              f"{exc.explanation}") from None

    def _write(self, service: Service) -> Path:
        """The files mounted at /oscar/config.

        Readable by all: the image may run as any user. The data folder above them is
        the controller's alone (0700), so nobody else on the host reaches them."""
        folder = self.root / service.name
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        script = folder / "script.sh"
        script.write_text(service.script)
        script.chmod(0o755)
        config = folder / "function_config.yaml"
        config.write_text(
            yaml.safe_dump(function_config(service, self.default_provider), sort_keys=False)
        )
        config.chmod(0o644)
        return folder

    def _fill_volume(self, name: str, folder: Path) -> str:
        """The service's volume for the runtime image as it is now, the runtime copied in
        by the image's entry point; its name.

        Skipped when that volume was filled already (the image's id kept beside the config):
        a container start costs seconds on some storage drivers, and a restarted controller
        deploys every service again."""
        import docker.errors
        from docker.types import Mount

        image_id = str(self._client.images.get(self.runtime_image).id)
        volume = volume_name(name, image_id, self.controller)
        marker = folder / ".runtime-image-id"
        try:
            self._client.volumes.get(volume)
            if marker.is_file() and marker.read_text() == image_id:
                return volume
        except docker.errors.NotFound:
            self._client.volumes.create(volume, labels=_labels(self.controller, name, "runtime"))
        # no_copy: else Docker fills an empty volume from the image's own /oscar/bin by
        # itself, bypassing the entry point (which copies a build in whole, or not at all).
        mount = Mount(RUNTIME_DIR, volume, type="volume", no_copy=True)
        try:
            self._client.containers.run(
                self.runtime_image, [RUNTIME_DIR], mounts=[mount], remove=True,
                network_mode="none", labels=_labels(self.controller, name, "init"),
            )
        except docker.errors.ContainerError as exc:
            raise DockerError(f"docker: the runtime image {self.runtime_image} could not fill "
                              f"{volume}: {exc.stderr!r}") from None
        except docker.errors.APIError as exc:
            raise DockerError(f"docker: fill {volume}: {exc.explanation}") from None
        marker.write_text(image_id)
        return volume

    def _digest(self, service: Service, volume: str) -> str:
        """What a container is made from: the same digest, the same container. The volume's
        name carries the runtime image's id: a new runtime, new containers."""
        made_of = [to_record(service), volume, json.dumps(self.default_provider, sort_keys=True)]
        return hashlib.sha256("\0".join(made_of).encode()).hexdigest()[:32]

    def _reconcile(self, service: Service, mounts: list[Any], digest: str,
                   wanted: int) -> list[str]:
        """The service's containers: those of this definition kept, others removed, the
        count made up; their ids."""
        found = self._client.containers.list(all=True,
                                             filters=_selector(self.controller, service.name))
        keep: list[Any] = []
        for container in found:
            component = container.labels.get(COMPONENT_LABEL)
            if component == "job":
                continue
            if container.labels.get(CONFIG_LABEL) == digest and len(keep) < wanted:
                keep.append(container)
            else:
                logger.info("removing a container of an earlier definition",
                            service=service.name, container=container.name)
                self._remove_container(container.id, graceful=True)
        for container in keep:
            if container.status in ("created", "exited"):  # stopped by hand: wanted up
                container.start()
        made = [self._create_watchdog(service, mounts, digest) for _ in range(wanted - len(keep))]
        return [c.id for c in keep] + made

    def _create_watchdog(self, service: Service, mounts: list[Any], digest: str) -> str:
        import docker.errors

        port = free_port()
        command = [RUNTIME, "watchdog", "--port", str(port), "--host", HOST]
        component = "service"
        if service.exposed:
            # On the host's network api_port would be shared by every replica (and
            # service): each gets a free port, which the script reads as $upstream_port.
            command += ["--mode", Mode.HTTP.value, "--upstream-port", str(free_port())]
            component = "exposed"
        labels = {
            **manager_labels(service),
            **_labels(self.controller, service.name, component),
            PORT_LABEL: str(port),
            CONFIG_LABEL: digest,
        }
        try:
            container = self._client.containers.run(
                service.image,
                command[1:],
                name=f"{service.name}-{secrets.token_hex(4)}",
                detach=True,
                entrypoint=command[:1],  # not the image's, which would wrap the runtime
                environment=self._env(service),
                labels=labels,
                network_mode="host",
                restart_policy={"Name": "unless-stopped"},
                mounts=mounts,
                **self._limits(service),
            )
        except docker.errors.APIError as exc:
            raise DockerError(
                f"docker: start a container of {service.image} for {service.name}: "
                f"{exc.explanation}"
            ) from None
        logger.info("service container started", service=service.name,
                    container=container.name, port=port)
        return str(container.id)

    def _mounts(self, volume: str, folder: Path) -> list[Any]:
        from docker.types import Mount

        mounts = [
            Mount(RUNTIME_DIR, volume, type="volume", read_only=True, no_copy=True),
            Mount(CONFIG_DIR, str(folder), type="bind", read_only=True),
        ]
        store = self.default_provider.get("path")
        if store and not self.default_provider.get("endpoint"):
            # The embedded folder store, at the same path inside: the config names it so.
            mounts.append(Mount(str(store), str(store), type="bind"))
        return mounts

    def _env(self, service: Service) -> dict[str, str]:
        env = {**service.secrets, "OSCAR_SERVICE_NAME": service.name}
        if service.exposed:
            env["OSCAR_SERVICE_BASE_PATH"] = EXPOSED_PATH.format(name=service.name)
        return env

    def _limits(self, service: Service) -> dict[str, Any]:
        try:
            return {"nano_cpus": cpu_nanos(service.cpu), "mem_limit": memory_bytes(service.memory)}
        except ValueError as exc:
            raise InvalidService(str(exc)) from None

    def _remove_container(self, container_id: str, graceful: bool = False,
                          timeout: int = STOP_TIMEOUT) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            container = self._client.containers.get(container_id)
            if graceful:
                # SIGTERM to PID 1, SIGKILL after `timeout`: in-flight invocations may
                # finish (the watchdog drains), a job's `run` cleans up.
                with contextlib.suppress(docker.errors.APIError):
                    container.stop(timeout=timeout)
            try:
                container.remove(force=True, v=False)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                # Being removed by another call already (a job ending as its service is
                # deleted): done once it is gone, and no longer holds the volume.
                container.wait(condition="removed")

    def _check(self, replica: _Replica) -> None:
        if replica.checking is None or replica.checking.done():
            replica.checking = asyncio.create_task(self._wait_healthy(replica))

    async def _wait_healthy(self, replica: _Replica) -> None:
        assert self._session is not None
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._session.get(f"{replica.url}/_/health") as response:
                    if response.status == 200:
                        replica.ready.set()
                        return
            await asyncio.sleep(0.05)  # a port opening has no event to await

    # ---- scaling ----------------------------------------------------------------------

    async def _autoscale(self, service: Service, mounts: list[Any], digest: str,
                         least: int) -> None:
        """The service's replica count kept at what its CPU asks for, within
        [least, max_scale]: desired = ceil(replicas * mean CPU% / cpu_threshold), the
        HPA's rule, CPU% being a share of the service's `cpu` over the last interval."""
        name, most = service.name, service.expose.max_scale
        request = cpu_nanos(service.cpu)  # valid: the containers were made with it
        threshold = max(1, service.expose.cpu_threshold)
        last: dict[str, tuple[int, float]] = {}  # container -> (CPU ns used, when)
        lower = 0
        while True:
            await asyncio.sleep(SCALE_INTERVAL)  # a period: no event says "CPU changed"
            replicas = list(self._replicas.get(name, []))
            try:
                used = await asyncio.gather(*(self._run(self._cpu_used, r.id)
                                              for r in replicas))
            except Exception as exc:  # the engine away, a container gone: next time
                logger.warning("cannot read a service's CPU", service=name, error=str(exc))
                continue
            now = time.monotonic()
            shares = []
            for replica, ns in zip(replicas, used, strict=True):
                if replica.id in last:
                    before, then = last[replica.id]
                    shares.append(100 * max(0, ns - before) / ((now - then) * request))
                last[replica.id] = (ns, now)
            if not shares:
                continue
            desired = desired_replicas(len(replicas), shares, threshold, least, most)
            ratio = sum(shares) / len(shares) / threshold
            lower = lower + 1 if desired < len(replicas) else 0
            try:
                if desired > len(replicas):
                    logger.info("scaling up", service=name,
                                cpu_percent=round(ratio * threshold), replicas=desired)
                    for _ in range(desired - len(replicas)):
                        await self._add_replica(service, mounts, digest)
                elif lower >= SCALE_DOWN_AFTER:
                    lower = 0
                    logger.info("scaling down", service=name,
                                cpu_percent=round(ratio * threshold), replicas=len(replicas) - 1)
                    await self._drop_replica(name)
            except Exception as exc:  # the engine away or refusing: the next check asks again
                logger.warning("cannot scale a service", service=name, error=str(exc))
            current = {r.id for r in self._replicas.get(name, [])}
            last = {k: v for k, v in last.items() if k in current}

    def _cpu_used(self, container_id: str) -> int:
        """Nanoseconds of CPU the container has used since it started."""
        stats = self._client.api.stats(container_id, stream=False, one_shot=True)
        return int(stats["cpu_stats"]["cpu_usage"]["total_usage"])

    async def _add_replica(self, service: Service, mounts: list[Any], digest: str) -> None:
        made = self._make(service.name, self._create_watchdog, service, mounts, digest)
        try:
            container_id = await asyncio.shield(made)
        except asyncio.CancelledError:
            # The service redeployed or removed meanwhile: what was being made goes too.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._run(self._remove_container, await made))
            raise
        container = await self._run(self._client.containers.get, container_id)
        replica = _Replica(container.id, int(container.labels[PORT_LABEL]))
        self._replicas[service.name].append(replica)
        self._by_id[replica.id] = replica
        self._check(replica)

    async def _drop_replica(self, name: str) -> None:
        """The newest replica out of rotation at once, then stopped: its watchdog drains
        the invocations it holds."""
        replica = self._replicas[name].pop()
        self._by_id.pop(replica.id, None)
        if replica.checking is not None:
            replica.checking.cancel()
        await asyncio.shield(self._run(self._remove_container, replica.id, True))

    def _forget(self, name: str) -> None:
        scaler = self._scalers.pop(name, None)
        if scaler is not None:
            scaler.cancel()
        for replica in self._replicas.pop(name, []):
            self._by_id.pop(replica.id, None)
            if replica.checking is not None:
                replica.checking.cancel()
        self._turn.pop(name, None)

    def _make(self, name: str, create: Callable[..., str], *args: Any) -> asyncio.Future[str]:
        """A container made for the service by `create` (in the pool), unless its removal
        has begun; the removal waits for those under way (`remove`)."""
        if name in self._gone:
            raise DockerError(f"docker: no container is made for service {name}: it is "
                              "being deleted")
        made = asyncio.ensure_future(self._run(create, *args))
        making = self._making.setdefault(name, set())
        making.add(made)
        made.add_done_callback(making.discard)
        return made

    async def remove(self, name: str) -> None:
        """Its containers and volumes gone, then its replicas forgotten: a removal the
        engine refuses (a 502: the route keeps the service) leaves those it did not reach
        in rotation, the service answering on as it did."""
        self._gone.add(name)  # from now on nothing is made for it
        try:
            await self._sweep(name)
            # What was being made already (a job starting) is waited for and swept in
            # turn: else it would hold a volume (409 "in use"), or make it again,
            # unlabelled, once it is gone.
            if making := self._making.get(name):
                await asyncio.wait(set(making))
            for _ in range(VOLUME_ATTEMPTS):
                await self._sweep(name)
                if not (held := await self._run(self._remove_volumes, name)):
                    break
                logger.warning("a deleted service's volume is still in use", service=name,
                               volumes=held)
            else:
                raise DockerError(f"docker: the volume {held[0]} is still in use")
        except BaseException:
            self._gone.discard(name)
            raise
        self._stopped.discard(name)
        self._forget(name)
        self._making.pop(name, None)
        self._volumes.pop(name, None)
        await asyncio.to_thread(shutil.rmtree, self.root / name, True)
        logger.info("service removed", service=name)

    async def _sweep(self, name: str) -> None:
        """Every container of the service removed, all in parallel; a job's stopped as
        a job is (SIGTERM to `run`, which cleans up, SIGKILL after JOB_STOP_TIMEOUT)."""
        found = await self._run(self._client.containers.list, all=True,
                                filters=_selector(self.controller, name))
        await asyncio.gather(*(
            self._run(self._remove_container, c.id, True, JOB_STOP_TIMEOUT)
            if c.labels.get(COMPONENT_LABEL) == "job" else self._run(self._remove_container, c.id)
            for c in found
        ))

    def _remove_volumes(self, name: str, keep: str | None = None) -> list[str]:
        """The service's runtime volumes but `keep` removed (or gone already); those a
        container still holds (409) are left, and returned.

        Found by their labels, and by their names too: a container whose mount names a
        volume that is not there (removed as the container was being made) has the
        engine make it, without labels; the name (`volume_name`: this service, this
        controller) says whose it is, after a restart as well."""
        listed = self._client.volumes.list(filters=_selector(self.controller, name, "runtime"))
        found = {v.name for v in listed}
        named = _named_volumes(name, self.controller)
        found.update(v.name for v in self._client.volumes.list(
            filters={"name": f"faas-supervisor-bin-{name}-"}) if named.fullmatch(v.name))
        return [volume for volume in sorted(found - {keep}) if not self._remove_volume(volume)]

    def _remove_volume(self, volume: str) -> bool:
        """The volume removed (or gone already): True; False when a container holds it
        (409), and it is left."""
        import docker.errors

        try:
            self._client.volumes.get(volume).remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
            return False
        return True

    async def _drop_old_volumes(self, name: str) -> None:
        """The service's runtime volumes of earlier runtime images removed, but those a
        container still holds (a job running on: it removes them as it ends, `run_job`).
        Housekeeping: an engine that fails it is logged, and asked again next time."""
        # A container being made (a job's) may name a volume of before: once it is made,
        # the volume is held; removed before, the engine would make it again, empty.
        if making := self._making.get(name):
            await asyncio.wait(set(making))
        try:
            held = await self._run(self._remove_volumes, name, self._volumes.get(name))
        except DockerError as exc:
            logger.warning("cannot remove a service's old runtime volumes", service=name,
                           error=str(exc))
            return
        if held:
            logger.info("old runtime volumes kept while containers use them", service=name,
                        volumes=held)

    def release_waiters(self) -> None:
        self._released.set()

    async def invoke_url(self, name: str) -> str:
        replicas = self._replicas.get(name)
        if not replicas:
            raise ServiceUnavailable(f"service {name} is not running")
        ready = [r for r in replicas if r.ready.is_set()]
        if not ready:  # one that starts: waited for, at most sync_wait (--sync-wait)
            waits = [asyncio.ensure_future(r.ready.wait()) for r in replicas]
            waits.append(asyncio.ensure_future(self._released.wait()))
            try:
                if self.sync_wait > 0:
                    await asyncio.wait(waits, timeout=self.sync_wait,
                                       return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
            ready = [r for r in replicas if r.ready.is_set()]
            if not ready:
                raise ServiceUnavailable(
                    f"service {name} is not answering yet (waited {self.sync_wait:g} s)")
        # Round robin over the replicas that answer: the exposed proxy spreads its load.
        return ready[next(self._turn[name]) % len(ready)].url

    # ---- the service's watchdog containers, as the dashboard sees them --------------------

    def _watchdog_containers(self, name: str) -> list[Any]:
        found = self._client.containers.list(all=True, filters=_selector(self.controller, name))
        return [c for c in found if c.labels.get(COMPONENT_LABEL) != "job"]

    async def deployment(self, service: Service) -> Deployment | None:
        if service.name in self._stopped:
            return Deployment(desired=0, running=0, ready=0)
        replicas = self._replicas.get(service.name)
        if not replicas:
            return None
        containers = await self._run(self._watchdog_containers, service.name)
        down = [c for c in containers if c.status != "running"]
        return Deployment(
            desired=len(replicas),
            running=len(containers),
            ready=sum(r.ready.is_set() for r in replicas),
            # The engine restarts a dead container until it stays up.
            failed=bool(containers) and len(down) == len(containers),
            reason=f"container {down[0].name} is {down[0].status}" if down else "",
        )

    async def deployment_logs(self, service: Service, tail: int) -> list[LogLine] | None:
        if service.name in self._stopped or not self._replicas.get(service.name):
            return None

        def read() -> list[LogLine]:
            lines: list[LogLine] = []
            for container in self._watchdog_containers(service.name):
                text = container.logs(timestamps=True, tail=tail).decode("utf-8", "replace")
                lines.extend(parse_stamped(line) for line in text.splitlines() if line.strip())
            return lines

        return await self._run(read)

    async def stop_service(self, service: Service) -> None:
        self._stopped.add(service.name)
        self._forget(service.name)

        def remove() -> None:
            for container in self._watchdog_containers(service.name):
                self._remove_container(container.id, graceful=True)

        await self._run(remove)

    async def start_service(self, service: Service) -> None:
        if service.name in self._stopped:
            await self.deploy(service)

    async def restart_service(self, service: Service) -> None:
        if service.name in self._stopped:
            return

        def restart() -> None:
            # The engine's restart: SIGTERM (the watchdog drains), then a start; the events
            # take each out of rotation and check it again.
            for container in self._watchdog_containers(service.name):
                container.restart(timeout=STOP_TIMEOUT)

        await self._run(restart)

    # ---- jobs -----------------------------------------------------------------------------

    async def run_job(self, service: Service, job: str, event: Path, log: Path) -> int:
        volume = self._volumes.get(service.name)
        if volume is None:  # not deployed: not yet, its deploy failed, or it is deleted
            raise DockerError(f"docker: service {service.name} has no runtime volume: "
                              "it is not deployed")
        mounts = self._mounts(volume, self.root / service.name)
        create = self._make(service.name, self._create_job, service, mounts, job, event)
        following: asyncio.Future[int] | None = None
        try:
            container_id = await asyncio.shield(create)
            following = asyncio.ensure_future(self._stream(self._follow_job, container_id, log))
            code = await asyncio.shield(following)
        except asyncio.CancelledError:
            # Deleted, or the controller is stopping: the container is stopped (SIGTERM
            # to `run`, SIGKILL after JOB_STOP_TIMEOUT) and removed once its creation has
            # been answered (else the removal could overtake it); the thread following
            # its logs then sees the stream end, and is waited for: its log's last cut
            # comes before whatever the caller writes after (its note of the job's end).
            with contextlib.suppress(Exception):
                container_id = await create
                await asyncio.shield(self._run(self._remove_container, container_id, True,
                                               JOB_STOP_TIMEOUT))
                if following is not None:
                    await asyncio.shield(following)
            raise
        if self._volumes.get(service.name, volume) != volume:
            # Deployed on another runtime image while it ran: its volume may be unused now.
            await self._drop_old_volumes(service.name)
        return code

    def _create_job(self, service: Service, mounts: list[Any], job: str, event: Path) -> str:
        import docker.errors
        from docker.types import Mount

        env = {**self._env(service), "JOB_UUID": job}
        command = [RUNTIME, "run"]
        text = _event_text(event)
        if text is not None:
            env["EVENT"] = text  # as OSCAR passes it
        else:
            # Too large, or bytes that no variable can hold: the file itself, read-only.
            mounts = [*mounts, Mount(f"{EVENT_DIR}/event", str(event), type="bind",
                                     read_only=True)]
            command += ["--event-file", f"{EVENT_DIR}/event"]
        labels = {**manager_labels(service), **_labels(self.controller, service.name, "job"),
                  JOB_LABEL: job}
        try:
            container = self._client.containers.create(
                service.image, command[1:], name=job, entrypoint=command[:1], environment=env,
                labels=labels, network_mode="host", mounts=mounts, **self._limits(service),
            )
        except docker.errors.APIError as exc:
            raise DockerError(f"docker: start job {job} in {service.image}: "
                              f"{exc.explanation}") from None
        try:
            container.start()
        except docker.errors.APIError as exc:
            # Made but not started (an image of another architecture: exec format error):
            # removed now, not left 'created' under the job's name until the next start.
            # (An engine that fails that too: the reason given stays this one.)
            with contextlib.suppress(docker.errors.APIError):
                self._remove_container(str(container.id))
            raise DockerError(f"docker: start job {job} in {service.image}: "
                              f"{exc.explanation}") from None
        return str(container.id)

    def _follow_job(self, container_id: str, log: Path) -> int:
        """The job's output into its log file as it comes, then its exit status."""
        import docker.errors

        container = self._client.containers.get(container_id)
        try:
            # Written as it comes (the logs of a running job are read from this file),
            # and kept bounded as the local backend's `run` keeps its own.
            out = LogWriter(log, self.job_log_cap, self.job_log_cap - CUT_NOTE_MAX)
            try:
                for chunk in container.logs(stream=True, follow=True):
                    out.write(chunk)
            finally:
                out.close()
            result = container.wait()
        except docker.errors.NotFound:
            raise DockerError(f"docker: job container {container.name} was removed") from None
        finally:
            self._remove_container(container_id)
        code = int(result.get("StatusCode", 1))
        error = (result.get("Error") or {}).get("Message")
        if error:
            raise DockerError(f"docker: job container {container.name}: {error}")
        return code


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """The one mapping of an engine call's failure that the call did not name itself: a
    DockerError (502), not a 500 with a traceback. An engine that answered is quoted (its
    explanation, as the calls above quote it); one that did not is named by the error's
    type alone: the SDK's message carries the engine's address, which DOCKER_HOST may
    give with credentials."""
    import docker.errors
    import requests

    try:
        yield
    except docker.errors.APIError as exc:
        raise DockerError(f"docker: {exc.explanation or exc.status_code}") from None
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise DockerError(f"docker: the engine does not answer ({type(exc).__name__})") from None


def desired_replicas(count: int, shares: list[float], threshold: int, least: int,
                     most: int) -> int:
    """The HPA's rule: ceil(count x mean CPU% / threshold), within [least, most]; a mean
    within SCALE_TOLERANCE of the threshold keeps the count."""
    ratio = sum(shares) / len(shares) / threshold
    if abs(ratio - 1) <= SCALE_TOLERANCE:
        return max(least, min(most, count))
    return min(most, max(least, math.ceil(count * ratio)))


def _read_identity(path: Path) -> str | None:
    """The controller's identity kept in `path`, or None when it has none yet."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):  # a folder, unreadable, not text: damaged too
        text = ""
    if len(text) != ID_DIGITS or not set(text) <= set("0123456789abcdef"):
        # Made anew, it would leave this controller's containers on the engine unowned.
        raise ConfigError(f"{path} does not hold a controller identity ({ID_DIGITS} hex "
                          "digits): restore it, or remove it to have a new one made (what "
                          "the old one labelled is then left on the engine)")
    return text


def _keep_identity(path: Path, identity: str) -> None:
    """Written whole or not at all: a torn file would be refused at the next start."""
    part = path.with_name(f"{path.name}.part")
    try:
        with open(part, "w") as out:
            out.write(f"{identity}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, path)
        # The rename itself made durable: lost in a crash, the next start would draw a new
        # identity and leave this one's containers on the engine, owned by nobody.
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # a file system that syncs no folder: renamed still
                raise
        finally:
            os.close(folder)
    except OSError as exc:  # a full disk, a folder in the way: one line, exit status 2
        raise ConfigError(f"cannot keep the controller's identity in {path}: "
                          f"{exc.strerror or type(exc).__name__}") from None


def _event_text(event: Path) -> str | None:
    """The event as `EVENT` can carry it (UTF-8, no NUL, small enough), else None."""
    if event.stat().st_size > EVENT_IN_ENV_MAX:
        return None
    try:
        text = event.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\0" in text else text
