"""The controller's API over real HTTP on loopback, with a fake backend that can fail.

The real store (SQLite), folder store and intake; only the backend is a fake, so that a
deploy can be made to fail (the local backend never refuses one) or to wait, and what it
was asked recorded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from faas_supervisor.controller.api import Api, ApiInfo
from faas_supervisor.controller.auth import Credentials
from faas_supervisor.controller.buckets import FolderStore, StoredObject
from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.intake import Intake
from faas_supervisor.controller.jobs import Jobs, job_name
from faas_supervisor.controller.notifications import input_paths
from faas_supervisor.controller.routes import services as services_routes
from faas_supervisor.controller.routes.answers import errors
from faas_supervisor.controller.routes.invocations import UpstreamConnector
from faas_supervisor.controller.servers import ServerStores
from faas_supervisor.controller.store import Store
from faas_supervisor.errors import DockerError, InvalidService, NotFound, UpstreamFailed

AUTH = {"Authorization": "Basic " + base64.b64encode(b"admin:secret").decode()}


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.running: dict[str, Service] = {}
        self.refuse: set[str] = set()  # images whose deploy fails
        self.refuse_check: set[str] = set()  # images refused before anything is made
        self.checked: list[str] = []
        self.gate: asyncio.Event | None = None  # when set, deploys wait for it
        self.deploying = asyncio.Event()  # a deploy has begun
        self.remove_gate: asyncio.Event | None = None  # when set, removes wait for it
        self.removing = asyncio.Event()  # a remove has begun
        self.refuse_remove = False
        self.jobs_started: list[str] = []
        self.job_started = asyncio.Event()

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def check(self, service: Service) -> None:
        self.checked.append(service.name)
        if service.image in self.refuse_check:
            raise InvalidService(f"image: {service.image} cannot be found")

    async def deploy(self, service: Service) -> None:
        self.deploying.set()
        if self.gate is not None:
            await self.gate.wait()
        if service.image in self.refuse:
            raise InvalidService(f"image: cannot pull {service.image}")
        self.running[service.name] = service

    async def remove(self, name: str) -> None:
        self.removing.set()
        if self.remove_gate is not None:
            await self.remove_gate.wait()
        if self.refuse_remove:
            raise DockerError("docker: the engine does not answer")
        self.running.pop(name, None)

    async def invoke_url(self, name: str) -> str:
        raise NotImplementedError

    async def run_job(self, service: Service, job: str, event: Path, log: Path) -> int:
        self.jobs_started.append(job)
        self.job_started.set()
        log.write_text("running\n")
        await asyncio.Event().wait()  # until cancelled: a long job
        return 0


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, backend: object) -> AsyncIterator[tuple[TestClient, Api]]:
    """The API with the real store, jobs and intake in front of `backend`, on loopback."""
    buckets = FolderStore(tmp_path / "storage")
    store = Store(tmp_path / "store.sqlite3")
    jobs = Jobs(store, backend, tmp_path / "jobs", 1, store.service)  # type: ignore[arg-type]
    intake = Intake(buckets, store, jobs.submit, "http://127.0.0.1:1")
    the_api = Api(ApiInfo("fake", 0, 1), Credentials("admin", "secret"), store,
                  backend, jobs, intake, buckets)  # type: ignore[arg-type]
    client = TestClient(TestServer(the_api.app()))
    await client.start_server()
    try:
        yield client, the_api
    finally:
        await jobs.close()
        await client.close()
        await intake.close()
        store.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Api, FakeBackend]]:
    backend = FakeBackend()
    async with serving(tmp_path, backend) as (client, the_api):
        yield client, the_api, backend


def definition(name: str = "svc", image: str = "ok", folder: str = "in") -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "script": "echo\n",
        "input": [{"storage_provider": "minio", "path": f"{name}/{folder}"}],
    }


def watched(the_api: Api, name: str) -> list[tuple[str, str]]:
    service = the_api.intake.watcher._services.get(name)
    return [(p.bucket, p.key_prefix) for p in input_paths(service)] if service else []


async def test_a_failed_update_leaves_the_service_as_it_was(
    api: tuple[TestClient, Api, FakeBackend],
) -> None:
    client, the_api, backend = api
    assert (await client.post("/system/services", json=definition(), headers=AUTH)).status == 201
    old = the_api.store.service("svc")
    assert old is not None and watched(the_api, "svc") == [("svc", "in/")]

    backend.refuse.add("broken")
    answer = await client.put("/system/services", headers=AUTH,
                              json=definition(image="broken", folder="elsewhere"))
    assert answer.status == 400
    assert (await answer.text()) == "image: cannot pull broken"
    # The old definition stored, deployed and attached again, the token kept.
    assert the_api.store.service("svc") == old
    assert backend.running["svc"] == old
    assert watched(the_api, "svc") == [("svc", "in/")]

    assert (await client.put("/system/services", json=definition(folder="new"),
                             headers=AUTH)).status == 204
    assert watched(the_api, "svc") == [("svc", "new/")]


async def test_creates_of_one_name_run_one_at_a_time(
    api: tuple[TestClient, Api, FakeBackend],
) -> None:
    client, the_api, backend = api
    backend.gate = asyncio.Event()  # both requests are in the handler before either deploys
    first = asyncio.create_task(client.post("/system/services", json=definition(), headers=AUTH))
    second = asyncio.create_task(client.post("/system/services", json=definition(), headers=AUTH))
    # The first deploys; the second waits on the name's lock (NameLocks counts it).
    await backend.deploying.wait()
    names = the_api.services.names
    async with asyncio.timeout(10):
        while names._locks.get("svc", (None, 0))[1] < 2:
            await asyncio.sleep(0.005)
    backend.gate.set()
    statuses = sorted([(await first).status, (await second).status])
    assert statuses == [201, 409]
    assert watched(the_api, "svc") == [("svc", "in/")]
    assert the_api.services.names._locks == {}  # forgotten once nobody holds them


async def test_a_failed_create_frees_the_name(api: tuple[TestClient, Api, FakeBackend]) -> None:
    client, the_api, backend = api
    backend.refuse.add("broken")
    answer = await client.post("/system/services", json=definition(image="broken"), headers=AUTH)
    assert answer.status == 400
    assert the_api.store.service("svc") is None and watched(the_api, "svc") == []
    assert (await client.post("/system/services", json=definition(), headers=AUTH)).status == 201


@pytest.mark.parametrize("path", ["/system/services", "/system/buckets"])
async def test_deep_json_on_the_admin_routes_is_400(
    api: tuple[TestClient, Api, FakeBackend], path: str
) -> None:
    client, _, _ = api
    answer = await client.post(path, data=b"[" * 100_000 + b"]" * 100_000, headers=AUTH)
    assert answer.status == 400
    assert "\n" not in (await answer.text())


async def test_an_input_fault_deep_in_a_handler_is_400_and_a_bug_is_a_logged_500(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def nested(_request: web.Request) -> web.Response:
        raise RecursionError("maximum recursion depth exceeded")

    async def broken(_request: web.Request) -> web.Response:
        raise KeyError("a bug")

    # The controller's error middleware, on a fresh app (the test server's is frozen).
    app = web.Application(middlewares=[errors])
    app.router.add_get("/nested", nested)
    app.router.add_get("/broken", broken)
    async with TestClient(TestServer(app)) as other:
        answer = await other.get("/nested")
        assert (answer.status, await answer.text()) == (400, "the request is nested too deeply")
        answer = await other.get("/broken")
        assert answer.status == 500
        assert "\n" not in (await answer.text())
    logged = capsys.readouterr()
    assert "a bug" in logged.out + logged.err  # structlog's stream: stdout unless configured


async def test_idle_upstream_connections_are_capped_per_host() -> None:
    """64 requests at once all get through; afterwards at most 8 connections stay open."""
    arrived = 0
    all_in = asyncio.Event()
    open_now: set[object] = set()

    async def slow(request: web.Request) -> web.Response:
        nonlocal arrived
        open_now.add(request.transport)
        arrived += 1
        if arrived == 64:
            all_in.set()
        await all_in.wait()  # every request in flight at once: none waits for another
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", slow)
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession(connector=UpstreamConnector(8)) as session:

            async def one() -> str:
                async with session.get(server.make_url("/")) as answer:
                    return await answer.text()

            assert await asyncio.gather(*(one() for _ in range(64))) == ["ok"] * 64
            for _ in range(200):  # the server sees the closes a moment later
                still = sum(1 for t in open_now if t is not None and not t.is_closing())
                if still <= 8:
                    break
                await asyncio.sleep(0.02)
            assert still == 8, still
    finally:
        await server.close()


SECRET = "http://AKIAKEY:s3cr3t@minio.internal:9000 refused"


def _fail(*_args: Any) -> Any:
    raise ConnectionError(SECRET)


@pytest.mark.parametrize(
    ("method", "path", "body", "call", "shown"),
    [
        ("GET", "/system/buckets", None, "list_buckets", "listing of the buckets"),
        ("GET", "/system/buckets/bkt", None, "bucket_exists", "lookup of bucket bkt"),
        ("POST", "/system/buckets", {"bucket_name": "bkt"}, "create_bucket",
         "creation of bucket bkt"),
        ("POST", "/system/services", definition(), "ensure_path",
         "creation of the buckets of service svc"),
    ],
)
async def test_a_failing_storage_server_is_a_502_that_never_shows_its_message(
    api: tuple[TestClient, Api, FakeBackend],
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    body: Any,
    call: str,
    shown: str,
) -> None:
    # The runtime's policy (errors.storage_failure): what failed and the exception's type.
    # These routes used to forward the SDK's message, which can carry endpoints and keys.
    client, the_api, _ = api
    monkeypatch.setattr(the_api.buckets, call, _fail)
    answer = await client.request(method, path, json=body, headers=AUTH)
    assert answer.status == 502
    assert (await answer.text()) == f"minio.default: {shown} failed (ConnectionError)"


async def test_route_failures_are_answered_by_the_error_table(
    api: tuple[TestClient, Api, FakeBackend],
) -> None:
    client, _, _ = api
    # The admin's routes ask for basic auth, as the manager's do; /run answers aiohttp's text.
    refused = await client.get("/system/services")
    assert (refused.status, await refused.text()) == (401, "401 Unauthorized")
    assert refused.headers["WWW-Authenticate"] == 'Basic realm="Authorization Required"'
    assert (await client.post("/system/services", json=definition(), headers=AUTH)).status == 201
    run = await client.post("/run/svc", data=b"x")
    assert (run.status, await run.text()) == (401, "401: Unauthorized")
    assert "WWW-Authenticate" not in run.headers
    missing = await client.get("/system/services/nope", headers=AUTH)
    assert (missing.status, await missing.text()) == (404, "404: Not Found")
    again = await client.post("/system/buckets", json={"bucket_name": "svc"}, headers=AUTH)
    assert (again.status, await again.text()) == (409, "The bucket 'svc' already exists")
    gone = await client.delete("/system/buckets/other", headers=AUTH)
    assert (gone.status, await gone.text()) == (404, "The bucket 'other' does not exist")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/system/services/exposed-api"),
    ("DELETE", "/system/services/exposed-api"),
    ("GET", "/system/services/exposed-api/deployment"),
    ("POST", "/system/services/exposed-api/restart"),
    ("GET", "/system/logs/exposed-api"),
    ("DELETE", "/system/logs/exposed-api"),
    ("GET", "/system/buckets/exposed-api"),
    ("DELETE", "/system/buckets/exposed-api"),
    ("POST", "/system/buckets/exposed-api/presign"),
])
async def test_a_name_that_starts_with_exposed_still_takes_the_admins_credentials(
    api: tuple[TestClient, Api, FakeBackend], method: str, path: str,
) -> None:
    """Only the exposed routes skip the admin's check: a test of the path's text
    (`/exposed` in it) once let every admin route of such a service or bucket through,
    its token shown, the service and its bucket deleted."""
    client, the_api, _ = api
    assert (await client.post("/system/services", json=definition("exposed-api"),
                              headers=AUTH)).status == 201
    refused = await client.request(method, path, json={"object_key": "k"})
    assert (refused.status, await refused.text()) == (401, "401 Unauthorized")
    assert the_api.store.service("exposed-api") is not None
    assert (await client.get("/system/buckets/exposed-api", headers=AUTH)).status == 200
    # The exposed routes themselves still answer without them (here: not exposed).
    exposed = await client.get("/system/services/exposed-api/exposed/")
    assert exposed.status != 401


async def test_a_delete_the_backend_fails_leaves_the_service_followed_and_its_jobs(
    api: tuple[TestClient, Api, FakeBackend], tmp_path: Path,
) -> None:
    """It answers why; the service stays stored, its inputs followed, its jobs kept. The
    jobs and the intake were once gone first, a service left that no event could reach."""
    client, the_api, backend = api
    await the_api.jobs.start()
    assert (await client.post("/system/services", json=definition(), headers=AUTH)).status == 201
    assert (await client.post("/job/svc", data=b"{}", headers=AUTH)).status == 201
    mode = the_api.intake.mode("svc")
    backend.refuse_remove = True
    answer = await client.delete("/system/services/svc", headers=AUTH)
    assert (answer.status, await answer.text()) == (502, "docker: the engine does not answer")
    assert the_api.store.service("svc") is not None
    assert the_api.intake.mode("svc") == mode
    assert watched(the_api, "svc") == [("svc", "in/")]
    assert len(the_api.store.jobs("svc")) == 1


async def test_a_job_sent_while_its_service_is_deleted_is_refused(
    api: tuple[TestClient, Api, FakeBackend], tmp_path: Path,
) -> None:
    """While the backend removes the service, a job is refused (503), nothing of it
    kept: it was once accepted (201), run for want of a deployment, and dropped. One
    accepted before, running, is stopped and forgotten with the service (it once ran
    on, its files kept, for a service that was gone)."""
    client, the_api, backend = api
    await the_api.jobs.start()
    assert (await client.post("/system/services", json=definition(), headers=AUTH)).status == 201
    accepted = await client.post("/job/svc", data=b"{}", headers=AUTH)
    assert accepted.status == 201
    job = (await accepted.json())["job"]
    await backend.job_started.wait()
    backend.remove_gate = asyncio.Event()
    deleting = asyncio.ensure_future(client.delete("/system/services/svc", headers=AUTH))
    await backend.removing.wait()
    refused = await client.post("/job/svc", data=b"{}", headers=AUTH)
    assert (refused.status, await refused.text()) == (503, "service svc is being deleted")
    assert backend.jobs_started == [job]
    backend.remove_gate.set()
    assert (await deleting).status == 204
    assert the_api.store.job(job) is None and job not in the_api.jobs.running
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == []
    assert (await client.post("/job/svc", data=b"{}", headers=AUTH)).status == 404


async def test_a_job_whose_service_is_gone_when_its_turn_comes_is_dropped(
    api: tuple[TestClient, Api, FakeBackend], tmp_path: Path,
) -> None:
    """Stored after its service was deleted (its event still arriving then): a worker
    forgets it and its files, instead of leaving it Pending for ever."""
    client, the_api, backend = api
    (tmp_path / "jobs").mkdir()  # as jobs.start() makes it; started below
    assert (await client.post("/system/services", json=definition(), headers=AUTH)).status == 201
    service = the_api.store.service("svc")
    assert service is not None
    the_api.store.remove_service("svc")
    # As a store written before submit refused such a job (see the test below) holds it.
    job = job_name("svc")
    the_api.jobs.event_path(job).write_bytes(b"{}")
    assert the_api.store.add_job(job, "svc") is None
    dropped = asyncio.Event()
    delete = the_api.jobs.delete

    async def deleting(name: str) -> None:
        await delete(name)
        dropped.set()

    the_api.jobs.delete = deleting  # type: ignore[method-assign]
    await the_api.jobs.start()
    await asyncio.wait_for(dropped.wait(), 10)  # a bound: it once stayed Pending for ever
    assert the_api.store.job(job) is None
    assert backend.jobs_started == []
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == []


async def test_a_refused_create_or_update_leaves_no_bucket_it_made(
    api: tuple[TestClient, Api, FakeBackend], tmp_path: Path,
) -> None:
    """The buckets a refused request made go with it (they were left behind, listed by
    /system/buckets); a bucket that was there stays, and so does one an object has come
    into meanwhile."""
    client, _, backend = api
    storage = tmp_path / "storage"
    backend.refuse = {"broken"}
    (storage / "shared").mkdir(parents=True)
    shared = definition(image="broken")
    shared["output"] = [{"storage_provider": "minio", "path": "shared/out"}]
    answer = await client.post("/system/services", json=shared, headers=AUTH)
    assert (answer.status, await answer.text()) == (400, "image: cannot pull broken")
    assert sorted(p.name for p in storage.iterdir()) == ["shared"]
    buckets = await (await client.get("/system/buckets", headers=AUTH)).json()
    assert [b["bucket_name"] for b in buckets] == ["shared"]
    # An update refused so: the bucket of its new path goes, the service's own stays.
    assert (await client.post("/system/services", json=definition(), headers=AUTH)).status == 201
    moved = definition(image="broken")
    moved["output"] = [{"storage_provider": "minio", "path": "results/out"}]
    assert (await client.put("/system/services", json=moved, headers=AUTH)).status == 400
    assert sorted(p.name for p in storage.iterdir()) == ["shared", "svc"]
    # An object put into a bucket the request made, before it failed: the bucket stays.
    backend.gate = asyncio.Event()
    backend.deploying.clear()
    creating = asyncio.ensure_future(
        client.post("/system/services", json=definition("other", image="broken"),
                    headers=AUTH))
    await backend.deploying.wait()  # its buckets made
    (storage / "other" / "in" / "upload.txt").write_bytes(b"data")
    backend.gate.set()
    assert (await creating).status == 400
    assert (storage / "other" / "in" / "upload.txt").read_bytes() == b"data"


async def test_a_service_that_does_not_answer_is_a_502_that_hides_its_address(
    api: tuple[TestClient, Api, FakeBackend],
) -> None:
    """The answer names the service and the kind of failure, not the internal address
    aiohttp's message carries (`Cannot connect to host 127.0.0.1:PORT`)."""
    client, _, backend = api
    assert (await client.post("/system/services", json=definition(), headers=AUTH)).status == 201
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]

    async def invoke_url(name: str) -> str:
        return f"http://127.0.0.1:{port}"

    backend.invoke_url = invoke_url  # type: ignore[method-assign]
    try:
        answer = await client.post("/run/svc", data=b"x", headers=AUTH)
    finally:
        closed.close()
    assert (answer.status, await answer.text()) == (
        502, "service svc did not answer (ClientConnectorError)")


