"""`/system/services`: create, read, update and delete service definitions."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import web

from faas_supervisor.config import DEFAULT_PROVIDER
from faas_supervisor.controller.auth import new_token
from faas_supervisor.controller.buckets import BucketStore, provider_store
from faas_supervisor.controller.deployments import status_json, summary_json, wants_deployment
from faas_supervisor.controller.fdl import Service, parse_service_json, service_json, unmask
from faas_supervisor.controller.reconcile import ListingFailed
from faas_supervisor.controller.routes import Routes
from faas_supervisor.controller.routes.answers import json_response
from faas_supervisor.controller.servers import Server, ServerFailed, paths_by_server
from faas_supervisor.errors import Conflict, InvalidService, NotFound, storage_failure
from faas_supervisor.logs import get_logger

if TYPE_CHECKING:
    from faas_supervisor.controller.api import Api

logger = get_logger(component="api")


class ServiceRoutes(Routes):
    # Create, update and delete of one service name run one at a time (`self.names`):
    # each checks the store, then changes the intake, the store and the backend, and
    # undoes its own changes on failure. Undoing is by name (the intake, the backend), so
    # two of them interleaved would undo each other's work.

    def __init__(self, api: Api) -> None:
        super().__init__(api)
        self.names = NameLocks()
        # The buckets of the creates and updates in progress, counted per request: each as
        # (its server's endpoint, "" for the default store; its name).
        self._claimed: collections.Counter[tuple[str, str]] = collections.Counter()

    async def list_services(self, request: web.Request) -> web.Response:
        return json_response([await self._json(s, request) for s in self.api.store.services()])

    async def read_service(self, request: web.Request) -> web.Response:
        return json_response(await self._json(self.api.service(request), request))

    async def _json(self, service: Service, request: web.Request) -> dict[str, Any]:
        answer = service_json(service, self.api.buckets.public_settings())
        if wants_deployment(request.query.get("include")):
            # Placed as the manager's Go struct places it: after volume_status.
            status = status_json(service, await self.api.backend.deployment(service),
                                 self.api.info.namespace)
            answer["deployment"] = summary_json(status)
        return answer

    async def create_service(self, request: web.Request) -> web.Response:
        api = self.api
        service = parse_service_json(await request.read()).with_token(new_token())
        async with self.names.hold(service.name), self._claiming(service):
            if api.store.service(service.name) is not None:
                raise Conflict("A service with the provided name already exists")
            await api.backend.check(service)  # refused with nothing made or stored
            made = await self._make_buckets(service)
            try:
                await self._attach(service)
                try:
                    api.store.add_service(service)  # the name is ours: held, not stored
                    await api.backend.deploy(service)
                except Exception:
                    # Refused by the backend (an image it cannot pull, an object the API
                    # server rejects): the answer says why, and no half-made service is
                    # left stored, nor a job accepted while the deploy went on.
                    jobs = api.store.jobs(service.name)
                    _forget(api, service.name)
                    await api.intake.detach(service)
                    with contextlib.suppress(Exception):
                        await api.backend.remove(service.name)
                    await api.jobs.delete_many(job.name for job in jobs)
                    raise
            except Exception:
                # And what its intake recorded (paths listed before one failed): else a
                # later create of the name would take no baseline of them.
                _forget(api, service.name)
                await self._remove_buckets(made)
                raise
        logger.info("service created", service=service.name)
        return web.Response(status=HTTPStatus.CREATED)

    async def update_service(self, request: web.Request) -> web.Response:
        api = self.api
        new = parse_service_json(await request.read())
        async with self.names.hold(new.name), self._claiming(new):
            old = api.store.service(new.name)
            if old is None:
                raise NotFound()
            service = unmask(new, old).with_token(old.token)
            await api.backend.check(service)  # refused with the old one untouched
            made = await self._make_buckets(service)
            await api.intake.detach(old)  # its input paths may be other ones
            try:
                await self._attach(service)
            except Exception:
                await api.intake.attach(old, fallback=True)
                await self._remove_buckets(made)
                raise
            try:
                api.store.update_service(service)
                await api.backend.deploy(service)
            except Exception:
                # As a failed create: the service is left as it was, old definition
                # stored, running and attached.
                api.store.update_service(old)
                await api.intake.detach(service)
                await self._restore(old)
                await self._remove_buckets(made)
                raise
            # Through: the paths it no longer has are forgotten (not before, so that a
            # failed update leaves the old ones as they were).
            api.intake.keep(service)
        logger.info("service updated", service=service.name)
        return web.Response(status=HTTPStatus.NO_CONTENT)

    async def delete_service(self, request: web.Request) -> web.Response:
        api = self.api
        async with self.names.hold(request.match_info["name"]):
            service = api.service(request)
            with api.jobs.refusing(service.name):
                await api.intake.detach(service)
                try:
                    await api.backend.remove(service.name)
                except Exception:
                    # Refused (an engine that does not answer): the answer says why, and
                    # the service stays stored, its jobs kept and its inputs followed again.
                    await api.intake.attach(service, fallback=True)
                    raise
                # Its jobs as they are now; with no await in between, the service is gone
                # from the store, so no other job of it can be accepted.
                jobs = api.store.jobs(service.name)
                try:
                    api.store.remove_service(service.name)
                except Exception:
                    # The store refused (locked by another process, a disk error): the
                    # service is still stored, so it is made whole again, as a failed
                    # update makes the old definition again.
                    await self._restore(service)
                    raise
            await api.jobs.delete_many(job.name for job in jobs)  # stopped all at once
        logger.info("service deleted", service=service.name)
        return web.Response(status=HTTPStatus.NO_CONTENT)

    async def _restore(self, service: Service) -> None:
        """`service`, the stored definition, running and its inputs followed again after
        a change that failed part way (an update, a delete)."""
        try:
            await self.api.backend.deploy(service)
        except Exception as exc:
            logger.warning("cannot deploy the stored definition again", service=service.name,
                           error=str(exc))
        await self.api.intake.attach(service, fallback=True)

    async def _make_buckets(self, service: Service) -> list[_Made]:
        """The buckets (and folders) of the service's paths on each MinIO server they are
        on; the buckets this made (none was there), for a request that fails to remove."""
        made: list[_Made] = []
        for server, paths in paths_by_server(service).items():
            try:
                store = self.api.buckets if server.default else await asyncio.to_thread(
                    provider_store, server.settings)
                for path in sorted(paths, key=lambda p: (p.bucket, p.folder)):
                    if await asyncio.to_thread(store.create_bucket, path.bucket):
                        made.append(_Made(server, store, path.bucket))
                    await asyncio.to_thread(store.ensure_path, path.bucket, path.folder)
            except Exception as exc:
                await self._remove_buckets(made)
                # A path the default store refuses (see FolderStore); another server's
                # ValueError is botocore's, which may show its endpoint: its failure.
                if isinstance(exc, ValueError) and server.default:
                    raise InvalidService(f"path: {exc}") from None
                # The folder store's file where the path wants a folder: the request's
                # mistake, a 400 as the S3 endpoint's XMinioParentIsObject.
                if isinstance(exc, FileExistsError | NotADirectoryError) and server.default:
                    at = f"{path.bucket}/{path.folder}"
                    what = (f"{at!r} is" if isinstance(exc, FileExistsError)
                            else f"{at!r} crosses an object: a folder of it is")
                    raise InvalidService(f"path: {what} an object, not a folder") from None
                raise storage_failure(
                    server.provider, f"creation of the buckets of service {service.name}", exc
                ) from None
        return made

    @contextlib.asynccontextmanager
    async def _claiming(self, service: Service) -> AsyncIterator[None]:
        """The service's buckets claimed while its request goes on: another request's
        clean-up leaves them (a create under another name may not be stored yet)."""
        names = _buckets(service)
        self._claimed.update(names)
        try:
            yield
        finally:
            self._claimed.subtract(names)
            self._claimed += collections.Counter()  # drops the counts back at zero

    async def _remove_buckets(self, made: list[_Made]) -> None:
        """Undo _make_buckets for a request that failed: each bucket it made goes, with the
        folders in it, unless a stored service uses it, another request in progress claims
        it (creates under two names at once), or anything but folders has come into it."""
        for one in made:
            name = (one.server.endpoint, one.bucket)
            try:
                used = any(name in _buckets(other) for other in self.api.store.services())
                if used or self._claimed[name] > 1:  # (this request's own claim is 1)
                    continue
                await asyncio.to_thread(one.store.remove_if_empty, one.bucket)
            except Exception as exc:  # the answer says why the request failed, not this
                # Another server's message may show its endpoint: its type only.
                error = str(exc) if one.server.default else type(exc).__name__
                logger.warning("cannot remove a bucket made for a failed request",
                               provider=one.server.provider, bucket=one.bucket, error=error)

    async def _attach(self, service: Service) -> None:
        """The storage server told to announce the service's new inputs (or watched)."""
        try:
            await self.api.intake.attach(service)
        except ListingFailed as exc:  # on whichever provider: the one named, its path
            path = exc.path
            raise storage_failure(
                path.provider,
                f"listing of the input path {path.bucket}/{path.key_prefix} of service "
                f"{service.name}",
                exc.__cause__ or exc,
            ) from None
        except ServerFailed as exc:  # a server of its own providers': the one named
            raise storage_failure(
                exc.provider,
                f"set-up of the input paths of service {service.name}",
                exc.__cause__ or exc,
            ) from None
        except sqlite3.Error:
            raise  # our store (a baseline recorded), not a storage server: answers.py's
        except Exception as exc:  # the rest of the set-up is on the default provider's
            raise storage_failure(
                DEFAULT_PROVIDER,
                f"set-up of the input notifications of service {service.name}",
                exc,
            ) from None


@dataclass(frozen=True)
class _Made:
    """A bucket a request made, on `server` (through `store`)."""

    server: Server
    store: BucketStore
    bucket: str


def _buckets(service: Service) -> set[tuple[str, str]]:
    """The service's buckets, each as (its server's endpoint, "" for the default; name)."""
    return {(server.endpoint, path.bucket)
            for server, paths in paths_by_server(service).items() for path in paths}


class NameLocks:
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


def _forget(api: Api, name: str) -> None:
    """A service that failed to be made removed from the store; a store locked by another
    process (the likely cause of the failure too) must not keep the rest of the cleanup
    (its buckets, its deploy) from being done: a row left is deployed at the next start."""
    try:
        api.store.remove_service(name)
    except sqlite3.Error as exc:
        logger.warning("cannot remove a service that failed to be made from the store",
                       service=name, error=str(exc))
