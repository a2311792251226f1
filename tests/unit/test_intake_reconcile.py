"""Reconciliation over a real store: an object whose key the runtime refuses gets one job,
however many listings find it, and however its event came first; the inputs on a
service's own MinIO providers, watched through one store per server."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from faas_supervisor.config import StoragePath
from faas_supervisor.controller.buckets import FolderStore, S3Access, StoredObject
from faas_supervisor.controller.fdl import Service, parse_service
from faas_supervisor.controller.identity import ObjectId, object_id
from faas_supervisor.controller.intake import Intake, IntakeKind
from faas_supervisor.controller.notifications import input_paths
from faas_supervisor.controller.reconcile import ListingFailed, Reconciler
from faas_supervisor.controller.servers import ServerStores
from faas_supervisor.controller.store import Store

LONG_KEY = "in/" + "x" * 300 + ".txt"  # a base name over 255 bytes: the runtime refuses it


class ListedBucket:
    """A bucket whose listing the test sets."""

    def __init__(self) -> None:
        self.objects: list[StoredObject] = []

    def bucket_exists(self, bucket: str) -> bool:
        return True

    def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
        return list(self.objects)


class Jobs:
    """Submits as jobs.py does: a job, unless the object its event names has one."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.names = (f"job-{n}" for n in itertools.count())

    async def submit(self, service: Service, event: bytes) -> tuple[str, bool]:
        name = next(self.names)
        existing = self.store.add_job(name, service.name, object_id(event))
        return (existing, False) if existing else (name, True)


@pytest.fixture
def service() -> Service:
    return parse_service(
        {
            "name": "svc",
            "script": "true",
            "input": [{"storage_provider": "minio", "path": "bucket/in"}],
        }
    )


async def reconciled_twice(store: Store, service: Service, first_event: bytes = b"") -> int:
    """The jobs after the object is put (its event, if any, submitted) and two listings."""
    bucket, jobs = ListedBucket(), Jobs(store)
    reconciler = Reconciler(store, jobs.submit, interval=60)
    inputs = dict.fromkeys(input_paths(service), bucket)
    reconciler.add(service, inputs, watched=())  # type: ignore[arg-type]
    await reconciler.baseline(service, inputs)  # type: ignore[arg-type]  # empty: nothing old
    bucket.objects = [StoredObject(LONG_KEY, 4, 1700000000.0, '"e1"')]
    if first_event:
        await jobs.submit(service, first_event)
    await reconciler.reconcile(service)
    await reconciler.reconcile(service)
    return len(store.jobs(service.name))


async def test_an_object_the_runtime_refuses_gets_one_job_from_the_listings(
    tmp_path: Path, service: Service
) -> None:
    assert await reconciled_twice(Store(tmp_path / "s.sqlite3"), service) == 1


async def test_an_object_the_runtime_refuses_whose_event_came_gets_no_second_job(
    tmp_path: Path, service: Service
) -> None:
    """The queue's event (an aws:s3 record, delegated to minio.default) ran it first."""
    record = {
        "eventSource": "aws:s3",
        "s3": {"bucket": {"name": "bucket"}, "object": {"key": quote_plus(LONG_KEY), "eTag": "e1"}},
    }
    event = json.dumps({"event": {"Records": [record]}, "storage_provider": "minio.default"})
    store = Store(tmp_path / "s.sqlite3")
    assert await reconciled_twice(store, service, event.encode()) == 1


# ---- inputs on a service's own MinIO providers ------------------------------------------


def own(name: str, secret: str = "secret-key", endpoint: str = "http://ext.invalid:9000",
        **fields: Any) -> Service:
    """A service whose input `box/in` is on its own provider minio.ext (its server at
    `endpoint`, its keys `secret`), and whose other fields are given."""
    ext = {"endpoint": endpoint, "access_key": "AKEXT", "secret_key": secret}
    return parse_service({
        "name": name,
        "script": "true",
        "input": [{"storage_provider": "minio.ext", "path": "box/in"}],
        "storage_providers": {"minio": {"ext": ext}},
        **fields,
    # An endpoint with a `user:password@` (refused in a new definition): one stored before.
    }, stored="@" in endpoint)


