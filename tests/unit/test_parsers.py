"""Parsers: every event kind of SPEC 6.1, and no input that makes them raise anything else.

Properties (hypothesis): any JSON value and any byte string read as a body end as an
Event or one of our FaasError subclasses, never another exception; keys that would leave
the input folder are refused while parsing. Then one test per example event in
tests/fixtures/events/ (copied from the project's shared fixtures).
"""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faas_supervisor.errors import BadEvent, FaasError
from faas_supervisor.parsers import recognise
from faas_supervisor.parsers.body import read_body
from faas_supervisor.parsers.event import Event, GatewayBody, StorageObject

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"
MAX_SIZE = 8 << 20


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def read(data: bytes, content_type: str = "", chunk: int = 1 << 16) -> Event:
    """read_body over `data`, in a folder of its own (hypothesis runs many examples)."""
    with tempfile.TemporaryDirectory() as folder:
        return asyncio.run(
            read_body(_chunks(data, max(chunk, 1)), content_type=content_type,
                      input_dir=Path(folder), max_size=MAX_SIZE)
        )


def read_json(value: Any) -> Event:
    return read(json.dumps(value).encode())


def check_object(obj: StorageObject) -> None:
    """What every StorageObject guarantees, whatever the event said."""
    assert obj.name not in ("", ".", "..")
    assert "/" not in obj.name and "\x00" not in obj.name
    assert len(obj.name.encode()) <= 255
    for text in (obj.key, obj.bucket, obj.event_time, obj.provider):
        text.encode()  # no lone surrogates: these go into file names and execve
        assert "\x00" not in text


def outcome(function: Any, *args: Any) -> Any:
    """The value, or the FaasError; any other exception fails the test."""
    try:
        return function(*args)
    except FaasError as exc:
        assert exc.message and "\n" not in exc.message
        return exc


# ---- properties ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
# Text that hits the interesting cases of keys more often than st.text() alone.
key_text = st.text(max_size=40) | st.sampled_from(
    ["..", ".", "", "/", "a/..", "a/../..", "%2E%2E", "a%2F..", "x%00y", "\x00", "\ud800",
     "a" * 300, "input/a+b%2Bc.txt", "input/p%2Fq é.txt", "/abs/path", "dir/"]
)
field_value = key_text | json_values
DCACHE_FLAGS = ["IN_CREATE", "IN_MOVED_TO", "IN_CLOSE_WRITE", "IN_ISDIR"]
sources = st.sampled_from(["minio:s3", "aws:s3", "ceph:s3", "OneTrigger", "other"]) | st.text()


@st.composite
def s3_like_events(draw: st.DrawFn) -> Any:
    """Events shaped like storage events, with fields missing, mistyped or hostile."""
    record: dict[str, Any] = {"eventSource": draw(sources)}
    if draw(st.booleans()):
        record["eventTime"] = draw(field_value)
    s3: dict[str, Any] = {}
    if draw(st.booleans()):
        s3["bucket"] = {"name": draw(field_value)} if draw(st.booleans()) else draw(json_values)
    if draw(st.booleans()):
        s3["object"] = {"key": draw(field_value)} if draw(st.booleans()) else draw(json_values)
    if draw(st.booleans()):
        record["s3"] = s3
    event: dict[str, Any] = {"Records": [record]}
    if draw(st.booleans()):
        event["Key"] = draw(field_value)
    return event


@st.composite
def envelopes(draw: st.DrawFn) -> Any:
    inner = draw(s3_like_events() | json_values)
    kind = draw(st.sampled_from(["delegated", "dcache", "gateway"]))
    if kind == "delegated":
        return {"event": inner, "storage_provider": draw(field_value)}
    if kind == "dcache":
        event = {"name": draw(field_value)} if draw(st.booleans()) else draw(json_values)
        if isinstance(event, dict) and draw(st.booleans()):
            event["mask"] = draw(st.lists(st.sampled_from(DCACHE_FLAGS), max_size=3)
                                 | json_values)
        return {"event": event, "subscription": draw(field_value)}
    body: Any = json.dumps(inner)
    encoded = draw(st.booleans())
    if encoded:
        body = base64.b64encode(body.encode()).decode()
    if draw(st.booleans()):
        body = draw(field_value)
    return {"httpMethod": "POST", "body": body, "isBase64Encoded": encoded,
            "headers": draw(st.none() | st.dictionaries(st.sampled_from(
                ["Content-Type", "content-type", "Host"]),
                st.sampled_from(["application/octet-stream", "application/json", ""])))}


