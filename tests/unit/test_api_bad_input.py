"""What the API answers a request it cannot honour as asked: a 4xx naming the field,
never a 500 nor a storage server's 502, and nothing that grows with what anyone sends.
The real API (folder store, store, intake) on loopback, as test_api_services has it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from faas_supervisor.controller.api import Api
from faas_supervisor.controller.buckets import FolderStore, S3Endpoint
from faas_supervisor.controller.executions import PATH_MAX
from tests.unit.test_api_services import AUTH, FakeBackend, serving


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Api]]:
    async with serving(tmp_path, FakeBackend()) as (client, the_api):
        yield client, the_api


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (r'{"object_key":"a","operation":"upload","content_type":"\udc00"}',
         "content_type: not UTF-8 text"),
        (r'{"object_key":"a","operation":"download","content_type":"\udc00"}',
         "content_type: not UTF-8 text"),
        (r'{"object_key":"a","operation":"upload","extra_headers":{"\udc00":"x"}}',
         "extra_headers: '\\udc00' is not a header name"),
        (r'{"object_key":"a","operation":"upload","extra_headers":{"X-A":"\udc00"}}',
         "extra_headers.X-A: not UTF-8 text"),
        (r'{"object_key":"a","operation":"upload","extra_headers":{"X\r\nInjected":"v"}}',
         "extra_headers: 'X\\r\\nInjected' is not a header name"),
        (r'{"object_key":"a","operation":"upload","extra_headers":{"X A":"v"}}',
         "extra_headers: 'X A' is not a header name"),
        (r'{"object_key":"a","operation":"upload","extra_headers":{"X-A":"v\r\nX-B: w"}}',
         "extra_headers.X-A: holds a control character"),
        (r'{"object_key":"a","operation":"download","content_type":"text/plain\n"}',
         "content_type: holds a control character"),
    ],
)
async def test_a_presign_with_text_no_header_can_carry_is_a_400_naming_it(
    api: tuple[TestClient, Api], monkeypatch: pytest.MonkeyPatch, body: str, field: str
) -> None:
    client, the_api = api
    assert isinstance(the_api.buckets, FolderStore)
    monkeypatch.setattr(the_api.buckets, "endpoint",
                        S3Endpoint("http://127.0.0.1:9000", "key", "secret"))
    made = await client.post("/system/buckets", json={"bucket_name": "psb1"}, headers=AUTH)
    assert made.status == 201
    answer = await client.post("/system/buckets/psb1/presign", data=body.encode(),
                               headers={**AUTH, "Content-Type": "application/json"})
    text = await answer.text()
    assert (answer.status, text[:len(field)]) == (400, field), text
    assert "\n" not in text  # one line


async def test_a_presign_with_plain_headers_is_signed(
    api: tuple[TestClient, Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, the_api = api
    monkeypatch.setattr(the_api.buckets, "endpoint",
                        S3Endpoint("http://127.0.0.1:9000", "key", "secret"))
    await client.post("/system/buckets", json={"bucket_name": "psb1"}, headers=AUTH)
    answer = await client.post(
        "/system/buckets/psb1/presign", headers=AUTH,
        json={"object_key": "a", "operation": "upload", "content_type": "text/plain; q=\té",
              "extra_headers": {"x-amz-meta-owner": "zoé", "X-A": "1"}},
    )
    assert answer.status == 200, await answer.text()
    assert (await answer.json())["headers"] == {
        "Content-Type": "text/plain; q=\té", "X-Amz-Meta-Owner": "zoé", "X-A": "1"
    }


async def test_the_executions_list_keeps_a_bounded_path_whoever_sends_it(
    api: tuple[TestClient, Api],
) -> None:
    client, _ = api
    long_name = "a" * 8000
    assert (await client.post(f"/run/{long_name}")).status == 404
    assert (await client.post(f"/job/{long_name}/x")).status == 404
    assert (await client.post("/system/services", json=_service("svc", "svc/in"),
                              headers=AUTH)).status == 201
    real = "/job/" + "b" * 39  # the longest service name
    assert (await client.post(real)).status == 404
    assert (await client.post("/job/svc")).status == 401  # a real service's: unchanged
    logs = (await (await client.get("/system/logs", headers=AUTH)).json())["logs"]
    paths = [entry["path"] for entry in logs]
    assert paths == [f"/run/{long_name}"[:PATH_MAX] + "…", f"/job/{long_name}"[:PATH_MAX] + "…",
                     real, "/job/svc"]
    assert all(len(entry["raw"]) < 300 for entry in logs)


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("psb9/x", "path: 'psb9/x' is an object, not a folder"),
        ("psb9/x/y", "path: 'psb9/x/y' crosses an object: a folder of it is an object, "
                     "not a folder"),
        ("psb9/x/y/z", "path: 'psb9/x/y/z' crosses an object: a folder of it is an object, "
                       "not a folder"),
    ],
)
async def test_a_service_path_through_an_object_is_a_400_naming_it(
    api: tuple[TestClient, Api], tmp_path: Path, path: str, shown: str
) -> None:
    # As the S3 endpoint answers a key below an object (XMinioParentIsObject: 400).
    client, the_api = api
    assert (await client.post("/system/buckets", json={"bucket_name": "psb9"},
                              headers=AUTH)).status == 201
    (tmp_path / "storage" / "psb9" / "x").write_bytes(b"hello")  # the object psb9/x
    for method in ("POST", "PUT"):
        if method == "PUT":  # an update to such a path alike
            assert (await client.post("/system/services", json=_service("fc9", "psb9/in"),
                                      headers=AUTH)).status == 201
        answer = await client.request(method, "/system/services", json=_service("fc9", path),
                                      headers=AUTH)
        assert (answer.status, await answer.text()) == (400, shown)
    assert (tmp_path / "storage" / "psb9" / "x").read_bytes() == b"hello"
    assert the_api.store.service("fc9") is not None  # the update left it as it was


def _service(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "image": "ok", "script": "echo\n",
            "input": [{"storage_provider": "minio", "path": path}]}