async def test_inputs_on_own_providers_are_watched_through_one_store_per_server(
    tmp_path: Path,
) -> None:
    """Listed through a store of that server, shared by the services on it and dropped
    with the last; an object there first is old, a new one gets one job, whose event is
    delegated to minio.ext; the default input of the same bucket and folder is another."""
    store = Store(tmp_path / "s.sqlite3")
    jobs = Jobs(store)
    events: list[bytes] = []

    async def submit(service: Service, event: bytes) -> tuple[str, bool]:
        events.append(event)
        return await jobs.submit(service, event)

    intake = Intake(FolderStore(tmp_path / "storage"), store, submit, "http://127.0.0.1:1")
    opened: list[S3Access] = []
    buckets: dict[S3Access, ListedBucket] = {}

    def open_store(access: S3Access) -> ListedBucket:
        opened.append(access)
        bucket = buckets[access] = ListedBucket()
        bucket.objects = [StoredObject("in/old", 1, 1.0, "e0")]
        return bucket

    intake.servers = ServerStores(open_store)  # type: ignore[arg-type]
    both = own("both", input=[{"storage_provider": "minio.ext", "path": "box/in"},
                              {"storage_provider": "minio", "path": "box/in"}])
    assert await intake.attach(both) == IntakeKind.WATCH
    assert await intake.attach(own("alone")) == IntakeKind.WATCH
    assert await intake.attach(own("other", secret="other-key")) == IntakeKind.WATCH
    assert len(opened) == len(intake.servers) == 2  # `other`'s keys: another server
    (shared, _) = buckets.values()
    ext, default = StoragePath("minio.ext", "box/in"), StoragePath("minio.default", "box/in")
    assert intake.watcher._paths["both"] == {ext: shared, default: intake.buckets}
    assert intake.watcher._paths["alone"] == {ext: shared}
    for path in (ext, default):
        assert store.path_listed("both", intake.reconciler._path(both, path))

    old, new = shared.objects[0], StoredObject("in/new", 2, 2.0, "e1")
    await intake.reconciler.offer(both, ext, old)  # there first: no job
    await intake.reconciler.offer(both, ext, new)
    await intake.reconciler.offer(both, ext, new)  # once
    (event,) = events
    assert json.loads(event)["storage_provider"] == "minio.ext"
    assert store.has_object("both", ObjectId("minio.ext", "box", "in/new", "e1"))
    assert not store.has_object("both", ObjectId("minio.default", "box", "in/new", "e1"))

    await intake.detach(both)
    assert len(intake.servers) == 2  # `alone` still lists the shared one
    await intake.detach(own("alone"))
    await intake.detach(own("other", secret="other-key"))
    assert len(intake.servers) == 0 and not intake.watcher._paths
    await intake.close()


class ClientError(Exception):
    """What botocore raises for a server's error answer: its message may quote the
    endpoint, `response` holds the S3 error code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.response = {"Error": {"Code": code}}


class RefusingBucket(ListedBucket):
    """A server whose listings fail as botocore's do, quoting its endpoint (and the
    `user:password@` in it)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.refusing = True

    def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
        if self.refusing:
            raise ClientError(f'Access denied at "{self.endpoint}/{bucket}"', "AccessDenied")
        return super().list_objects(bucket, prefix)


def servers_of(intake: Intake, stores: dict[str, ListedBucket]) -> None:
    """The intake's own servers: the store of each endpoint, as `stores` gives it."""
    intake.servers = ServerStores(lambda access: stores[access.endpoint])  # type: ignore


