"""Schemathesis against a live controller: no 5xx, every answer as the document says.

The operations come from the document in the package (so each is its own pytest test);
a live controller (controller_fixture.py) answers them with basic auth, and the document
it serves at `/openapi.json` is checked to be that same document. Each example's path
parameters are, half the time, the names of a real service, job and bucket, so the
routes are fuzzed beyond their 404s; destructive operations are kept (the real things
are made again before each operation).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from faas_supervisor.controller.openapi import document
from tests.integration.controller_fixture import ControllerFactory, ControllerProcess

pytestmark = pytest.mark.integration

SERVICE = "fuzz-echo"
BUCKET = "fuzz-bucket"
DEFINITION: dict[str, Any] = {
    "name": SERVICE,
    "image": "busybox",
    "script": "echo ok\n",  # succeeds whatever the body: /run's answers are the controller's
    "input": [{"storage_provider": "minio", "path": f"{BUCKET}/in"}],
}


def text_conformance(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """A `text/plain` answer against its documented schema (schemathesis validates JSON
    bodies only), and a 4xx from the controller is a one-line reason."""
    if not response.headers.get("content-type", [""])[0].startswith("text/plain"):
        return None
    documented = document()["paths"][case.operation.path].get(case.method.lower(), {})
    answer = _resolve(documented.get("responses", {}).get(str(response.status_code), {}))
    schema = answer.get("content", {}).get("text/plain", {}).get("schema")
    text = response.content.decode()
    if schema is not None:
        jsonschema.validate(text, schema)
    # A watchdog's error (passed on by /run) is its reason, then the invocation's logs.
    passed_on = case.operation.path == "/run/{name}" or "/exposed" in case.operation.path
    one_line = not (passed_on or case.method == "HEAD")
    if 400 <= response.status_code < 500 and one_line:
        assert text and "\n" not in text.rstrip("\n"), f"not one line: {text!r}"
    return None


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


CHECKS = [
    not_a_server_error,
    text_conformance,
    status_code_conformance,
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    unsupported_method,
    response_headers_conformance,
    response_schema_conformance,
]

schema = schemathesis.openapi.from_dict(
    document(),
    # Valid and invalid data alike; the examples, coverage and fuzzing phases all run.
    config=schemathesis.Config.from_dict({"generation": {"mode": "all"}}),
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProcess]:
    factory = ControllerFactory(tmp_path_factory.mktemp("fuzz"))
    try:  # a controller that never answered is stopped too
        yield factory()
    finally:
        factory.close()


@dataclass
class Real:
    job: str
    # Every other example names the real things. Counted, not drawn: schemathesis runs
    # its coverage phase (boundary and wrong-type values) only for tests without `given`.
    turn: Iterator[int] = field(default_factory=itertools.count)


@pytest.fixture
def real(live: ControllerProcess) -> Real:
    """The real service as defined above, its bucket, and a job of it; made again per test."""
    got = live.request("GET", f"/system/services/{SERVICE}")
    shown = got.json() if got.ok else None
    if shown is None:
        live.create(DEFINITION)
    elif any(shown[k] != v for k, v in DEFINITION.items()) or "api_port" in shown["expose"]:
        # A fuzzed update took its name.
        assert live.request("PUT", "/system/services", json=DEFINITION).status_code == 204
    if live.request("GET", f"/system/buckets/{BUCKET}").status_code == 404:
        assert live.request("POST", "/system/buckets", json={"bucket_name": BUCKET}).ok
    answer = live.request("POST", f"/job/{SERVICE}", data=b"{}")
    assert answer.status_code == 201, answer.text
    return Real(answer.json()["job"])


def test_the_live_controller_serves_the_document(live: ControllerProcess) -> None:
    answer = live.request("GET", "/openapi.json", auth=None)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert answer.json() == document()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("visibility", -52139285140259),  # found by the fuzzer: it was accepted, 201
        ("owner", ["x"]),
        ("allowed_users", [-217706155819161, 207]),
        ("allowed_users", "x"),
        ("metadata", {"a": {}}),
    ],
)
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_bucket_field_of_the_wrong_type_is_a_400(
    live: ControllerProcess, method: str, field: str, value: Any
) -> None:
    body = {"bucket_name": "typed-bucket", field: value}
    answer = live.request(method, "/system/buckets", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.text.startswith(f"{field}: must be"), answer.text
    assert live.request("GET", "/system/buckets/typed-bucket").status_code == 404


def test_a_bucket_body_with_nulls_is_taken(live: ControllerProcess) -> None:
    body = {"bucket_name": "null-fields", "visibility": None, "allowed_users": None}
    assert live.request("POST", "/system/buckets", json=body).status_code == 201
    assert live.request("PUT", "/system/buckets", json=body).status_code == 204


@schema.parametrize()
@settings(
    # Beyond these, the coverage phase (boundaries, wrong types, missing fields) runs in
    # full. By hand: FUZZ_EXAMPLES=100 fuzzes harder (about 2 minutes), FUZZ_RANDOM=1
    # with a new seed each run.
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "10")),
    deadline=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_answer_conforms(
    case: schemathesis.Case, live: ControllerProcess, real: Real
) -> None:
    if next(real.turn) % 2:
        names = {"name": SERVICE, "job": real.job, "bucket": BUCKET}
        for key in case.path_parameters or {}:
            if key in names:
                case.path_parameters[key] = names[key]
    checks = CHECKS
    if "/exposed" in case.path:
        # Proxied whatever the method, QUERY included, which OpenAPI 3.1 cannot name.
        checks = [c for c in CHECKS if c is not unsupported_method]
    if case.path == "/run/{name}" and case.path_parameters["name"] != SERVICE:
        # A service the fuzzer made has a fuzzed script: its failure is a documented 500
        # passed on from its watchdog, not the controller's.
        checks = [c for c in checks if c is not not_a_server_error]
    case.call_and_validate(base_url=live.url, auth=live.auth, checks=checks, timeout=60)