async def test_set_auth_takes_the_credentials_oscars_ingress_asks_for(
    api: tuple[TestClient, Api, FakeBackend],
) -> None:
    """User: the service's name, password: its token (the htpasswd line of NAME-auth-
    expose on Kubernetes): the controller's own proxy of an exposed service refused them
    with a 401 (a review found it), so a client worked on one backend only."""
    client, _, backend = api
    service = {**definition(), "expose": {"api_port": 8080, "set_auth": True}}
    created = await client.post("/system/services", json=service, headers=AUTH)
    assert created.status == 201
    token = (await (await client.get("/system/services/svc", headers=AUTH)).json())["token"]

    async def invoke_url(name: str) -> str:
        raise UpstreamFailed("not running")  # past the credentials: a 502

    backend.invoke_url = invoke_url  # type: ignore[method-assign]
    path = "/system/services/svc/exposed/"

    def basic(user: str, password: str) -> dict[str, str]:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}

    for headers in (basic("svc", token), {"Authorization": f"Bearer {token}"}, AUTH):
        assert (await client.get(path, headers=headers)).status == 502
    for headers in (basic("svc", "wrong"), basic("other", token), {}):
        assert (await client.get(path, headers=headers)).status == 401


async def test_a_refused_create_leaves_a_bucket_another_create_uses(
    api: tuple[TestClient, Api, FakeBackend], tmp_path: Path,
) -> None:
    """Two creates at once under two names, one new bucket: the one refused made it, the
    other uses it and is stored; the refusal's clean-up once took it away from under it."""
    client, the_api, backend = api
    backend.refuse = {"broken"}
    backend.gate = asyncio.Event()
    shared = [{"storage_provider": "minio", "path": "shared/in"}]
    refused = {**definition("svca", image="broken"), "input": shared}
    accepted = {**definition("svcb"), "input": shared}
    first = asyncio.ensure_future(client.post("/system/services", json=refused, headers=AUTH))
    await backend.deploying.wait()  # svca made the bucket, and waits in its deploy
    backend.deploying.clear()
    second = asyncio.ensure_future(client.post("/system/services", json=accepted, headers=AUTH))
    await backend.deploying.wait()  # svcb is stored, and waits in its deploy too
    backend.gate.set()
    assert ((await first).status, (await second).status) == (400, 201)
    assert (tmp_path / "storage" / "shared" / "in").is_dir()
    assert the_api.store.service("svcb") is not None


