"""A stand-in for the Kubernetes API server, for the kubernetes backend's tests only.

No API server (kube-apiserver, kind, k3s) can be installed or run on the machines this
project is built on, so this is the one place the project uses a stand-in: an aiohttp
app on loopback that speaks the part of the API the backend uses, as the API server
does it, and that the real `kubernetes` client talks to over HTTP:

* namespaced create (201), get and replace (200), delete (200) and list, for the kinds
  the backend makes, with `metadata.uid`, `metadata.resourceVersion` (one counter for
  all objects, as etcd's) and `metadata.creationTimestamp` set by the server;
* errors as `Status` objects: 404 NotFound, 409 AlreadyExists on create, 409 Conflict
  on a replace with a stale resourceVersion, 422 Invalid, 401 without the token;
* `dryRun=All` on create, replace and delete: checked and answered, nothing stored;
* an `admission` check of its own (a quota, a policy): 403 Forbidden with its message;
* resource quantities decoded as the API server's decoder does (resource.ParseQuantity):
  a body holding one it cannot parse (`1g`, `512K`) is 400 BadRequest, not 422;
* label selectors (`k=v`, `k`) and the field selector `metadata.name=...` on lists;
* watches (`?watch=true`) as newline-delimited JSON events from a resourceVersion on,
  ending after `timeoutSeconds`; the event history is bounded (`history`), and a watch
  from a version older than what it keeps gets an `ERROR` event with a 410 Gone Status,
  as from an API server whose etcd compacted; `drop_watches()` ends every open watch
  (a disconnect), `compact()` forgets the history; with `silent`, a new watch sends its
  headers and then nothing, not even its end (a half-open connection);
* deletion with `propagationPolicy=Foreground`: the object gets a `deletionTimestamp`
  and the `foregroundDeletion` finalizer first, its dependents (a Job's or a
  Deployment's pods) go, then it does (the garbage collector's part);
* a Job's pod made when the Job is created (the Job controller's part); the pod's run
  either by a test's hand (`finish_job`) or, with `autorun`, on its own: Pending for a
  while, Running (its logs readable), then ended with an exit code or OOMKilled, and the
  Job Complete or Failed; an image in `image_errors` leaves the pod waiting with
  `ErrImagePull`, then `ImagePullBackOff`, as the kubelet does;
* a Deployment's pods (`spec.replicas` of them), ready after `ready_delay` seconds,
  and its `status.readyReplicas`;
* finished Jobs deleted `ttlSecondsAfterFinished` (times `ttl_factor`) after they end;
* `pods/{name}/log`, while the pod runs and after.

Every body it receives is validated against the Kubernetes 1.30 schema with
kubernetes-validate (strict), and refused with 422 when invalid; every request is
recorded as the RBAC verb and resource it needs, so a test can hold the backend to
the Role in deploy/kubernetes/.

For bench/scale.py, `FakeKubeApi(autorun=PodRun(start=0.5, run=2.0))` (or a function of
the Job giving a PodRun, for mixed outcomes) runs every Job's pod to its end unaided.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import copy
import datetime
import itertools
import json
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import kubernetes_validate
from aiohttp import web

K8S_VERSION = "1.30"
TOKEN = "fake-kube-token"
DELETE_OPTION_FIELDS = {
    "apiVersion", "kind", "dryRun", "gracePeriodSeconds", "orphanDependents",
    "preconditions", "propagationPolicy", "ignoreStoreReadErrorWithClusterBreakingPotential",
}
# (group, version, plural) -> kind
RESOURCES: dict[tuple[str, str, str], str] = {
    ("", "v1", "configmaps"): "ConfigMap",
    ("", "v1", "secrets"): "Secret",
    ("", "v1", "services"): "Service",
    ("", "v1", "pods"): "Pod",
    ("apps", "v1", "deployments"): "Deployment",
    ("autoscaling", "v2", "horizontalpodautoscalers"): "HorizontalPodAutoscaler",
    ("networking.k8s.io", "v1", "ingresses"): "Ingress",
    ("batch", "v1", "jobs"): "Job",
}
OWNER_LABEL = "fake-kube/owner"  # on the pods the stand-in makes: `<plural>/<name>`
OOM_EXIT = 137  # SIGKILL, as the kernel's OOM killer leaves it
# resource.ParseQuantity: the shape its error names, then the suffixes it knows.
QUANTITY_SHAPE = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
QUANTITY = re.compile(
    r"[+-]?(\d+(\.\d*)?|\.\d*)(n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][-+]?\d+)?"
)


@dataclass
class Request:
    """One request as RBAC sees it."""

    verb: str  # get list watch create update delete
    group: str
    resource: str  # plural, or `pods/log`
    name: str = ""
    dry_run: bool = False
    since: str = ""  # a watch's resourceVersion


@dataclass
class Event:
    version: int
    type: str  # ADDED MODIFIED DELETED
    resource: str
    obj: dict[str, Any]


@dataclass(frozen=True)
class PodRun:
    """How a Job's pod runs when the stand-in plays the kubelet on its own (`autorun`)."""

    start: float = 0.0  # seconds Pending (scheduled, pulling) before Running
    run: float = 0.0  # seconds Running before its container ends
    exit_code: int = 0
    logs: bytes = b""  # written as it starts running: readable while it runs
    oom: bool = False  # killed for its memory: exit 137, reason OOMKilled


