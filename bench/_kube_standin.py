"""The tests' Kubernetes API stand-in (tests/integration/fake_kube_api.py) as a process of
its own, for bench/scale.py: the controller under measurement then shares no event loop
and no CPU accounting with it.

The stand-in plays the kubelet itself (`autorun`): every Job's pod is Pending for
`--pod-start` seconds, Running for `--pod-run`, then ends with exit 0 and a line of logs.
Two things are added here, around the stand-in and not in it:

* `GET /_bench/stats`: the requests it served by verb and resource (dry runs apart),
  and each Job's creation time (wall clock), for the requests-per-job and event-to-Job
  figures;
* schema validation once per shape of body: kubernetes-validate takes 10-20 ms a body
  here, so validating every Job made the stand-in the bottleneck at about 50 Jobs/s.
  Bodies that differ only in their strings and numbers (every Job of the benchmark:
  names, events) share a shape; the first of each shape is validated in full, strictly,
  and a shape that failed is validated again each time (so is refused each time);
* an index for the one list that scales with the jobs: the stand-in sorts every object
  at every list, fine for a test's dozen objects; here a list of pods by `job-name=`
  or of anything by `metadata.name=` is a dict lookup (the same answer).

Run: python bench/_kube_standin.py --port PORT [--pod-start S] [--pod-run S]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration import fake_kube_api as fake


def _shape(value: Any) -> Any:
    """The body with its scalars blanked: what the schema's structure checks see."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


class ValidatedShapes:
    """kubernetes_validate's `validate`, remembered per shape of body (see above)."""

    def __init__(self) -> None:
        import kubernetes_validate

        self.real = kubernetes_validate
        self.ValidationError = kubernetes_validate.ValidationError
        self.valid: set[str] = set()

    def validate(self, body: Any, version: str, strict: bool = False) -> None:
        key = json.dumps([version, strict, _shape(body)], sort_keys=True)
        if key not in self.valid:
            self.real.validate(body, version, strict=strict)
            self.valid.add(key)


@dataclass
class BenchKubeApi(fake.FakeKubeApi):
    created: dict[str, float] = field(default_factory=dict)  # Job -> when made (time.time())
    pod_of_job: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, job) -> pod

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_route("GET", "/_bench/stats", self._stats)
        return app

    async def _stats(self, _request: web.Request) -> web.Response:
        counts = Counter(f"{r.verb} {r.resource}{' (dry run)' if r.dry_run else ''}"
                         for r in self.requests)
        return web.json_response({"requests": dict(counts), "jobs": self.created})

    def _start_job(self, job: dict[str, Any]) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        self.created[name] = time.time()
        super()._start_job(job)
        for (plural, space, pod), obj in reversed(self.objects.items()):
            if plural == "pods" and space == ns:
                if obj["metadata"]["labels"].get("job-name") == name:
                    self.pod_of_job[(ns, name)] = pod
                break

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pod-start", type=float, default=0.2,
                        help="seconds a Job's pod is Pending (default 0.2)")
    parser.add_argument("--pod-run", type=float, default=0.3,
                        help="seconds it then runs before exiting 0 (default 0.3)")
    args = parser.parse_args()
    fake.kubernetes_validate = ValidatedShapes()  # type: ignore[assignment]
    api = BenchKubeApi(autorun=fake.PodRun(start=args.pod_start, run=args.pod_run,
                                           logs=b"done\n"),
                       history=1_000_000)
    web.run_app(api.app(), host="127.0.0.1", port=args.port, print=None,
                handler_cancellation=True)


if __name__ == "__main__":
    main()
