"""Stage in and stage out (SPEC 4.1, 5, 6.3) through Invocation, with folder stores.

The script is a real `/bin/sh` process; the stores are `local` folders (`<path>/<bucket>/
<key>`), standing in for MinIO, Onedata and WebDAV where a test is about which provider,
bucket and key the invocation picks rather than about the wire (tests/integration
covers the wire with real servers).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from faas_supervisor.config import ProviderConfig, load_function_config
from faas_supervisor.errors import BadEvent, Forbidden, ScriptFailed, StorageError
from faas_supervisor.invocation import Invocation, Outcome, Runtime
from faas_supervisor.storage_providers import StorageProvider, build_providers
from faas_supervisor.storage_providers.local import LocalProvider

# Records what the script saw, and copies its input: each output test reads these.
RECORDING_SCRIPT = """
mkdir -p "$TMP_OUTPUT_DIR/out/sub"
{
  echo "key=$STORAGE_OBJECT_KEY"
  echo "bucket=$STORAGE_BUCKET"
  echo "time=$EVENT_TIME"
  echo "input=${INPUT_FILE_PATH-unset}"
  echo "event=$EVENT"
} > "$TMP_OUTPUT_DIR/out/sub/result-env.json"
if [ -n "$INPUT_FILE_PATH" ]; then cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/result-copy.png"; fi
echo other > "$TMP_OUTPUT_DIR/notes.txt"
"""


class Store:
    """A folder store, as `<root>/<bucket>/<key>`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        path = self.root / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def get(self, bucket: str, key: str) -> bytes:
        return (self.root / bucket / key).read_bytes()

    def keys(self, bucket: str) -> set[str]:
        base = self.root / bucket
        return {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}


def make_runtime(tmp_path: Path, config: dict[str, Any], script: str = RECORDING_SCRIPT,
                 providers: Mapping[str, StorageProvider] | None = None) -> Runtime:
    config_file = tmp_path / "function_config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    function = load_function_config(str(config_file), {}, secrets_dir=tmp_path / "no-secrets")
    script_file = tmp_path / "script.sh"
    script_file.write_text(script)
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return Runtime(config=function, script=script_file, base_env={"PATH": "/usr/bin:/bin"},
                   tmp_dir=tmp, providers=providers or build_providers(function))


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def invoke(runtime: Runtime, event: Any) -> tuple[Outcome, Invocation]:
    """Read the event as a body, then stage in, run, stage out; the folder is removed."""
    invocation = Invocation(runtime)
    try:
        parsed = await invocation.read_event(_chunks(json.dumps(event).encode()), "", 1 << 20)
        outcome = await invocation.execute(parsed, {})
    finally:
        invocation.close()
    assert not invocation.input_dir.exists() and not invocation.output_dir.exists()
    return outcome, invocation


