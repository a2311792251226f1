"""`/system/services/NAME/deployment[/logs]` and `.../stop|start|restart`: a service's watchdogs.

What the OSCAR dashboard shows and does on a service's deployment page, in the manager's
shapes (deployments.py); the backend says what runs. Stop, start and restart are for
exposed services, as in the manager (a 400 for the others); each answers the status after.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from faas_supervisor.controller.deployments import (
    go_bool,
    logs_json,
    status_json,
    tail_lines,
)
from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.routes import Routes
from faas_supervisor.controller.routes.answers import json_response
from faas_supervisor.errors import InvalidService, NotFound
from faas_supervisor.logs import get_logger

logger = get_logger(component="api")
_DONE = {"stop": "service stopped", "start": "service started", "restart": "service restarted"}


class DeploymentRoutes(Routes):
    async def status(self, request: web.Request) -> web.Response:
        service = self.api.service(request)
        return await self._status(service)

    async def logs(self, request: web.Request) -> web.Response:
        service = self.api.service(request)
        tail = tail_lines(request.query.get("tailLines"))
        lines = await self.api.backend.deployment_logs(service, tail)
        return json_response(
            logs_json(service, lines, tail, go_bool(request.query.get("timestamps")))
        )

    async def stop(self, request: web.Request) -> web.Response:
        return await self._lifecycle(request, "stop", lambda s: self.api.backend.stop_service(s))

    async def start(self, request: web.Request) -> web.Response:
        return await self._lifecycle(request, "start",
                                     lambda s: self.api.backend.start_service(s))

    async def restart(self, request: web.Request) -> web.Response:
        return await self._lifecycle(request, "restart",
                                     lambda s: self.api.backend.restart_service(s))

    async def _lifecycle(
        self, request: web.Request, action: str, act: Callable[[Service], Awaitable[None]]
    ) -> web.Response:
        names = self.api.services.names  # not while the service is created, updated, deleted
        async with names.hold(request.match_info["name"]):
            service = self.api.service(request)
            if not service.exposed:
                raise InvalidService(f'service "{service.name}" is not exposed')
            if await self.api.backend.deployment(service) is None:
                raise NotFound()  # the manager's answer for a Deployment that is gone
            await act(service)
            logger.info(_DONE[action], service=service.name)
            return await self._status(service)

    async def _status(self, service: Service) -> web.Response:
        deployment = await self.api.backend.deployment(service)
        return json_response(status_json(service, deployment, self.api.info.namespace))
