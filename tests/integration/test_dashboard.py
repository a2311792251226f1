"""What OSCAR's web dashboard needs of the controller (issue 11), on the local backend.

The routes of its deployment and usage pages in the OSCAR manager's shapes (read from its
handlers: pkg/handlers/deployment.go, lifecycle.go, logs.go), `expose`'s zero values,
`/system/config`'s name, and cross-origin calls: their headers over plain HTTP, and what
a real browser (Debian's chromium, driven by Playwright) lets a page of another origin see.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from tests.integration.controller_fixture import (
    ControllerFactory,
    ControllerProcess,
    wait_until,
)
from tests.integration.test_controller import PID_SERVER

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ECHO = 'echo "got: $(cat "$INPUT_FILE_PATH")"\n'
STATUS_KEYS = {"service_name", "state", "reason", "active_instances", "affected_instances",
               "resource_kind"}
GO_DURATION = re.compile(r"\d+(\.\d+)?(ns|µs|ms|s)|(\d+h)?\d+m\d+(\.\d+)?s")


@pytest.fixture(scope="module")
def controllers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerFactory]:
    factory = ControllerFactory(tmp_path_factory.mktemp("dashboard"))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def page_origins() -> Iterator[tuple[str, str]]:
    """Two origins serving the dashboard stand-in: one the controller allows, one not."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    yield tuple(f"http://127.0.0.1:{s.server_address[1]}" for s in servers)  # type: ignore[misc]
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def controller(controllers: ControllerFactory, page_origins: tuple[str, str]) -> ControllerProcess:
    allowed, _ = page_origins
    return controllers(args=["--cors-origin", allowed, "--cluster-name", "lab"])


@pytest.fixture(scope="module")
def plain(controllers: ControllerFactory) -> ControllerProcess:
    """A controller started as before this issue: no --cors-origin, no --cluster-name."""
    return controllers(data_dir=controllers.tmp_path / "plain-data")


def _deployment(controller: ControllerProcess, name: str) -> dict[str, Any]:
    response = controller.request("GET", f"/system/services/{name}/deployment")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    status: dict[str, Any] = response.json()
    return status


def _ready(controller: ControllerProcess, name: str) -> dict[str, Any]:
    return wait_until(  # type: ignore[no-any-return]
        lambda: (s := _deployment(controller, name))["state"] == "ready" and s,
        60, f"the deployment of {name} ready", controller,
    )


# ---- the deployment page -------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_deployment_status_logs_and_lifecycle(controller: ControllerProcess) -> None:
    controller.create({"name": "echo", "script": ECHO})
    controller.create({"name": "web", "script": PID_SERVER, "expose": {"api_port": 8081}})

    # A service that is not exposed: its watchdog serves /run, as a Knative service does.
    status = _ready(controller, "echo")
    assert status == {"service_name": "echo", "state": "ready",
                      "reason": "Runtime service is ready.", "active_instances": 1,
                      "affected_instances": 0, "resource_kind": "knative_service"}
    assert set(status) == STATUS_KEYS  # no namespace on the local backend (omitempty)
    status = _ready(controller, "web")
    assert status["resource_kind"] == "exposed_service"
    assert status["reason"] == "Deployment is ready."
    assert (status["active_instances"], status["affected_instances"]) == (1, 0)

    # The same, as the manager's summary in the service's JSON on request.
    read = controller.request("GET", "/system/services/web", params={"include": "Deployment"})
    assert read.json()["deployment"] == {k: v for k, v in status.items() if k != "service_name"}
    assert list(read.json())[-2:] == ["volume_status", "deployment"]  # the Go struct's order
    listed = controller.request("GET", "/system/services", params={"include": "x,deployment"})
    assert all(s["deployment"]["state"] == "ready" for s in listed.json())
    assert "deployment" not in controller.request("GET", "/system/services/web").json()

    # Its logs: the watchdog's own lines, the last `tailLines`, without times here.
    logs = controller.request("GET", "/system/services/web/deployment/logs").json()
    assert logs["service_name"] == "web" and logs["available"] is True
    assert logs["entries"] and all(set(e) == {"message"} for e in logs["entries"])
    one = controller.request("GET", "/system/services/web/deployment/logs",
                             params={"tailLines": "1", "timestamps": "true"}).json()
    assert one["entries"] == logs["entries"][-1:]

    # stop, start and restart are for exposed services only, as in the manager.
    refused = controller.request("POST", "/system/services/echo/stop")
    assert (refused.status_code, refused.text) == (400, 'service "echo" is not exposed')

    exposed = f"{controller.url}/system/services/web/exposed/"
    first_pid = wait_until(lambda: (r := requests.get(exposed, timeout=30)).ok and r.text, 60,
                           "the exposed service", controller)
    stopped = controller.request("POST", "/system/services/web/stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json() == {"service_name": "web", "state": "stopped",
                              "reason": "Deployment is stopped.", "active_instances": 0,
                              "affected_instances": 0, "resource_kind": "exposed_service"}
    assert requests.get(exposed, timeout=30).status_code == 503
    gone = controller.request("GET", "/system/services/web/deployment/logs").json()
    assert gone == {"service_name": "web", "available": False, "entries": [],
                    "message": "Deployment logs are unavailable for this service."}
    assert controller.request("POST", "/system/services/web/restart").json()["state"] == \
        "stopped"  # as a Deployment of 0 replicas: a restart leaves it stopped

    started = controller.request("POST", "/system/services/web/start")
    assert started.status_code == 200 and started.json()["state"] in ("pending", "ready")
    _ready(controller, "web")
    second_pid = wait_until(lambda: (r := requests.get(exposed, timeout=30)).ok and r.text, 60,
                            "the exposed service started again", controller)
    assert second_pid != first_pid

    assert controller.request("POST", "/system/services/web/restart").status_code == 200
    third_pid = wait_until(
        lambda: (r := requests.get(exposed, timeout=30)).ok and r.text != second_pid and r.text,
        60, "a new server after the restart", controller)
    assert third_pid.isdigit()

    # A server that exits at once: its watchdog never answers, the deployment is pending.
    controller.create({"name": "crash", "script": "#!/bin/sh\nexit 7\n",
                       "expose": {"api_port": 8081}})
    pending = _deployment(controller, "crash")
    assert (pending["state"], pending["active_instances"], pending["affected_instances"]) == (
        "pending", 1, 1)

    for method, path in [("GET", "deployment"), ("GET", "deployment/logs"), ("POST", "stop"),
                         ("POST", "start"), ("POST", "restart")]:
        assert controller.request(method, f"/system/services/nope/{path}").status_code == 404
        assert controller.request(method, f"/system/services/echo/{path}",
                                  auth=None).status_code == 401


