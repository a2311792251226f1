"""The input watcher: what it offers, and that it remembers only what its last listing held."""

from __future__ import annotations

from faas_supervisor.config import StoragePath
from faas_supervisor.controller.buckets import StoredObject
from faas_supervisor.controller.fdl import Service, parse_service
from faas_supervisor.controller.watcher import InputWatcher


class ListedBucket:
    """A bucket whose listing the test sets (the watcher only lists)."""

    def __init__(self) -> None:
        self.objects: list[StoredObject] = []

    def bucket_exists(self, bucket: str) -> bool:
        return True

    def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
        return list(self.objects)


async def test_an_object_is_offered_once_settled_and_forgotten_once_gone() -> None:
    bucket = ListedBucket()
    offered: list[str] = []

    async def offer(service: Service, path: StoragePath, obj: StoredObject) -> None:
        offered.append(obj.key)

    watcher = InputWatcher(bucket, offer)  # type: ignore[arg-type]
    service = parse_service(
        {
            "name": "w",
            "script": "true",
            "input": [{"storage_provider": "minio", "path": "bucket/in"}],
        }
    )
    await watcher.watch(service)
    (path,) = watcher._offered
    poll = watcher._poll

    for n in range(1000):
        bucket.objects = [StoredObject(f"in/{n}", 1, 1.0, "e")]
        await poll(service, path[1])  # seen once: maybe still being written
        await poll(service, path[1])  # the same twice: offered
        await poll(service, path[1])  # not again
    assert offered == [f"in/{n}" for n in range(1000)]
    # Only the last listing's object is remembered, not the thousand offered.
    assert watcher._offered[path] == {"in/999": (1, 1.0)}

    bucket.objects[0] = StoredObject("in/999", 2, 2.0, "f")  # rewritten: a new object
    await poll(service, path[1])
    await poll(service, path[1])
    assert offered[-1] == "in/999" and len(offered) == 1001
    bucket.objects = []
    await poll(service, path[1])
    assert watcher._offered[path] == {} and watcher._pending[path] == {}
    watcher.unwatch("w")
    assert not watcher._offered and not watcher._pending
