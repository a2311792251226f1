"""Services as Kubernetes objects, through the official `kubernetes` client (SPEC 7.3).

`deploy` applies what manifests.py makes (create; on 409 Conflict, replace) and then
deletes what the service no longer has, found by its labels; `remove` deletes all of it,
its jobs included, with foreground propagation, so that nothing it owns outlives it. A
job is a Job watched to its end, then its pod watched to a final phase; the exit status
is the script container's, and the pod's logs are copied into the job's log file.

The client is synchronous, so every call runs in a thread. Services are left running
when the controller stops (a restart of the controller must not take them down); its
start-up deploys the stored ones again, which leaves unchanged objects as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import threading
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from urllib3.exceptions import HTTPError

from faas_supervisor.controller import manifests
from faas_supervisor.controller.deployments import Deployment, LogLine, parse_stamped
from faas_supervisor.controller.fdl import Service
from faas_supervisor.errors import ConfigError, KubernetesError, ServiceUnavailable
from faas_supervisor.logs import get_logger

# An event travels in the `EVENT` variable, as OSCAR passes it; Linux refuses a single
# variable over 128 KiB at exec, so larger events cannot be jobs here.
EVENT_MAX = 96 * 1024
WATCH_SECONDS = 60  # one watch request; then another from where it left off
FOREGROUND = {"propagationPolicy": "Foreground"}
# The annotations the OSCAR manager's stop, start and restart write on a Deployment.
PREVIOUS_REPLICAS = "oscar.grycap.io/previous-replicas"
STOPPED = "oscar.grycap.io/stopped"
RESTARTED_AT = "oscar.grycap.io/restarted-at"
CLUSTER_DOMAIN = "cluster.local"
# The client's API class and the name in its method names, per kind.
_KINDS: dict[str, tuple[str, str]] = {
    "Secret": ("CoreV1Api", "secret"),
    "ConfigMap": ("CoreV1Api", "config_map"),
    "Deployment": ("AppsV1Api", "deployment"),
    "Service": ("CoreV1Api", "service"),
    "HorizontalPodAutoscaler": ("AutoscalingV2Api", "horizontal_pod_autoscaler"),
    "Ingress": ("NetworkingV1Api", "ingress"),
    "Job": ("BatchV1Api", "job"),
    "Pod": ("CoreV1Api", "pod"),
}
_SERVICE_KINDS = [kind for _, kind in manifests.MANIFEST_KINDS]
logger = get_logger(component="kubernetes-backend")


class _Stopped(Exception):
    """The job's wait was abandoned: run_job was cancelled."""


