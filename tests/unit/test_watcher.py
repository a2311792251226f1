"""The input watcher: what it offers, and that it remembers only what its last listing held;
and, over a real folder store, that an object whose offer fails holds up no other."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from faas_supervisor.config import StoragePath
from faas_supervisor.controller import watcher as watcher_module
from faas_supervisor.controller.buckets import FolderStore, StoredObject
from faas_supervisor.controller.fdl import Service, parse_service
from faas_supervisor.controller.notifications import Inputs, input_paths
from faas_supervisor.controller.watcher import InputWatcher


class ListedBucket:
    """A bucket whose listing the test sets (the watcher only lists)."""

    def __init__(self) -> None:
        self.objects: list[StoredObject] = []

    def bucket_exists(self, bucket: str) -> bool:
        return True

    def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
        return list(self.objects)


def inputs(service: Service, store: object) -> Inputs:
    """The service's default inputs, listed through `store`."""
    return dict.fromkeys(input_paths(service), store)  # type: ignore[arg-type]


async def test_an_object_is_offered_once_settled_and_forgotten_once_gone() -> None:
    bucket = ListedBucket()
    offered: list[str] = []

    async def offer(service: Service, path: StoragePath, obj: StoredObject) -> None:
        offered.append(obj.key)

    watcher = InputWatcher(offer)
    service = parse_service(
        {
            "name": "w",
            "script": "true",
            "input": [{"storage_provider": "minio", "path": "bucket/in"}],
        }
    )
    await watcher.watch(service, inputs(service, bucket))
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


class Log:
    """The watcher's logger, recording what it says."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.warnings: list[dict[str, object]] = []  # with their fields

    def warning(self, event: str, **fields: object) -> None:
        self.lines.append(("warning", event))
        self.warnings.append({"event": event, **fields})

    def info(self, event: str, **_fields: object) -> None:
        self.lines.append(("info", event))


class DownBucket(ListedBucket):
    """A store that can be taken down: every listing then raises; the listings counted."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.listings = 0

    def bucket_exists(self, bucket: str) -> bool:
        self.listings += 1
        if self.down:
            raise ConnectionError("the store is down")
        return True


async def test_a_store_down_is_listed_less_and_less_often_and_logged_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = Log()
    monkeypatch.setattr(watcher_module, "logger", log)
    bucket = DownBucket()
    now = [0.0]

    async def sleep(seconds: float) -> None:  # simulated time: a poll round is instant
        now[0] += seconds

    async def offer(service: Service, path: StoragePath, obj: StoredObject) -> None:
        pass

    watcher = InputWatcher(offer, clock=lambda: now[0], sleep=sleep)
    service = parse_service(
        {
            "name": "w",
            "script": "true",
            "input": [{"storage_provider": "minio", "path": "bucket/in"}],
        }
    )
    await watcher.watch(service, inputs(service, bucket))

    async def run_for(seconds: float) -> None:
        end = now[0] + seconds
        while now[0] < end:
            await asyncio.gather(*watcher._round())  # the round's listings, ended
            await sleep(watcher_module.POLL_SECONDS)

    await run_for(300)  # five minutes down: 600 rounds
    # Listed at 0, 1, 3, 7, 15, 31 s, then every BACKOFF_MAX (30 s): 15 times, not 600.
    assert 12 <= bucket.listings <= 16
    assert log.lines == [("warning", "cannot list an input path; trying again less and less often")]

    bucket.down = False
    await run_for(watcher_module.BACKOFF_MAX + 1)  # back within the longest wait
    assert log.lines[1:] == [("info", "input path listed again")]
    listed = bucket.listings
    await run_for(5)  # and polled every half second again
    assert bucket.listings - listed == 10
    assert not watcher._failing

    bucket.down = True  # failing paths are forgotten with their service
    await run_for(1)
    assert watcher._failing
    watcher.unwatch("w")
    assert not watcher._failing


