"""A stand-in for the Kubernetes API server, for the kubernetes backend's test only.

No API server (kube-apiserver, kind, k3s) can be installed or run on the machines this
project is built on, so this is the one place the project uses a stand-in: an aiohttp
app on loopback that speaks the part of the API the backend uses, as the API server
does it, and that the real `kubernetes` client talks to over HTTP:

* namespaced create (201), get and replace (200), delete (200) and list, for the kinds
  the backend makes, with `metadata.uid`, `metadata.resourceVersion` (one counter for
  all objects, as etcd's) and `metadata.creationTimestamp` set by the server;
* errors as `Status` objects: 404 NotFound, 409 AlreadyExists on create, 409 Conflict
  on a replace with a stale resourceVersion, 422 Invalid, 401 without the token;
* label selectors (`k=v`, `k`) and the field selector `metadata.name=...` on lists;
* watches (`?watch=true`) as newline-delimited JSON events from a resourceVersion on,
  ending after `timeoutSeconds`;
* a Job's pod made when the Job is created (the Job controller's part), and a test's
  hand to finish it: the pod Succeeded or Failed with an exit code and logs, then the
  Job Complete or Failed; deleting a Job deletes its pods (the garbage collector's part);
* `pods/{name}/log`.

Every body it receives is validated against the Kubernetes 1.30 schema with
kubernetes-validate (strict), and refused with 422 when invalid; every request is
recorded as the RBAC verb and resource it needs, so a test can hold the backend to
the Role in deploy/kubernetes/.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import itertools
import json
import uuid
from collections.abc import Iterable
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


@dataclass
class Request:
    """One request as RBAC sees it."""

    verb: str  # get list watch create update delete
    group: str
    resource: str  # plural, or `pods/log`
    name: str = ""


@dataclass
class Event:
    version: int
    type: str  # ADDED MODIFIED DELETED
    resource: str
    obj: dict[str, Any]


@dataclass
class FakeKubeApi:
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    deletes: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # options
    invalid: list[str] = field(default_factory=list)  # bodies refused by the schema
    logs: dict[str, bytes] = field(default_factory=dict)  # pod name -> its logs
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(100))
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
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

    def _record(self, verb: str, group: str, plural: str, name: str = "") -> None:
        self.requests.append(Request(verb, group, plural, name))
        asyncio.get_running_loop().create_task(self._notify())  # for wait_for_request

    async def _body(self, request: web.Request, kind: str, group: str, version: str) -> Any:
        body = await request.json()
        api_version = f"{group}/{version}" if group else version
        if body.get("kind") != kind or body.get("apiVersion") != api_version:
            return status_response(400, "BadRequest", f"expected {api_version} {kind}")
        try:
            kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            message = f"{kind} {body.get('metadata', {}).get('name')}: {exc.message}"
            self.invalid.append(message)
            return status_response(422, "Invalid", message)
        return body

    async def _create(self, request: web.Request) -> web.StreamResponse:
        group, version, plural, kind = self._resource(request)
        self._record("create", group, plural)
        body = await self._body(request, kind, group, version)
        if isinstance(body, web.Response):
            return body
        ns, name = request.match_info["ns"], body["metadata"]["name"]
        if (plural, ns, name) in self.objects:
            return status_response(
                409, "AlreadyExists", f'{plural} "{name}" already exists', name, plural
            )
        obj = self._store(plural, ns, body, previous=None)
        if kind == "Job":
            self._start_job(obj)
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
        self._record("update", group, plural, name)
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
        return web.json_response(self._store(plural, ns, body, previous=old))

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        group, _, plural, _ = self._resource(request)
        ns, name = request.match_info["ns"], request.match_info["name"]
        self._record("delete", group, plural, name)
        options = json.loads(await request.text() or "{}")
        for key in ("propagationPolicy", "gracePeriodSeconds"):
            if key in request.query:
                options[key] = request.query[key]
        unknown = set(options) - DELETE_OPTION_FIELDS
        if unknown or options.get("propagationPolicy") not in (
            None, "Foreground", "Background", "Orphan"
        ):
            return status_response(400, "BadRequest", f"bad DeleteOptions {options}")
        self.deletes.append((plural, name, options))
        obj = self.objects.get((plural, ns, name))
        if obj is None:
            return not_found(plural, name)
        if plural == "jobs":  # the garbage collector: its pods go with it
            for pod in self._select("pods", ns, f"job-name={name}"):
                self._remove("pods", ns, pod["metadata"]["name"])
        self._remove(plural, ns, name)
        return web.json_response(obj)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        group, version, plural, kind = self._resource(request)
        ns = request.match_info["ns"]
        labels = request.query.get("labelSelector", "")
        fields = request.query.get("fieldSelector", "")
        if request.query.get("watch") in ("true", "1"):
            self._record("watch", group, plural)
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
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if not since:  # from now, the current state first, as ADDED
            sent = self._version()
            for obj in self._select(plural, ns, labels, fields):
                await _send(response, "ADDED", obj)
        else:
            sent = int(since)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in [e for e in self.events if e.version > sent]:
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
                            lambda after=sent: self.closing or self._version() > after  # type: ignore[misc]
                        ),
                        left,
                    )
                except TimeoutError:
                    break
            if self.closing:
                break
        await response.write_eof()
        return response

    async def _log(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        self._record("get", "", "pods/log", name)
        if ("pods", ns, name) not in self.objects:
            return not_found("pods", name)
        if name not in self.logs:
            return status_response(
                400, "BadRequest", f'container "{request.query.get("container")}" in pod '
                f'"{name}" is waiting to start: PodInitializing'
            )
        return web.Response(body=self.logs[name], content_type="text/plain")

    # ---- the store -----------------------------------------------------------------

    def _version(self) -> int:
        return self.events[-1].version if self.events else 99

    def _store(
        self, plural: str, ns: str, body: dict[str, Any], previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        meta = obj["metadata"]
        meta["namespace"] = ns
        if previous is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
        else:
            meta["uid"] = previous["metadata"]["uid"]
            meta["creationTimestamp"] = previous["metadata"]["creationTimestamp"]
            obj.setdefault("status", previous.get("status", {}))
        if plural == "secrets" and "stringData" in obj:  # the API server's conversion
            data = obj.setdefault("data", {})
            for key, value in obj.pop("stringData").items():
                data[key] = base64.b64encode(value.encode()).decode()
        version = next(self._counter)
        meta["resourceVersion"] = str(version)
        self.objects[(plural, ns, meta["name"])] = obj
        self._emit(Event(version, "ADDED" if previous is None else "MODIFIED", plural, obj))
        return obj

    def _remove(self, plural: str, ns: str, name: str) -> None:
        obj = self.objects.pop((plural, ns, name))
        self._emit(Event(next(self._counter), "DELETED", plural, copy.deepcopy(obj)))

    def _emit(self, event: Event) -> None:
        self.events.append(Event(event.version, event.type, event.resource,
                                 copy.deepcopy(event.obj)))
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

    async def close(self) -> None:
        """End the watches still open, as an API server going away does."""
        self.closing = True
        await self._notify()

    # ---- the Job controller's part, and the test's hand --------------------------------

    def _start_job(self, job: dict[str, Any]) -> None:
        template = job["spec"]["template"]
        name = job["metadata"]["name"]
        labels = {
            **template["metadata"].get("labels", {}),
            "job-name": name,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": job["metadata"]["uid"],
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{uuid.uuid4().hex[:5]}",
                "labels": labels,
                "annotations": template["metadata"].get("annotations", {}),
                "ownerReferences": [{
                    "apiVersion": "batch/v1", "kind": "Job", "name": name,
                    "uid": job["metadata"]["uid"], "controller": True,
                }],
            },
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": "Pending"},
        }
        self._store("pods", job["metadata"]["namespace"], pod, previous=None)

    def job_pod(self, job: str, ns: str) -> dict[str, Any]:
        (pod,) = self._select("pods", ns, f"job-name={job}")
        return pod

    def finish_job(self, job: str, ns: str, exit_code: int, logs: bytes) -> None:
        """The script exited with `exit_code`, having written `logs`: the pod reaches its
        final phase, then the Job its condition, as the kubelet and Job controller do."""
        pod = self.job_pod(job, ns)
        name = pod["metadata"]["name"]
        self.logs[name] = logs
        reason = "Completed" if exit_code == 0 else "Error"
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
        stored = self.objects[("jobs", ns, job)]
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

    async def wait_for(self, plural: str, ns: str, name: str) -> dict[str, Any]:
        """The object, once it exists."""
        async with self._changed:
            await self._changed.wait_for(lambda: (plural, ns, name) in self.objects)
        return self.objects[(plural, ns, name)]

    async def wait_for_request(self, verb: str, resource: str) -> None:
        """Until the client has made such a request (a watch, say)."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: any(r.verb == verb and r.resource == resource for r in self.requests)
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


async def _send(response: web.StreamResponse, kind: str, obj: dict[str, Any]) -> None:
    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
