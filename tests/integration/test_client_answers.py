"""`faas-supervisor service ...` given JSON answers of another shape than the call reads:
one line and exit 1, as for an answer that is not JSON (they were Python tracebacks:
`AttributeError: 'int' object has no attribute 'get'`). The real client, as a subprocess,
against a small aiohttp server on loopback that answers what each case says."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.integration.conftest import faas_command, served

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# path -> the JSON it answers; a test sets it before running the client. RAW: path -> the
# answer's text as it is (JSON that Python's json.dumps could not write).
ANSWERS: dict[str, Any] = {}
RAW: dict[str, str] = {}


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.Response:
        if request.path in RAW:
            return web.Response(text=RAW[request.path], content_type="application/json")
        if request.path not in ANSWERS:
            return web.json_response({"message": "not found"}, status=404)
        return web.Response(text=json.dumps(ANSWERS[request.path]),
                            content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    try:
        async with served(app) as url:
            yield url
    finally:
        ANSWERS.clear()
        RAW.clear()


def run_client(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_")}
    env.update({"FAAS_ENDPOINT": endpoint, "FAAS_PASSWORD": "x"})
    return subprocess.run([*faas_command(), "service", *args], env=env, text=True,
                          capture_output=True, timeout=60, check=False)


SHAPES = [
    (["list"], "/system/services", {"a": 1},
     "GET /system/services: the answer is not a list of services: it is an object"),
    (["list"], "/system/services", [5],
     "GET /system/services: the answer is not a list of services: item 0 is a number"),
    (["list"], "/system/services", "x",
     "GET /system/services: the answer is not a list of services: it is a string"),
    (["logs", "foo"], "/system/logs/foo", {"jobs": [1]},
     "GET /system/logs/foo: the answer is not a map of jobs: `jobs` is a list"),
    (["logs", "foo"], "/system/logs/foo", [1],
     "GET /system/logs/foo: the answer is not a map of jobs: it is a list"),
    (["get", "foo"], "/system/services/foo", [1],
     "GET /system/services/foo: the answer is not a service: it is a list"),
    (["run", "foo", "--text-input", "x"], "/system/services/foo", 7,
     "GET /system/services/foo: the answer is not a service: it is a number"),
]
# A service whose providers of a type are not a map of ids (put-file, get-file and
# list-files read them): as a service that defines none, one line, exit 2.
PROVIDERS = [{"s3": [1]}, {"s3": "x"}, {"s3": {"a": 1}}, [1]]


@pytest.mark.parametrize("providers", PROVIDERS, ids=[json.dumps(p) for p in PROVIDERS])
async def test_a_service_whose_providers_are_of_another_shape_is_one_line(
        server: str, providers: Any) -> None:
    ANSWERS["/system/services/foo"] = {"name": "foo", "storage_providers": providers}
    result = await asyncio.to_thread(run_client, server, "list-files", "foo", "s3.a", "b/")
    assert (result.returncode, result.stdout, result.stderr) == (
        2, "", "faas-supervisor: error: service foo defines no storage provider s3.a\n")


@pytest.mark.parametrize(("args", "path", "value", "message"), SHAPES,
                         ids=[f"{a[0]}-{json.dumps(v)}" for a, _, v, _ in SHAPES])
async def test_an_answer_of_another_shape_is_one_line(
        server: str, args: list[str], path: str, value: Any, message: str) -> None:
    ANSWERS[path] = value
    # In a thread: the server answers from this test's event loop meanwhile.
    result = await asyncio.to_thread(run_client, server, *args)
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", f"faas-supervisor: error: {message}\n")


async def test_answers_of_the_expected_shape_still_read(server: str) -> None:
    # null is Go's empty list; a job that is not an object is left out, as before.
    ANSWERS["/system/services"] = None
    ANSWERS["/system/logs/foo"] = {"jobs": {"j1": {"status": "Succeeded"}, "j2": 3}}
    listed = await asyncio.to_thread(run_client, server, "list")
    assert (listed.returncode, listed.stdout) == (0, "There are no services\n"), listed.stderr
    logs = await asyncio.to_thread(run_client, server, "logs", "foo")
    assert logs.returncode == 0, logs.stderr
    assert [line.split()[:2] for line in logs.stdout.splitlines()[1:]] == [["j1", "Succeeded"]]


async def test_an_answer_nested_deeper_than_the_parser_goes_is_one_line(server: str) -> None:
    """Valid JSON 100 000 lists deep: a RecursionError traceback (a review of 77f93e3)."""
    RAW["/system/services"] = "[" * 100_000 + "]" * 100_000
    result = await asyncio.to_thread(run_client, server, "list")
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", "faas-supervisor: error: GET /system/services: the answer is nested too "
        "deeply\n")


async def test_a_job_name_that_is_not_text_is_not_printed(server: str) -> None:
    """`{"job": ["a", "b"]}` printed `['a', 'b']` as the job's name."""
    ANSWERS["/system/services/foo"] = {"name": "foo", "token": "t"}
    ANSWERS["/job/foo"] = {"job": ["a", "b"]}
    result = await asyncio.to_thread(run_client, server, "job", "foo", "--text-input", "x")
    assert (result.returncode, result.stdout) == (0, ""), result.stderr


async def test_a_provider_endpoint_that_is_not_text_is_one_line(server: str) -> None:
    """`minio_provider.endpoint: ["x"]` in /system/config: a ValueError traceback."""
    ANSWERS["/system/services/foo"] = {"name": "foo"}
    ANSWERS["/system/config"] = {"minio_provider": {"endpoint": ["x"]}}
    result = await asyncio.to_thread(run_client, server, "list-files", "foo", "minio", "b/")
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", "faas-supervisor: error: storage provider minio.default: its endpoint in "
        "the controller's answer is not text\n")
