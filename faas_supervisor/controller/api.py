"""The controller's HTTP API, compatible with the OSCAR manager's (SPEC 7.2).

`Api` composes the routes of `controller/routes/` (system, services, invocations, jobs
and logs, buckets) into one aiohttp application and holds what they share: the store,
the backend, the jobs, the intake, the bucket store, and the checks of credentials.
`/system/*` takes the admin's basic auth (but a service's exposed port, which says for
itself); failures become answers in one middleware (`routes/answers.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from faas_supervisor.controller.auth import Credentials, bearer, token_matches
from faas_supervisor.controller.backends import Backend
from faas_supervisor.controller.buckets import BucketStore
from faas_supervisor.controller.cors import setup_cors
from faas_supervisor.controller.executions import Executions
from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.intake import Intake
from faas_supervisor.controller.jobs import Jobs
from faas_supervisor.controller.routes.answers import Handler, errors
from faas_supervisor.controller.routes.buckets import BucketRoutes
from faas_supervisor.controller.routes.deployments import DeploymentRoutes
from faas_supervisor.controller.routes.invocations import InvocationRoutes
from faas_supervisor.controller.routes.jobs import JobRoutes
from faas_supervisor.controller.routes.services import ServiceRoutes
from faas_supervisor.controller.routes.system import SystemRoutes
from faas_supervisor.controller.store import Store
from faas_supervisor.errors import NotFound, Unauthorized
from faas_supervisor.http_timeouts import bounded_body, request_started

MAX_DEFINITION = 64 << 20  # a service JSON carries its script; bodies of /run stream
# A body the controller reads itself (a service's definition, a job's event, a bucket's):
# without credentials (a Ceph `/job`, read for its token), whole this long after the
# request's first byte; with them, never this long without a byte (a job's event may be
# a large file on a slow link). Else 408 and the connection closed: nginx's
# client_body_timeout's value, as HEAD_TIMEOUT is its header timeout's.
BODY_TIMEOUT = 60.0


@dataclass(frozen=True)
class ApiInfo:
    backend: str
    started: float
    max_jobs: int
    cluster_name: str = "oscar"  # /system/config's name, as the manager's default
    namespace: str = ""  # where services run (kubernetes), in deployment answers
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call (cors.py)


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
        executions: Executions | None = None,
    ) -> None:
        self.info = info
        self.credentials = credentials
        self.store = store
        self.backend = backend
        self.jobs = jobs
        self.intake = intake
        self.buckets = buckets
        self.system = SystemRoutes(self)
        self.services = ServiceRoutes(self)
        self.invocations = InvocationRoutes(self)
        self.job_routes = JobRoutes(self)
        self.bucket_routes = BucketRoutes(self)
        self.deployments = DeploymentRoutes(self)
        # The /run and /job requests and the storage events, for GET /system/logs.
        self.executions = executions or Executions()

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_DEFINITION,
            # OSCAR's manager (gin) redirects a path with a trailing `/` to its route, and
            # OSCAR's clients send some that way (oscar_python asks for `/system/config/`):
            # redirected with a 308, which keeps the method and body, before anything else.
            middlewares=[
                web.normalize_path_middleware(append_slash=False, remove_slash=True),
                self.executions.middleware, errors, self._system_auth, self._bounded_body,
            ],
        )
        setup_cors(app, self.info.cors_origins)  # its preflights first, before any auth
        system, services, calls = self.system, self.services, self.invocations
        jobs, buckets, deployment = self.job_routes, self.bucket_routes, self.deployments
        # Every route, as openapi.yaml lists them (tests/unit/test_openapi.py compares).
        app.add_routes([
            web.get("/health", system.health),
            web.get("/openapi.json", system.openapi),
            web.get("/system/info", system.system_info),
            web.get("/system/config", system.system_config),
            web.get("/system/status", system.system_status),
            web.get("/system/services", services.list_services),
            web.post("/system/services", services.create_service),
            web.put("/system/services", services.update_service),
            web.get("/system/services/{name}", services.read_service),
            web.delete("/system/services/{name}", services.delete_service),
            web.get("/system/services/{name}/deployment", deployment.status),
            web.get("/system/services/{name}/deployment/logs", deployment.logs),
            web.post("/system/services/{name}/stop", deployment.stop),
            web.post("/system/services/{name}/start", deployment.start),
            web.post("/system/services/{name}/restart", deployment.restart),
            web.route("*", "/system/services/{name}/exposed/{tail:.*}", calls.exposed),
            web.route("*", "/system/services/{name}/exposed", calls.exposed),
            web.post("/run/{name}", calls.run),
            web.post("/job/{name}", calls.job),
            web.get("/system/logs", jobs.executions),
            web.get("/system/logs/{name}", jobs.list_jobs),
            web.delete("/system/logs/{name}", jobs.delete_jobs),
            web.get("/system/logs/{name}/{job}", jobs.job_logs),
            web.delete("/system/logs/{name}/{job}", jobs.delete_job),
            web.get("/system/buckets", buckets.list_buckets),
            web.post("/system/buckets", buckets.create_bucket),
            web.put("/system/buckets", buckets.update_bucket),
            web.get("/system/buckets/{bucket}", buckets.read_bucket),
            web.delete("/system/buckets/{bucket}", buckets.delete_bucket),
            web.post("/system/buckets/{bucket}/presign", buckets.presign),
        ])
        app.on_startup.append(calls.open_session)
        # Before the server waits for its handlers, which a WebSocket session holds.
        app.on_shutdown.append(calls.close_sockets)
        app.on_cleanup.append(calls.close_session)
        return app

    @web.middleware
    async def _system_auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # A service's exposed port says for itself who may call it. Known by the route the
        # request matched, never by its path's text: a service or a bucket may be named
        # `exposed-...` (a test of the path once let those through unchecked).
        exposed = request.match_info.handler == self.invocations.exposed
        if request.path.startswith("/system/") and not exposed:
            self.require_admin(request)
        return await handler(request)

    @web.middleware
    async def _bounded_body(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every body the controller reads is bounded by BODY_TIMEOUT (`errors` answers
        the 408). Not those it streams to a service's watchdog (`/run`, an exposed port):
        the watchdog's read_timeout bounds them, and a long upload to a service's own
        server may take what it takes.

        A request with credentials has them checked before its body is read (the
        `/system` routes by _system_auth, `/job` by its route), so only a client that
        holds them may take its time; one without (a Ceph `/job`) has BODY_TIMEOUT for
        all of it: thousands trickling a byte at a time took every file descriptor."""
        calls = self.invocations
        if request.match_info.handler in (calls.run, calls.exposed):
            return await handler(request)
        if "Authorization" in request.headers:
            bound = bounded_body(request, idle=BODY_TIMEOUT)
        else:
            bound = bounded_body(request, deadline=request_started(request) + BODY_TIMEOUT)
        with bound:
            return await handler(request)

    # ---- what the routes share -------------------------------------------------------

    def is_admin(self, request: web.Request) -> bool:
        return self.credentials.check_basic(request.headers.get("Authorization", ""))

    def require_admin(self, request: web.Request) -> None:
        if not self.is_admin(request):
            raise Unauthorized("401 Unauthorized", challenge=True)

    def authorised(self, request: web.Request, service: Service) -> bool:
        """The service's token, or the admin's credentials."""
        token = bearer(request.headers.get("Authorization", ""))
        return token_matches(token, service.token) or self.is_admin(request)

    def service(self, request: web.Request) -> Service:
        """The service the path names (`{name}`), else a 404."""
        service = self.store.service(request.match_info["name"])
        if service is None:
            raise NotFound()
        return service
