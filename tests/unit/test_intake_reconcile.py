"""Reconciliation over a real store: an object whose key the runtime refuses gets one job,
however many listings find it, and however its event came first."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from faas_supervisor.controller.buckets import StoredObject
from faas_supervisor.controller.fdl import Service, parse_service
from faas_supervisor.controller.identity import object_id
from faas_supervisor.controller.reconcile import Reconciler
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
    reconciler = Reconciler(bucket, store, jobs.submit, interval=60)  # type: ignore[arg-type]
    reconciler.add(service, watched=False)
    await reconciler.baseline(service)  # empty: nothing old
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
