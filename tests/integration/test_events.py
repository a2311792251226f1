"""Storage events end to end, against real S3 servers (SPEC 4.1, 5, 6.1, 6.3).

moto's S3 server stands in for MinIO, Amazon S3 and Ceph (events built in each server's
own key encoding), through both front ends: the watchdog (the event POSTed) and
`faas-supervisor run` (the event on standard input and in EVENT). Then a real Ceph RGW
pushes its own bucket notifications to a watchdog, keys with spaces, `+` and `%`.

Each test uses buckets of its own on the session's servers.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import uuid
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
import requests
import yaml

from tests.integration.ceph import CephRgw
from tests.integration.conftest import S3Server, WatchdogFactory, faas_command, free_port
from tests.integration.servers import start_wsgidav

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MiB = 1 << 20

# What the script saw, under result/<hash of the key>/, and a copy of its input. The
# hash keeps output names plain whatever the key holds.
SCRIPT = r"""
set -e
h=$(printf %s "$STORAGE_OBJECT_KEY" | sha256sum | cut -c1-16)
mkdir -p "$TMP_OUTPUT_DIR/result/$h"
printf %s "$STORAGE_OBJECT_KEY" > "$TMP_OUTPUT_DIR/result/$h/key.txt"
printf %s "$STORAGE_BUCKET" > "$TMP_OUTPUT_DIR/result/$h/bucket.txt"
printf %s "$EVENT" > "$TMP_OUTPUT_DIR/result/$h/event.json"
sha256sum < "$INPUT_FILE_PATH" | cut -c1-64 > "$TMP_OUTPUT_DIR/result/$h/input.sha256"
printf %s "$(basename "$INPUT_FILE_PATH")" > "$TMP_OUTPUT_DIR/result/$h/name.txt"
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/copy-$h.bin"
echo "processed $STORAGE_OBJECT_KEY"
"""

KEYS = ["input/my dog+cat.bin", "input/100% real/a b+c%2Bd é.bin"]


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def new_bucket() -> str:
    return f"ev-{uuid.uuid4().hex[:12]}"


def sent_key(source: str, key: str) -> str:
    """The key as each server writes it in its events (SPEC 6.1)."""
    if source == "minio:s3":
        return quote_plus(key, safe="")  # `/` too, as MinIO's url.QueryEscape
    if source == "aws:s3":
        return quote_plus(key, safe="/")
    return key  # ceph:s3: as it is


def storage_event(source: str, bucket: str, key: str) -> dict[str, Any]:
    return {"Records": [{
        "eventVersion": "2.2", "eventSource": source, "eventTime": "2026-11-26T10:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0",
               "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": sent_key(source, key), "size": 0}},
    }]}


def provider(server: S3Server | CephRgw) -> dict[str, str]:
    return {"endpoint": server.endpoint, "access_key": server.access_key,
            "secret_key": server.secret_key, "region": server.region}


def config_for(server: S3Server | CephRgw, bucket: str, out_bucket: str, **extra: Any) -> str:
    config: dict[str, Any] = {
        "name": "events",
        "log_level": "INFO",
        "storage_providers": {"minio": {"default": provider(server)},
                              "s3": {"default": provider(server)}},
        # Both providers are the same server: MinIO/Ceph events name minio.default, Amazon
        # S3 events s3.default, and a service serves only its inputs' provider (SPEC 6.1).
        "input": [{"storage_provider": "minio", "path": f"{bucket}/input"},
                  {"storage_provider": "s3", "path": f"{bucket}/input"}],
        "output": [
            {"storage_provider": "minio", "path": f"{out_bucket}/records",
             "prefix": ["result/"], "suffix": [".txt", ".sha256", ".json"]},
            {"storage_provider": "minio.default", "path": f"{out_bucket}/copies",
             "suffix": [".bin"]},
        ],
    }
    config.update(extra)
    return yaml.safe_dump(config)


def keys(client: Any, bucket: str, prefix: str = "") -> set[str]:
    found: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.update(o["Key"] for o in page.get("Contents", []))
    return found


def read(client: Any, bucket: str, key: str) -> bytes:
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def check_processed(client: Any, out_bucket: str, key: str, bucket: str, data: bytes,
                    folder: str = "") -> dict[str, Any]:
    """The outputs for `key` are there, say what the script saw, and hold its bytes."""
    h = key_hash(key)
    base = f"{folder}records/result/{h}"
    assert read(client, out_bucket, f"{base}/key.txt").decode() == key
    assert read(client, out_bucket, f"{base}/bucket.txt").decode() == bucket
    assert read(client, out_bucket, f"{base}/name.txt").decode() == key.rsplit("/", 1)[-1]
    assert read(client, out_bucket, f"{base}/input.sha256").decode().strip() == \
        hashlib.sha256(data).hexdigest()
    copy = read(client, out_bucket, f"{folder}copies/copy-{h}.bin")
    assert hashlib.sha256(copy).digest() == hashlib.sha256(data).digest()
    event: dict[str, Any] = json.loads(read(client, out_bucket, f"{base}/event.json"))
    return event


def expected_outputs(*keys_: str) -> set[str]:
    """Every output, each filtered to its own `output` only (prefix and suffix at work)."""
    found = set()
    for key in keys_:
        h = key_hash(key)
        found |= {f"records/result/{h}/{n}"
                  for n in ("key.txt", "bucket.txt", "name.txt", "input.sha256", "event.json")}
        found.add(f"copies/copy-{h}.bin")
    return found


def run_cli(tmp_path: Path, config: str, event: bytes, how: str = "stdin",
            args: tuple[str, ...] = (), script: str = SCRIPT) -> subprocess.CompletedProcess[bytes]:
    """`faas-supervisor run`, the event on standard input, in EVENT or in --event-file."""
    name = uuid.uuid4().hex[:8]
    config_file, script_file = tmp_path / f"{name}.yaml", tmp_path / f"{name}.sh"
    config_file.write_text(config)
    script_file.write_text(script)
    env = {k: v for k, v in os.environ.items() if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT")}
    env["TMPDIR"] = str(tmp_path)
    cmd = [*faas_command(), "run", "--script", str(script_file), "--config", str(config_file),
           *args]
    stdin: bytes | None = event
    if how == "env":
        env["EVENT"], stdin = event.decode(), None
    elif how == "file":
        event_file = tmp_path / f"{name}.json"
        event_file.write_bytes(event)
        cmd += ["--event-file", str(event_file)]
        stdin = None
    return subprocess.run(cmd, input=stdin, env=env, capture_output=True, timeout=120,
                          stdin=subprocess.DEVNULL if stdin is None else None)


def put(client: Any, bucket: str, key: str, data: bytes) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=data)


# ---- moto: MinIO-, S3- and Ceph-shaped events ------------------------------------------


@pytest.mark.parametrize("source", ["minio:s3", "aws:s3", "ceph:s3"])
def test_storage_events_through_the_watchdog(
    watchdog: WatchdogFactory, moto_server: S3Server, source: str
) -> None:
    client = moto_server.client()
    bucket, out = new_bucket(), new_bucket()
    client.create_bucket(Bucket=bucket)
    client.create_bucket(Bucket=out)
    blobs = {KEYS[0]: os.urandom(3 * MiB), KEYS[1]: os.urandom(1000)}
    for key, data in blobs.items():
        put(client, bucket, key, data)
    wd = watchdog(SCRIPT, config_for(moto_server, bucket, out))
    for key, data in blobs.items():
        event = storage_event(source, bucket, key)
        response = requests.post(f"{wd.url}/run/events", json=event, timeout=60)
        assert response.status_code == 200, response.text
        # Several outputs: the response is their ZIP, base64-encoded (SPEC 4.1).
        archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(response.content)))
        assert f"copy-{key_hash(key)}.bin" in archive.namelist()
        assert check_processed(client, out, key, bucket, data) == event
    assert keys(client, out) == expected_outputs(*blobs)
    assert wd.stop() == 0
    assert wd.invocation_folders() == []


@pytest.mark.parametrize("how", ["stdin", "env"])
@pytest.mark.parametrize("source", ["minio:s3", "aws:s3", "ceph:s3"])
def test_storage_events_through_run(
    tmp_path: Path, moto_server: S3Server, source: str, how: str
) -> None:
    client = moto_server.client()
    bucket, out = new_bucket(), new_bucket()
    client.create_bucket(Bucket=bucket)
    client.create_bucket(Bucket=out)
    key, data = KEYS[1], os.urandom(2 * MiB + 17)
    put(client, bucket, key, data)
    event = json.dumps(storage_event(source, bucket, key)).encode()
    done = run_cli(tmp_path, config_for(moto_server, bucket, out), event, how)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b""  # a storage event prints nothing (SPEC 5)
    assert f"processed {key}".encode() in done.stderr  # the script's output is the job's log
    assert check_processed(client, out, key, bucket, data) == json.loads(event)
    assert keys(client, out) == expected_outputs(key)


def test_run_prints_the_response_of_a_storage_event_when_asked(
    tmp_path: Path, moto_server: S3Server
) -> None:
    client = moto_server.client()
    bucket, out = new_bucket(), new_bucket()
    client.create_bucket(Bucket=bucket)
    client.create_bucket(Bucket=out)
    put(client, bucket, KEYS[0], b"hello")
    event = json.dumps(storage_event("minio:s3", bucket, KEYS[0])).encode()
    done = run_cli(tmp_path, config_for(moto_server, bucket, out), event, "file",
                   ("--print-response",))
    assert done.returncode == 0, done.stderr.decode()
    archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(done.stdout)))
    assert archive.read(f"copy-{key_hash(KEYS[0])}.bin") == b"hello"


def test_a_multipart_sized_object_goes_both_ways(
    watchdog: WatchdogFactory, moto_server: S3Server
) -> None:
    client = moto_server.client()
    bucket = new_bucket()
    client.create_bucket(Bucket=bucket)
    key, data = "input/big one+1.bin", os.urandom(21 * MiB)  # over the 8 MiB part size
    put(client, bucket, key, data)
    wd = watchdog(SCRIPT, config_for(moto_server, bucket, bucket))
    response = requests.post(wd.url, json=storage_event("aws:s3", bucket, key),
                             headers={"Accept": "application/zip"}, timeout=120)
    assert response.status_code == 200, response.text[:2000]
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert hashlib.sha256(archive.read(f"copy-{key_hash(key)}.bin")).digest() == \
        hashlib.sha256(data).digest()
    check_processed(client, bucket, key, bucket, data)
    head = client.head_object(Bucket=bucket, Key=f"copies/copy-{key_hash(key)}.bin")
    assert "-" in head["ETag"]  # a multipart upload's ETag: `<md5>-<parts>`


def test_a_delegated_event_uses_the_named_provider(
    watchdog: WatchdogFactory, tmp_path: Path, moto_server: S3Server
) -> None:
    """minio.default points at a port where nothing listens: only minio.replica works."""
    client = moto_server.client()
    bucket = new_bucket()
    client.create_bucket(Bucket=bucket)
    key, data = KEYS[0], os.urandom(100_000)
    put(client, bucket, key, data)
    dead = {"endpoint": f"http://127.0.0.1:{free_port()}", "access_key": "testing",
            "secret_key": "testing"}
    config = yaml.safe_dump({
        "storage_providers": {"minio": {"default": dead, "replica": provider(moto_server)}},
        # The delegated event names minio.replica; its object is under this path.
        "input": [{"storage_provider": "minio", "path": f"{bucket}/input"}],
        "output": [{"storage_provider": "minio.replica", "path": f"{bucket}/records",
                    "prefix": ["result/"]},
                   {"storage_provider": "minio.replica", "path": f"{bucket}/copies",
                    "suffix": [".bin"]}],
    })
    inner = storage_event("minio:s3", bucket, key)
    delegated: dict[str, Any] = {"event": inner, "storage_provider": "minio.replica"}
    wd = watchdog(SCRIPT, config)
    response = requests.post(wd.url, json=delegated, timeout=60)
    assert response.status_code == 200, response.text
    # EVENT is the event as received: the envelope.
    assert check_processed(client, bucket, key, bucket, data) == delegated

    # Not delegated: the default provider, which cannot be reached, after its retries.
    response = requests.post(wd.url, json=inner, timeout=60)
    assert response.status_code == 502
    first = response.text.splitlines()[0]
    assert "minio.default" in first and f"{bucket}/{key}" in first

    done = run_cli(tmp_path, config, json.dumps(inner).encode())
    assert done.returncode == 3, done.stderr.decode()
    assert b"minio.default" in done.stderr


def test_a_delegated_event_as_json_text_is_served_as_oscar_sends_it(
    watchdog: WatchdogFactory, tmp_path: Path, moto_server: S3Server
) -> None:
    """The OSCAR manager's delegated event carries the inner event as JSON text (its
    DelegatedEvent's `event` is a Go string): served as the nested form is, by the
    watchdog and by `run` (before: 400 and exit 2, "not a storage event"); text that is
    not a storage event is still refused in one line."""
    client = moto_server.client()
    bucket = new_bucket()
    client.create_bucket(Bucket=bucket)
    key, data = KEYS[0], os.urandom(10_000)
    put(client, bucket, key, data)
    config = yaml.safe_dump({
        "storage_providers": {"minio": {"default": provider(moto_server),
                                        "replica": provider(moto_server)}},
        "input": [{"storage_provider": "minio", "path": f"{bucket}/input"}],
        "output": [{"storage_provider": "minio.replica", "path": f"{bucket}/records",
                    "prefix": ["result/"]},
                   {"storage_provider": "minio.replica", "path": f"{bucket}/copies",
                    "suffix": [".bin"]}],
    })
    text = json.dumps(storage_event("minio:s3", bucket, key))
    delegated = {"storage_provider": "minio.replica", "event": text}
    wd = watchdog(SCRIPT, config)
    response = requests.post(wd.url, json=delegated, timeout=60)
    assert response.status_code == 200, response.text
    assert check_processed(client, bucket, key, bucket, data) == delegated
    for name in keys(client, bucket, "records/") | keys(client, bucket, "copies/"):
        client.delete_object(Bucket=bucket, Key=name)
    done = run_cli(tmp_path, config, json.dumps(delegated).encode())
    assert done.returncode == 0, done.stderr.decode()
    assert check_processed(client, bucket, key, bucket, data) == delegated

    for bad in ("not json", json.dumps({"Records": []}), json.dumps("text")):
        refused = {"storage_provider": "minio.replica", "event": bad}
        response = requests.post(wd.url, json=refused, timeout=60)
        assert response.status_code == 400, response.text
        assert response.text.splitlines()[0] == "event field event is not a storage event"
        done = run_cli(tmp_path, config, json.dumps(refused).encode())
        assert done.returncode == 2
        assert b"event field event is not a storage event" in done.stderr


def test_isolation_user_writes_to_the_events_own_bucket(
    tmp_path: Path, moto_server: S3Server
) -> None:
    client = moto_server.client()
    service, alice, eve = new_bucket(), new_bucket(), new_bucket()
    for b in (service, alice, eve):
        client.create_bucket(Bucket=b)
    put(client, alice, KEYS[0], b"alice's")
    put(client, eve, KEYS[0], b"eve's")
    config = config_for(moto_server, service, service, isolation_level="USER",
                        bucket_list=[alice])
    event = json.dumps(storage_event("minio:s3", alice, KEYS[0])).encode()
    done = run_cli(tmp_path, config, event)
    assert done.returncode == 0, done.stderr.decode()
    assert keys(client, alice) == {KEYS[0]} | expected_outputs(KEYS[0])
    check_processed(client, alice, KEYS[0], alice, b"alice's")
    # eve is not in bucket_list, nor is her bucket an input's: not the service's data.
    done = run_cli(tmp_path, config, json.dumps(storage_event("minio:s3", eve, KEYS[0])).encode())
    assert done.returncode == 2, done.stderr.decode()
    assert b"is not under an input path" in done.stderr
    assert b"downloading" not in done.stderr
    assert keys(client, eve) == {KEYS[0]}
    assert keys(client, service) == set()


def test_isolation_user_leaves_the_bucket_of_outputs_on_other_storage_alone(
    tmp_path: Path, moto_server: S3Server
) -> None:
    """`bucket_list` names MinIO buckets: an Amazon S3 output keeps its own bucket, as with
    the FaaS Supervisor (before: the event's bucket, on S3 someone else's)."""
    client = moto_server.client()
    service, alice, results = new_bucket(), new_bucket(), new_bucket()
    for b in (service, alice, results):
        client.create_bucket(Bucket=b)
    put(client, alice, KEYS[0], b"alice's")
    config = yaml.safe_load(config_for(moto_server, service, service, isolation_level="USER",
                                       bucket_list=[alice]))
    config["output"].append({"storage_provider": "s3", "path": f"{results}/s3out"})
    event = json.dumps(storage_event("minio:s3", alice, KEYS[0])).encode()
    done = run_cli(tmp_path, yaml.safe_dump(config), event)
    assert done.returncode == 0, done.stderr.decode()
    assert keys(client, alice) == {KEYS[0]} | expected_outputs(KEYS[0])
    h = key_hash(KEYS[0])
    assert f"s3out/result/{h}/key.txt" in keys(client, results)
    assert not keys(client, alice, "s3out/")


# ---- authorization: a service serves only objects under its input paths (SPEC 6.1) -------

# Per event kind: events for objects that are not the service's, then one that is. The
# service's inputs: `<own>/input` on minio.default, `<own>/s3in` on s3.default. Every
# object exists: a 403 instead of a 200 is the refusal, not a missing object.
AUTHZ_CASES: dict[str, tuple[list[tuple[str, str]], tuple[str, str]]] = {
    "minio:s3": ([("other", "input/secret.bin"), ("own", "private/secret.bin"),
                  ("own", "input2/secret.bin"), ("own", "s3in/secret.bin")],
                 ("own", "input/ok.bin")),
    "aws:s3": ([("other", "s3in/secret.bin"), ("own", "input/secret.bin"),
                ("own", "s3in2/secret.bin")],
               ("own", "s3in/ok.bin")),
    "ceph:s3": ([("other", "input/secret.bin"), ("own", "private/secret.bin"),
                 ("own", "s3in/secret.bin")],
                ("own", "input/ok.bin")),
    # Named by the envelope (s3.default): any input path's bucket and folder may hold it.
    "delegated": ([("other", "input/secret.bin"), ("own", "private/secret.bin")],
                  ("own", "input/ok.bin")),
}


def authz_event(source: str, bucket: str, key: str) -> dict[str, Any]:
    if source == "delegated":
        return {"event": storage_event("minio:s3", bucket, key), "storage_provider": "s3.default"}
    return storage_event(source, bucket, key)


@pytest.mark.parametrize("source", list(AUTHZ_CASES))
def test_an_event_outside_the_input_paths_is_403_or_exit_2_before_any_download(
    watchdog: WatchdogFactory, tmp_path: Path, moto_server: S3Server, source: str
) -> None:
    client = moto_server.client()
    names = {"own": new_bucket(), "other": new_bucket(), "out": new_bucket()}
    for name in names.values():
        client.create_bucket(Bucket=name)
    foreign, allowed = AUTHZ_CASES[source]
    for role, key in [*foreign, allowed]:
        put(client, names[role], key, b"the bytes of " + key.encode())
    config = config_for(moto_server, names["own"], names["out"], input=[
        {"storage_provider": "minio", "path": f"{names['own']}/input"},
        {"storage_provider": "s3.default", "path": f"{names['own']}/s3in/"}])
    wd = watchdog(SCRIPT, config)
    for role, key in foreign:
        event = authz_event(source, names[role], key)
        response = requests.post(f"{wd.url}/run/events", json=event, timeout=60)
        assert response.status_code == 403, (role, key, response.text)
        first = response.text.splitlines()[0]
        assert first.endswith("is not under an input path of this service"), first
        assert f"{names[role]}/{key}" in first
        assert "X-Exit-Code" not in response.headers  # the script never ran
        done = run_cli(tmp_path, config, json.dumps(event).encode())
        assert done.returncode == 2, (role, key, done.stderr.decode())
        assert f"{names[role]}/{key}".encode() in done.stderr
        assert b"downloading" not in done.stderr
    assert "downloading" not in wd.log.read_text()  # nothing was read
    assert keys(client, names["out"]) == set()  # nor written

    # The service's own object, same kind of event: served by both.
    role, key = allowed
    event = authz_event(source, names[role], key)
    response = requests.post(f"{wd.url}/run/events", json=event, timeout=60)
    assert response.status_code == 200, response.text
    check_processed(client, names["out"], key, names[role], b"the bytes of " + key.encode())
    client.delete_objects(Bucket=names["out"], Delete={"Objects": [
        {"Key": k} for k in expected_outputs(key)]})
    done = run_cli(tmp_path, config, json.dumps(event).encode())
    assert done.returncode == 0, done.stderr.decode()
    check_processed(client, names["out"], key, names[role], b"the bytes of " + key.encode())
    assert wd.stop() == 0
    assert wd.invocation_folders() == []


def test_a_service_without_input_paths_serves_no_storage_event(
    watchdog: WatchdogFactory, tmp_path: Path, moto_server: S3Server
) -> None:
    client = moto_server.client()
    bucket = new_bucket()
    client.create_bucket(Bucket=bucket)
    put(client, bucket, KEYS[0], b"someone's data")
    config = yaml.safe_dump({"storage_providers": {"minio": {"default": provider(moto_server)}}})
    event = storage_event("minio:s3", bucket, KEYS[0])
    wd = watchdog(SCRIPT, config)
    response = requests.post(wd.url, json=event, timeout=30)
    assert response.status_code == 403
    assert "has no input paths" in response.text.splitlines()[0]
    done = run_cli(tmp_path, config, json.dumps(event).encode())
    assert done.returncode == 2
    assert b"has no input paths" in done.stderr
    assert keys(client, bucket) == {KEYS[0]}
    assert "downloading" not in wd.log.read_text()


def test_onedata_and_dcache_events_outside_the_input_paths_are_refused_unread(
    watchdog: WatchdogFactory, tmp_path: Path
) -> None:
    """No Onedata or dCache server runs here: both providers point at a closed port. A
    refused event is a 403 (exit 2) at once; an event the service serves is tried, and
    fails as a 502 (exit 3) naming the provider: the refusal came before any read."""
    dead = f"127.0.0.1:{free_port()}"
    config = yaml.safe_dump({
        "storage_providers": {
            "onedata": {"od": {"oneprovider_host": f"http://{dead}", "token": "t",
                               "space": "my-space"}},
            "webdav": {"dcache": {"hostname": f"http://{dead}", "login": "u",
                                  "password": "p"}}},
        "input": [{"storage_provider": "onedata.od", "path": "files"}],
    })
    onedata = {"Key": "", "Records": [{"objectKey": "x.txt", "eventSource": "OneTrigger",
                                       "eventTime": "2026-11-24T09:51:04.347823"}]}
    dcache = {"event": {"name": "x.txt", "mask": ["IN_CREATE"]},
              "subscription": f"http://{dead}/api/v1/events/channels/c/s"}
    refused = [dict(onedata, Key="/my-space/private/x.txt"),
               dict(onedata, Key="/my-space/filesX/x.txt"),
               dcache]  # no input path on webdav.dcache
    wd = watchdog(SCRIPT, config)
    for event in refused:
        response = requests.post(wd.url, json=event, timeout=60)
        assert response.status_code == 403, (event, response.text)
        done = run_cli(tmp_path, config, json.dumps(event).encode())
        assert done.returncode == 2, done.stderr.decode()
        assert b"downloading" not in done.stderr
    assert "downloading" not in wd.log.read_text()
    served = dict(onedata, Key="/my-space/files/x.txt")
    response = requests.post(wd.url, json=served, timeout=60)
    assert response.status_code == 502, response.text
    assert "onedata.od" in response.text.splitlines()[0]
    done = run_cli(tmp_path, config, json.dumps(served).encode())
    assert done.returncode == 3, done.stderr.decode()
    assert wd.stop() == 0


@pytest.mark.parametrize("flags", [["IN_CREATE", "IN_ISDIR"], ["IN_MOVED_TO", "IN_ISDIR"]])
def test_a_dcache_event_for_a_new_folder_is_a_400_or_exit_2_and_reads_nothing(
    watchdog: WatchdogFactory, tmp_path: Path, flags: list[str]
) -> None:
    """A folder appearing in dCache's watched folder was staged in as a file: a GET on the
    WebDAV collection (a listing or a 403, never the script's input). Against wsgidav,
    the folder there with a file in it: refused before anything is read, the script not
    run."""
    dav = start_wsgidav(tmp_path / "dav", login="oscar", password="pw")
    try:
        (dav.root / "in" / "run-42").mkdir(parents=True)
        (dav.root / "in" / "run-42" / "a.txt").write_text("a file inside the folder")
        config = yaml.safe_dump({
            "storage_providers": {"webdav": {"dcache": {"hostname": dav.url, "login": "oscar",
                                                        "password": "pw"}}},
            "input": [{"storage_provider": "webdav.dcache", "path": "in"}],
        })
        event: dict[str, Any] = {
            "event": {"name": "run-42", "mask": flags},
            "subscription": f"{dav.url}/api/v1/events/channels/c/subscriptions/inotify/A"}
        reason = "event names the folder 'run-42' (event.mask has IN_ISDIR)"
        wd = watchdog(SCRIPT, config)
        response = requests.post(wd.url, json=event, timeout=60)
        assert response.status_code == 400, response.text
        assert reason in response.text.splitlines()[0]
        done = run_cli(tmp_path, config, json.dumps(event).encode())
        assert done.returncode == 2, done.stderr.decode()
        assert reason.encode() in done.stderr
        for log in (done.stderr.decode(), wd.log.read_text()):
            assert "downloading" not in log and "processed" not in log
        assert wd.stop() == 0
    finally:
        dav.stop()


def test_a_onedata_space_written_with_slashes_serves_its_own_events(tmp_path: Path) -> None:
    """`space: /my-space/` is the space `my-space`, as the provider and the access checks
    read it: its events were refused (exit 2, no provider for the space). Served here:
    tried against the closed port, exit 3 naming the provider."""
    dead = f"127.0.0.1:{free_port()}"
    config = yaml.safe_dump({
        "storage_providers": {"onedata": {"od": {
            "oneprovider_host": f"http://{dead}", "token": "t", "space": "/my-space/"}}},
        "input": [{"storage_provider": "onedata.od", "path": "files"}],
    })
    event = {"Key": "/my-space/files/x.txt", "Records": [{
        "objectKey": "x.txt", "eventSource": "OneTrigger",
        "eventTime": "2026-11-24T09:51:04.347823"}]}
    done = run_cli(tmp_path, config, json.dumps(event).encode())
    assert done.returncode == 3, done.stderr.decode()
    assert b"onedata.od: cannot download" in done.stderr


def test_a_failed_script_uploads_nothing(tmp_path: Path, moto_server: S3Server) -> None:
    client = moto_server.client()
    bucket = new_bucket()
    client.create_bucket(Bucket=bucket)
    put(client, bucket, KEYS[0], b"x")
    event = json.dumps(storage_event("ceph:s3", bucket, KEYS[0])).encode()
    done = run_cli(tmp_path, config_for(moto_server, bucket, bucket), event,
                   script=SCRIPT + "\nexit 9\n")
    assert done.returncode == 9, done.stderr.decode()
    assert keys(client, bucket) == {KEYS[0]}


def test_a_missing_object_is_a_502_or_exit_3_naming_it(
    watchdog: WatchdogFactory, tmp_path: Path, moto_server: S3Server
) -> None:
    client = moto_server.client()
    bucket = new_bucket()
    client.create_bucket(Bucket=bucket)
    config = config_for(moto_server, bucket, bucket)
    event = storage_event("minio:s3", bucket, "input/never put+here.txt")
    wd = watchdog(SCRIPT, config)
    response = requests.post(wd.url, json=event, timeout=60)
    assert response.status_code == 502
    assert "X-Exit-Code" not in response.headers  # the script never ran
    first = response.text.splitlines()[0]
    assert "minio.default" in first and f"{bucket}/input/never put+here.txt" in first
    done = run_cli(tmp_path, config, json.dumps(event).encode())
    assert done.returncode == 3
    assert f"{bucket}/input/never put+here.txt".encode() in done.stderr
    assert keys(client, bucket) == set()


@pytest.mark.parametrize(("event", "field"), [
    ({"Records": [{"eventSource": "minio:s3", "s3": {"bucket": {"name": "b"}}}]},
     "Records[0].s3.object"),
    ({"event": {"mask": ["IN_CREATE"]}, "subscription": "https://d/x"}, "event.name"),
    ({"Records": [{"eventSource": "minio:s3",
                   "s3": {"bucket": {"name": "b"}, "object": {"key": "input%2F.."}}}]},
     "does not name a file"),
])
def test_a_bad_storage_event_is_a_400_or_exit_2(
    watchdog: WatchdogFactory, tmp_path: Path, moto_server: S3Server, event: Any, field: str
) -> None:
    config = config_for(moto_server, "b", "b")
    wd = watchdog(SCRIPT, config)
    response = requests.post(wd.url, json=event, timeout=30)
    assert response.status_code == 400
    assert field in response.text.splitlines()[0]
    done = run_cli(tmp_path, config, json.dumps(event).encode())
    assert done.returncode == 2
    assert field.encode() in done.stderr
    assert wd.stop() == 0


# ---- Ceph RGW: the events RGW itself pushes --------------------------------------------

# Keys RGW must deliver literally: spaces, `+`, `%` and what looks like an escape.
CEPH_KEYS = ["input/my dog.txt", "input/a+b c.txt", "input/100% p%2Fq é+%20.txt"]


@pytest.mark.timeout(420)  # the first test also starts the cluster
def test_rgw_notifications_pushed_to_the_watchdog(
    watchdog: WatchdogFactory, tmp_path: Path, ceph_rgw: CephRgw
) -> None:
    client, sns = ceph_rgw.client(), ceph_rgw.sns()
    bucket, out = new_bucket(), new_bucket()
    client.create_bucket(Bucket=bucket)
    client.create_bucket(Bucket=out)
    config = config_for(ceph_rgw, bucket, out)
    wd = watchdog(SCRIPT, config)
    topic = sns.create_topic(Name=bucket, Attributes={
        "push-endpoint": f"{wd.url}/job/events", "OpaqueData": "token-1"})["TopicArn"]
    client.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "TopicConfigurations": [{
            "Id": "to-watchdog", "TopicArn": topic, "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "input/"}]}}}]})

    blobs = {key: os.urandom(300_000 + i) for i, key in enumerate(CEPH_KEYS)}
    for key, data in blobs.items():
        # A non-persistent topic delivers during the PUT: the invocation, its download
        # and its uploads are done when put_object returns.
        put(client, bucket, key, data)
    put(client, bucket, "elsewhere/not sent.txt", b"outside the prefix")

    events = {key: check_processed(client, out, key, bucket, data) for key, data in blobs.items()}
    assert keys(client, out) == expected_outputs(*blobs)
    for key, event in events.items():
        record = event["Records"][0]
        assert record["eventSource"] == "ceph:s3"
        assert record["s3"]["object"]["key"] == key  # literally: not URL-encoded
        assert record["s3"]["bucket"]["name"] == bucket
        assert record["opaqueData"] == "token-1"
        assert record["eventTime"]

    # The same events, as a job: `faas-supervisor run`, the event on standard input.
    for key in blobs:
        client.delete_objects(Bucket=out, Delete={"Objects": [
            {"Key": k} for k in expected_outputs(key)]})
    for key, data in blobs.items():
        done = run_cli(tmp_path, config, json.dumps(events[key]).encode())
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout == b""
        assert check_processed(client, out, key, bucket, data) == events[key]
    assert keys(client, out) == expected_outputs(*blobs)
    assert wd.stop() == 0
