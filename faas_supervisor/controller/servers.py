"""The MinIO servers a service's paths are on, and the stores the intake lists them through.

A path is on the default provider's store (`minio.default`) or on the server of a MinIO
provider the service defines (`minio.ID`, SPEC 7.2). Service creation makes the buckets
of its paths on each (routes/services.py); the intake watches its inputs on each
(intake.py), those on its own servers through `ServerStores`: one S3Store per server
(endpoint, keys, region, verify), shared by every service whose providers name it, and
dropped when the last of them is detached.

What the controller's store and log keep of such a server: a digest (`server_id`), and
failures without their message (`shown_error`), since its endpoint may hold the
service's `user:password@`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from faas_supervisor.config import DEFAULT_PROVIDER, StoragePath, on_default_provider
from faas_supervisor.controller.buckets import (
    BucketStore,
    FolderStore,
    S3Access,
    S3Store,
    StoredObject,
    provider_access,
    provider_endpoint,
)
from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.notifications import list_input


@dataclass(frozen=True)
class Server:
    """A MinIO server a service's paths are on: the controller's default store, or the
    server of a MinIO provider the service defines (`minio.ID`)."""

    provider: str  # its name, as answers and logs give it
    endpoint: str = ""  # "" for the default store; across services, what tells servers apart
    settings: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def default(self) -> bool:
        return not self.endpoint


def paths_by_server(
    service: Service, paths: Collection[StoragePath] | None = None
) -> dict[Server, list[StoragePath]]:
    """The service's paths (its input and output paths unless given) on each MinIO server,
    each once: the default provider's first (`on_default_provider`), then those of its
    own MinIO providers, as `StoragePath(provider, path)` (the provider normalised)."""
    if paths is None:
        paths = (*service.input, *service.output)
    found: dict[Server, dict[StoragePath, None]] = {}
    default = on_default_provider(paths)
    if default:
        found[Server(DEFAULT_PROVIDER)] = dict.fromkeys(default)
    for path in paths:
        ptype, _, pid = path.provider.partition(".")
        if ptype != "minio" or path.provider == DEFAULT_PROVIDER:
            continue
        settings = service.storage_providers[ptype][pid]  # defined: the definition's check
        server = Server(path.provider, provider_endpoint(settings), settings)
        found.setdefault(server, {})[StoragePath(path.provider, path.path)] = None
    return {server: list(on_server) for server, on_server in found.items()}


def own_inputs(service: Service) -> dict[StoragePath, S3Access]:
    """The service's input paths on its own MinIO providers, each with its server."""
    return {
        path: provider_access(server.settings)
        for server, paths in paths_by_server(service, service.input).items()
        if not server.default
        for path in paths
    }


def input_servers(service: Service) -> dict[StoragePath, str]:
    """Each input path of the service with the server it is on, as the store records it:
    "" for the default provider, `server_id` for one of its own."""
    found = dict.fromkeys(on_default_provider(service.input), "")
    found.update((path, server_id(access)) for path, access in own_inputs(service).items())
    return found


View = tuple[str, str]  # servers.server_view: what a provider sees of a server


def input_peers(service: Service, default: View | None = None) -> dict[str, frozenset[str]]:
    """For each MinIO provider of the service's input paths, its others that see the same
    objects (`server_view`): an object one of them took a job for is that job's for all
    (jobs.py), as OSCAR's one webhook per service gives one event per object. The default
    provider counts when on an S3 server (`default`: --minio-endpoint's view); on the
    folder store its identities carry the listing's version, which no other provider's
    (through its S3 endpoint, the MD5) ever equals."""
    on: dict[View, set[str]] = {}
    for server in paths_by_server(service, service.input):
        if server.default:
            view = default
        else:
            view = server_view(server.endpoint, provider_access(server.settings).access_key)
        if view is not None:
            on.setdefault(view, set()).add(server.provider)
    return {provider: frozenset(providers - {provider})
            for providers in on.values() if len(providers) > 1 for provider in providers}


def server_view(endpoint: str, access_key: str) -> View:
    """What tells apart the objects two providers see: the endpoint's scheme, host, port
    (the scheme's own, 80 or 443, written or not) and path (without a user and password,
    credentials, or a trailing `/`), and the access key (a Ceph RGW tenant's buckets are
    its own). Two names of one host (`localhost`, `127.0.0.1`) are two servers; two keys
    of one server see two sets of objects."""
    parts = urlsplit(endpoint)
    scheme, host = parts.scheme.lower(), parts.netloc.rpartition("@")[2].lower()
    host = host.removesuffix({"http": ":80", "https": ":443"}.get(scheme, "\0"))
    return urlunsplit((scheme, host, parts.path.rstrip("/"), "", "")), access_key


def default_server(buckets: BucketStore) -> str:
    """The default provider's server, as the store records it (Store.use_default_server):
    "" for the embedded folder store, else a digest of --minio-endpoint as `server_view`
    writes it. Its keys left out: an operator rotating them has the same objects there,
    and those put while the controller was stopped must still get their jobs."""
    if not isinstance(buckets, S3Store):
        return ""
    endpoint, _ = server_view(buckets.endpoint, "")
    return hashlib.sha256(endpoint.encode()).hexdigest()[:32]


def server_id(access: S3Access) -> str:
    """The server, as the store records which one a path was listed on: a path keeps its
    name when an update points its provider at another server, but is a new path there.
    A digest, so that neither the endpoint nor the key is written down; the endpoint's
    user and password are credentials, not the server, and are left out."""
    parts = urlsplit(access.endpoint)
    host = parts.netloc.rpartition("@")[2]
    endpoint = urlunsplit(parts._replace(netloc=host))
    named = json.dumps([endpoint, access.access_key, access.region])
    return hashlib.sha256(named.encode()).hexdigest()[:32]