any_event = json_values | s3_like_events() | envelopes()
fast = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(any_event)
def test_recognise_any_json_value(value: Any) -> None:
    found = outcome(recognise, value)
    assert found is None or isinstance(found, StorageObject | GatewayBody | BadEvent)
    if isinstance(found, StorageObject):
        check_object(found)


@fast
@given(any_event)
def test_read_any_json_value_as_a_body(value: Any) -> None:
    found = outcome(read_json, value)
    assert isinstance(found, Event | FaasError)
    if isinstance(found, Event) and found.storage is not None:
        check_object(found.storage)


@fast
@given(st.binary(max_size=512), st.sampled_from(["", "application/octet-stream", "text/plain"]),
       st.integers(min_value=1, max_value=64))
def test_read_any_bytes(data: bytes, content_type: str, chunk: int) -> None:
    found = outcome(read, data, content_type, chunk)
    assert isinstance(found, Event | FaasError)


@fast
@given(st.binary(max_size=256), st.integers(min_value=1, max_value=64))
def test_read_any_bytes_behind_json_or_base64_starts(data: bytes, chunk: int) -> None:
    # The first byte decides the path in read_body: exercise each path with any tail.
    for start in (b"{", b"[", b'"', b"-", b"  ", b"QUJD", b"\n"):
        found = outcome(read, start + data, "", chunk)
        assert isinstance(found, Event | FaasError)


@fast
@given(key_text)
def test_a_key_is_refused_or_names_a_file_in_the_input_folder(key: str) -> None:
    for source in ("minio:s3", "aws:s3", "ceph:s3"):
        event = {"Records": [{"eventSource": source,
                              "s3": {"bucket": {"name": "b"}, "object": {"key": key}}}]}
        found = outcome(recognise, event)
        assert isinstance(found, StorageObject | BadEvent)
        if isinstance(found, StorageObject):
            check_object(found)


# ---- keys as each server writes them ---------------------------------------------------


def s3_event(source: str, key: str, bucket: str = "plants") -> dict[str, Any]:
    return {"Records": [{"eventSource": source, "eventTime": "2026-01-01T00:00:00Z",
                         "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]}


@pytest.mark.parametrize(("source", "sent", "key"), [
    ("minio:s3", "input%2Fmy+dog%2Bcat.jpg", "input/my dog+cat.jpg"),
    ("aws:s3", "input/my+dog%2Bcat.jpg", "input/my dog+cat.jpg"),
    ("aws:s3", "input/%C3%A9t%C3%A9.txt", "input/été.txt"),
    ("ceph:s3", "input/p%2Fq é+r.txt", "input/p%2Fq é+r.txt"),  # RGW sends keys as they are
])
def test_keys_are_read_as_each_server_writes_them(source: str, sent: str, key: str) -> None:
    found = recognise(s3_event(source, sent))
    assert isinstance(found, StorageObject)
    assert found.key == key
    assert found.provider == ("s3.default" if source == "aws:s3" else "minio.default")


@pytest.mark.parametrize(("source", "key"), [("minio:s3", "in/%FF.txt"), ("aws:s3", "in/%C3.txt")])
def test_a_key_whose_encoding_is_not_utf_8_is_refused(source: str, key: str) -> None:
    """It was read with U+FFFD in place of the bytes: another object than the event's
    (`in/\ufffd.txt` may exist), or a 'cannot read' storage failure (exit 3)."""
    with pytest.raises(BadEvent) as refused:
        recognise(s3_event(source, key))
    assert refused.value.message == (
        f"event field Records[0].s3.object.key {key!r} is not URL-encoded UTF-8")


@pytest.mark.parametrize(("source", "key"), [
    ("minio:s3", "input%2F.."), ("minio:s3", "%2E%2E"), ("aws:s3", "a/.."), ("ceph:s3", ".."),
    ("minio:s3", "a%00b"), ("ceph:s3", "a\x00b"), ("aws:s3", ""), ("ceph:s3", "input/"),
    ("ceph:s3", "x" * 256),
])
def test_keys_that_would_leave_the_input_folder_are_refused(source: str, key: str) -> None:
    with pytest.raises(BadEvent, match=r"object key|contains NUL|base name"):
        recognise(s3_event(source, key))


@pytest.mark.parametrize(("event", "field"), [
    ({"Records": [{"eventSource": "minio:s3"}]}, "Records[0].s3"),
    ({"Records": [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "b"}}}]},
     "Records[0].s3.object"),
    ({"Records": [{"eventSource": "ceph:s3", "s3": {"object": {"key": "k"}}}]},
     "Records[0].s3.bucket"),
    ({"Records": [{"eventSource": "ceph:s3",
                   "s3": {"bucket": {"name": "b"}, "object": {"key": 7}}}]},
     "Records[0].s3.object.key"),
    ({"Records": [{"eventSource": "OneTrigger"}]}, "Key"),
    ({"event": {"mask": []}, "subscription": "x"}, "event.name"),
    ({"event": {"name": 1}, "subscription": "x"}, "event.name"),
    ({"event": s3_event("minio:s3", "k"), "storage_provider": 3}, "storage_provider"),
    ({"event": {"x": 1}, "storage_provider": "minio.r"}, "event"),
    ({"httpMethod": "POST", "body": 12}, "body"),
    ({"httpMethod": "POST", "body": "not base64!", "isBase64Encoded": True}, "body"),
])
def test_a_recognised_event_missing_a_field_names_it(event: Any, field: str) -> None:
    with pytest.raises(BadEvent) as raised:
        recognise(event)
    assert field in raised.value.message
    assert isinstance(outcome(read_json, event), BadEvent)


