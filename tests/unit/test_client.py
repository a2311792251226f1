"""`faas-supervisor service ...` against a fake controller that records what it was sent.

The fake is a small aiohttp app on loopback, in its own thread and event loop, playing
the controller's routes (SPEC 7.2); the client runs in-process through `cli.main`, as a
user would call it. `/run` decodes base64 as it arrives and echoes the bytes back
base64-encoded, both streamed, so that a multi-megabyte file goes through for real.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import os
import stat
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from faas_supervisor import cli
from faas_supervisor.base64_stream import Base64Decoder
from faas_supervisor.client import table
from faas_supervisor.controller.fdl import (
    fdl_definitions,
    load_fdl,
    parse_service,
    script_text,
)
from faas_supervisor.errors import InvalidService, NotBase64
from faas_supervisor.progress import Progress
from faas_supervisor.transfer import looks_like_base64

USER, PASSWORD = "oscar", "s3cret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
TOKEN = "a" * 64


@dataclass
class Sent:
    method: str
    path: str
    headers: dict[str, str]
    raw_path: str = ""
    body: bytes = b""
    decoded_sha256: str = ""
    decoded_size: int = 0
    chunked: bool = False


@dataclass
class FakeController:
    url: str = ""
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    logs: dict[tuple[str, str], str] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    # What `/run/{name}` answers for a service: "echo" (base64 of the input), or a
    # (status, content type, body) to send as it is.
    run_answers: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    pages: bool = False
    # The record of the request being served, for its handler to complete.
    by_request: dict[int, Sent] = field(default_factory=dict)

    def requests(self, method: str, path: str) -> list[Sent]:
        return [s for s in self.sent if s.method == method and s.path == path]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.record])
        app.router.add_get("/system/services", self.list_services)
        app.router.add_post("/system/services", self.create)
        app.router.add_put("/system/services", self.update)
        app.router.add_get("/system/services/{name}", self.get_service)
        app.router.add_delete("/system/services/{name}", self.delete)
        app.router.add_post("/run/{name}", self.run)
        app.router.add_post("/job/{name}", self.job)
        app.router.add_get("/system/logs/{name}", self.list_jobs)
        app.router.add_get("/system/logs/{name}/{job}", self.job_logs)
        return app

    @web.middleware
    async def record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        sent = Sent(request.method, request.path, dict(request.headers), request.raw_path,
                    chunked=request.headers.get("Transfer-Encoding") == "chunked")
        self.sent.append(sent)
        self.by_request[id(request)] = sent
        try:
            return await self._authorized(request, handler)
        finally:
            del self.by_request[id(request)]

    async def _authorized(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(("/run/", "/job/")):
            if request.headers.get("Authorization") not in (BASIC, f"Bearer {TOKEN}"):
                return web.Response(status=401, text="invalid token")
        elif request.headers.get("Authorization") != BASIC:
            return web.Response(status=401, text="Unauthorized")
        return await handler(request)

    def _service(self, request: web.Request) -> dict[str, Any]:
        name = request.match_info["name"]
        if name not in self.services:
            raise web.HTTPNotFound(text=f"The service \"{name}\" is not found")
        return self.services[name]

    async def list_services(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.services.values()))

    async def create(self, request: web.Request) -> web.Response:
        service = await request.json()
        self.by_request[id(request)].body = json.dumps(service).encode()
        if service["name"] in self.services:
            return web.Response(status=409, text="The service already exists")
        self.services[service["name"]] = {**service, "token": TOKEN}
        return web.Response(status=201)

    async def update(self, request: web.Request) -> web.Response:
        service = await request.json()
        self.by_request[id(request)].body = json.dumps(service).encode()
        self.services[service["name"]] = {**service, "token": TOKEN}
        return web.Response(status=204)

    async def get_service(self, request: web.Request) -> web.Response:
        return web.json_response(self._service(request))

    async def delete(self, request: web.Request) -> web.Response:
        self._service(request)
        del self.services[request.match_info["name"]]
        return web.Response(status=204)

    async def _decode(self, request: web.Request) -> bytearray:
        """Decode base64 as it arrives; hash it; keep it only when small."""
        sent: Sent = self.by_request[id(request)]
        digest = hashlib.sha256()
        kept = bytearray()
        pending = b""
        async for chunk in request.content.iter_any():
            data = pending + chunk
            usable = len(data) - len(data) % 4
            block, pending = data[:usable], data[usable:]
            decoded = binascii.a2b_base64(block, strict_mode=True) if block else b""
            digest.update(decoded)
            sent.decoded_size += len(decoded)
            if len(kept) < 4096:
                kept += decoded
        assert not pending, "the client sent base64 cut short"
        sent.decoded_sha256 = digest.hexdigest()
        return kept

    async def run(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self._service(request)
        if name in self.run_answers:
            await self._decode(request)
            status, content_type, body = self.run_answers[name]
            return web.Response(status=status, body=body, content_type=content_type)
        # Echo, streaming: decode each piece and send it back encoded, whole 3-byte
        # groups at a time, so that neither side ever holds the file.
        sent: Sent = self.by_request[id(request)]
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        digest = hashlib.sha256()
        pending = rest = b""
        async for chunk in request.content.iter_any():
            data = pending + chunk
            usable = len(data) - len(data) % 4
            block, pending = data[:usable], data[usable:]
            decoded = binascii.a2b_base64(block, strict_mode=True) if block else b""
            digest.update(decoded)
            sent.decoded_size += len(decoded)
            out = rest + decoded
            whole = len(out) - len(out) % 3
            rest = out[whole:]
            if whole:
                await response.write(base64.b64encode(out[:whole]))
        sent.decoded_sha256 = digest.hexdigest()
        await response.write(base64.b64encode(rest) + b"\n")
        await response.write_eof()
        return response

    async def job(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self._service(request)
        await self._decode(request)
        job = f"{name}-job-{len(self.jobs.get(name, {})) + 1}"
        self.jobs.setdefault(name, {})[job] = {
            "status": "Pending", "creation_time": "2024-05-01T10:00:00Z",
            "start_time": None, "finish_time": None,
        }
        return web.json_response({"job": job}, status=201)

    async def list_jobs(self, request: web.Request) -> web.Response:
        jobs = self.jobs.get(self._service(request)["name"], {})
        if not self.pages:
            return web.json_response({"jobs": jobs})
        # Two pages, as an OSCAR manager with many jobs answers.
        names = sorted(jobs)
        if request.query.get("page") == "2":
            return web.json_response({"jobs": {n: jobs[n] for n in names[1:]}})
        return web.json_response({"jobs": {n: jobs[n] for n in names[:1]}, "next_page": "2"})

    async def job_logs(self, request: web.Request) -> web.Response:
        key = (request.match_info["name"], request.match_info["job"])
        if key not in self.logs:
            raise web.HTTPNotFound(text="job not found")
        return web.Response(text=self.logs[key])


@pytest.fixture
def fake() -> Iterator[FakeController]:
    """The fake controller on a free loopback port, served from its own thread."""
    controller = FakeController()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(controller.app())

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        controller.url = f"http://127.0.0.1:{port}"

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield controller
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAAS_ENDPOINT", "FAAS_USER", "FAAS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Result:
    status: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode()


@pytest.fixture
def faas(fake: FakeController, capsysbinary: pytest.CaptureFixture[bytes]) -> Any:
    def call(*args: str, auth: bool = True) -> Result:
        flags = ["--endpoint", fake.url]
        if auth:
            flags += ["--user", USER, "--password", PASSWORD]
        argv = ["service", *args[:1], *flags, *args[1:]]
        try:
            status = cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            status = int(exc.code or 0)
        captured = capsysbinary.readouterr()
        return Result(status, captured.out, captured.err.decode())
    return call


COWSAY = Path(__file__).resolve().parents[2] / "examples" / "cowsay"


def write_fdl(folder: Path, script: str = "script.sh", extra: str = "") -> Path:
    (folder / "script.sh").write_text("#!/bin/sh\necho hello\n")
    fdl = folder / "fdl.yaml"
    fdl.write_text(f"""
