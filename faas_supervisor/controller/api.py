"""The controller's HTTP API, compatible with the OSCAR manager's (SPEC 7.2).

Routes, their authentication and their status codes, with the manager's JSON shapes
(compact, as Go writes it). `/system/*` takes the admin's basic auth; `/run` and `/job`
take the service's token or the admin's; `/job` also takes a Ceph RGW event carrying the
token as its `opaqueData`, since RGW sends no Authorization header.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from faas_supervisor import __version__, strict_json
from faas_supervisor.config import on_default_provider
from faas_supervisor.controller.auth import Credentials, bearer, token_matches
from faas_supervisor.controller.backends import Backend
from faas_supervisor.controller.buckets import BucketStore
from faas_supervisor.controller.fdl import (
    InvalidService,
    Service,
    go_json,
    parse_service_json,
    service_json,
    unmask,
)
from faas_supervisor.controller.intake import Intake
from faas_supervisor.controller.jobs import Jobs
from faas_supervisor.controller.names import bucket_problem, path_problem
from faas_supervisor.controller.openapi import document as openapi_document
from faas_supervisor.controller.store import FINISHED, Job, Store
from faas_supervisor.errors import FaasError, unreadable_body
from faas_supervisor.http_headers import forwarded_headers
from faas_supervisor.logs import get_logger

MAX_DEFINITION = 64 << 20  # a service JSON carries its script; bodies of /run stream
WHOLE_BODY_MAX = 64 << 10  # proxied answers up to this size are read, then sent whole
CEPH_EVENT_MAX = 1 << 20  # an unauthenticated body is read only to find its token
# Idle connections kept open to each service's watchdog for the next request. In-flight
# requests are not limited (a synchronous call lasts as long as its script, and a cap
# would queue, or deadlock, calls behind slow ones); only what is kept afterwards is.
IDLE_UPSTREAM_PER_HOST = 32
logger = get_logger(component="api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ApiInfo:
    backend: str
    started: float
    max_jobs: int


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=go_json(value), content_type="application/json", charset="utf-8"
    )


def text_response(text: str, status: int) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain", charset="utf-8")


def rfc3339(stamp: float | None) -> str | None:
    return None if stamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


class Api:
    def __init__(
        self,
        info: ApiInfo,
        credentials: Credentials,
        store: Store,
        backend: Backend,
        jobs: Jobs,
        intake: Intake,
        buckets: BucketStore,
    ) -> None:
        self.info = info
        self.credentials = credentials
        self.store = store
        self.backend = backend
        self.jobs = jobs
        self.intake = intake
        self.buckets = buckets
        self._session: aiohttp.ClientSession | None = None
        self._names = _NameLocks()

    # ---- the application -------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_DEFINITION, middlewares=[self._errors, self._system_auth]
        )
        r = app.router
        r.add_get("/health", self.health)
        r.add_get("/openapi.json", self.openapi)
        r.add_get("/system/info", self.system_info)
        r.add_get("/system/config", self.system_config)
        r.add_get("/system/status", self.system_status)
        r.add_get("/system/services", self.list_services)
        r.add_post("/system/services", self.create_service)
        r.add_put("/system/services", self.update_service)
        r.add_get("/system/services/{name}", self.read_service)
        r.add_delete("/system/services/{name}", self.delete_service)
        r.add_route("*", "/system/services/{name}/exposed/{tail:.*}", self.exposed)
        r.add_route("*", "/system/services/{name}/exposed", self.exposed)
        r.add_post("/run/{name}", self.run)
        r.add_post("/job/{name}", self.job)
        r.add_get("/system/logs/{name}", self.list_jobs)
        r.add_delete("/system/logs/{name}", self.delete_jobs)
        r.add_get("/system/logs/{name}/{job}", self.job_logs)
        r.add_delete("/system/logs/{name}/{job}", self.delete_job)
        r.add_get("/system/buckets", self.list_buckets)
        r.add_post("/system/buckets", self.create_bucket)
        r.add_put("/system/buckets", self.update_bucket)
        r.add_get("/system/buckets/{bucket}", self.read_bucket)
        r.add_delete("/system/buckets/{bucket}", self.delete_bucket)
        app.on_startup.append(self._open_session)
        app.on_cleanup.append(self._close_session)
        return app

    async def _open_session(self, _app: web.Application) -> None:
        # No overall timeout: a synchronous invocation lasts as long as its script.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=_UpstreamConnector(IDLE_UPSTREAM_PER_HOST),
            auto_decompress=False,  # bodies pass through byte for byte
        )

    async def _close_session(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Failures as one-line answers: the request's fault is a 4xx, never a 5xx."""
        try:
            return await handler(request)
        except FaasError as exc:
            return text_response(exc.message, exc.http_status)
        except (web.RequestPayloadError, HttpProcessingError) as exc:  # an unreadable body
            return _unreadable(request, exc)
        except RecursionError:
            # Input nested deeper than Python recurses, wherever it is walked.
            return text_response("the request is nested too deeply", 400)
        except web.HTTPException:
            raise  # answers aiohttp makes (401, 404, 413...)
        except Exception:
            # A fault of ours, not of the request: logged whole, answered in one line.
            logger.exception("request failed", method=request.method, path=request.path)
            return text_response("internal error (see the controller's log)", 500)

    @web.middleware
    async def _system_auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/system/") and "/exposed" not in path:
            self._require_admin(request)
        return await handler(request)

    def _is_admin(self, request: web.Request) -> bool:
        return self.credentials.check_basic(request.headers.get("Authorization", ""))

    def _require_admin(self, request: web.Request) -> None:
        if not self._is_admin(request):
            raise web.HTTPUnauthorized(
                text="401 Unauthorized",
                headers={"WWW-Authenticate": 'Basic realm="Authorization Required"'},
            )

    def _service(self, request: web.Request) -> Service:
        service = self.store.service(request.match_info["name"])
        if service is None:
            raise web.HTTPNotFound()
        return service

    # ---- system ----------------------------------------------------------------------

    async def health(self, _request: web.Request) -> web.Response:
        return text_response("Ok", 200)

    async def openapi(self, _request: web.Request) -> web.Response:
        return json_response(openapi_document())

    async def system_info(self, _request: web.Request) -> web.Response:
        return json_response(
            {
                "version": __version__,
                "git_commit": "",
                "architecture": _go_arch(),
                "kubernetes_version": "",
                "serverless_backend": {"name": self.info.backend, "version": __version__},
            }
        )

    async def system_config(self, _request: web.Request) -> web.Response:
        return json_response(
            {
                "config": {
                    "name": "faas-supervisor",
                    "namespace": "",
                    "services_namespace": "",
                    "controller_service_account": "",
                    "gpu_available": False,
                    "interLink_available": False,
                    "serverless_backend": self.info.backend,
                    "yunikorn_enable": False,
                    "kueue_enable": False,
                    "volume_enable": False,
                    "oidc_groups": [],
                    "minio_quota_enabled": False,
                },
                "minio_provider": self.buckets.public_settings(),
                "allowed_image_repositories": [],
            }
        )

    async def system_status(self, _request: web.Request) -> web.Response:
        node = await asyncio.to_thread(_this_node)
        buckets = await asyncio.to_thread(self._bucket_counts)
        jobs = self.store.jobs()
        states: dict[str, int] = {}
        for job in jobs:
            states[job.status] = states.get(job.status, 0) + 1
        cpu_free = node["cpu"]["capacity_cores"] - node["cpu"]["usage_cores"]
        mem_free = node["memory"]["capacity_bytes"] - node["memory"]["usage_bytes"]
        return json_response(
            {
                "cluster": {
                    "nodes_count": 1,
                    "metrics": {
                        "cpu": {
                            "total_free_cores": cpu_free,
                            "max_free_on_node_cores": cpu_free,
                            "total_schedulable_cores": node["cpu"]["capacity_cores"],
                            "total_schedulable_on_node_cores": node["cpu"]["capacity_cores"],
                        },
                        "memory": {
                            "total_free_bytes": mem_free,
                            "max_free_on_node_bytes": mem_free,
                            "total_schedulable_bytes": node["memory"]["capacity_bytes"],
                            "max_schedulable_on_node_bytes": node["memory"]["capacity_bytes"],
                        },
                        "gpu": {"total_gpu": 0},
                    },
                    "nodes": [node],
                },
                "oscar": {
                    "deployment_name": "faas-supervisor",
                    "ready": True,
                    "deployment": {
                        "available_replicas": 1,
                        "ready_replicas": 1,
                        "replicas": 1,
                        "creation_timestamp": rfc3339(self.info.started),
                        "strategy": "",
                        "labels": {},
                    },
                    "jobs_count": len(jobs),
                    "pods": {"total": len(jobs), "states": dict(sorted(states.items()))},
                    "oidc": {"enabled": False, "issuers": [], "groups": []},
                },
                "minio": {"buckets_count": buckets[0], "total_objects": buckets[1]},
            }
        )

    def _bucket_counts(self) -> tuple[int, int]:
        try:
            names = self.buckets.list_buckets()
            return len(names), sum(len(self.buckets.list_objects(b)) for b in names)
        except Exception:  # the storage server is down: the status says nothing of it
            return 0, 0

    # ---- services --------------------------------------------------------------------

    async def list_services(self, _request: web.Request) -> web.Response:
        settings = self.buckets.public_settings()
        return json_response([service_json(s, settings) for s in self.store.services()])

    async def read_service(self, request: web.Request) -> web.Response:
        return json_response(service_json(self._service(request), self.buckets.public_settings()))

    async def _definition(self, request: web.Request) -> Service:
        return parse_service_json(await request.read())

    # Create, update and delete of one service name run one at a time (`self._names`):
    # each checks the store, then changes the intake, the store and the backend, and
    # undoes its own changes on failure. Undoing is by name (the intake, the backend), so
    # two of them interleaved would undo each other's work.

    async def create_service(self, request: web.Request) -> web.Response:
        from faas_supervisor.controller.auth import new_token

        service = (await self._definition(request)).with_token(new_token())
        async with self._names.hold(service.name):
            if self.store.service(service.name) is not None:
                return text_response("A service with the provided name already exists", 409)
            await self._make_buckets(service)
            await self._attach(service)
            try:
                self.store.add_service(service)  # the name is ours: held, and not stored
                await self.backend.deploy(service)
            except Exception:
                # Refused by the backend (an image it cannot pull, an object the API server
                # rejects): the answer says why, and no half-made service is left stored.
                self.store.remove_service(service.name)
                await self.intake.detach(service)
                with contextlib.suppress(Exception):
                    await self.backend.remove(service.name)
                raise
        logger.info("service created", service=service.name)
        return web.Response(status=201)

    async def update_service(self, request: web.Request) -> web.Response:
        new = await self._definition(request)
        async with self._names.hold(new.name):
            old = self.store.service(new.name)
            if old is None:
                raise web.HTTPNotFound()
            service = unmask(new, old).with_token(old.token)
            await self._make_buckets(service)
            await self.intake.detach(old)  # its input paths may be other ones
            try:
                await self._attach(service)
            except _StorageFailed:
                await self.intake.attach(old, fallback=True)
                raise
            try:
                self.store.update_service(service)
                await self.backend.deploy(service)
            except Exception:
                # As a failed create: the service is left as it was, old definition
                # stored, running and attached.
                self.store.update_service(old)
                await self.intake.detach(service)
                try:
                    await self.backend.deploy(old)
                except Exception as exc:
                    logger.warning("cannot deploy the previous definition again",
                                   service=old.name, error=str(exc))
                await self.intake.attach(old, fallback=True)
                raise
        logger.info("service updated", service=service.name)
        return web.Response(status=204)

    async def delete_service(self, request: web.Request) -> web.Response:
        async with self._names.hold(request.match_info["name"]):
            service = self._service(request)
            await self.intake.detach(service)
            for job in self.store.jobs(service.name):
                await self.jobs.delete(job.name)
            await self.backend.remove(service.name)
            self.store.remove_service(service.name)
        logger.info("service deleted", service=service.name)
        return web.Response(status=204)

    async def _make_buckets(self, service: Service) -> None:
        """The buckets (and folders) of the service's paths on the default provider."""
        paths = on_default_provider((*service.input, *service.output))
        try:
            for path in sorted(paths, key=lambda p: (p.bucket, p.folder)):
                await asyncio.to_thread(self.buckets.ensure_path, path.bucket, path.folder)
        except ValueError as exc:  # a path the store refuses (see FolderStore)
            raise InvalidService(f"path: {exc}") from None
        except Exception as exc:
            raise _StorageFailed(
                f"cannot create the buckets of service {service.name}: {exc}"
            ) from None

    async def _attach(self, service: Service) -> None:
        """The storage server told to announce the service's new inputs (or watched)."""
        try:
            await self.intake.attach(service)
        except Exception as exc:
            raise _StorageFailed(
                f"cannot set up the input notifications of service {service.name}: {exc}"
            ) from None

    async def exposed(self, request: web.Request) -> web.StreamResponse:
        service = self._service(request)
        if not service.exposed:
            raise web.HTTPNotFound()
        if service.expose.set_auth and not (
            self._token_ok(request, service) or self._is_admin(request)
        ):
            self._require_admin(request)
        tail = request.match_info.get("tail", "")
        return await self._proxy(request, service, "/" + tail)

    # ---- invocations -----------------------------------------------------------------

    def _token_ok(self, request: web.Request, service: Service) -> bool:
        return token_matches(bearer(request.headers.get("Authorization", "")), service.token)

    def _authorised(self, request: web.Request, service: Service) -> bool:
        return self._token_ok(request, service) or self._is_admin(request)

    async def run(self, request: web.Request) -> web.StreamResponse:
        service = self._service(request)
        if not self._authorised(request, service):
            raise web.HTTPUnauthorized()
        return await self._proxy(request, service, "/")

    async def _proxy(self, request: web.Request, service: Service, path: str) -> web.StreamResponse:
        """The request to the service's watchdog and its answer back, both streamed."""
        assert self._session is not None
        base = await self.backend.invoke_url(service.name)
        # The service's watchdog never sees the caller's credentials; aiohttp sets Host.
        headers = forwarded_headers(request.headers, drop=("authorization", "host"))
        body: bytes | aiohttp.StreamReader | None = None
        if request.body_exists:
            length = request.content_length
            # A small body of known length is read first and goes out with the headers;
            # a stream is written by a task of its own, loop iterations on every request.
            small = length is not None and length <= WHOLE_BODY_MAX
            body = await request.read() if small else request.content
        url = f"{base}{path}" + (f"?{request.query_string}" if request.query_string else "")
        try:
            async with self._session.request(
                request.method,
                url,
                headers=headers,
                data=body,
                skip_auto_headers=("Content-Type", "User-Agent", "Accept-Encoding"),
            ) as upstream:
                answer_headers = forwarded_headers(upstream.headers, drop=("server", "date"))
                length = upstream.content_length
                if request.method != "HEAD" and length is not None and length <= WHOLE_BODY_MAX:
                    # Small and of known length: sent with its headers in one write. A
                    # streamed response sends its headers alone first, a second
                    # syscall and wake-up that was most of what the proxy added.
                    return web.Response(
                        status=upstream.status,
                        reason=upstream.reason,
                        body=await upstream.read(),
                        headers=answer_headers,
                    )
                response = web.StreamResponse(
                    status=upstream.status, reason=upstream.reason, headers=answer_headers
                )
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientError as exc:
            unread = request.content.exception()
            if unread is not None:  # the client's body broke, not the service
                return _unreadable(request, unread)
            logger.warning("service did not answer", service=service.name, error=str(exc))
            return text_response(f"service {service.name} did not answer: {exc}", 502)

    async def job(self, request: web.Request) -> web.Response:
        service = self._service(request)
        if self._authorised(request, service):
            name, new = await self.jobs.submit(service, request.content.iter_chunked(1 << 16))
        elif "Authorization" not in request.headers:
            body = await request.content.read(CEPH_EVENT_MAX + 1)
            if len(body) > CEPH_EVENT_MAX or not _ceph_token_ok(body, service.token):
                raise web.HTTPUnauthorized()
            name, new = await self.jobs.submit(service, body)
        else:
            raise web.HTTPUnauthorized()
        # An event naming an object that has a job already (a redelivery): that job,
        # and nothing made (200, not 201).
        return json_response({"job": name}, status=201 if new else 200)

    # ---- jobs ------------------------------------------------------------------------

    async def list_jobs(self, request: web.Request) -> web.Response:
        service = self._service(request)
        return json_response(
            {"jobs": {job.name: _job_info(job) for job in self.store.jobs(service.name)}}
        )

    async def delete_jobs(self, request: web.Request) -> web.Response:
        service = self._service(request)
        everything = request.query.get("all", "false").lower() in ("true", "1")
        for job in self.store.jobs(service.name):
            if everything or job.status in FINISHED:
                await self.jobs.delete(job.name)
        return web.Response(status=204)

    def _job(self, request: web.Request) -> Job:
        service = self._service(request)
        job = self.store.job(request.match_info["job"])
        if job is None or job.service != service.name:
            raise web.HTTPNotFound()
        return job

    async def job_logs(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        response = web.StreamResponse()  # streamed: a job's log can be large
        response.content_type, response.charset = "text/plain", "utf-8"
        await response.prepare(request)
        async for chunk in self.jobs.logs(job.name):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def delete_job(self, request: web.Request) -> web.Response:
        await self.jobs.delete(self._job(request).name)
        return web.Response(status=204)

    # ---- buckets ---------------------------------------------------------------------

    async def list_buckets(self, _request: web.Request) -> web.Response:
        names = await self._storage(self.buckets.list_buckets)
        return json_response([_bucket_json(name) for name in names])

    async def _bucket_body(self, request: web.Request) -> tuple[str, str]:
        """The bucket and the folder in it that `bucket_name` names (`photos/2024`)."""
        try:
            data = strict_json.loads(await request.read())
        except strict_json.NotJson:
            data = None
        _check_bucket_fields(data)
        if not isinstance(data, dict) or not isinstance(data.get("bucket_name"), str):
            raise InvalidService("bucket_name: missing")
        name, _, folder = data["bucket_name"].strip(" /").partition("/")
        _check_bucket(name)
        problem = path_problem(folder) if folder else None
        if problem is not None:
            raise InvalidService(f"bucket_name: folder {folder!r} {problem}")
        return name, folder

    async def create_bucket(self, request: web.Request) -> web.Response:
        name, folder = await self._bucket_body(request)
        if not await self._storage(self.buckets.create_bucket, name):
            return text_response(f"The bucket '{name}' already exists", 409)
        if folder:
            await self._storage(self.buckets.ensure_path, name, folder)
        return web.Response(status=201)

    async def update_bucket(self, request: web.Request) -> web.Response:
        name, _ = await self._bucket_body(request)
        if not await self._storage(self.buckets.bucket_exists, name):
            return text_response(f"The bucket '{name}' does not exist", 404)
        # Visibility and members are MinIO policies, which one admin does not need here.
        return web.Response(status=204)

    async def read_bucket(self, request: web.Request) -> web.Response:
        name = _check_bucket(request.match_info["bucket"])
        if not await self._storage(self.buckets.bucket_exists, name):
            return text_response(f"The bucket '{name}' does not exist", 404)
        objects = await self._storage(self.buckets.list_objects, name)
        listing = [
            {
                "object_name": o.key,
                "size_bytes": o.size,
                "last_modified": time.strftime(
                    "%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(o.modified)
                ),
            }
            for o in objects
        ]
        return json_response(
            {
                **_bucket_json(name),
                "objects": listing,
                "is_truncated": False,
                "returned_items": len(listing),
            }
        )

    async def delete_bucket(self, request: web.Request) -> web.Response:
        name = _check_bucket(request.match_info["bucket"])
        if not await self._storage(self.buckets.bucket_exists, name):
            return text_response(f"The bucket '{name}' does not exist", 404)
        await self._storage(self.buckets.delete_bucket, name)
        return web.Response(status=204)

    async def _storage(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(call, *args)
        except ValueError as exc:  # a name or path the store refuses (see FolderStore)
            raise InvalidService(f"bucket_name: {exc}") from None
        except Exception as exc:
            raise _StorageFailed(f"the storage provider failed: {exc}") from None


class _StorageFailed(FaasError):
    http_status = 502


def _unreadable(request: web.Request, exc: BaseException) -> web.Response:
    """The 400 for a body that broke while it was read (a bad chunk, a bad encoding)."""
    answer = text_response(unreadable_body(exc).message, 400)
    answer.force_close()  # where the next request would start is unknown
    request.content.feed_eof()  # nothing left to drain (aiohttp would log it again)
    return answer


def _check_bucket(name: str) -> str:
    problem = bucket_problem(name)
    if problem is not None:
        raise InvalidService(f"bucket_name: {name!r} {problem}")
    return name


class _NameLocks:
    """One asyncio lock per name, forgotten once nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(name, (asyncio.Lock(), 0))
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)


class _UpstreamConnector(aiohttp.TCPConnector):
    """aiohttp's connector, keeping at most `max_idle` idle connections per host.

    aiohttp keeps every connection released after a request for `keepalive_timeout`
    (15 s), however many a burst opened; `limit_per_host` would bound those in flight
    too. Past `max_idle`, a released connection is closed instead of kept.
    """

    def __init__(self, max_idle: int) -> None:
        super().__init__(limit=0)
        self.max_idle = max_idle

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        idle = self._conns.get(key)
        if idle is not None and len(idle) >= self.max_idle:
            should_close = True
        super()._release(key, protocol, should_close=should_close)


def _bucket_json(name: str) -> dict[str, Any]:
    return {
        "bucket_name": name,
        "visibility": "private",
        "allowed_users": [],
        "owner": "cluster_admin",
        "metadata": {},
    }


def _check_bucket_fields(data: Any) -> None:
    """The other fields of a bucket body have the manager's types (null: absent), as Go's
    decoder would have them, though they are not kept: a wrong one is a mistake to report."""
    if not isinstance(data, dict):
        return
    for key in ("visibility", "owner"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise InvalidService(f"{key}: must be a string")
    users = data.get("allowed_users")
    if users is not None and not (
        isinstance(users, list) and all(isinstance(u, str) for u in users)
    ):
        raise InvalidService("allowed_users: must be a list of strings")
    metadata = data.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise InvalidService("metadata: must be a mapping of strings")


def _job_info(job: Job) -> dict[str, Any]:
    info: dict[str, Any] = {"status": job.status, "creation_time": rfc3339(job.creation_time)}
    if job.start_time is not None:
        info["start_time"] = rfc3339(job.start_time)
    if job.finish_time is not None:
        info["finish_time"] = rfc3339(job.finish_time)
    return info


def _ceph_token_ok(body: bytes, token: str) -> bool:
    """A Ceph RGW event whose every record carries the service token as `opaqueData`."""
    try:
        records = strict_json.loads(body).get("Records")
    except (strict_json.NotJson, AttributeError):
        return False
    if not isinstance(records, list) or not records:
        return False
    results = [
        isinstance(r, dict)
        and r.get("eventSource") == "ceph:s3"
        and token_matches(str(r.get("opaqueData", "")), token)
        for r in records
    ]
    return all(results)


def _go_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def _this_node() -> dict[str, Any]:
    """This machine as a Kubernetes node in the manager's status: millicores and bytes."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    meminfo: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                meminfo[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    total = meminfo.get("MemTotal", 0)
    used = total - meminfo.get("MemAvailable", total)
    return {
        "name": socket.gethostname(),
        "cpu": {"capacity_cores": cores * 1000, "usage_cores": min(int(load * 1000), cores * 1000)},
        "memory": {"capacity_bytes": total, "usage_bytes": used},
        "gpu": 0,
        "is_interlink": False,
        "status": "Ready",
        "conditions": [{"type": "Ready", "status": True}],
    }