async def test_an_object_whose_offer_fails_is_tried_again_and_stops_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Log()
    monkeypatch.setattr(watcher_module, "logger", log)
    store = FolderStore(tmp_path / "storage")
    store.ensure_path("watched", "in")
    for name in ("a.txt", "b.txt", "c.txt"):
        (store.root / "watched" / "in" / name).write_bytes(name.encode())
    offered: list[str] = []
    refusals = [2]  # b.txt is refused twice, then taken

    async def offer(service: Service, path: StoragePath, obj: StoredObject) -> None:
        if obj.key == "in/b.txt" and refusals[0]:
            refusals[0] -= 1
            raise OSError(28, "No space left on device")
        offered.append(obj.key)

    watcher = InputWatcher(offer)
    service = parse_service({
        "name": "w",
        "script": "true",
        "input": [{"storage_provider": "minio", "path": "watched/in"}],
    })
    await watcher.watch(service, inputs(service, store))
    (path,) = {p for _, p in watcher._offered}

    await watcher._poll(service, path)  # seen once: maybe still being written
    await watcher._poll(service, path)  # settled: offered, b.txt refused
    assert offered == ["in/a.txt", "in/c.txt"]
    await watcher._poll(service, path)  # b.txt refused again: no second warning
    assert offered == ["in/a.txt", "in/c.txt"]
    (warning,) = log.warnings
    assert warning["key"] == "in/b.txt" and "No space left" in str(warning["error"])
    await watcher._poll(service, path)  # taken at last, the others not again
    assert offered == ["in/a.txt", "in/c.txt", "in/b.txt"]
    await watcher._poll(service, path)
    assert offered == ["in/a.txt", "in/c.txt", "in/b.txt"] and len(log.warnings) == 1
    assert watcher._refused == {("w", path): {}}


async def test_a_server_that_never_answers_holds_up_only_its_own_paths() -> None:
    """Each path's listing its own task: the other services' objects are offered while one
    listing waits (for its server's timeouts), and that one is not started twice."""
    released = threading.Event()
    listings = [0]

    class StuckBucket(ListedBucket):
        def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
            listings[0] += 1
            released.wait()
            return []

    offered = asyncio.Event()

    async def offer(service: Service, path: StoragePath, obj: StoredObject) -> None:
        offered.set()

    watcher = InputWatcher(offer)
    fine_bucket = ListedBucket()
    fine_bucket.objects = [StoredObject("in/new", 1, 1.0, "e")]
    for name, bucket in (("stuck", StuckBucket()), ("fine", fine_bucket)):
        service = parse_service({
            "name": name,
            "script": "true",
            "input": [{"storage_provider": "minio", "path": "bucket/in"}],
        })
        await watcher.watch(service, inputs(service, bucket))
    watcher.start()
    try:
        await asyncio.wait_for(offered.wait(), 10)  # else: held up by `stuck`
        assert listings[0] == 1
    finally:
        released.set()
        await watcher.close()


@pytest.mark.parametrize("provider", ["minio.ext", "minio.default"])
async def test_stuck_s3_servers_hold_up_neither_the_default_pool_nor_other_servers(
    provider: str
) -> None:
    """Listings of S3 servers, services' own or --minio-endpoint's, run each in a thread
    of its own (servers.list_path): more of them stuck than the default pool has threads
    (CPUs + 4) leave that pool, which all the controller's other blocking work shares,
    free (before 62262f4 it was full until their timeouts; for --minio-endpoint's until
    this test's commit), and another server's objects are still offered at once (with
    62262f4's bounded pool of 4, they waited too: a review found both)."""
    import os

    released = threading.Event()
    loop = asyncio.get_running_loop()
    stuck = min(32, (os.cpu_count() or 1) + 4) + 2
    listing = [0]
    all_stuck = asyncio.Event()

    def started() -> None:
        listing[0] += 1
        if listing[0] >= stuck:
            all_stuck.set()

    class StuckBucket(ListedBucket):
        def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
            loop.call_soon_threadsafe(started)
            released.wait()
            return []

    offered = asyncio.Event()

    async def offer(service: Service, path: StoragePath, obj: StoredObject) -> None:
        offered.set()

    watcher = InputWatcher(offer)
    ext = {"endpoint": "http://ext.invalid:9000", "access_key": "AK", "secret_key": "SK"}

    async def watch(name: str, bucket: str, store: ListedBucket) -> None:
        service = parse_service({
            "name": name, "script": "true",
            "input": [{"storage_provider": provider, "path": f"{bucket}/in"}],
            "storage_providers": {"minio": {"ext": ext}},
        })
        await watcher.watch(service, {StoragePath(provider, f"{bucket}/in"): store})

    for n in range(stuck):
        await watch(f"own{n}", f"bucket{n}", StuckBucket())
    watcher.start()
    try:
        await asyncio.wait_for(all_stuck.wait(), 10)
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 5) == "free"
        fine = ListedBucket()
        fine.objects = [StoredObject("in/new", 1, 1.0, "e")]
        await watch("fine", "fine", fine)
        await asyncio.wait_for(offered.wait(), 10)
    finally:
        released.set()
        await watcher.close()