functions:
  oscar:
  - my-cluster:
      name: cowsay
      image: ghcr.io/grycap/cowsay
      cpu: '0.5'
      memory: 256Mi
      script: {script}
      storage_providers:
        minio: {{own: {{endpoint: http://own:9000, access_key: a, secret_key: b}}}}
  - other:
      name: plants
      image: plants:1
      script: |
        #!/bin/sh
        cat "$INPUT_FILE_PATH"
{extra}""")
    return fdl


# apply


def test_apply_creates_then_updates(faas: Any, fake: FakeController, tmp_path: Path) -> None:
    fdl = write_fdl(tmp_path, extra="""storage_providers:
  minio: {default: {endpoint: http://shared:9000, access_key: x, secret_key: y}}
""")
    result = faas("apply", "-f", str(fdl))
    assert result.status == 0, result.err
    assert result.text == 'Created service "cowsay"\nCreated service "plants"\n'
    posted = [json.loads(s.body) for s in fake.requests("POST", "/system/services")]
    assert [s["name"] for s in posted] == ["cowsay", "plants"]
    # The script path is read relative to the FDL file; the text form is kept as it is.
    assert posted[0]["script"] == "#!/bin/sh\necho hello\n"
    assert posted[1]["script"] == '#!/bin/sh\ncat "$INPUT_FILE_PATH"\n'
    assert posted[0]["cluster_id"] == "my-cluster"
    # The top-level providers go to every service; the service's own stay.
    assert set(posted[0]["storage_providers"]["minio"]) == {"default", "own"}
    assert set(posted[1]["storage_providers"]["minio"]) == {"default"}
    assert all(s.headers["Authorization"] == BASIC for s in fake.sent)

    again = faas("apply", "-f", str(fdl))
    assert again.status == 0, again.err
    assert again.text == 'Updated service "cowsay"\nUpdated service "plants"\n'
    assert len(fake.requests("PUT", "/system/services")) == 2


def test_apply_bad_fdl_is_a_usage_error(faas: Any, fake: FakeController, tmp_path: Path) -> None:
    missing = write_fdl(tmp_path, script="missing.sh")
    result = faas("apply", "-f", str(missing))
    assert result.status == 2
    assert "functions.oscar[0].my-cluster.script" in result.err and "no such file" in result.err
    assert result.err.count("\n") == 1
    (tmp_path / "bad.yaml").write_text("functions: [oops")
    assert faas("apply", "-f", str(tmp_path / "bad.yaml")).status == 2
    (tmp_path / "empty.yaml").write_text("functions: {oscar: []}\n")
    assert "functions.oscar" in faas("apply", "-f", str(tmp_path / "empty.yaml")).err
    assert faas("apply", "-f", str(tmp_path / "none.yaml")).status == 2
    assert fake.sent == []


def test_apply_reports_the_servers_refusal(faas: Any, fake: FakeController,
                                           tmp_path: Path) -> None:
    result = faas("apply", "-f", str(write_fdl(tmp_path)), auth=False)
    assert result.status == 1
    assert result.err.startswith("faas-supervisor: error: POST /system/services: 401 Unauthorized: "
                                 "Unauthorized")
    assert "FAAS_USER" in result.err
    assert result.err.count("\n") == 1


def test_script_text_rules(tmp_path: Path) -> None:
    (tmp_path / "s.sh").write_text("echo file\n")
    assert script_text("s.sh", tmp_path, "x") == "echo file\n"
    assert script_text("echo hi", tmp_path, "x") == "echo hi"
    assert script_text("#!/bin/sh\necho hi\n", tmp_path, "x") == "#!/bin/sh\necho hi\n"
    for bad in ("nope.sh", "dir/nope", 42, ""):
        with pytest.raises(InvalidService):
            script_text(bad, tmp_path, "x")


def test_read_fdl_keeps_unknown_fields(tmp_path: Path) -> None:
    fdl = write_fdl(tmp_path)
    services = [definition for _, definition in fdl_definitions(fdl)]
    assert services[0]["image"] == "ghcr.io/grycap/cowsay"
    assert services[0]["cpu"] == "0.5"


def test_apply_sends_what_the_controller_reads_from_the_same_file(
    faas: Any, fake: FakeController, tmp_path: Path
) -> None:
    """One FDL reader: the definitions `service apply` sends are, validated, the
    services `manifests -f` (load_fdl) makes of the file."""
    fdl = write_fdl(tmp_path, extra="""storage_providers:
  minio: {default: {endpoint: http://shared:9000, access_key: x, secret_key: y}}
""")
    assert faas("apply", "-f", str(fdl)).status == 0
    posted = [json.loads(s.body) for s in fake.requests("POST", "/system/services")]
    assert [parse_service(p, yaml_scalars=True) for p in posted] == load_fdl(fdl)


# list, get, delete


def test_list_is_a_table(faas: Any, fake: FakeController) -> None:
    assert faas("list").text == "There are no services\n"
    fake.services = {
        "b-long-name": {"name": "b-long-name", "image": "img:2", "cpu": "1", "memory": "1Gi"},
        "a": {"name": "a", "image": "ghcr.io/x/a:latest", "cpu": "0.5", "memory": "256Mi"},
    }
    result = faas("list")
    assert result.status == 0
    assert result.text.splitlines() == [
        "NAME         IMAGE               CPU  MEMORY",
        "a            ghcr.io/x/a:latest  0.5  256Mi",
        "b-long-name  img:2               1    1Gi",
    ]


def test_get_prints_the_json(faas: Any, fake: FakeController) -> None:
    fake.services["cowsay"] = {"name": "cowsay", "token": TOKEN, "labels": {"oscar_service": "c"}}
    result = faas("get", "cowsay")
    assert result.status == 0
    assert json.loads(result.out) == fake.services["cowsay"]
    assert result.text.startswith('{\n  "name": "cowsay",')
    missing = faas("get", "nope")
    assert missing.status == 1
    assert missing.err == ("faas-supervisor: error: GET /system/services/nope: 404 Not Found: "
                           "The service \"nope\" is not found\n")


def test_names_are_quoted_into_one_path_segment(faas: Any, fake: FakeController) -> None:
    assert faas("get", "../run/x").status == 1
    assert fake.sent[-1].raw_path == "/system/services/..%2Frun%2Fx"
    assert fake.sent[-1].headers.get("Authorization") == BASIC


def test_delete(faas: Any, fake: FakeController) -> None:
    fake.services = {"a": {"name": "a"}, "b": {"name": "b"}}
    result = faas("delete", "a", "b")
    assert result.status == 0
    assert result.text == 'Deleted service "a"\nDeleted service "b"\n'
    assert fake.services == {}
    again = faas("delete", "a")
    assert again.status == 1 and "DELETE /system/services/a: 404" in again.err


# run


def test_run_text_input_uses_the_service_token(faas: Any, fake: FakeController) -> None:
    fake.services["echo"] = {"name": "echo", "token": TOKEN}
    result = faas("run", "echo", "--text-input", "héllo")
    assert result.status == 0, result.err
    assert result.out == "héllo".encode()
    (get,) = fake.requests("GET", "/system/services/echo")
    assert get.headers["Authorization"] == BASIC
    (run,) = fake.requests("POST", "/run/echo")
    assert run.headers["Authorization"] == f"Bearer {TOKEN}"
    assert run.decoded_sha256 == hashlib.sha256("héllo".encode()).hexdigest()
    # Not octet-stream: the watchdog would take the base64 text as the raw input.
    assert run.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_run_with_a_given_token_needs_no_credentials(faas: Any, fake: FakeController) -> None:
    fake.services["echo"] = {"name": "echo", "token": TOKEN}
    result = faas("run", "echo", "--text-input", "x", "--token", TOKEN, auth=False)
    assert result.status == 0, result.err
    assert result.out == b"x"
    assert [s.path for s in fake.sent] == ["/run/echo"]


def test_run_without_a_token_in_the_service_uses_basic_auth(faas: Any,
                                                             fake: FakeController) -> None:
    fake.services["echo"] = {"name": "echo"}
    assert faas("run", "echo", "--text-input", "x").out == b"x"
    assert fake.requests("POST", "/run/echo")[0].headers["Authorization"] == BASIC


def test_run_streams_a_large_file_both_ways(faas: Any, fake: FakeController,
                                            tmp_path: Path) -> None:
    fake.services["echo"] = {"name": "echo", "token": TOKEN}
    source = tmp_path / "big.bin"
    size = 24 << 20
    with source.open("wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    f_sha = hashlib.sha256(source.read_bytes()).hexdigest()
    out = tmp_path / "out" / "result.bin"
    out.parent.mkdir()
    tracemalloc.start()
    try:
        result = faas("run", "echo", "--input", str(source), "--output", str(out))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == 0, result.err
    assert result.out == b""
    (run,) = fake.requests("POST", "/run/echo")
    assert run.chunked, "the request body was not streamed"
    assert "Content-Length" not in run.headers
    assert run.decoded_size == size and run.decoded_sha256 == f_sha
    assert hashlib.sha256(out.read_bytes()).hexdigest() == f_sha
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind
    # Client and fake together, in this process: far below the file's size (base64 of the
    # whole file would be 32 MiB each way).
    assert peak < 12 << 20, f"peak traced memory {peak >> 20} MiB"


def test_run_prints_a_plain_text_answer_as_it_is(faas: Any, fake: FakeController) -> None:
    fake.services["cow"] = {"name": "cow", "token": TOKEN}
    text = b" -----\n< moo >\n -----\n        \\   ^__^\n"
    fake.run_answers["cow"] = (200, "text/plain", text)
    assert faas("run", "cow", "--text-input", '{"message": "moo"}').out == text
    # Short text that is not base64 (its length here) stays text too...
    fake.run_answers["cow"] = (200, "text/plain", b"ok\n")
    assert faas("run", "cow", "--text-input", "x").out == b"ok\n"
    # ...but text that happens to be valid base64 is decoded: the answer does not say
    # which it is (oscar-cli reads it the same way).
    fake.run_answers["cow"] = (200, "text/plain", b"Done")
    assert faas("run", "cow", "--text-input", "x").out == base64.b64decode(b"Done")


def test_run_raw_answers_are_not_decoded(faas: Any, fake: FakeController,
                                         tmp_path: Path) -> None:
    fake.services["zip"] = {"name": "zip", "token": TOKEN}
    fake.run_answers["zip"] = (200, "application/zip", b"PK\x03\x04abcd")
    out = tmp_path / "r.zip"
    assert faas("run", "zip", "--text-input", "x", "-o", str(out)).status == 0
    assert out.read_bytes() == b"PK\x03\x04abcd"
    # The mode a new file gets here (0666 less the umask): it was mkstemp's 0600.
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    # A file replaced keeps its own mode, a private one too (as a shell's `>`).
    out.chmod(0o600)
    assert faas("run", "zip", "--text-input", "x", "-o", str(out)).status == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_run_failure_is_one_line_and_writes_no_output(faas: Any, fake: FakeController,
                                                      tmp_path: Path) -> None:
    fake.services["bad"] = {"name": "bad", "token": TOKEN}
    fake.run_answers["bad"] = (500, "text/plain",
                               b"the script exited with status 3\nlog line 1\nlog line 2\n")
    out = tmp_path / "result"
    result = faas("run", "bad", "--text-input", "x", "--output", str(out))
    assert result.status == 1
    assert result.err == ("faas-supervisor: error: POST /run/bad: 500 Internal Server Error: "
                          "the script exited with status 3\n")
    assert list(tmp_path.iterdir()) == []


def test_run_broken_base64_after_a_good_head_is_an_error(faas: Any, fake: FakeController,
                                                         tmp_path: Path) -> None:
    fake.services["half"] = {"name": "half", "token": TOKEN}
    body = base64.b64encode(b"x" * (3 << 20)) + b"\n<not base64>\n"
    fake.run_answers["half"] = (200, "text/plain", body)
    result = faas("run", "half", "--text-input", "x", "--output", str(tmp_path / "r"))
    assert result.status == 1
    assert "POST /run/half: the result is not valid base64" in result.err
    assert list(tmp_path.iterdir()) == []


def test_run_usage_errors(faas: Any, fake: FakeController, tmp_path: Path) -> None:
    assert faas("run", "x").status == 2
    assert faas("run", "x", "--input", "a", "--text-input", "b").status == 2
    fake.services["x"] = {"name": "x", "token": TOKEN}
    missing = faas("run", "x", "--input", str(tmp_path / "nope"))
    assert missing.status == 2
    assert missing.err.endswith("No such file or directory\n")
    assert faas("run", "unknown", "--text-input", "x").status == 1
    for output in (tmp_path, tmp_path / "no" / "such"):
        bad = faas("run", "x", "--text-input", "x", "-o", str(output))
        assert bad.status == 2 and "--output" in bad.err
    assert fake.requests("POST", "/run/x") == []


def test_unreachable_controller(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status = cli.main(["service", "list", "--endpoint", "http://127.0.0.1:9"])
    err = capsysbinary.readouterr().err.decode()
    assert status == 1
    assert err.startswith("faas-supervisor: error: GET /system/services: cannot reach "
                          "http://127.0.0.1:9: ")
    assert cli.main(["service", "list", "--endpoint", "ftp://x"]) == 2


def test_credentials_in_the_endpoint_are_used_and_never_shown(
        fake: FakeController, capsysbinary: pytest.CaptureFixture[bytes],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`http://user:password@host`: taken as --user and --password; a message names the
    URL without them (it showed the password), and with --password too it is one line,
    exit 2 (it was aiohttp's traceback)."""
    host = fake.url.split("://", 1)[1]
    assert cli.main(["service", "list", "--endpoint", f"http://{USER}:{PASSWORD}@{host}"]) == 0
    assert fake.sent[-1].headers["Authorization"] == BASIC
    capsysbinary.readouterr()
    assert cli.main(["service", "list", "--endpoint", "http://alice:S3cretPW@127.0.0.1:9"]) == 1
    assert cli.main(["service", "list", "--endpoint", "ftp://alice:S3cretPW@h"]) == 2
    # A password with `/` or `#`, which a URL parser takes for the host's end, and no
    # scheme at all (a review found these shown).
    assert cli.main(["service", "list", "--endpoint", "http://alice:S3c/re#tPW@127.0.0.1:9"]
                    ) == 1
    assert cli.main(["service", "list", "--endpoint", "alice:S3cretPW@127.0.0.1:9"]) == 2
    monkeypatch.setenv("FAAS_PASSWORD", "x")
    assert cli.main(["service", "list", "--endpoint", f"http://alice:S3cretPW@{host}"]) == 2
    err = capsysbinary.readouterr().err.decode()
    assert "S3cretPW" not in err and "S3c/re#tPW" not in err and "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"faas-supervisor: error: --endpoint http://{host}: has credentials of its own, and "
        "--user or --password (or FAAS_USER, FAAS_PASSWORD) are given too: give them one way")
    assert "cannot reach http://127.0.0.1:9: " in err


def test_endpoint_and_credentials_from_the_environment(
        fake: FakeController, monkeypatch: pytest.MonkeyPatch,
        capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    monkeypatch.setenv("FAAS_ENDPOINT", fake.url + "/")
    monkeypatch.setenv("FAAS_USER", USER)
    monkeypatch.setenv("FAAS_PASSWORD", PASSWORD)
    assert cli.main(["service", "list"]) == 0
    assert fake.sent[-1].headers["Authorization"] == BASIC
    # Flags win over the environment.
    assert cli.main(["service", "list", "--password", "wrong"]) == 1
    assert "401" in capsysbinary.readouterr().err.decode()


# job, logs


def test_job_prints_the_job_name(faas: Any, fake: FakeController, tmp_path: Path) -> None:
    fake.services["cowsay"] = {"name": "cowsay", "token": TOKEN}
    event = tmp_path / "event.json"
    event.write_text('{"message": "hi"}')
    result = faas("job", "cowsay", "--input", str(event))
    assert result.status == 0, result.err
    assert result.text == "cowsay-job-1\n"
    (job,) = fake.requests("POST", "/job/cowsay")
    assert job.headers["Authorization"] == f"Bearer {TOKEN}"
    assert job.decoded_sha256 == hashlib.sha256(event.read_bytes()).hexdigest()
    assert job.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert faas("job", "nope", "--input", str(event)).status == 1


def test_logs_lists_jobs_and_prints_one(faas: Any, fake: FakeController) -> None:
    fake.services["s"] = {"name": "s"}
    assert faas("logs", "s").text == 'Service "s" has no jobs\n'
    fake.jobs["s"] = {
        "s-late": {"status": "Running", "creation_time": "2024-05-01T10:05:00Z",
                   "start_time": "2024-05-01T10:05:02Z", "finish_time": None},
        "s-early": {"status": "Succeeded", "creation_time": "2024-05-01T10:00:00Z",
                    "start_time": "2024-05-01T10:00:01Z", "finish_time": "2024-05-01T10:00:09Z"},
    }
    expected = [
        "JOB NAME  STATUS     CREATION TIME        START TIME           FINISH TIME",
        "s-early   Succeeded  2024-05-01 10:00:00  2024-05-01 10:00:01  2024-05-01 10:00:09",
        "s-late    Running    2024-05-01 10:05:00  2024-05-01 10:05:02",
    ]
    assert faas("logs", "s").text.splitlines() == expected
    fake.pages = True
    assert faas("logs", "s").text.splitlines() == expected
    assert fake.sent[-1].raw_path == "/system/logs/s?page=2"

    fake.logs[("s", "s-early")] = "line 1\nline 2"
    assert faas("logs", "s", "s-early").text == "line 1\nline 2\n"
    missing = faas("logs", "s", "nope")
    assert missing.status == 1
    assert "GET /system/logs/s/nope: 404 Not Found: job not found" in missing.err


# pieces


def test_table_has_no_trailing_blanks() -> None:
    assert table(["A", "BB"], [["xyz", ""]]) == "A    BB\nxyz"


def test_a_tables_cells_are_escaped_where_they_would_not_print() -> None:
    assert table(["NAME", "SIZE"], [["a\x1b[2J b\nc", "1"]]) == (
        "NAME           SIZE\na\\x1b[2J b\\nc  1")


@pytest.mark.parametrize(("head", "complete", "expected"), [
    (b"aGVsbG8=", True, True),
    (b"aGVs\nbG8=\n", True, True),
    (b"aGVsbG8", True, False),  # cut short
    (b"aGVsbG8", False, True),  # more to come
    (b"< moo >", True, False),
    (b"", True, False),
    (b"ab=c", False, False),
])
def test_looks_like_base64(head: bytes, complete: bool, expected: bool) -> None:
    assert looks_like_base64(head, complete) is expected


def test_decoder_in_odd_pieces() -> None:
    data = os.urandom(1000)
    text = base64.encodebytes(data)  # with newlines every 76 characters
    decoder = Base64Decoder()
    out = b"".join(decoder.feed(text[i:i + 7]) for i in range(0, len(text), 7))
    decoder.finish()
    assert out == data
    with pytest.raises(NotBase64):
        Base64Decoder().feed(b"aGk=aGk=")
    short = Base64Decoder()
    short.feed(b"aGVsb")
    with pytest.raises(NotBase64):
        short.finish()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_only_on_a_terminal_and_for_large_transfers() -> None:
    terminal = _Terminal()
    bar = Progress("sending", 4 << 20, stream=terminal)
    for _ in range(4):
        bar.update(1 << 20)
    bar.close()
    drawn = terminal.getvalue()
    assert "sending [" in drawn and "100%" in drawn and "4.0 MiB/4.0 MiB" in drawn
    assert drawn.endswith("\n")

    small = _Terminal()
    bar = Progress("sending", 1000, stream=small)
    bar.update(1000)
    bar.close()
    assert small.getvalue() == ""

    piped = io.StringIO()
    bar = Progress("receiving", None, stream=piped)
    bar.update(8 << 20)
    bar.close()
    assert piped.getvalue() == ""

    unknown = _Terminal()
    bar = Progress("receiving", None, stream=unknown)
    bar.update(100)
    assert unknown.getvalue() == ""  # not large yet
    bar.update(2 << 20)
    bar.close()
    assert "receiving 2.0 MiB" in unknown.getvalue()