async def test_a_refused_create_leaves_a_bucket_a_create_in_progress_uses(
    api: tuple[TestClient, Api, FakeBackend], tmp_path: Path,
) -> None:
    """As above, the other create not stored yet (between its buckets and its store):
    its claim keeps the bucket (a review found it removed)."""
    client, the_api, backend = api
    backend.refuse = {"broken"}
    backend.gate = asyncio.Event()
    shared = [{"storage_provider": "minio", "path": "shared/in"}]
    attaching, attached = asyncio.Event(), asyncio.Event()
    attach = the_api.intake.attach

    async def slow_attach(service: Service, fallback: bool = False) -> Any:
        if service.name == "svcb":
            attaching.set()
            await attached.wait()
        return await attach(service, fallback)

    the_api.intake.attach = slow_attach  # type: ignore[method-assign]
    first = asyncio.ensure_future(client.post(
        "/system/services", json={**definition("svca", image="broken"), "input": shared},
        headers=AUTH))
    await backend.deploying.wait()  # svca made the bucket, and waits in its deploy
    second = asyncio.ensure_future(client.post(
        "/system/services", json={**definition("svcb"), "input": shared}, headers=AUTH))
    await attaching.wait()  # svcb past its buckets, not stored yet
    backend.gate.set()
    assert (await first).status == 400
    attached.set()
    assert (await second).status == 201
    assert (tmp_path / "storage" / "shared" / "in").is_dir()


