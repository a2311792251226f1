"""`/system/logs`: the invocations served (executions.py), a service's jobs, their statuses
and logs."""

from __future__ import annotations

import contextlib
from http import HTTPStatus
from typing import Any

from aiohttp import web

from faas_supervisor.controller.deployments import go_bool
from faas_supervisor.controller.routes import Routes
from faas_supervisor.controller.routes.answers import json_response, rfc3339
from faas_supervisor.controller.store import FINISHED, Job
from faas_supervisor.errors import NotFound
from faas_supervisor.logs import get_logger

logger = get_logger(component="api")


class JobRoutes(Routes):
    async def executions(self, _request: web.Request) -> web.Response:
        return json_response(self.api.executions.json())

    async def list_jobs(self, request: web.Request) -> web.Response:
        service = self.api.service(request)
        return json_response(
            {"jobs": {job.name: _job_info(job) for job in self.api.store.jobs(service.name)}}
        )

    async def delete_jobs(self, request: web.Request) -> web.Response:
        service = self.api.service(request)
        everything = go_bool(request.query.get("all"))  # as the manager reads it
        # All at once, not one by one: a pending job must not start while the running
        # ones are stopped (Jobs.delete_many).
        await self.api.jobs.delete_many(
            job.name for job in self.api.store.jobs(service.name)
            if everything or job.status in FINISHED
        )
        return web.Response(status=HTTPStatus.NO_CONTENT)

    def _job(self, request: web.Request) -> Job:
        service = self.api.service(request)
        job = self.api.store.job(request.match_info["job"])
        if job is None or job.service != service.name:
            raise NotFound()
        return job

    async def job_logs(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        response = web.StreamResponse()  # streamed: a job's log can be large
        response.content_type, response.charset = "text/plain", "utf-8"
        await response.prepare(request)
        async with contextlib.aclosing(self.api.jobs.logs(job.name)) as logs:
            async for chunk in logs:
                try:
                    await response.write(chunk)
                except ConnectionResetError:
                    # The client stopped reading (`... | head`): its choice, not a fault
                    # here; the 200 is sent, so there is nothing more to answer.
                    logger.info("the client left before the job's log was sent",
                                job=job.name)
                    return response
        await response.write_eof()
        return response

    async def delete_job(self, request: web.Request) -> web.Response:
        await self.api.jobs.delete(self._job(request).name)
        return web.Response(status=HTTPStatus.NO_CONTENT)


def _job_info(job: Job) -> dict[str, Any]:
    info: dict[str, Any] = {"status": job.status, "creation_time": rfc3339(job.creation_time)}
    if job.start_time is not None:
        info["start_time"] = rfc3339(job.start_time)
    if job.finish_time is not None:
        info["finish_time"] = rfc3339(job.finish_time)
    return info