def s3_event(source: str, bucket: str, key: str) -> dict[str, Any]:
    return {"Records": [{"eventSource": source, "eventTime": "2026-11-24T10:00:00Z",
                         "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]}


def recorded(store: Store, bucket: str, key: str) -> dict[str, str]:
    lines = store.get(bucket, key).decode().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    # The bucket minio_config's paths are in, as the controller makes a service's
    # buckets: an upload makes none, as over S3.
    store = Store(tmp_path / "store")
    (store.root / "plants").mkdir()
    return store


def minio_config(store: Store, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "log_level": "DEBUG",
        "storage_providers": {"minio": {"default": {"path": str(store.root)}}},
        "input": [{"storage_provider": "minio", "path": "plants/input"}],
        "output": [{"storage_provider": "minio.default", "path": "plants/output"}],
    }
    config.update(extra)
    return config


# ---- stage in --------------------------------------------------------------------------


async def test_a_minio_event_downloads_its_object_and_sets_the_variables(
    tmp_path: Path, store: Store
) -> None:
    data = bytes(range(256)) * 40
    store.put("plants", "input/my dog+1.png", data)
    runtime = make_runtime(tmp_path, minio_config(store))
    event = s3_event("minio:s3", "plants", "input%2Fmy+dog%2B1.png")
    outcome, invocation = await invoke(runtime, event)
    assert outcome.error is None, outcome.error
    assert store.get("plants", "output/result-copy.png") == data
    seen = recorded(store, "plants", "output/out/sub/result-env.json")
    assert seen["key"] == "input/my dog+1.png"
    assert seen["bucket"] == "plants"
    assert seen["time"] == "2026-11-24T10:00:00Z"
    assert seen["input"] == str(invocation.input_dir / "my dog+1.png")
    assert json.loads(seen["event"]) == event


async def test_file_stage_in_false_downloads_nothing(tmp_path: Path, store: Store) -> None:
    # The object does not even exist: nothing may try to read it.
    runtime = make_runtime(tmp_path, minio_config(store, file_stage_in=False))
    outcome, _ = await invoke(runtime, s3_event("ceph:s3", "plants", "input/absent.txt"))
    assert outcome.error is None, outcome.error
    seen = recorded(store, "plants", "output/out/sub/result-env.json")
    assert seen["input"] == "unset"
    assert seen["key"] == "input/absent.txt"
    assert "result-copy.png" not in store.keys("plants")


async def test_a_delegated_event_downloads_from_the_named_provider(
    tmp_path: Path, store: Store
) -> None:
    replica = Store(tmp_path / "replica")
    replica.put("plants", "input/fern.jpg", b"from the replica")
    config = minio_config(store)
    config["storage_providers"]["minio"]["replica1"] = {"path": str(replica.root)}
    runtime = make_runtime(tmp_path, config)
    event = {"storage_provider": "minio.replica1",
             "event": s3_event("minio:s3", "plants", "input/fern.jpg")}
    outcome, _ = await invoke(runtime, event)
    assert outcome.error is None, outcome.error
    # Outputs still go where `output` says: the default store.
    assert store.get("plants", "output/result-copy.png") == b"from the replica"


async def test_a_delegation_to_an_undefined_provider_is_a_bad_event(
    tmp_path: Path, store: Store
) -> None:
    runtime = make_runtime(tmp_path, minio_config(store))
    event = {"storage_provider": "minio.nowhere",
             "event": s3_event("minio:s3", "plants", "input/fern.jpg")}
    outcome, _ = await invoke(runtime, event)
    assert isinstance(outcome.error, BadEvent)
    assert "minio.nowhere" in outcome.error.message
    assert outcome.exit_code is None  # the script never ran


def onedata_provider(name: str, root: Path) -> LocalProvider:
    """A folder standing in for a Onedata provider: the test is about which one is used."""
    ptype, pid = name.split(".")
    return LocalProvider(ProviderConfig(type=ptype, id=pid, settings={"path": str(root)}))


async def test_an_onedata_event_uses_the_provider_of_its_space(
    tmp_path: Path, store: Store
) -> None:
    one, two = Store(tmp_path / "od1"), Store(tmp_path / "od2")
    two.put("space-two", "files/sample.txt", b"in space two")
    config = minio_config(store)
    config["storage_providers"]["onedata"] = {
        pid: {"oneprovider_host": "op.example", "token": "t", "space": space}
        for pid, space in (("one", "space-one"), ("two", "space-two"))}
    # Relative to the space, as OSCAR writes Onedata paths.
    config["input"].append({"storage_provider": "onedata.two", "path": "files"})
    providers = dict(build_providers(load_function_config(None, {})))
    providers["minio.default"] = LocalProvider(ProviderConfig("minio", "default",
                                                              {"path": str(store.root)}))
    providers["onedata.one"] = onedata_provider("onedata.one", one.root)
    providers["onedata.two"] = onedata_provider("onedata.two", two.root)
    runtime = make_runtime(tmp_path, config, providers=providers)
    event = {"Key": "/space-two/files/sample.txt",
             "Records": [{"objectKey": "sample.txt", "eventSource": "OneTrigger",
                          "eventTime": "2026-11-24T09:51:04.347823"}]}
    outcome, _ = await invoke(runtime, event)
    assert outcome.error is None, outcome.error
    assert store.get("plants", "output/result-copy.png") == b"in space two"
    seen = recorded(store, "plants", "output/out/sub/result-env.json")
    assert (seen["bucket"], seen["key"]) == ("space-two", "files/sample.txt")

    event["Key"] = "/space-three/files/sample.txt"
    outcome, _ = await invoke(runtime, event)
    assert isinstance(outcome.error, BadEvent)
    assert "space-three" in outcome.error.message

    # A space that is served, but not under an input path: not the service's data.
    one.put("space-one", "files/sample.txt", b"in space one")
    two.put("space-two", "private/sample.txt", b"private")
    for key in ("/space-one/files/sample.txt", "/space-two/private/sample.txt"):
        event["Key"] = key
        outcome, _ = await invoke(runtime, event)
        assert isinstance(outcome.error, Forbidden), outcome.error
        assert key.lstrip("/") in outcome.error.message
        assert outcome.exit_code is None  # the script never ran


async def test_a_dcache_event_is_read_from_the_input_path(tmp_path: Path, store: Store) -> None:
    dav = Store(tmp_path / "dav")
    dav.put("home", "tester/in/image2.jpg", b"dcache bytes")
    config = minio_config(store)
    config["storage_providers"]["webdav"] = {
        "dcache": {"hostname": "https://dcache.example", "login": "u", "password": "p"}}
    config["input"] = [{"storage_provider": "webdav.dcache", "path": "home/tester/in"}]
    providers = {"minio.default": LocalProvider(ProviderConfig("minio", "default",
                                                               {"path": str(store.root)})),
                 "webdav.dcache": onedata_provider("webdav.dcache", dav.root)}
    runtime = make_runtime(tmp_path, config, providers=providers)
    event = {"event": {"name": "image2.jpg", "mask": ["IN_CREATE"]},
             "subscription": "https://dcache.example:3880/api/v1/events/channels/c/s"}
    outcome, _ = await invoke(runtime, event)
    assert outcome.error is None, outcome.error
    assert store.get("plants", "output/result-copy.png") == b"dcache bytes"
    seen = recorded(store, "plants", "output/out/sub/result-env.json")
    assert (seen["bucket"], seen["key"]) == ("home", "tester/in/image2.jpg")

    # No input path on webdav.dcache: the file is none of the service's.
    config["input"] = [{"storage_provider": "minio", "path": "plants/input"}]
    runtime = make_runtime(tmp_path, config, providers=providers)
    outcome, _ = await invoke(runtime, event)
    assert isinstance(outcome.error, Forbidden)
    assert "webdav.dcache" in outcome.error.message


class Recording:
    """A provider that records what it is asked: to show what never happened."""

    def __init__(self, name: str, fail_with: Exception | None = None) -> None:
        self.name = name
        self.calls: list[tuple[str, str, str]] = []
        self.fail_with = fail_with

    async def download(self, bucket: str, key: str, dest: Path) -> None:
        self.calls.append(("download", bucket, key))
        if self.fail_with:
            raise self.fail_with
        dest.write_bytes(b"x")

    async def upload(self, src: Path, bucket: str, key: str) -> None:
        self.calls.append(("upload", bucket, key))
        if self.fail_with:
            raise self.fail_with


@pytest.mark.parametrize("key", ["input%2F..", "%2E%2E", "a%00b", "input%2F"])
async def test_a_key_leaving_the_input_folder_is_refused_before_any_download(
    tmp_path: Path, store: Store, key: str
) -> None:
    provider = Recording("minio.default")
    runtime = make_runtime(tmp_path, minio_config(store), providers={"minio.default": provider})
    invocation = Invocation(runtime)
    try:
        with pytest.raises(BadEvent):
            await invocation.read_event(
                _chunks(json.dumps(s3_event("minio:s3", "plants", key)).encode()), "", 1 << 20)
        assert provider.calls == []
        assert list(invocation.input_dir.iterdir()) == []
    finally:
        invocation.close()


FOREIGN_EVENTS = {
    "another bucket": s3_event("minio:s3", "secrets", "input/a.txt"),
    "another folder": s3_event("ceph:s3", "plants", "private/a.txt"),
    "a folder that starts alike": s3_event("minio:s3", "plants", "input2%2Fa.txt"),
    "the input folder's marker": s3_event("ceph:s3", "plants", "input"),
    "a provider with no input path": s3_event("aws:s3", "plants", "input/a.txt"),
    "delegated, outside the input paths": {
        "storage_provider": "minio.replica1",
        "event": s3_event("minio:s3", "secrets", "input/a.txt")},
}


@pytest.mark.parametrize("stage_in", [True, False])
@pytest.mark.parametrize("what", list(FOREIGN_EVENTS))
async def test_an_event_outside_the_input_paths_is_forbidden_before_any_download(
    tmp_path: Path, store: Store, what: str, stage_in: bool
) -> None:
    """SPEC 6.1: a service's token never reads another's data, staged in or not."""
    recorders = {name: Recording(name) for name in
                 ("minio.default", "minio.replica1", "s3.default")}
    config = minio_config(store, file_stage_in=stage_in)
    config["storage_providers"]["minio"]["replica1"] = {"path": str(store.root)}
    config["storage_providers"]["s3"] = {"default": {"access_key": "a", "secret_key": "s"}}
    runtime = make_runtime(tmp_path, config, providers=recorders)
    outcome, _ = await invoke(runtime, FOREIGN_EVENTS[what])
    assert isinstance(outcome.error, Forbidden), outcome.error
    assert (outcome.error.http_status, outcome.error.exit_status) == (403, 2)
    assert "is not under an input path" in outcome.error.message
    assert outcome.exit_code is None  # the script never ran
    assert all(r.calls == [] for r in recorders.values())  # nothing read, nothing written


async def test_no_input_paths_means_no_storage_event_is_served(
    tmp_path: Path, store: Store
) -> None:
    provider = Recording("minio.default")
    config = minio_config(store)
    del config["input"]
    runtime = make_runtime(tmp_path, config, providers={"minio.default": provider})
    outcome, _ = await invoke(runtime, s3_event("minio:s3", "plants", "input/a.txt"))
    assert isinstance(outcome.error, Forbidden)
    assert "no input paths" in outcome.error.message
    assert provider.calls == []


async def test_a_missing_object_is_a_storage_error_naming_provider_and_object(
    tmp_path: Path, store: Store
) -> None:
    runtime = make_runtime(tmp_path, minio_config(store))
    outcome, _ = await invoke(runtime, s3_event("aws:s3", "plants", "input/gone.txt"))
    assert isinstance(outcome.error, BadEvent)  # no s3.default provider in this config
    assert "s3.default" in outcome.error.message

    outcome, _ = await invoke(runtime, s3_event("minio:s3", "plants", "input/gone.txt"))
    assert isinstance(outcome.error, StorageError)
    assert (outcome.error.http_status, outcome.error.exit_status) == (502, 3)
    assert "minio.default" in outcome.error.message
    assert "plants/input/gone.txt" in outcome.error.message
    assert outcome.exit_code is None  # the script never ran


async def test_an_unexpected_provider_exception_is_a_storage_error(
    tmp_path: Path, store: Store
) -> None:
    provider = Recording("minio.default", fail_with=RuntimeError("secret=hunter2"))
    runtime = make_runtime(tmp_path, minio_config(store), providers={"minio.default": provider})
    outcome, _ = await invoke(runtime, s3_event("minio:s3", "plants", "input/a.txt"))
    assert isinstance(outcome.error, StorageError)
    assert outcome.error.message == (
        "minio.default: download of plants/input/a.txt failed (RuntimeError)")


# ---- stage out -------------------------------------------------------------------------


async def test_outputs_go_to_every_matching_output_with_relative_paths(
    tmp_path: Path, store: Store
) -> None:
    store.put("plants", "input/leaf.png", b"png")
    config = minio_config(store, output=[
        {"storage_provider": "minio", "path": "plants/all"},
        {"storage_provider": "minio", "path": "plants/by-prefix", "prefix": ["out/"]},
        {"storage_provider": "minio", "path": "plants/by-suffix", "suffix": [".png", ".txt"]},
        {"storage_provider": "minio", "path": "plants/both", "prefix": ["result"],
         "suffix": [".png"]},
        {"storage_provider": "minio", "path": "results"},  # a bucket alone: no folder
    ])
    (store.root / "results").mkdir()
    runtime = make_runtime(tmp_path, config)
    outcome, _ = await invoke(runtime, s3_event("ceph:s3", "plants", "input/leaf.png"))
    assert outcome.error is None, outcome.error
    everything = {"out/sub/result-env.json", "result-copy.png", "notes.txt"}
    assert store.keys("plants") == (
        {"input/leaf.png"}
        | {f"all/{k}" for k in everything}
        | {"by-prefix/out/sub/result-env.json"}
        | {"by-suffix/result-copy.png", "by-suffix/notes.txt"}
        | {"both/result-copy.png"}
    )
    assert store.keys("results") == everything


async def test_isolation_user_sends_outputs_to_the_events_bucket(
    tmp_path: Path, store: Store
) -> None:
    store.put("alice", "input/a.txt", b"a")
    store.put("mallory", "input/m.txt", b"m")
    config = minio_config(store, isolation_level="USER", bucket_list=["alice", "bob"])
    runtime = make_runtime(tmp_path, config)
    outcome, _ = await invoke(runtime, s3_event("minio:s3", "alice", "input/a.txt"))
    assert outcome.error is None, outcome.error
    assert "output/notes.txt" in store.keys("alice")
    # Not in bucket_list: not the service's bucket either, so not its data (SPEC 6.1).
    outcome, _ = await invoke(runtime, s3_event("minio:s3", "mallory", "input/m.txt"))
    assert isinstance(outcome.error, Forbidden)
    assert outcome.exit_code is None
    assert store.keys("mallory") == {"input/m.txt"}
    assert store.keys("plants") == set()  # nothing written to the output path's bucket


async def test_a_failed_script_uploads_nothing(tmp_path: Path, store: Store) -> None:
    store.put("plants", "input/a.txt", b"a")
    runtime = make_runtime(tmp_path, minio_config(store),
                           script=RECORDING_SCRIPT + "\nexit 7\n")
    outcome, _ = await invoke(runtime, s3_event("minio:s3", "plants", "input/a.txt"))
    assert isinstance(outcome.error, ScriptFailed)
    assert outcome.error.exit_status == 7
    assert store.keys("plants") == {"input/a.txt"}


async def test_an_upload_failure_is_a_storage_error_naming_provider_and_object(
    tmp_path: Path, store: Store
) -> None:
    store.put("plants", "input/a.txt", b"a")
    store.put("plants", "output", b"a file where the output folder should be")
    runtime = make_runtime(tmp_path, minio_config(store))
    outcome, _ = await invoke(runtime, s3_event("minio:s3", "plants", "input/a.txt"))
    assert isinstance(outcome.error, StorageError)
    assert "minio.default" in outcome.error.message
    assert "plants/output/" in outcome.error.message


async def test_concurrent_invocations_keep_their_inputs_apart(
    tmp_path: Path, store: Store
) -> None:
    blobs = {f"input/n{i}.bin": hashlib.sha256(str(i).encode()).digest() * 1000
             for i in range(6)}
    for key, data in blobs.items():
        store.put("plants", key, data)
    script = ('sha256sum "$INPUT_FILE_PATH" | cut -c1-64 '
              '> "$TMP_OUTPUT_DIR/$(basename "$INPUT_FILE_PATH").sha"\n')
    runtime = make_runtime(tmp_path, minio_config(store), script=script)
    results = await asyncio.gather(*(invoke(runtime, s3_event("minio:s3", "plants", key))
                                     for key in blobs))
    assert all(outcome.error is None for outcome, _ in results)
    for key, data in blobs.items():
        name = key.rsplit("/", 1)[-1]
        assert store.get("plants", f"output/{name}.sha").decode().strip() == \
            hashlib.sha256(data).hexdigest()