async def test_a_job_accepted_during_a_refused_create_goes_with_it(
    api: tuple[TestClient, Api, FakeBackend], tmp_path: Path,
) -> None:
    """The service is stored while its deploy goes on, so a job can be accepted then; a
    deploy refused after that once left the job running, its files kept."""
    client, the_api, backend = api
    await the_api.jobs.start()
    backend.refuse = {"broken"}
    backend.gate = asyncio.Event()
    creating = asyncio.ensure_future(
        client.post("/system/services", json=definition(image="broken"), headers=AUTH))
    await backend.deploying.wait()
    accepted = await client.post("/job/svc", data=b"{}", headers=AUTH)
    assert accepted.status == 201
    job = (await accepted.json())["job"]
    await backend.job_started.wait()
    backend.gate.set()
    assert (await creating).status == 400
    assert the_api.store.job(job) is None and job not in the_api.jobs.running
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == []


async def test_a_service_the_backend_refuses_is_never_stored(
    api: tuple[TestClient, Api, FakeBackend],
) -> None:
    """Checked before it is stored or its buckets made (an image Docker cannot find, an
    object the API server refuses in its dry run): nothing of it to be seen, meanwhile
    or after; an update refused so leaves the old definition alone."""
    client, the_api, backend = api
    backend.refuse_check = {"missing"}
    adds: list[str] = []
    add = the_api.store.add_service
    the_api.store.add_service = lambda s: (adds.append(s.name), add(s))[1]  # type: ignore[method-assign]
    answer = await client.post("/system/services", json=definition(image="missing"),
                               headers=AUTH)
    assert answer.status == 400
    assert "image: missing cannot be found" in await answer.text()
    assert (adds, backend.checked, backend.running) == ([], ["svc"], {})
    assert not (the_api.buckets.root / "svc").exists()  # no bucket made either

    assert (await client.post("/system/services", json=definition(), headers=AUTH)).status == 201
    refused = await client.put("/system/services", json=definition(image="missing"),
                               headers=AUTH)
    assert refused.status == 400
    assert the_api.store.service("svc").image == "ok"  # type: ignore[union-attr]
    assert backend.running["svc"].image == "ok"