class KubernetesBackend:
    name = "kubernetes"

    def __init__(
        self,
        cluster: manifests.Cluster,
        kubeconfig: str = "",
        *,
        in_cluster: bool = False,
    ) -> None:
        """`kubeconfig` (else, unless `in_cluster`, ~/.kube/config): as settings.py chose."""
        self.cluster = cluster
        self.namespace = cluster.namespace
        self.kubeconfig = kubeconfig
        self.in_cluster = in_cluster
        self._services: dict[str, Service] = {}
        self._client: Any = None
        self._apis: dict[str, Any] = {}

    # ---- connection ------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._connect)
        logger.info(
            "kubernetes backend ready",
            server=self._client.configuration.host,
            namespace=self.namespace,
            runtime_image=self.cluster.runtime_image,
        )

    def _connect(self) -> None:
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            if self.in_cluster:
                config.load_incluster_config(client_configuration=configuration)
            else:
                # None: the client's own default, ~/.kube/config.
                config.load_kube_config(
                    config_file=self.kubeconfig or None, client_configuration=configuration
                )
        except (config.ConfigException, OSError) as exc:
            where = "in-cluster config" if self.in_cluster else self.kubeconfig or "~/.kube/config"
            raise ConfigError(f"kubernetes: cannot load {where}: {exc}") from None
        self._client = client.ApiClient(configuration)
        self._apis = {
            name: getattr(client, name)(self._client) for name, _ in set(_KINDS.values())
        }

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None

    def _method(self, verb: str, kind: str) -> Callable[..., Any]:
        api, noun = _KINDS[kind]
        method: Callable[..., Any] = getattr(self._apis[api], f"{verb}_namespaced_{noun}")
        return method

    def _call(self, verb: str, kind: str, name: str = "", **kwargs: Any) -> Any:
        """One request, its failure turned into a KubernetesError naming it."""
        from kubernetes.client.exceptions import ApiException

        if name:
            kwargs["name"] = name
        try:
            return self._method(verb, kind)(namespace=self.namespace, **kwargs)
        except ApiException as exc:
            raise _api_error(exc, verb, kind, name) from None
        except HTTPError as exc:  # no answer at all
            raise _unreachable(exc, verb, kind, name) from None

    # ---- services ----------------------------------------------------------------------

    async def deploy(self, service: Service) -> None:
        objects = manifests.service_objects(service, self.cluster)  # InvalidService first
        await asyncio.to_thread(self._apply_all, service.name, objects)
        self._services[service.name] = service
        logger.info("service applied", service=service.name, objects=len(objects))

    def _apply_all(self, name: str, objects: list[dict[str, Any]]) -> None:
        for obj in objects:
            self._apply(obj)
        # What an earlier definition had and this one has not (its secrets, say, or the
        # objects of a sync service now exposed) goes, found by the service's labels.
        keep = {(o["kind"], o["metadata"]["name"]) for o in objects}
        self._delete_labelled(name, _SERVICE_KINDS, keep)

    def _apply(self, obj: dict[str, Any]) -> None:
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            self._call("create", kind, body=obj)
        except KubernetesError as exc:
            if exc.status != 409:
                raise
            # It exists: replaced whole, as `kubectl replace`. Unconditional (no
            # resourceVersion): the definition in the store is the truth.
            self._call("replace", kind, name, body=obj)

    def _delete_labelled(
        self, name: str, kinds: list[str], keep: Collection[tuple[str, str]] = ()
    ) -> None:
        selector = manifests.service_selector(name)
        for kind in reversed(kinds):  # the users of an object before the object
            found = self._call("list", kind, label_selector=selector)
            for item in found.items:
                if (kind, item.metadata.name) not in keep:
                    self._delete(kind, item.metadata.name)

    def _delete(self, kind: str, name: str) -> None:
        try:
            self._call("delete", kind, name, body=dict(FOREGROUND))
        except KubernetesError as exc:
            if exc.status != 404:  # gone already: what was wanted
                raise

    async def remove(self, name: str) -> None:
        self._services.pop(name, None)
        await asyncio.to_thread(self._delete_labelled, name, ["Job", *_SERVICE_KINDS])
        logger.info("service removed", service=name)

    async def invoke_url(self, name: str) -> str:
        service = self._services.get(name)
        if service is None:
            raise ServiceUnavailable(f"service {name} is not deployed")
        return manifests.service_url(service, self.cluster, CLUSTER_DOMAIN)

    # ---- jobs ---------------------------------------------------------------------------

    async def run_job(self, service: Service, job: str, event: Path, log: Path) -> int:
        text = await asyncio.to_thread(_event_text, event)
        body = manifests.job(service, self.cluster, job, text)
        create = asyncio.ensure_future(asyncio.to_thread(self._create_job, body))
        stop = threading.Event()
        try:
            version = await asyncio.shield(create)
            return await asyncio.to_thread(self._follow, job, version, log, stop)
        except asyncio.CancelledError:
            # Deleted, or the controller is stopping: the Job goes with its pod, once its
            # creation has been answered (else the delete could overtake it). The
            # thread following it sees the deletion on its watch and ends.
            stop.set()
            with contextlib.suppress(Exception):
                await create
            with contextlib.suppress(KubernetesError):
                await asyncio.shield(asyncio.to_thread(self._delete, "Job", job))
            raise

    def _create_job(self, body: dict[str, Any]) -> str | None:
        """The Job made; the resource version to watch it from (None: its current state).

        A Job of that name exists when a controller stopped during the job, which now
        runs again: that Job is followed to its end rather than its script run twice."""
        try:
            created = self._call("create", "Job", body=body)
        except KubernetesError as exc:
            if exc.status != 409:
                raise
            logger.info("following the Job of an interrupted job", job=body["metadata"]["name"])
            return None
        return str(created.metadata.resource_version)

    def _follow(self, job: str, version: str | None, log: Path, stop: threading.Event) -> int:
        condition = self._wait_for_job(job, version, stop)
        pods = self._call("list", "Pod", label_selector=f"{manifests.JOB_LABEL}={job}")
        if not pods.items:
            raise KubernetesError(f"Job {job} failed without a pod: {condition}")
        pod = max(pods.items, key=lambda p: p.metadata.creation_timestamp or 0)
        raw = self._client.sanitize_for_serialization(pod)
        if not _pod_finished(raw):  # the Job's condition may come before the pod's phase
            raw = self._wait_for_pod(pod.metadata.name, pods.metadata.resource_version, stop)
        self._copy_logs(pod.metadata.name, log)
        code = _exit_code(raw)
        if code is None:
            raise KubernetesError(f"Job {job}: the script never ran ({condition})")
        return code

    def _watch(
        self, kind: str, name: str, version: str | None, stop: threading.Event,
        done: Callable[[dict[str, Any]], bool],
    ) -> dict[str, Any]:
        """The object `name` once `done` holds, watched from `version` on."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        while not stop.is_set():
            watcher = watch.Watch()
            try:
                for event in watcher.stream(
                    self._method("list", kind),
                    namespace=self.namespace,
                    field_selector=f"metadata.name={name}",
                    resource_version=version,
                    timeout_seconds=WATCH_SECONDS,
                ):
                    raw: dict[str, Any] = event["raw_object"]
                    if event["type"] == "DELETED" or stop.is_set():
                        raise _Stopped() if stop.is_set() else KubernetesError(
                            f"{kind} {name} was deleted before it finished"
                        )
                    version = raw["metadata"]["resourceVersion"]
                    if done(raw):
                        return raw
            except ApiException as exc:
                if exc.status != 410:
                    raise _api_error(exc, "watch", kind, name) from None
                version = None  # too old to resume from: start again from the current state
            except HTTPError as exc:
                raise _unreachable(exc, "watch", kind, name) from None
            finally:
                watcher.stop()
        raise _Stopped()

    def _wait_for_job(self, job: str, version: str | None, stop: threading.Event) -> str:
        """`Complete` or `Failed`, and why."""
        raw = self._watch("Job", job, version, stop, lambda o: _job_condition(o) is not None)
        return _job_condition(raw) or ""

    def _wait_for_pod(self, pod: str, version: str, stop: threading.Event) -> dict[str, Any]:
        return self._watch("Pod", pod, version, stop, _pod_finished)

    def _copy_logs(self, pod: str, log: Path) -> None:
        response = self._read_log(pod)
        with open(log, "ab") as out:
            try:
                for chunk in response.stream(1 << 16):
                    out.write(chunk)
            finally:
                response.release_conn()

    def _read_log(self, pod: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        api = self._apis["CoreV1Api"]
        try:
            return api.read_namespaced_pod_log(
                pod, self.namespace, container=manifests.CONTAINER, _preload_content=False
            )
        except ApiException as exc:
            raise _api_error(exc, "read logs of", "Pod", pod) from None
        except HTTPError as exc:
            raise _unreachable(exc, "read logs of", "Pod", pod) from None


    # ---- the service's Deployment, as the dashboard sees it ------------------------------

    def _read_deployment(self, service: Service) -> Any:
        """The service's Deployment (as manifests.py names it), None if there is none."""
        try:
            return self._call("read", "Deployment", manifests.deployment(
                service, self.cluster)["metadata"]["name"])
        except KubernetesError as exc:
            if exc.status == 404:
                return None
            raise

    async def deployment(self, service: Service) -> Deployment | None:
        found = await asyncio.to_thread(self._read_deployment, service)
        if found is None:
            return None
        status = found.status
        conditions = list(status.conditions or []) if status is not None else []
        latest = max(conditions, key=lambda c: c.last_update_time.timestamp()
                     if c.last_update_time else 0.0, default=None)
        return Deployment(
            desired=found.spec.replicas if found.spec.replicas is not None else 1,
            running=(status.replicas or 0) if status is not None else 0,
            ready=(status.available_replicas or 0) if status is not None else 0,
            failed=any((c.type, c.status) in (("ReplicaFailure", "True"),
                                              ("Progressing", "False")) for c in conditions),
            reason=f"{latest.reason or ''}: {latest.message or ''}".strip(": ") if latest else "",
            since=latest.last_update_time.timestamp()
            if latest is not None and latest.last_update_time else None,
        )

    async def deployment_logs(self, service: Service, tail: int) -> list[LogLine] | None:
        def read() -> list[LogLine] | None:
            found = self._read_deployment(service)
            if found is None:
                return None
            labels = found.spec.selector.match_labels or {}
            selector = ",".join(f"{k}={v}" for k, v in labels.items())
            pods = self._call("list", "Pod", label_selector=selector).items
            if not pods:
                return None
            lines: list[LogLine] = []
            for pod in pods:
                with contextlib.suppress(Exception):  # a pod not started yet: no logs
                    text = self._apis["CoreV1Api"].read_namespaced_pod_log(
                        pod.metadata.name, self.namespace, container=manifests.CONTAINER,
                        timestamps=True, tail_lines=tail)
                    lines.extend(parse_stamped(line) for line in str(text).splitlines()
                                 if line.strip())
            return lines

        return await asyncio.to_thread(read)

    async def stop_service(self, service: Service) -> None:
        def stop() -> None:
            found = self._read_deployment(service)
            if found is None:
                return
            annotations = dict(found.metadata.annotations or {})
            if found.spec.replicas:
                annotations[PREVIOUS_REPLICAS] = str(found.spec.replicas)
            annotations[STOPPED] = "true"
            found.metadata.annotations = annotations
            found.spec.replicas = 0
            self._call("replace", "Deployment", found.metadata.name, body=found)
            if service.exposed:  # else it would scale the Deployment up again
                self._delete("HorizontalPodAutoscaler",
                             manifests.exposed_names(service.name)["HorizontalPodAutoscaler"])

        await asyncio.to_thread(stop)

    async def start_service(self, service: Service) -> None:
        found = await asyncio.to_thread(self._read_deployment, service)
        if found is not None and found.spec.replicas == 0:
            await self.deploy(service)  # its replicas and its autoscaler, as defined

    async def restart_service(self, service: Service) -> None:
        def restart() -> None:
            found = self._read_deployment(service)
            if found is None or found.spec.replicas == 0:
                return
            # As `kubectl rollout restart`: a new pod template, so new pods replace the old.
            template = found.spec.template.metadata
            template.annotations = {**(template.annotations or {}),
                                    RESTARTED_AT: datetime.datetime.now(
                                        datetime.UTC).isoformat()}
            self._call("replace", "Deployment", found.metadata.name, body=found)

        await asyncio.to_thread(restart)