def shown_error(provider: str, exc: BaseException) -> str:
    """What the log shows of a failure of a server's call. The default provider's message
    whole: its endpoint is the operator's --minio-endpoint, which settings.py refuses with
    a user or password (as errors.py's messages, it names no secret). Another server's
    endpoint is the service's and may hold `user:password@`, which botocore's messages
    quote: its exception's type only, and the S3 error code of a ClientError."""
    if provider == DEFAULT_PROVIDER:
        return str(exc)
    response = getattr(exc, "response", None)  # botocore's ClientError, not imported here
    error = response.get("Error") if isinstance(response, dict) else None
    code = error.get("Code") if isinstance(error, dict) else None
    name = type(exc).__name__  # botocore names some after the code: `AccessDenied`
    return f"{name} ({code})" if isinstance(code, str) and code and code != name else name


async def list_path(store: BucketStore, path: StoragePath) -> list[StoredObject]:
    """The objects under an input path now (notifications.list_input), listed in a thread:
    of the default pool for the embedded folder store, a daemon thread of its own for any
    S3 server (`--minio-endpoint`'s, or a service's own).

    A server may stop answering, each stuck listing holding its thread until its timeouts
    (about a minute): in the controller's default pool, which all its other blocking work
    shares (the Kubernetes API's calls, the jobs' files), they would fill it; in a bounded
    pool of their own, a few stuck paths would hold up every other server's listings and
    creates. A thread each is bounded by the services' paths (one listing at a time per
    path, watcher.py and reconcile.py), and, a daemon, does not hold the controller's exit
    until its timeouts. The folder store's listings read a local disk: the pool's threads
    save starting one per listing.

    At most S3Store.LISTINGS listings of one server run at once (a watch and a
    reconciliation per path: twice its paths, else), waiting here, in the loop, for
    their turn: more would each open a connection its client drops, logging a warning
    each time. A server that does not answer holds up only its own listings."""
    if isinstance(store, FolderStore):
        return await asyncio.to_thread(list_input, store, path)
    slots = _LISTING_SLOTS.get(store)
    if slots is None:
        slots = _LISTING_SLOTS[store] = asyncio.Semaphore(S3Store.LISTINGS)
    await slots.acquire()
    # Given back when the thread ends, not when its caller stops waiting (cancelled): the
    # connection is in use until then.
    return await _in_own_thread(store, path, slots.release)


# One bound per server's store, gone with it (ServerStores drops a server's last user's).
_LISTING_SLOTS: weakref.WeakKeyDictionary[BucketStore, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())


async def _in_own_thread(store: BucketStore, path: StoragePath,
                         ended: Callable[[], None]) -> list[StoredObject]:
    """list_input in a daemon thread of its own (list_path says why); `ended` is called
    in the loop once the thread has ended."""
    loop = asyncio.get_running_loop()
    listed: asyncio.Future[list[StoredObject]] = loop.create_future()

    def settle(objects: list[StoredObject] | None, error: BaseException | None) -> None:
        ended()
        if listed.done():  # cancelled: nobody waits any more
            return
        if error is not None:
            listed.set_exception(error)
        else:
            listed.set_result(objects or [])

    def run() -> None:
        try:
            objects, error = list_input(store, path), None
        except BaseException as exc:  # handed to the awaiting task, as to_thread does
            objects, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the end
            loop.call_soon_threadsafe(settle, objects, error)

    try:
        threading.Thread(target=run, name="own-listing", daemon=True).start()
    except BaseException:
        ended()
        raise
    return await listed


class ServerFailed(Exception):
    """A server whose store cannot be made (a client boto3 refuses: an endpoint it cannot
    parse), named by a provider of the service's on it; `__cause__` says why (its type
    only is shown: routes/services.py, intake.py)."""

    def __init__(self, provider: str) -> None:
        super().__init__(f"{provider}: cannot make a client of its server")
        self.provider = provider


class ServerStores:
    """One S3Store per server, held by the services that list it (by name)."""

    def __init__(self, open_store: Callable[[S3Access], S3Store] = S3Access.open) -> None:
        self._open = open_store
        self._stores: dict[S3Access, S3Store] = {}
        self._users: dict[str, frozenset[S3Access]] = {}

    def __len__(self) -> int:
        return len(self._stores)

    async def hold(self, name: str, servers: Mapping[S3Access, str]) -> dict[S3Access, S3Store]:
        """The stores of `servers` (each with a provider naming it), held for the service
        `name` until `release` (instead of those it held before). Those no service holds
        yet are made, in a thread; ServerFailed names the provider of one that cannot be."""
        before = self._users.get(name, frozenset())
        self._users[name] = frozenset(servers)
        self._drop_unused(before)
        held: dict[S3Access, S3Store] = {}
        for server in servers:
            store = self._stores.get(server)
            if store is None:
                try:
                    made = await asyncio.to_thread(self._open, server)
                except Exception as exc:
                    raise ServerFailed(servers[server]) from exc
                # Another service's hold may have made one meanwhile: one per server.
                store = self._stores.setdefault(server, made)
            held[server] = store
        return held

    def release(self, name: str) -> None:
        """The service no longer lists its servers: those nobody else lists are dropped."""
        self._drop_unused(self._users.pop(name, frozenset()))

    def _drop_unused(self, servers: frozenset[S3Access]) -> None:
        used = frozenset().union(*self._users.values())
        for server in servers - used:
            self._stores.pop(server, None)
