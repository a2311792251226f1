"""The tests' Kubernetes API stand-in (tests/integration/fake_kube_api.py) as a process of
its own, for bench/scale.py: the controller under measurement then shares no event loop
and no CPU accounting with it.

Three things are added here, around the stand-in and not in it:

* the kubelet's part: a Job's pod finishes by itself (exit 0, a line of logs)
  `--complete-after` seconds after the Job was made, through the stand-in's own test
  hand (`finish_job`), as a test would;
* indexes: the stand-in scans its whole event log at every wake of every watch, and
  sorts every object at every list, which is fine for a test's dozen objects and
  quadratic for 100 000 Jobs (it became the bottleneck from a few thousand jobs). Here a
  watch finds its place in the log by bisection and a pod list by `job-name=` or a
  field selector on the name by a dict: the same answers, found in O(log n);
* `GET /_bench/stats`: the requests it served by verb and resource, and each Job's
  creation time (wall clock), for the requests-per-job and event-to-Job figures.

Run: python bench/_kube_standin.py --port PORT [--complete-after SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration import fake_kube_api as fake


class BenchKubeApi(fake.FakeKubeApi):
    def __init__(self, complete_after: float) -> None:
        super().__init__()
        self.complete_after = complete_after
        self.created: dict[str, float] = {}  # Job name -> when it was made (time.time())
        self.counts: collections.Counter[str] = collections.Counter()
        self.pod_of_job: dict[tuple[str, str], str] = {}  # (ns, job) -> its pod's name

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_route("GET", "/_bench/stats", self._stats)
        return app

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response({"requests": dict(self.counts), "jobs": self.created})

    def _record(self, verb: str, group: str, plural: str, name: str = "") -> None:
        # Counted, not kept: a list of 400 000 records is memory the bench need not hold.
        self.counts[f"{verb} {plural}"] += 1
        asyncio.get_running_loop().create_task(self._notify())

    # ---- the kubelet's part --------------------------------------------------------------

    def _start_job(self, job: dict[str, Any]) -> None:
        super()._start_job(job)
        name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
        self.created[name] = time.time()
        for (plural, space, pod), obj in reversed(self.objects.items()):
            if plural == "pods" and space == ns and obj["metadata"]["labels"].get(
                    "job-name") == name:
                self.pod_of_job[(ns, name)] = pod
                break
        asyncio.get_running_loop().call_later(self.complete_after, self._complete, name, ns)

    def _complete(self, job: str, ns: str) -> None:
        stored = self.objects.get(("jobs", ns, job))
        if stored is None or stored.get("status", {}).get("conditions"):
            return  # deleted, or finished by other means
        self.finish_job(job, ns, 0, b"done\n")

    # ---- indexes -------------------------------------------------------------------------

    def _select(self, plural: str, ns: str, labels: str = "", fields: str = "") -> Any:
        name = None
        if plural == "pods" and labels.startswith("job-name=") and "," not in labels:
            name = self.pod_of_job.get((ns, labels.removeprefix("job-name=")))
            if name is None:
                return []
        elif fields.startswith("metadata.name=") and "," not in fields:
            name = fields.removeprefix("metadata.name=")
        if name is None:
            return super()._select(plural, ns, labels, fields)
        obj = self.objects.get((plural, ns, name))
        if obj is None or not fake._matches(obj, ns, labels, fields):
            return []
        return [fake.copy.deepcopy(obj)]

    async def _watch(self, request: web.Request, plural: str, ns: str, labels: str,
                     fields: str) -> web.StreamResponse:
        """The stand-in's watch, its log searched by bisection (events are appended in
        resourceVersion order)."""
        since = request.query.get("resourceVersion")
        timeout = float(request.query.get("timeoutSeconds", "30"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if not since:
            sent = self._version()
            for obj in self._select(plural, ns, labels, fields):
                await fake._send(response, "ADDED", obj)
        else:
            sent = int(since)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            start = bisect.bisect_right(self.events, sent, key=lambda e: e.version)
            for event in self.events[start:]:
                sent = event.version
                if event.resource == plural and fake._matches(event.obj, ns, labels, fields):
                    await fake._send(response, event.type, event.obj)
            left = deadline - loop.time()
            if left <= 0:
                break
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait_for(
                        lambda after=sent: self.closing or self._version() > after), left)
                except TimeoutError:
                    break
            if self.closing:
                break
        await response.write_eof()
        return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--complete-after", type=float, default=0.5,
                        help="seconds from a Job's creation to its pod's success (default 0.5)")
    args = parser.parse_args()
    api = BenchKubeApi(args.complete_after)
    web.run_app(api.app(), host="127.0.0.1", port=args.port, print=None,
                handler_cancellation=True)


if __name__ == "__main__":
    main()