async def test_a_new_definition_is_listed_at_once_while_the_old_ones_listing_hangs() -> None:
    """An update that points a path at a server that answers (the old one stuck): the new
    definition's listing starts at the next poll, not once the old one's ends (a minute
    of timeouts), and the old one's failure then is not the new one's (a review found
    both: the listing's slot was the service's name and path alone)."""
    entered, released, failed = threading.Event(), threading.Event(), threading.Event()

    class StuckBucket(ListedBucket):
        def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
            entered.set()
            released.wait()
            failed.set()
            raise OSError("timed out")

    offered = asyncio.Event()

    async def offer(service: Service, path: StoragePath, obj: StoredObject) -> None:
        offered.set()

    watcher = InputWatcher(offer)
    definition = {"name": "svc", "script": "true",
                  "input": [{"storage_provider": "minio", "path": "bucket/in"}]}
    old = parse_service(definition)
    await watcher.watch(old, inputs(old, StuckBucket()))
    watcher.start()
    try:
        assert await asyncio.to_thread(entered.wait, 10)  # the old definition's listing
        new = parse_service(definition)
        fine = ListedBucket()
        fine.objects = [StoredObject("in/new", 1, 1.0, "e")]
        await watcher.watch(new, inputs(new, fine))
        await asyncio.wait_for(offered.wait(), 10)  # else: held up by the old listing
        released.set()
        assert await asyncio.to_thread(failed.wait, 10)
        for _ in range(3):
            await asyncio.sleep(0)  # the old listing's end handled
        assert not watcher._failing  # not taken as the new definition's failure
    finally:
        released.set()
        await watcher.close()


async def test_listings_of_one_s3_server_run_at_most_its_connections_at_once() -> None:
    """Each S3 listing has a thread of its own, but one server's client keeps
    S3Store.CONNECTIONS connections, half of them for listings: more listings at once
    each opened one and dropped it, urllib3 logging a warning for each (a review found
    1 233 lines in 75 s of an idle controller with 20 services on --minio-endpoint).
    They wait for their turn."""
    import time

    from faas_supervisor.controller.buckets import S3Store

    paths = 3 * S3Store.LISTINGS
    lock = threading.Lock()
    running, most, listed = [0], [0], set()
    loop = asyncio.get_running_loop()
    all_listed = asyncio.Event()

    class SlowServer(ListedBucket):
        def list_objects(self, bucket: str, prefix: str = "") -> list[StoredObject]:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.05)  # the server's answer taking its time
            with lock:
                running[0] -= 1
                listed.add(bucket)
                if len(listed) == paths:
                    loop.call_soon_threadsafe(all_listed.set)
            return []

    async def offer(service: Service, path: StoragePath, obj: StoredObject) -> None:
        pass

    watcher = InputWatcher(offer)
    server = SlowServer()  # one server: --minio-endpoint's
    for n in range(paths):
        service = parse_service({"name": f"s{n}", "script": "true",
                                 "input": [{"storage_provider": "minio", "path": f"bucket{n}/in"}]})
        await watcher.watch(service, {StoragePath("minio.default", f"bucket{n}/in"): server})
    watcher.start()
    try:
        await asyncio.wait_for(all_listed.wait(), 30)
    finally:
        await watcher.close()
    assert most[0] <= S3Store.LISTINGS, most[0]