def test_plain_json_that_is_not_an_event_is_left_alone() -> None:
    values: list[Any] = [{"Records": [{"eventSource": "something:else"}]}, {"Records": []},
                         {"event": {"name": "x"}}, {"message": "hello"}, [1, 2], "text", None]
    for value in values:
        assert recognise(value) is None
        assert read_json(value).kind == "json"


def test_delegation_wraps_one_storage_event_only() -> None:
    inner = {"event": s3_event("minio:s3", "k"), "storage_provider": "minio.a"}
    with pytest.raises(BadEvent, match="event field event"):
        recognise({"event": inner, "storage_provider": "minio.b"})
    found = recognise({"event": s3_event("ceph:s3", "in/k"), "storage_provider": "minio"})
    assert isinstance(found, StorageObject)
    assert found.provider == "minio.default"  # `minio` alone is `minio.default`


def test_an_api_gateway_body_that_is_a_storage_event_is_that_event() -> None:
    inner = json.dumps(s3_event("minio:s3", "input%2Fa+b.txt"))
    for body, encoded in ((inner, False), (base64.b64encode(inner.encode()).decode(), True)):
        envelope = {"httpMethod": "POST", "body": body, "isBase64Encoded": encoded}
        event = read_json(envelope)
        assert event.kind == "storage"
        assert event.storage is not None and event.storage.key == "input/a b.txt"
        assert event.text is not None and json.loads(event.text) == envelope  # EVENT


def test_an_api_gateway_request_without_a_body_is_empty() -> None:
    event = read_json({"httpMethod": "GET", "body": None})
    assert event.kind == "empty"
    assert event.text is not None and json.loads(event.text) == {"httpMethod": "GET", "body": None}


# ---- one test per example event --------------------------------------------------------


def test_fixture_minio() -> None:
    event = read_json(fixture("minio.json"))
    assert event.kind == "storage" and event.storage is not None
    assert event.storage == StorageObject("minio.default", "plants", "input/rose+red.jpg",
                                          "2026-11-24T10:23:44.000Z")
    assert event.storage.name == "rose+red.jpg"
    assert event.text is not None and json.loads(event.text) == fixture("minio.json")


def test_fixture_s3() -> None:
    event = read_json(fixture("s3.json"))
    assert event.storage == StorageObject("s3.default", "darknet-bucket", "input/my dog.jpg",
                                          "2026-11-24T11:40:46.473Z")


def test_fixture_ceph() -> None:
    event = read_json(fixture("ceph.json"))
    assert event.storage == StorageObject("minio.default", "plants", "input/leaf.png",
                                          "2026-11-24T12:00:01.123456Z")


def test_fixture_onedata() -> None:
    event = read_json(fixture("onedata.json"))
    # The space is the key's first segment; the provider is chosen at stage-in.
    assert event.storage == StorageObject("onedata.*", "my-onedata-space", "files/sample.txt",
                                          "2026-11-24T09:51:04.347823")
    assert event.storage.name == "sample.txt"