# ---- the usage page, expose, config -----------------------------------------------------------


@pytest.mark.timeout(120)
def test_system_logs_lists_the_run_and_job_requests(controller: ControllerProcess) -> None:
    controller.create({"name": "usage", "script": ECHO})
    token = controller.request("GET", "/system/services/usage").json()["token"]
    ran = controller.request("POST", "/run/usage", auth=None, data=b"aGk=",
                             headers={"Authorization": f"Bearer {token}"})
    assert ran.status_code == 200, ran.text
    assert controller.request("POST", "/job/usage", auth=None, data=b"x").status_code == 401
    controller.request("GET", "/system/services")  # not an invocation: not listed

    response = controller.request("GET", "/system/logs")
    assert response.status_code == 200
    logs = [e for e in response.json()["logs"] if e["path"].endswith("/usage")]
    assert [(e["method"], e["path"], e["status"]) for e in logs] == [
        ("POST", "/run/usage", 200), ("POST", "/job/usage", 401)]
    for entry in logs:
        assert set(entry) == {"timestamp", "status", "latency", "client_ip", "method", "path",
                              "user", "raw"}
        assert entry["client_ip"] == "127.0.0.1" and entry["user"] == "oscar"
        assert GO_DURATION.fullmatch(entry["latency"]), entry["latency"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", entry["timestamp"])
        assert entry["raw"] == (
            f"[GIN-EXECUTIONS-LOGGER] {entry['timestamp']} | {entry['status']} | "
            f"{entry['latency']:>13} | 127.0.0.1 | POST    {entry['path']} | oscar")
    assert controller.request("GET", "/system/logs", auth=None).status_code == 401

    # A file dropped into an input folder: listed as the MinIO request OSCAR would get.
    controller.create({"name": "dropped", "script": ECHO,
                       "input": [{"storage_provider": "minio", "path": "dropped/in"}]})
    staged = controller.storage / "dropped" / ".drop.tmp"
    staged.write_bytes(b"hello")
    staged.rename(controller.storage / "dropped" / "in" / "a.txt")
    entry = wait_until(
        lambda: [e for e in controller.request("GET", "/system/logs").json()["logs"]
                 if e["path"] == "/job/dropped"], 60, "the dropped file's job listed", controller)
    assert [(e["status"], e["user"], e["client_ip"]) for e in entry] == [
        (201, "faas-supervisor", "127.0.0.1")]  # the event's principal and address


def test_expose_answers_zero_values_unless_exposed(controller: ControllerProcess) -> None:
    plain = controller.create({"name": "notexposed", "script": ECHO,
                               "expose": {"max_scale": 7, "min_scale": 2}})
    assert plain["expose"] == {"min_scale": 0, "max_scale": 0, "cpu_threshold": 0,
                               "rewrite_target": False, "default_command": False,
                               "set_auth": False, "health_path": ""}
    # What the dashboard sends back on an update is taken as it is.
    assert controller.request("PUT", "/system/services", json=plain).status_code == 204
    exposed = controller.create({"name": "isexposed", "script": PID_SERVER,
                                 "expose": {"api_port": 8081, "max_scale": 3}})
    assert exposed["expose"] == {"min_scale": 1, "max_scale": 3, "api_port": [8081],
                                 "cpu_threshold": 80, "rewrite_target": False,
                                 "default_command": False, "set_auth": False,
                                 "health_path": "/"}
    listed = {s["name"]: s for s in controller.request("GET", "/system/services").json()}
    assert listed["notexposed"]["expose"]["max_scale"] == 0


def test_the_cluster_name_is_oscar_unless_given(
    controller: ControllerProcess, plain: ControllerProcess
) -> None:
    assert plain.request("GET", "/system/config").json()["config"]["name"] == "oscar"
    assert controller.request("GET", "/system/config").json()["config"]["name"] == "lab"


# ---- CORS over plain HTTP ----------------------------------------------------------------------


def _cors(response: requests.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items()
            if k.lower().startswith("access-control-")}


def test_a_preflight_from_an_allowed_origin_is_answered_without_credentials(
    controller: ControllerProcess, page_origins: tuple[str, str]
) -> None:
    allowed, _ = page_origins
    response = requests.options(f"{controller.url}/system/services", timeout=10, headers={
        "Origin": allowed, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-requested-with",
        "Access-Control-Request-Private-Network": "true"})
    assert response.status_code == 204
    headers = _cors(response)
    assert headers["access-control-allow-origin"] == allowed
    assert headers["access-control-allow-credentials"] == "true"
    assert {"GET", "POST", "PUT", "DELETE"} <= {
        m.strip() for m in headers["access-control-allow-methods"].split(",")}
    assert {"authorization", "content-type", "x-requested-with"} <= {
        h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    assert int(headers["access-control-max-age"]) > 0
    assert headers["access-control-allow-private-network"] == "true"  # a public page to loopback
    assert "Origin" in response.headers["Vary"]


def test_every_answer_to_an_allowed_origin_names_it(
    controller: ControllerProcess, page_origins: tuple[str, str]
) -> None:
    allowed, _ = page_origins
    controller.create({"name": "corsrun", "script": ECHO})
    answers = [
        controller.request("GET", "/system/services", headers={"Origin": allowed}),
        controller.request("GET", "/system/services", auth=None, headers={"Origin": allowed}),
        controller.request("GET", "/system/services/nope", headers={"Origin": allowed}),
        controller.request("GET", "/no/such/route", headers={"Origin": allowed}),
        # Streamed by its handler (the watchdog's answer passed on): headers still added.
        controller.request("POST", "/run/corsrun", data=b"aGk=", headers={"Origin": allowed}),
    ]
    assert [a.status_code for a in answers] == [200, 401, 404, 404, 200]
    for answer in answers:
        headers = _cors(answer)
        assert headers["access-control-allow-origin"] == allowed, answer.request.url
        assert headers["access-control-allow-credentials"] == "true"
        assert "www-authenticate" in headers["access-control-expose-headers"].lower()
        assert "Origin" in answer.headers["Vary"]


def test_an_origin_not_allowed_gets_what_it_got_before(
    controller: ControllerProcess, plain: ControllerProcess, page_origins: tuple[str, str]
) -> None:
    _, other = page_origins
    preflight = {"Origin": other, "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    for server in (controller, plain):  # not allowed, and no --cors-origin at all
        response = requests.options(f"{server.url}/system/services", headers=preflight,
                                    timeout=10)
        assert response.status_code == 401  # the admin's routes want credentials, as before
        assert _cors(response) == {}
        got = server.request("GET", "/system/services", headers={"Origin": other})
        assert got.status_code == 200 and _cors(got) == {}


# ---- CORS in a real browser -------------------------------------------------------------------


PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>dashboard stand-in</title></head>
<body><script>
// What the dashboard does: basic auth by header, JSON in and out, from its own origin.
async function call(base, method, path, authorization, body) {
  const init = {method, headers: {}, credentials: "include"};
  if (authorization) init.headers["Authorization"] = authorization;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  try {
    const response = await fetch(base + path, init);
    return {status: response.status, text: await response.text()};
  } catch (error) {
    return {error: String(error)};
  }
}
async function useApi(base, auth, name) {
  const basic = "Basic " + btoa(auth);
  return {
    list: await call(base, "GET", "/system/services", basic),
    create: await call(base, "POST", "/system/services", basic,
                       {name, script: "echo hi\\n"}),
    // A 401 without a challenge: a browser answers a challenge with a login prompt.
    denied: await call(base, "POST", "/run/" + name, "Bearer not-its-token", {}),
  };
}
</script></body></html>
"""


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *_args: Any) -> None:
        pass



def test_the_s3_endpoint_answers_the_same_origins(
    controller: ControllerProcess, page_origins: tuple[str, str]
) -> None:
    """The dashboard's Buckets page calls the S3 endpoint from the browser too: its
    preflights, its S3 answers (a streamed GetObject included) and its errors name the
    allowed origin; another origin gets no Access-Control-* header."""
    allowed, other = page_origins
    s3 = f"http://127.0.0.1:{controller.s3_port}"
    preflight = requests.options(f"{s3}/bucket/key.txt", timeout=10, headers={
        "Origin": allowed, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization,x-amz-date,x-amz-content-sha256"})
    assert preflight.status_code == 204
    assert _cors(preflight)["access-control-allow-origin"] == allowed
    assert {"authorization", "x-amz-date", "x-amz-content-sha256"} <= {
        h.strip().lower() for h in _cors(preflight)["access-control-allow-headers"].split(",")}

    config = controller.request("GET", "/system/config").json()["minio_provider"]
    client = boto3.client(
        "s3", endpoint_url=s3, aws_access_key_id=config["access_key"],
        aws_secret_access_key=config["secret_key"], region_name=config["region"] or "us-east-1")
    client.create_bucket(Bucket="corsbucket")
    client.put_object(Bucket="corsbucket", Key="k.txt", Body=b"browser")
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": "corsbucket", "Key": "k.txt"}, ExpiresIn=60)
    got = requests.get(url, headers={"Origin": allowed}, timeout=10)
    assert (got.status_code, got.content) == (200, b"browser")
    assert _cors(got)["access-control-allow-origin"] == allowed
    assert "etag" in _cors(got)["access-control-expose-headers"].lower()
    refused = requests.get(f"{s3}/corsbucket/k.txt", headers={"Origin": allowed}, timeout=10)
    assert refused.status_code == 403  # unsigned: S3's AccessDenied, origin still named
    assert _cors(refused)["access-control-allow-origin"] == allowed
    assert _cors(requests.get(url, headers={"Origin": other}, timeout=10)) == {}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium (Debian's, driven by Playwright: no download), for this module
    only: while Playwright's sync API is open, its event loop is the thread's running one,
    which the asyncio tests of other modules could not start theirs beside."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "chromium: `make system-deps` installs Debian's package"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def _use_api_from(browser: Any, origin: str, controller: ControllerProcess,
                  name: str) -> dict[str, Any]:
    page = browser.new_page()
    try:
        page.goto(origin + "/", wait_until="load")
        auth = f"{controller.auth[0]}:{controller.auth[1]}"
        result: dict[str, Any] = page.evaluate(
            "([base, auth, name]) => useApi(base, auth, name)", [controller.url, auth, name])
    finally:
        page.close()
    return result


@pytest.mark.timeout(120)
def test_a_page_of_an_allowed_origin_uses_the_api_in_a_browser(
    browser: Any, controller: ControllerProcess, page_origins: tuple[str, str]
) -> None:
    allowed, _ = page_origins
    seen = _use_api_from(browser, allowed, controller, "frombrowser")
    assert seen["list"]["status"] == 200, seen
    assert isinstance(json.loads(seen["list"]["text"]), list)
    assert seen["create"]["status"] == 201, seen  # a preflighted request, JSON and auth
    assert seen["denied"]["status"] == 401, seen  # the page can read the refusal
    assert controller.request("GET", "/system/services/frombrowser").status_code == 200


@pytest.mark.timeout(120)
def test_a_page_of_another_origin_is_blocked_by_the_browser(
    browser: Any, controller: ControllerProcess, page_origins: tuple[str, str]
) -> None:
    _, other = page_origins
    seen = _use_api_from(browser, other, controller, "blocked")
    for call in ("list", "create", "denied"):
        assert "error" in seen[call] and "status" not in seen[call], seen
    # The preflight failed, so the POST was never sent.
    assert controller.request("GET", "/system/services/blocked").status_code == 404
