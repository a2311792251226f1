"""The object an event names (identity.py), and the store's one-job-per-object rule."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from faas_supervisor import strict_json
from faas_supervisor.config import StoragePath
from faas_supervisor.controller.buckets import StoredObject
from faas_supervisor.controller.identity import ObjectId, listed_id, object_id
from faas_supervisor.controller.store import PENDING, RUNNING, ListedPath, Store
from faas_supervisor.controller.watcher import input_event, minio_event
from faas_supervisor.errors import BadEvent
from faas_supervisor.parsers import recognise

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()



def on_default(bucket: str, prefix: str) -> ListedPath:
    """An input path on the default provider, as the store records it (no server)."""
    return ListedPath("minio.default", "", bucket, prefix)

def test_each_s3_family_event_names_its_object_and_etag() -> None:
    assert object_id(fixture("minio.json")) == ObjectId(
        "minio.default", "plants", "input/rose+red.jpg", "dd20b7e4b74467ff16ce2d901c054419"
    )
    assert object_id(fixture("s3.json")) == ObjectId(
        "s3.default", "darknet-bucket", "input/my dog.jpg", "0123456789abcdef0123456789abcdef"
    )
    assert object_id(fixture("ceph.json")) == ObjectId(
        "minio.default", "plants", "input/leaf.png", "9e107d9d372bb6826bd81d3542a419d6"
    )


def test_a_delegated_event_names_its_provider_and_a_quoted_etag_is_unquoted() -> None:
    record = json.loads(fixture("s3.json"))
    record["Records"][0]["s3"]["object"]["eTag"] = '"abc"'
    body = json.dumps({"event": record, "storage_provider": "minio.default"}).encode()
    assert object_id(body) == ObjectId("minio.default", "darknet-bucket", "input/my dog.jpg", "abc")


def test_a_delegated_event_of_json_text_has_the_identity_of_the_nested_one() -> None:
    """The OSCAR manager's form: the inner event as JSON text; a refused key's too."""
    record = json.loads(fixture("s3.json"))
    record["Records"][0]["s3"]["object"]["eTag"] = '"abc"'
    nested = {"event": record, "storage_provider": "minio.x"}
    text = {"event": json.dumps(record), "storage_provider": "minio.x"}
    assert object_id(json.dumps(text).encode()) == object_id(json.dumps(nested).encode()) \
        == ObjectId("minio.x", "darknet-bucket", "input/my dog.jpg", "abc")
    record["Records"][0]["s3"]["object"]["key"] = "input/../x.jpg"  # refused, still named
    text = {"event": json.dumps(record), "storage_provider": "minio.x"}
    assert object_id(json.dumps(text).encode()) == ObjectId(
        "minio.x", "darknet-bucket", "input/../x.jpg", "abc")
    assert object_id(b'{"event": "not json", "storage_provider": "minio.x"}') is None


def test_a_version_id_stands_in_for_a_missing_etag() -> None:
    record = json.loads(fixture("ceph.json"))
    del record["Records"][0]["s3"]["object"]["eTag"]
    record["Records"][0]["s3"]["object"]["versionId"] = "v7"
    found = object_id(json.dumps(record).encode())
    assert found is not None and found.version == "v7"


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 1}',  # plain JSON
        b"aGVsbG8=",  # base64
        b"\xff\xfe not text",
        b"[" * 100_000 + b"]" * 100_000,  # too deep for the parser
        fixture("apigateway.json"),
        fixture("delegated.json"),  # no ETag, no version id: a second event may be new
        fixture("onedata.json"),
        b'{"Records": [{"eventSource": "minio:s3", "s3": {"bucket": {"name": "b"}}}]}',
    ],
)
def test_bodies_naming_no_versioned_object_have_no_identity(body: bytes) -> None:
    assert object_id(body) is None


@pytest.mark.parametrize("key", ["in/plain.txt", "in/my dog+cat 100%.txt", "in/p%2Fq é.txt"])
def test_a_listed_object_and_its_event_agree(key: str) -> None:
    obj = StoredObject(key, 12, 1700000000.5, '"0123abcd-2"')
    assert object_id(minio_event("photos", obj)) == listed_id("photos", obj)


@pytest.mark.parametrize("key", ["in/plain.txt", "in/my dog+cat 100%.txt", "in/../refused"])
def test_an_object_listed_on_a_services_own_provider_is_named_by_a_delegated_event(
    key: str,
) -> None:
    """The watcher's event for it is delegated to that provider (the job downloads from
    there), and names it as its listing and an event pushed to /job for it do: one job."""
    obj = StoredObject(key, 12, 1700000000.5, '"0123abcd-2"')
    watched = input_event(StoragePath("minio.ext", "photos/in"), obj)
    envelope = json.loads(watched)
    assert set(envelope) == {"event", "storage_provider"}
    assert envelope["storage_provider"] == "minio.ext"
    # Inside, MinIO's event for it.
    assert envelope["event"]["Records"][0]["eventSource"] == "minio:s3"
    assert object_id(json.dumps(envelope["event"]).encode()) == listed_id("photos", obj)
    assert object_id(watched) == listed_id("photos", obj, "minio.ext") == ObjectId(
        "minio.ext", "photos", key, "0123abcd-2")
    assert object_id(watched) != listed_id("photos", obj)  # the default's is another object
    pushed = {"event": json.loads(minio_event("photos", obj)), "storage_provider": "minio.ext"}
    pushed["event"]["Records"][0]["s3"]["object"]["eTag"] = '"0123abcd-2"'  # quoted, as S3
    assert object_id(json.dumps(pushed).encode()) == object_id(watched)
    # The default provider's objects keep their plain MinIO event.
    default = json.loads(input_event(StoragePath("minio", "photos/in"), obj))
    assert "storage_provider" not in default and default["Records"][0]["eventSource"] == "minio:s3"


REFUSED_KEYS = ["in/" + "x" * 300 + ".txt", "in/../up.txt", "in/./here.txt", "in/" + "é" * 128]


@pytest.mark.parametrize("key", REFUSED_KEYS)
def test_an_object_whose_key_the_runtime_refuses_still_has_its_identity(key: str) -> None:
    """Its job fails, saying why; without an identity, each listing of its path found it
    without a job and started another, for ever. Each way its event comes names it."""
    obj = StoredObject(key, 4, 1700000000.0, '"e7"')
    watched = minio_event("b", obj)
    with pytest.raises(BadEvent):
        recognise(strict_json.loads(watched))
    assert object_id(watched) == listed_id("b", obj)
    # The queue's (an aws:s3 record in a delegated envelope) and Ceph RGW's push.
    record = json.loads(fixture("s3.json"))
    record["Records"][0]["s3"]["bucket"]["name"] = "b"
    record["Records"][0]["s3"]["object"].update(key=quote_plus(key), eTag="e7")
    queued = {"event": record, "storage_provider": "minio.default"}
    assert object_id(json.dumps(queued).encode()) == listed_id("b", obj)
    pushed = json.loads(fixture("ceph.json"))
    pushed["Records"][0]["s3"]["bucket"]["name"] = "b"
    pushed["Records"][0]["s3"]["object"].update(key=key, eTag="e7")
    assert object_id(json.dumps(pushed).encode()) == listed_id("b", obj)


@pytest.mark.parametrize(
    "fields",
    [
        {"key": "in/%FF" + "x" * 300},  # not URL-encoded UTF-8: names no key
        {"key": "in/../a", "eTag": ""},  # no version: not deduplicated
        {"key": 5},
    ],
)
def test_a_refused_event_naming_no_object_has_no_identity(fields: dict[str, object]) -> None:
    record = json.loads(fixture("minio.json"))
    record["Records"][0]["s3"]["object"].update(fields)
    assert object_id(json.dumps(record).encode()) is None


def test_one_object_gives_one_job(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    obj = ObjectId("minio.default", "b", "in/x", "e1")
    assert store.add_job("svc-1", "svc", obj) is None
    assert store.add_job("svc-2", "svc", obj) == "svc-1"
    assert [j.name for j in store.jobs("svc")] == ["svc-1"]
    # Another version, another service, or a body naming no object: new jobs.
    assert store.add_job("svc-3", "svc", ObjectId("minio.default", "b", "in/x", "e2")) is None
    assert store.add_job("other-1", "other", obj) is None
    assert store.add_job("svc-4", "svc") is None
    assert store.add_job("svc-5", "svc") is None
    # Deleting the job does not forget the object: a redelivery still runs nothing.
    store.remove_job("svc-1")
    assert store.add_job("svc-6", "svc", obj) == "svc-1"
    # Deleting the service does.
    store.remove_service("svc")
    assert not store.has_object("svc", obj)
    assert store.has_object("other", obj)


def test_a_baseline_object_is_known_but_its_first_event_runs(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    old = ObjectId("minio.default", "b", "in/old", "e")
    assert not store.path_listed("svc", on_default("b", "in/"))
    store.record_baseline("svc", on_default("b", "in/"), [old])
    assert store.path_listed("svc", on_default("b", "in/"))
    assert store.has_object("svc", old)  # listings pass it by
    assert store.add_job("svc-1", "svc", old) is None  # an event for it runs it, once
    assert store.add_job("svc-2", "svc", old) == "svc-1"


def test_gone_objects_recorded_before_a_listing_are_forgotten(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    gone = ObjectId("minio.default", "b", "in/gone", "e")
    store.add_job("svc-1", "svc", gone)
    store.forget_older("svc", {gone}, before=0.0)  # recorded after the listing began: kept
    assert store.has_object("svc", gone)
    store.forget_older("svc", {gone}, before=float("inf"))
    assert not store.has_object("svc", gone)
    assert store.objects_in("svc", "minio.default", "b", "in/") == set()


def test_an_input_path_an_update_drops_forgets_its_identities(tmp_path: Path) -> None:
    """RELIABILITY: the identities are pruned to what the input paths hold; no listing
    ever looks at a dropped path again, so dropping it must forget its rows."""
    store = Store(tmp_path / "s.sqlite3")

    def ids(bucket: str, *keys: str, provider: str = "minio.default") -> list[ObjectId]:
        return [ObjectId(provider, bucket, key, "e") for key in keys]

    store.record_baseline("svc", on_default("b", "in/"), ids("b", "in/old", "in/keep/x"))
    store.record_baseline("svc", on_default("b", "in/keep/"), ids("b", "in/keep/x"))
    store.record_baseline("svc", on_default("c", ""), ids("c", "in/y"))
    store.add_job("svc-1", "svc", ids("b", "in/new")[0])
    elsewhere = ids("b", "in/replica", provider="minio.replica")[0]  # not on this path
    store.add_job("svc-2", "svc", elsewhere)
    store.record_baseline("other", on_default("b", "in/"), ids("b", "in/old"))

    store.keep_paths("svc", {on_default("b", "in/keep/"), on_default("c", "")})
    assert not store.path_listed("svc", on_default("b", "in/"))
    assert store.objects_in("svc", "minio.default", "b", "") == set(ids("b", "in/keep/x"))
    assert store.objects_in("svc", "minio.default", "c", "") == set(ids("c", "in/y"))
    assert store.has_object("svc", elsewhere)
    assert store.objects_in("other", "minio.default", "b", "") == set(ids("b", "in/old"))


def test_the_same_path_on_two_providers_is_two_paths(tmp_path: Path) -> None:
    """A service's `minio.default/b/in` and `minio.ext/b/in`: each its own baseline, and
    an update dropping one forgets its identities only."""
    store = Store(tmp_path / "s.sqlite3")
    default = ObjectId("minio.default", "b", "in/x", "e")
    ext = ObjectId("minio.ext", "b", "in/x", "e")
    store.record_baseline("svc", ListedPath("minio.ext", "srv", "b", "in/"), [ext])
    assert store.path_listed("svc", ListedPath("minio.ext", "srv", "b", "in/"))
    assert not store.path_listed("svc", on_default("b", "in/"))
    assert not store.has_object("svc", default)
    store.record_baseline("svc", on_default("b", "in/"), [default])
    store.keep_paths("svc", {on_default("b", "in/")})
    assert not store.path_listed("svc", ListedPath("minio.ext", "srv", "b", "in/"))
    assert not store.has_object("svc", ext)
    assert store.path_listed("svc", on_default("b", "in/"))
    assert store.has_object("svc", default)


def test_a_provider_pointed_at_another_server_forgets_the_old_servers_identities(
    tmp_path: Path,
) -> None:
    """An update pointing `minio.b` from server one to server two: what b recorded on one
    goes (else an object of the same key and bytes put on two would be taken as seen:
    no job), what its baseline on two saw stays, a job of one kept as the row of an object
    there too; a path only narrowed on one server keeps all it had (found by a review)."""
    store = Store(tmp_path / "s.sqlite3")
    on_one = ListedPath("minio.b", "one", "b", "in/")
    on_two = ListedPath("minio.b", "two", "b", "in/")
    gone, both = ObjectId("minio.b", "b", "in/gone", "e"), ObjectId("minio.b", "b", "in/both", "e")
    old = ObjectId("minio.b", "b", "in/old", "e")
    store.record_baseline("svc", on_one, [old])
    store.add_job("svc-1", "svc", gone)
    store.add_job("svc-2", "svc", both)
    narrowed = ListedPath("minio.c", "one", "b", "in/sub/")
    kept = ObjectId("minio.c", "b", "in/sub/x", "e")
    store.record_baseline("svc", ListedPath("minio.c", "one", "b", "in/"), [])
    store.add_job("svc-3", "svc", kept)
    # The update: baselines of its new paths first, then the old ones dropped.
    store.record_baseline("svc", on_two, [both])
    store.record_baseline("svc", narrowed, [])
    new = ObjectId("minio.b", "b", "in/new", "e")
    store.add_job("svc-4", "svc", new)  # between the update's baselines and its end
    store.keep_paths("svc", {on_two, narrowed})
    assert store.objects_in("svc", "minio.b", "b", "in/") == {both, new}
    assert store.add_job("svc-5", "svc", gone) is None  # a new object on two: its job
    assert store.add_job("svc-6", "svc", both) == "svc-2"
    assert store.has_object("svc", kept)


def test_a_store_that_recorded_no_baseline_times_keeps_its_identities(tmp_path: Path) -> None:
    """`listed_paths` without `listed`: the column is added (0), and a provider pointed at
    another server keeps its rows as before (nothing says which server saw them)."""
    path = tmp_path / "s.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE listed_paths (
            service TEXT NOT NULL, provider TEXT NOT NULL, server TEXT NOT NULL,
            bucket TEXT NOT NULL, prefix TEXT NOT NULL,
            PRIMARY KEY (service, provider, server, bucket, prefix)
        ) WITHOUT ROWID;
        INSERT INTO listed_paths VALUES ('svc', 'minio.b', 'one', 'b', 'in/'),
                                        ('svc', 'minio.b', 'two', 'b', 'in/');
    """)
    old.close()
    store = Store(path)
    on_one = ListedPath("minio.b", "one", "b", "in/")
    on_two = ListedPath("minio.b", "two", "b", "in/")
    assert store.path_listed("svc", on_one) and store.path_listed("svc", on_two)
    obj = ObjectId("minio.b", "b", "in/x", "e")
    store.add_job("svc-1", "svc", obj)
    store.keep_paths("svc", {on_two})
    assert store.has_object("svc", obj)
    assert not store.path_listed("svc", on_one)


