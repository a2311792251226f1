"""Reconciliation over a real store: an object whose key the runtime refuses gets one job,
however many listings find it, and however its event came first; the inputs on a
service's own MinIO providers, watched through one store per server."""

from __future__ import annotations

import itertools
import json
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
from faas_supervisor.controller.reconcile import Reconciler
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


def own(name: str, secret: str = "secret-key", **fields: Any) -> Service:
    """A service whose input `box/in` is on its own provider minio.ext (its server's keys
    `secret`), and whose other fields are given."""
    ext = {"endpoint": "http://ext.invalid:9000", "access_key": "AKEXT", "secret_key": secret}
    return parse_service({
        "name": name,
        "script": "true",
        "input": [{"storage_provider": "minio.ext", "path": "box/in"}],
        "storage_providers": {"minio": {"ext": ext}},
        **fields,
    })


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
    assert store.path_listed("both", "minio.ext", "box", "in/")
    assert store.path_listed("both", "minio.default", "box", "in/")

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