async def test_a_route_asked_with_a_trailing_slash_is_redirected_to_it(
    api: tuple[TestClient, Api, FakeBackend],
) -> None:
    # oscar_python's storage client asks for `/system/config/`; OSCAR's manager redirects.
    client, the_api, _backend = api
    moved = await client.get("/system/config/", headers=AUTH, allow_redirects=False)
    assert moved.status == 308 and moved.headers["Location"] == "/system/config"
    assert (await client.get("/system/config/", headers=AUTH)).status == 200
    # A 308 keeps the method and the body: the create goes through.
    assert (await client.post("/system/services/", json=definition(), headers=AUTH)).status == 201
    assert the_api.store.service("svc") is not None
    moved = await client.get("/system/services/svc/?x=1", headers=AUTH, allow_redirects=False)
    assert moved.status == 308 and moved.headers["Location"] == "/system/services/svc?x=1"
    # A path no route has, slash or not, is still a 404.
    assert (await client.get("/system/nothing/", headers=AUTH)).status == 404


@pytest.mark.parametrize(("value", "everything"), [
    ("t", True), ("T", True), ("1", True), ("True", True), ("TRUE", True), ("true", True),
    ("false", False), ("f", False), ("tRuE", False), ("yes", False),
])
async def test_deleting_a_services_jobs_reads_all_as_the_manager_does(
    api: tuple[TestClient, Api, FakeBackend], tmp_path: Path, value: str, everything: bool,
) -> None:
    """`?all=`: Go's strconv.ParseBool, an error being false; without it only finished jobs go."""
    client, the_api, _backend = api
    (tmp_path / "jobs").mkdir()  # as jobs.start() makes it; not started: the job stays Pending
    assert (await client.post("/system/services", json=definition(), headers=AUTH)).status == 201
    service = the_api.store.service("svc")
    assert service is not None
    job, _new = await the_api.jobs.submit(service, b"{}")
    answer = await client.delete(f"/system/logs/svc?all={value}", headers=AUTH)
    assert answer.status == 204
    assert (the_api.store.job(job) is None) is everything