async def test_a_failure_of_an_own_server_never_logs_its_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its endpoint may hold the service's user and password: the intake's, watcher's and
    reconciler's warnings give the exception's type and S3 error code only."""
    store = Store(tmp_path / "s.sqlite3")
    intake = Intake(FolderStore(tmp_path / "storage"), store, Jobs(store).submit,
                    "http://127.0.0.1:1")
    endpoint = "http://admin:TOPSECRETPW@ext.invalid:9000"
    servers_of(intake, {endpoint: RefusingBucket(endpoint)})
    service = own("e", endpoint=endpoint)
    assert await intake.attach(service, fallback=True) == IntakeKind.WATCH  # at start-up
    out = capsys.readouterr().out
    assert "TOPSECRETPW" not in out
    assert "cannot list an input path" in out and "AccessDenied" in out
    await asyncio.gather(*intake.watcher._round())
    await intake.reconciler.reconcile(service)
    out = capsys.readouterr().out
    assert out.count("ClientError (AccessDenied)") == 2
    assert "TOPSECRETPW" not in out
    await intake.close()


async def test_a_failed_update_leaves_the_old_paths_as_they_were(tmp_path: Path) -> None:
    """An update whose new server refuses to list, and one that fails after its attach
    (its deploy): the service's old paths, on the default provider and its own, keep
    their baseline, and an object put there meanwhile gets its job (it was taken as old
    by a new baseline, the old paths forgotten before the new ones were attached)."""
    store = Store(tmp_path / "s.sqlite3")
    jobs = Jobs(store)
    intake = Intake(FolderStore(tmp_path / "storage"), store, jobs.submit,
                    "http://127.0.0.1:1")
    old_server, new_server = ListedBucket(), RefusingBucket("http://new.invalid:9000")
    servers_of(intake, {"http://old.invalid:9000": old_server,
                        "http://new.invalid:9000": new_server})
    both = [{"storage_provider": "minio.ext", "path": "box/in"},
            {"storage_provider": "minio", "path": "box/in"}]
    old = own("svc", endpoint="http://old.invalid:9000", input=both)
    new = own("svc", endpoint="http://new.invalid:9000",
              input=[{"storage_provider": "minio.ext", "path": "box/other"}])
    ext, default = StoragePath("minio.ext", "box/in"), StoragePath("minio.default", "box/in")
    await intake.attach(old)
    for n, refused in enumerate((True, False)):  # as routes/services.py's update does
        new_server.refusing = refused
        await intake.detach(old)
        if refused:
            with pytest.raises(ListingFailed):
                await intake.attach(new)
        else:
            await intake.attach(new)
            await intake.detach(new)  # its deploy failed
        put = StoredObject(f"in/during-{n}", 1, 1.0, f"e{n}")
        old_server.objects.append(put)
        await intake.attach(old, fallback=True)
        await intake.reconciler.offer(old, ext, put)
        await intake.reconciler.offer(old, default, put)
        assert len(store.jobs("svc")) == 2 * (n + 1), "the object put meanwhile has no job"
    await intake.close()


async def test_a_path_on_a_server_newly_named_is_a_new_path(tmp_path: Path) -> None:
    """An update that points minio.ext at another server: the objects there are old (no
    jobs), and back on the first server, its objects are not run again."""
    store = Store(tmp_path / "s.sqlite3")
    jobs = Jobs(store)
    intake = Intake(FolderStore(tmp_path / "storage"), store, jobs.submit,
                    "http://127.0.0.1:1")
    server_a, server_b = ListedBucket(), ListedBucket()
    servers_of(intake, {"http://a.invalid:9000": server_a, "http://b.invalid:9000": server_b})
    on_a = own("svc", endpoint="http://a.invalid:9000")
    on_b = own("svc", endpoint="http://b.invalid:9000")
    path = StoragePath("minio.ext", "box/in")
    await intake.attach(on_a)
    x = StoredObject("in/x", 1, 1.0, "ex")
    server_a.objects = [x]
    await intake.reconciler.offer(on_a, path, x)
    assert len(store.jobs("svc")) == 1
    server_b.objects = [StoredObject("in/pre", 1, 1.0, "ep")]
    for (before, after), server in (((on_a, on_b), server_b), ((on_b, on_a), server_a)):
        await intake.detach(before)  # as a successful update does
        await intake.attach(after)
        intake.keep(after)
        for obj in server.objects:
            await intake.reconciler.offer(after, path, obj)
        await intake.reconciler.reconcile(after)
        assert len(store.jobs("svc")) == 1, "an object already on the server got a job"
    await intake.close()


async def test_a_stuck_server_holds_up_no_other_services_reconciliation(
    tmp_path: Path,
) -> None:
    """A server that never answers: the reconciler's round goes on for the others."""
    store = Store(tmp_path / "s.sqlite3")
    jobs = Jobs(store)
    submitted = asyncio.Event()

    async def submit(service: Service, event: bytes) -> tuple[str, bool]:
        submitted.set()
        return await jobs.submit(service, event)

    released = threading.Event()

    class StuckBucket(ListedBucket):
        stuck = False  # once the baselines are taken

        def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
            if self.stuck:
                released.wait()
            return []

    reconciler = Reconciler(store, submit, interval=0.05)
    stuck, fine = own("stuck"), own("fine", secret="other-key")
    good = ListedBucket()
    for service, bucket in ((stuck, StuckBucket()), (fine, good)):
        inputs = {StoragePath("minio.ext", "box/in"): bucket}
        await reconciler.baseline(service, inputs)  # type: ignore[arg-type]
        reconciler.add(service, inputs, watched=())  # type: ignore[arg-type]
    good.objects = [StoredObject("in/new", 1, 1.0, "e")]
    StuckBucket.stuck = True
    reconciler.start()
    try:
        await asyncio.wait_for(submitted.wait(), 10)  # else: held up by `stuck`
    finally:
        released.set()
        await reconciler.close()
    assert len(store.jobs("fine")) == 1