@dataclass
class FakeKubeApi:
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    deletes: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # options
    invalid: list[str] = field(default_factory=list)  # bodies refused by the schema
    logs: dict[str, bytes] = field(default_factory=dict)  # pod name -> its logs
    # None: a Job's pod waits for finish_job; else how each pod runs (or a function of
    # the Job giving it, None from it leaving that one to finish_job).
    autorun: PodRun | Callable[[dict[str, Any]], PodRun | None] | None = None
    image_errors: set[str] = field(default_factory=set)  # images no pod can pull
    ready_delay: float = 0.0  # seconds a Deployment's pod takes to be ready
    ttl_factor: float = 1.0  # ttlSecondsAfterFinished is multiplied by it
    history: int = 10_000  # events kept for watches to resume from
    silent: bool = False  # new watches send nothing more after their headers
    # An admission check (a quota, a policy webhook): a message refuses the object with
    # 403 Forbidden, dry runs included, as the API server's admission chain does.
    admission: Callable[[dict[str, Any]], str | None] | None = None
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(100))
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _epoch: int = 0  # bumped to end every open watch
    _compacted: int = 0  # the oldest version a watch may resume from
    _timers: set[asyncio.TimerHandle] = field(default_factory=set)
    # (namespace, OWNER_LABEL's value) -> its pods' names: no scan of every object per Job
    _owned: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    closing: bool = False

    # ---- the app -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        for prefix in ("/api/{version}", "/apis/{group}/{version}"):
            base = prefix + "/namespaces/{ns}/{plural}"
            app.router.add_route("GET", base, self._list)
            app.router.add_route("POST", base, self._create)
            app.router.add_route("GET", base + "/{name}", self._get)
            app.router.add_route("PUT", base + "/{name}", self._replace)
            app.router.add_route("DELETE", base + "/{name}", self._delete)
        app.router.add_route("GET", "/api/v1/namespaces/{ns}/pods/{name}/log", self._log)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return status_response(401, "Unauthorized", "Unauthorized")
        return await handler(request)

    # ---- handlers ------------------------------------------------------------------

    def _resource(self, request: web.Request) -> tuple[str, str, str, str]:
        info = request.match_info
        key = (info.get("group", ""), info["version"], info["plural"])
        if key not in RESOURCES:
            raise web.HTTPNotFound(text=f"no resource {key}")
        return key[0], key[1], key[2], RESOURCES[key]

    def _record(
        self, verb: str, group: str, plural: str, name: str = "", dry_run: bool = False
    ) -> None:
        self.requests.append(Request(verb, group, plural, name, dry_run))
        asyncio.get_running_loop().create_task(self._notify())  # for wait_for_request

    @staticmethod
    def _dry_run(request: web.Request) -> Any:
        value = request.query.get("dryRun")
        if value not in (None, "All"):
            return status_response(400, "BadRequest", f"invalid dryRun {value!r}")
        return value == "All"

    async def _body(self, request: web.Request, kind: str, group: str, version: str) -> Any:
        body = await request.json()
        api_version = f"{group}/{version}" if group else version
        if body.get("kind") != kind or body.get("apiVersion") != api_version:
            return status_response(400, "BadRequest", f"expected {api_version} {kind}")
        if problem := quantity_problem(body):  # the decoder's, before any validation
            return status_response(
                400, "BadRequest",
                f'{kind} in version "{version}" cannot be handled as a {kind}: {problem}',
            )
        try:
            kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            message = f"{kind} {body.get('metadata', {}).get('name')}: {exc.message}"
            self.invalid.append(message)
            return status_response(422, "Invalid", message)
        return body

    async def _create(self, request: web.Request) -> web.StreamResponse:
        group, version, plural, kind = self._resource(request)
        dry = self._dry_run(request)
        if isinstance(dry, web.Response):
            return dry
        self._record("create", group, plural, dry_run=dry)
        body = await self._body(request, kind, group, version)
        if isinstance(body, web.Response):
            return body
        ns, name = request.match_info["ns"], body["metadata"]["name"]
        if (plural, ns, name) in self.objects:
            return status_response(
                409, "AlreadyExists", f'{plural} "{name}" already exists', name, plural
            )
        if self.admission is not None and (refusal := self.admission(body)):
            return status_response(403, "Forbidden", refusal, name, plural)
        if dry:
            return web.json_response(self._prepare(plural, ns, body, None), status=201)
        obj = self._store(plural, ns, body, previous=None)
        if kind == "Job":
            self._start_job(obj)
        elif kind == "Deployment":
            self._roll_out(obj)
        return web.json_response(obj, status=201)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        group, _, plural, _ = self._resource(request)
        ns, name = request.match_info["ns"], request.match_info["name"]
        self._record("get", group, plural, name)
        obj = self.objects.get((plural, ns, name))
        if obj is None:
            return not_found(plural, name)
        return web.json_response(obj)

    async def _replace(self, request: web.Request) -> web.StreamResponse:
        group, version, plural, kind = self._resource(request)
        ns, name = request.match_info["ns"], request.match_info["name"]
        dry = self._dry_run(request)
        if isinstance(dry, web.Response):
            return dry
        self._record("update", group, plural, name, dry)
        body = await self._body(request, kind, group, version)
        if isinstance(body, web.Response):
            return body
        old = self.objects.get((plural, ns, name))
        if old is None:
            return not_found(plural, name)
        given = body["metadata"].get("resourceVersion")
        if given and given != old["metadata"]["resourceVersion"]:
            return status_response(
                409, "Conflict",
                f'Operation cannot be fulfilled on {plural} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                name, plural,
            )
        if self.admission is not None and (refusal := self.admission(body)):
            return status_response(403, "Forbidden", refusal, name, plural)
        if dry:
            return web.json_response(self._prepare(plural, ns, body, old))
        obj = self._store(plural, ns, body, previous=old)
        if kind == "Deployment" and obj["spec"] != old["spec"]:
            self._roll_out(obj)
        return web.json_response(obj)

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        group, _, plural, _ = self._resource(request)
        ns, name = request.match_info["ns"], request.match_info["name"]
        options = json.loads(await request.text() or "{}")
        for key in ("propagationPolicy", "gracePeriodSeconds", "dryRun"):
            if key in request.query:
                options[key] = request.query[key]
        dry = options.get("dryRun") in ("All", ["All"])
        self._record("delete", group, plural, name, dry)
        unknown = set(options) - DELETE_OPTION_FIELDS
        policy = options.get("propagationPolicy")
        if unknown or policy not in (None, "Foreground", "Background", "Orphan"):
            return status_response(400, "BadRequest", f"bad DeleteOptions {options}")
        obj = self.objects.get((plural, ns, name))
        if not dry:
            self.deletes.append((plural, name, options))
        if obj is None:
            return not_found(plural, name)
        if dry:
            return web.json_response(obj)
        if policy == "Foreground":
            # Marked first, gone once its dependents are: the garbage collector's part.
            if "deletionTimestamp" not in obj["metadata"]:
                marked = copy.deepcopy(obj)
                marked["metadata"]["deletionTimestamp"] = now()
                marked["metadata"]["finalizers"] = ["foregroundDeletion"]
                obj = self._store(plural, ns, marked, previous=obj)
                self._later(0, self._collect, plural, ns, name)
            return web.json_response(obj)
        for pod in self._dependents(plural, ns, name):
            self._remove("pods", ns, pod)
        self._remove(plural, ns, name)
        return web.json_response(obj)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        group, version, plural, kind = self._resource(request)
        ns = request.match_info["ns"]
        labels = request.query.get("labelSelector", "")
        fields = request.query.get("fieldSelector", "")
        if request.query.get("watch") in ("true", "1"):
            self.requests.append(
                Request("watch", group, plural, since=request.query.get("resourceVersion", ""))
            )
            asyncio.get_running_loop().create_task(self._notify())
            return await self._watch(request, plural, ns, labels, fields)
        self._record("list", group, plural)
        api_version = f"{group}/{version}" if group else version
        return web.json_response({
            "kind": f"{kind}List",
            "apiVersion": api_version,
            "metadata": {"resourceVersion": str(self._version())},
            "items": list(self._select(plural, ns, labels, fields)),
        })

    async def _watch(
        self, request: web.Request, plural: str, ns: str, labels: str, fields: str
    ) -> web.StreamResponse:
        since = request.query.get("resourceVersion")
        timeout = float(request.query.get("timeoutSeconds", "30"))
        epoch = self._epoch
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if self.silent:  # until the client gives up (its handler is cancelled) or we close
            async with self._changed:
                await self._changed.wait_for(lambda: self.closing)
            return response
        if not since or since == "0":  # from now, the current state first, as ADDED
            sent = self._version()
            for obj in self._select(plural, ns, labels, fields):
                await _send(response, "ADDED", obj)
        else:
            sent = int(since)
            if sent < self._compacted:
                # What the API server answers a watch its etcd can no longer serve.
                gone = {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": f"too old resource version: {sent} ({self._compacted})",
                    "reason": "Expired", "code": 410,
                }
                await _send(response, "ERROR", gone)
                await response.write_eof()
                return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            start = bisect.bisect_right(self.events, sent, key=lambda e: e.version)
            for event in self.events[start:]:
                sent = event.version
                if event.resource == plural and _matches(event.obj, ns, labels, fields):
                    await _send(response, event.type, event.obj)
            left = deadline - loop.time()
            if left <= 0:
                break
            async with self._changed:
                try:
                    await asyncio.wait_for(
                        self._changed.wait_for(
                            lambda after=sent: (  # type: ignore[misc]
                                self.closing or self._epoch != epoch
                                or self._version() > after
                            )
                        ),
                        left,
                    )
                except TimeoutError:
                    break
            if self.closing or self._epoch != epoch:
                break
        await response.write_eof()
        return response

    async def _log(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        self._record("get", "", "pods/log", name)
        pod = self.objects.get(("pods", ns, name))
        if pod is None:
            return not_found("pods", name)
        if name not in self.logs and pod["status"].get("phase") == "Pending":
            return status_response(
                400, "BadRequest", f'container "{request.query.get("container")}" in pod '
                f'"{name}" is waiting to start: PodInitializing'
            )
        return web.Response(body=self.logs.get(name, b""), content_type="text/plain")

    # ---- the store -----------------------------------------------------------------

    def _version(self) -> int:
        return self.events[-1].version if self.events else 99

    def _prepare(
        self, plural: str, ns: str, body: dict[str, Any], previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The object as the server would store it (no version yet)."""
        obj = copy.deepcopy(body)
        meta = obj["metadata"]
        meta["namespace"] = ns
        if previous is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            meta["generation"] = 1
        else:
            for key in ("uid", "creationTimestamp", "deletionTimestamp", "finalizers"):
                if key in previous["metadata"]:
                    meta[key] = previous["metadata"][key]
            changed = obj.get("spec") != previous.get("spec")
            meta["generation"] = previous["metadata"].get("generation", 1) + changed
            obj.setdefault("status", previous.get("status", {}))
        if plural == "secrets" and "stringData" in obj:  # the API server's conversion
            data = obj.setdefault("data", {})
            for key, value in obj.pop("stringData").items():
                data[key] = base64.b64encode(value.encode()).decode()
        return obj

    def _store(
        self, plural: str, ns: str, body: dict[str, Any], previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        obj = self._prepare(plural, ns, body, previous)
        version = next(self._counter)
        obj["metadata"]["resourceVersion"] = str(version)
        self.objects[(plural, ns, obj["metadata"]["name"])] = obj
        if plural == "pods" and OWNER_LABEL in obj["metadata"].get("labels", {}):
            owner = (ns, obj["metadata"]["labels"][OWNER_LABEL])
            self._owned.setdefault(owner, set()).add(obj["metadata"]["name"])
        self._emit(Event(version, "ADDED" if previous is None else "MODIFIED", plural, obj))
        return obj

    def _remove(self, plural: str, ns: str, name: str) -> None:
        obj = self.objects.pop((plural, ns, name), None)
        if obj is None:
            return
        if plural == "pods" and OWNER_LABEL in obj["metadata"].get("labels", {}):
            owned = self._owned.get((ns, obj["metadata"]["labels"][OWNER_LABEL]), set())
            owned.discard(name)
        version = next(self._counter)
        obj["metadata"]["resourceVersion"] = str(version)
        self._emit(Event(version, "DELETED", plural, copy.deepcopy(obj)))

    def _emit(self, event: Event) -> None:
        self.events.append(Event(event.version, event.type, event.resource,
                                 copy.deepcopy(event.obj)))
        if len(self.events) > 2 * self.history:  # trimmed in steps, not at every event
            del self.events[: len(self.events) - self.history]
            self._compacted = self.events[0].version - 1
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _select(
        self, plural: str, ns: str, labels: str = "", fields: str = ""
    ) -> Iterable[dict[str, Any]]:
        return [
            copy.deepcopy(obj)
            for (p, _, _), obj in sorted(self.objects.items())
            if p == plural and _matches(obj, ns, labels, fields)
        ]

    def _dependents(self, plural: str, ns: str, name: str) -> list[str]:
        return sorted(self._owned.pop((ns, f"{plural}.{name}"), set()))

    def _collect(self, plural: str, ns: str, name: str) -> None:
        """Foreground deletion's end: the dependents, then the owner."""
        for pod in self._dependents(plural, ns, name):
            self._remove("pods", ns, pod)
        self._remove(plural, ns, name)

    def _later(self, delay: float, work: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            self._timers.discard(handle)
            if not self.closing:
                work(*args)

        handle = asyncio.get_running_loop().call_later(delay, run)
        self._timers.add(handle)

    async def close(self) -> None:
        """End the watches still open, as an API server going away does."""
        self.closing = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        await self._notify()

    async def drop_watches(self) -> None:
        """End every open watch, as a connection lost or an API server restarting does."""
        async with self._changed:  # no await after the bump: the caller acts first
            self._epoch += 1
            self._changed.notify_all()

    def compact(self) -> None:
        """Forget the event history, as etcd's compaction does: a watch resuming from an
        older version is answered 410 Gone."""
        self._compacted = self._version()  # watches streaming go on, as etcd's do

    # ---- the controllers' and the kubelet's parts ------------------------------------

    def _new_pod(self, owner: dict[str, Any], plural: str, name: str) -> dict[str, Any]:
        template = owner["spec"]["template"]
        kind = "Job" if plural == "jobs" else "ReplicaSet"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": {
                    **template["metadata"].get("labels", {}),
                    OWNER_LABEL: f"{plural}.{owner['metadata']['name']}",
                },
                "annotations": template["metadata"].get("annotations", {}),
                "ownerReferences": [{
                    "apiVersion": "batch/v1" if kind == "Job" else "apps/v1",
                    "kind": kind, "name": owner["metadata"]["name"],
                    "uid": owner["metadata"]["uid"], "controller": True,
                }],
            },
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": "Pending"},
        }
        if kind == "Job":
            pod["metadata"]["labels"].update({
                "job-name": owner["metadata"]["name"],
                "batch.kubernetes.io/job-name": owner["metadata"]["name"],
                "controller-uid": owner["metadata"]["uid"],
            })
        return pod

    def _start_job(self, job: dict[str, Any]) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        pod = self._new_pod(job, "jobs", f"{name}-{uuid.uuid4().hex[:5]}")
        stored = self._store("pods", ns, pod, previous=None)
        if self._pull_failed(ns, stored):
            return
        run = self.autorun(job) if callable(self.autorun) else self.autorun
        if run is not None:
            self._later(run.start, self._run_pod, ns, name, stored["metadata"]["name"], run)

    def _pull_failed(self, ns: str, pod: dict[str, Any]) -> bool:
        """An image in image_errors: the pod waits with ErrImagePull, then
        ImagePullBackOff, and never starts."""
        spec = pod["spec"]
        bad = [
            (key, c) for key, group in (("initContainerStatuses", "initContainers"),
                                        ("containerStatuses", "containers"))
            for c in spec.get(group, []) if c["image"] in self.image_errors
        ]
        if not bad:
            return False
        name = pod["metadata"]["name"]
        for reason, delay in (("ErrImagePull", 0.0), ("ImagePullBackOff", 0.05)):
            def wait(reason: str = reason) -> None:
                current = self.objects.get(("pods", ns, name))
                if current is None:
                    return
                updated = copy.deepcopy(current)
                statuses: dict[str, list[dict[str, Any]]] = {}
                for key, container in bad:
                    statuses.setdefault(key, []).append({
                        "name": container["name"], "image": container["image"],
                        "imageID": "", "ready": False, "restartCount": 0,
                        "state": {"waiting": {
                            "reason": reason,
                            "message": f'Back-off pulling image "{container["image"]}"'
                            if reason == "ImagePullBackOff" else
                            f'failed to pull and unpack image "{container["image"]}": '
                            "not found",
                        }},
                    })
                updated["status"] = {"phase": "Pending", **statuses}
                self._store("pods", ns, updated, previous=current)

            self._later(delay, wait)
        return True

    def _run_pod(self, ns: str, job: str, pod: str, run: PodRun) -> None:
        current = self.objects.get(("pods", ns, pod))
        if current is None:
            return
        self.logs[pod] = run.logs
        updated = copy.deepcopy(current)
        container = updated["spec"]["containers"][0]
        updated["status"] = {
            "phase": "Running",
            "containerStatuses": [{
                "name": container["name"], "image": container["image"], "imageID": "",
                "ready": True, "restartCount": 0,
                "state": {"running": {"startedAt": now()}},
            }],
        }
        self._store("pods", ns, updated, previous=current)
        self._later(run.run, self._end_pod, ns, job, pod, run)

    def _end_pod(self, ns: str, job: str, pod: str, run: PodRun) -> None:
        if ("pods", ns, pod) in self.objects:
            code, reason = (OOM_EXIT, "OOMKilled") if run.oom else (run.exit_code, "")
            self._finish(job, ns, pod, code, self.logs.get(pod, b""), reason)

    def job_pod(self, job: str, ns: str) -> dict[str, Any]:
        (name,) = self._owned[(ns, f"jobs.{job}")]
        return copy.deepcopy(self.objects[("pods", ns, name)])

    def finish_job(self, job: str, ns: str, exit_code: int, logs: bytes) -> None:
        """The script exited with `exit_code`, having written `logs`: the pod reaches its
        final phase, then the Job its condition, as the kubelet and Job controller do."""
        pod = self.job_pod(job, ns)
        self._finish(job, ns, pod["metadata"]["name"], exit_code, logs)

    def _finish(
        self, job: str, ns: str, name: str, exit_code: int, logs: bytes, reason: str = ""
    ) -> None:
        pod = copy.deepcopy(self.objects[("pods", ns, name)])
        self.logs[name] = logs
        reason = reason or ("Completed" if exit_code == 0 else "Error")
        pod["status"] = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [{
                "name": pod["spec"]["containers"][0]["name"],
                "image": pod["spec"]["containers"][0]["image"],
                "imageID": "", "ready": False, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "reason": reason}},
            }],
        }
        self._store("pods", ns, pod, previous=self.objects[("pods", ns, name)])
        stored = self.objects.get(("jobs", ns, job))
        if stored is None:
            return
        updated = copy.deepcopy(stored)
        condition = {"type": "Complete", "status": "True"} if exit_code == 0 else {
            "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit",
        }
        updated["status"] = {
            "succeeded" if exit_code == 0 else "failed": 1,
            "conditions": [condition],
        }
        self._store("jobs", ns, updated, previous=stored)
        ttl = stored["spec"].get("ttlSecondsAfterFinished")
        if ttl is not None:  # the TTL controller's part, in the background
            self._later(ttl * self.ttl_factor, self._expire, ns, job, stored["metadata"]["uid"])

    def _expire(self, ns: str, job: str, uid: str) -> None:
        current = self.objects.get(("jobs", ns, job))
        if current is not None and current["metadata"]["uid"] == uid:
            self._collect("jobs", ns, job)

    def _roll_out(self, deployment: dict[str, Any]) -> None:
        """The Deployment's pods made anew (the ReplicaSet's part), ready after
        `ready_delay`, its status counted."""
        ns, name = deployment["metadata"]["namespace"], deployment["metadata"]["name"]
        for old in self._dependents("deployments", ns, name):
            self._remove("pods", ns, old)
        replicas = deployment["spec"].get("replicas", 1)
        self._deployment_status(ns, name, 0)
        for _ in range(replicas):
            pod = self._new_pod(deployment, "deployments", f"{name}-{uuid.uuid4().hex[:10]}")
            stored = self._store("pods", ns, pod, previous=None)
            if not self._pull_failed(ns, stored):
                self._later(self.ready_delay, self._ready, ns, name, stored["metadata"]["name"])

    def _ready(self, ns: str, deployment: str, pod: str) -> None:
        current = self.objects.get(("pods", ns, pod))
        if current is None:
            return
        updated = copy.deepcopy(current)
        container = updated["spec"]["containers"][0]
        updated["status"] = {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{
                "name": container["name"], "image": container["image"], "imageID": "",
                "ready": True, "restartCount": 0, "state": {"running": {"startedAt": now()}},
            }],
        }
        self._store("pods", ns, updated, previous=current)
        ready = sum(
            1 for p in self._owned.get((ns, f"deployments.{deployment}"), ())
            if self.objects[("pods", ns, p)]["status"].get("phase") == "Running"
        )
        self._deployment_status(ns, deployment, ready)

    def _deployment_status(self, ns: str, name: str, ready: int) -> None:
        current = self.objects.get(("deployments", ns, name))
        if current is None:
            return
        updated = copy.deepcopy(current)
        updated["status"] = {
            "observedGeneration": current["metadata"].get("generation", 1),
            "replicas": current["spec"].get("replicas", 1),
            "updatedReplicas": current["spec"].get("replicas", 1),
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        self._store("deployments", ns, updated, previous=current)

    # ---- for tests -------------------------------------------------------------------

    async def wait_for(self, plural: str, ns: str, name: str) -> dict[str, Any]:
        """The object, once it exists."""
        async with self._changed:
            await self._changed.wait_for(lambda: (plural, ns, name) in self.objects)
        return self.objects[(plural, ns, name)]

    async def wait_gone(self, plural: str, ns: str, name: str) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: (plural, ns, name) not in self.objects)

    async def wait_until(self, check: Callable[[], bool]) -> None:
        async with self._changed:
            await self._changed.wait_for(check)

    async def wait_for_request(self, verb: str, resource: str, count: int = 1) -> None:
        """Until the client has made such a request (a watch, say) `count` times."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: sum(r.verb == verb and r.resource == resource
                            for r in self.requests) >= count
            )

    def names(self, plural: str, ns: str) -> set[str]:
        return {n for (p, s, n) in self.objects if p == plural and s == ns}


# ---- helpers -----------------------------------------------------------------------------


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_response(
    code: int, reason: str, message: str, name: str = "", kind: str = ""
) -> web.Response:
    status: dict[str, Any] = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    }
    if name:
        status["details"] = {"name": name, "kind": kind}
    return web.json_response(status, status=code)


def not_found(plural: str, name: str) -> web.Response:
    return status_response(404, "NotFound", f'{plural} "{name}" not found', name, plural)


def _matches(obj: dict[str, Any], ns: str, labels: str, fields: str) -> bool:
    meta = obj["metadata"]
    if meta.get("namespace") != ns:
        return False
    have = meta.get("labels") or {}
    for term in filter(None, labels.split(",")):
        key, _, value = term.partition("=")
        if key not in have or ("=" in term and have[key] != value):
            return False
    for term in filter(None, fields.split(",")):
        key, _, value = term.partition("=")
        if key != "metadata.name":
            raise web.HTTPBadRequest(text=f"field selector {key} is not supported here")
        if meta["name"] != value:
            return False
    return True


def quantity_problem(body: dict[str, Any]) -> str | None:
    """Why the API server could not decode the containers' resources of a pod, a Job's or
    a Deployment's template (resource.ParseQuantity's errors); None: it could."""
    spec = body.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or spec
    for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
        for amounts in (container.get("resources") or {}).values():
            for amount in amounts.values():
                text = str(amount)
                if not re.fullmatch(QUANTITY_SHAPE, text):
                    return f"quantities must match the regular expression '{QUANTITY_SHAPE}'"
                if not QUANTITY.fullmatch(text):
                    return "unable to parse quantity's suffix"
    return None


async def _send(response: web.StreamResponse, kind: str, obj: dict[str, Any]) -> None:
    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