async def test_a_job_whose_service_is_deleted_while_its_event_comes_in_is_a_404(
    api: tuple[TestClient, Api, FakeBackend], tmp_path: Path,
) -> None:
    """Its body still arriving when the delete ends: once a 201 for a job never run, and
    its object's row kept, so the same event to a service made again under the name was
    a 200 naming that dead job."""
    client, the_api, _backend = api
    (tmp_path / "jobs").mkdir()  # as jobs.start() makes it
    assert (await client.post("/system/services", json=definition(), headers=AUTH)).status == 201
    event = json.dumps({"Records": [{
        "eventSource": "minio:s3", "eventTime": "2026-12-01T00:00:00Z",
        "s3": {"bucket": {"name": "in"}, "object": {"key": "f.txt", "eTag": "abc"}},
    }]}).encode()
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_event() -> AsyncIterator[bytes]:
        yield event[:10]
        started.set()
        await release.wait()
        yield event[10:]

    service = the_api.store.service("svc")
    assert service is not None
    submitting = asyncio.ensure_future(the_api.jobs.submit(service, slow_event()))
    await started.wait()
    assert (await client.delete("/system/services/svc", headers=AUTH)).status == 204
    release.set()
    with pytest.raises(NotFound):
        await submitting
    assert the_api.store.jobs("svc") == [] and list((tmp_path / "jobs").iterdir()) == []
    # Made again: the same event is a new job.
    assert (await client.post("/system/services", json=definition(), headers=AUTH)).status == 201
    answer = await client.post("/job/svc", data=event, headers=AUTH)
    assert answer.status == 201, await answer.text()