def test_another_default_server_forgets_the_default_providers_paths(tmp_path: Path) -> None:
    """--minio-endpoint pointed elsewhere (or the folder store given up for a server): the
    default provider's listed paths and identities are the old server's, and go; a
    service's own providers' stay. The first record (an earlier version's store, or a
    new one) and the same server again forget nothing."""
    store = Store(tmp_path / "s.sqlite3")
    default = ObjectId("minio.default", "b", "in/x", "e")
    own = ObjectId("minio.ext", "b", "in/x", "e")
    store.record_baseline("svc", on_default("b", "in/"), [default])
    store.record_baseline("svc", ListedPath("minio.ext", "srv", "b", "in/"), [own])
    assert not store.use_default_server("")  # none recorded yet: taken as this one
    assert not store.use_default_server("")
    assert store.has_object("svc", default)
    assert store.use_default_server("digest-of-another")
    assert not store.path_listed("svc", on_default("b", "in/"))
    assert not store.has_object("svc", default)
    assert store.path_listed("svc", ListedPath("minio.ext", "srv", "b", "in/"))
    assert store.has_object("svc", own)
    store.close()
    assert not Store(tmp_path / "s.sqlite3").use_default_server("digest-of-another")


def test_a_store_of_an_older_version_keeps_its_listed_paths_on_the_default_provider(
    tmp_path: Path,
) -> None:
    """Its `listed_paths` had no provider column: each of its paths was the default
    provider's, and stays listed (no new baseline); a data folder keeps working."""
    path = tmp_path / "s.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE listed_paths (
            service TEXT NOT NULL, bucket TEXT NOT NULL, prefix TEXT NOT NULL,
            PRIMARY KEY (service, bucket, prefix)
        ) WITHOUT ROWID;
        INSERT INTO listed_paths VALUES ('svc', 'b', 'in/'), ('svc', 'c', '');
    """)
    old.close()
    store = Store(path)
    assert store.path_listed("svc", on_default("b", "in/"))
    assert store.path_listed("svc", on_default("c", ""))
    assert not store.path_listed("svc", ListedPath("minio.ext", "srv", "b", "in/"))
    store.record_baseline("svc", ListedPath("minio.ext", "srv", "b", "in/"), [])
    assert store.path_listed("svc", ListedPath("minio.ext", "srv", "b", "in/"))
    store.close()
    again = Store(path)  # once only: the migrated table is kept as it is
    assert again.path_listed("svc", ListedPath("minio.ext", "srv", "b", "in/"))
    assert again.path_listed("svc", on_default("b", "in/"))
    tables = {row[0] for row in again.db.execute("SELECT name FROM sqlite_master")}
    assert "listed_paths_old" not in tables


def test_running_jobs_are_pending_again_at_start(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite3")
    for name in ("a", "b", "c"):
        store.add_job(name, "svc")
    store.start_job("a")
    store.start_job("b")
    assert store.requeue_running() == ["a", "b"]
    assert [j.status for j in store.jobs("svc")] == [PENDING] * 3
    assert store.start_job("a") and store.job("a").status == RUNNING  # type: ignore[union-attr]
    assert store.requeue_job("a") and not store.requeue_job("c")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_reconcile_interval_that_is_not_a_positive_time_is_refused(
    value: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from faas_supervisor.cli import main

    with pytest.raises(SystemExit) if value == "soon" else contextlib.nullcontext():
        status = main(["controller", "--data-dir", str(tmp_path), "--reconcile-interval", value])
        assert status == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--reconcile-interval" in err
    assert not (tmp_path / "controller.sqlite3").exists()


def test_a_store_that_recorded_no_server_keeps_its_default_paths(tmp_path: Path) -> None:
    """`listed_paths` with a provider but no server: its default provider's paths stay
    listed; one of another provider, on no recorded server, is listed anew."""
    path = tmp_path / "s.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE listed_paths (
            service TEXT NOT NULL, provider TEXT NOT NULL, bucket TEXT NOT NULL,
            prefix TEXT NOT NULL, PRIMARY KEY (service, provider, bucket, prefix)
        ) WITHOUT ROWID;
        INSERT INTO listed_paths VALUES ('svc', 'minio.default', 'b', 'in/'),
                                        ('svc', 'minio.ext', 'b', 'in/');
    """)
    old.close()
    store = Store(path)
    assert store.path_listed("svc", on_default("b", "in/"))
    assert not store.path_listed("svc", ListedPath("minio.ext", "srv", "b", "in/"))
    columns = {row[1] for row in store.db.execute("PRAGMA table_info(listed_paths)")}
    assert "server" in columns