def test_fixture_dcache() -> None:
    event = read_json(fixture("dcache.json"))
    # Relative to the `input` path of webdav.dcache, joined at stage-in.
    assert event.storage == StorageObject("webdav.dcache", "", "image2.jpg",
                                          under_input_path=True)


@pytest.mark.parametrize("flags", [["IN_CREATE", "IN_ISDIR"], ["IN_MOVED_TO", "IN_ISDIR"]])
def test_a_dcache_event_for_a_folder_is_refused(flags: list[str]) -> None:
    """A folder made in (or moved into) the watched folder is no file to stage in: it was
    downloaded as one, a GET on a WebDAV collection."""
    event = {"event": {"name": "run-42", "mask": flags},
             "subscription": fixture("dcache.json")["subscription"]}
    with pytest.raises(BadEvent, match=r"^event names the folder 'run-42' \(event\.mask has "
                                        r"IN_ISDIR\): only a file can be staged in$"):
        read_json(event)


@pytest.mark.parametrize("mask", ["IN_CREATE|IN_ISDIR", {"IN_ISDIR": True}, [256]])
def test_a_dcache_mask_that_is_not_a_list_of_flag_names_is_refused(mask: Any) -> None:
    event = {"event": {"name": "x.txt", "mask": mask}, "subscription": "https://d/x"}
    with pytest.raises(BadEvent, match=r"^event field event\.mask is not a list of flag names$"):
        read_json(event)


@pytest.mark.parametrize("event", [{"name": "x.txt", "mask": ["IN_MOVED_TO"]},
                                   {"name": "x.txt", "mask": []}, {"name": "x.txt"}])
def test_a_dcache_event_for_a_file_is_still_a_file(event: dict[str, Any]) -> None:
    found = read_json({"event": event, "subscription": "https://d/x"})
    assert found.storage == StorageObject("webdav.dcache", "", "x.txt", under_input_path=True)


@fast
@given(key_text, st.lists(st.sampled_from(DCACHE_FLAGS), max_size=4))
def test_a_dcache_event_names_a_file_to_stage_in_only_without_in_isdir(
    name: str, flags: list[str]
) -> None:
    found = outcome(recognise, {"event": {"name": name, "mask": flags},
                                "subscription": "https://d/x"})
    assert isinstance(found, BadEvent if "IN_ISDIR" in flags else StorageObject | BadEvent)


def test_fixture_delegated() -> None:
    event = read_json(fixture("delegated.json"))
    assert event.storage == StorageObject("minio.replica1", "plants", "input/fern.jpg",
                                          "2026-11-24T13:05:00.000Z", delegated=True)


def test_a_delegated_event_of_json_text_is_read_as_the_nested_one() -> None:
    """The OSCAR manager sends the inner event as JSON text (a Go string)."""
    event = fixture("delegated.json")
    event["event"] = json.dumps(event["event"])
    assert read_json(event).storage == read_json(fixture("delegated.json")).storage
    for bad in ("{", "[]", '"text"', "{}"):
        with pytest.raises(BadEvent, match=r"^event field event is not a storage event$"):
            recognise({"storage_provider": "minio.x", "event": bad})


def test_fixture_rucio() -> None:
    event = read_json(fixture("rucio.json"))
    # A message Rucio recorded (a dataset closed), as its Hermes daemon sends it.
    assert event.kind == "storage"
    assert event.storage == StorageObject("rucio.default", "test", "ds1",
                                          "2026-11-30 18:23:57.146489")


def test_fixture_apigateway() -> None:
    with tempfile.TemporaryDirectory() as folder:
        event = asyncio.run(read_body(_chunks((FIXTURES / "apigateway.json").read_bytes(), 100),
                                      content_type="application/json", input_dir=Path(folder),
                                      max_size=MAX_SIZE))
        # Its Content-Type is application/octet-stream: the decoded bytes, raw.
        assert event.kind == "raw"
        assert event.input_file is not None
        assert event.input_file.read_bytes() == b"hello from the gateway"
        # EVENT is the envelope as received (SPEC 4.1: the raw event text).
        assert event.text == (FIXTURES / "apigateway.json").read_text()


def test_every_fixture_has_its_test() -> None:
    tested = {name.removeprefix("test_fixture_") + ".json" for name in globals()
              if name.startswith("test_fixture_")}
    assert {p.name for p in FIXTURES.glob("*.json")} == tested