async def test_an_own_server_that_refuses_to_list_is_a_502_naming_it(
    api: tuple[TestClient, Api, FakeBackend], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """The input path on the service's own provider its server refuses to list: the 502
    names that provider and the listing, not the default one's notifications."""
    client, the_api, _ = api

    class Refusing(FolderStore):
        def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
            raise PermissionError("AccessDenied at http://user:pw@ext.invalid")

    ext = Refusing(tmp_path / "ext")
    monkeypatch.setattr(services_routes, "provider_store", lambda settings: ext)
    the_api.intake.servers = ServerStores(lambda access: ext)  # type: ignore[arg-type]
    service = definition("e")
    service["input"] = [{"storage_provider": "minio.ext", "path": "ein/input"}]
    service["storage_providers"] = {"minio": {"ext": {
        "endpoint": "http://ext.invalid", "access_key": "AK", "secret_key": "SK"}}}
    service["input"].insert(0, {"storage_provider": "minio", "path": "din/input"})
    answer = await client.post("/system/services", json=service, headers=AUTH)
    assert (answer.status, await answer.text()) == (
        502, "minio.ext: listing of the input path ein/input/ of service e failed "
        "(PermissionError)")
    # Nothing is left of it: the default input path listed before the refusal is not
    # recorded as listed, so a later create of the name takes its baseline anew (a review
    # found that object put in between got a job).
    assert not the_api.store.db.execute(
        "SELECT * FROM listed_paths WHERE service = 'e'").fetchall()