# ---- helpers -------------------------------------------------------------------------------


def _event_text(event: Path) -> str:
    """Blocking (a file read): run in a thread. The size first: a large event is not read."""
    size = event.stat().st_size
    if size > EVENT_MAX:
        raise KubernetesError(
            f"the event is {size} bytes; a Kubernetes job takes at most {EVENT_MAX} "
            "(it travels in the EVENT variable)"
        )
    data = event.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if "\0" in text or (data and not text):
        raise KubernetesError("the event is not UTF-8 text, which the EVENT variable must be")
    return text


def _job_condition(job: Mapping[str, Any]) -> str | None:
    for condition in job.get("status", {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            why = ": ".join(
                str(condition[k]) for k in ("reason", "message") if condition.get(k)
            )
            return f"{condition['type']}{f' ({why})' if why else ''}"
    return None


def _pod_finished(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _exit_code(pod: Mapping[str, Any]) -> int | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == manifests.CONTAINER:
            terminated = (status.get("state") or {}).get("terminated")
            if terminated is not None:
                return int(terminated.get("exitCode", 1))
    return None


def _unreachable(exc: Exception, verb: str, kind: str, name: str) -> KubernetesError:
    reason = getattr(exc, "reason", None) or exc
    return KubernetesError(f"kubernetes: {verb} {kind} {name}: no answer ({reason})")


def _api_error(exc: Any, verb: str, kind: str, name: str) -> KubernetesError:
    import json

    message = exc.reason or ""
    with contextlib.suppress(ValueError, TypeError):
        message = json.loads(exc.body).get("message") or message
    error = KubernetesError(
        f"kubernetes: {verb} {kind}{f' {name}' if name else ''}: {exc.status} {message}".strip()
    )
    error.status = exc.status
    return error
