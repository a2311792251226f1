"""A service's deployment, as the OSCAR manager describes it (`/system/services/NAME/deployment`).

A backend says what it sees of the long-running part of a service (its watchdogs: local
processes, containers, a Kubernetes Deployment's pods) as a `Deployment`; this module
turns that into the manager's `ServiceDeploymentStatus` and `DeploymentLogStream`, with
its states, reasons and resource kinds. An exposed service's watchdogs are the manager's
Deployment (`exposed_service`); those of a service that is not exposed serve its `/run`,
as the manager's Knative service does (`knative_service`). A backend that has none for
the service (gone, or never made) answers as the manager does for a runtime it cannot
see: `unavailable`.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.routes.answers import rfc3339

READY, PENDING, DEGRADED, FAILED, STOPPED, UNAVAILABLE = (
    "ready", "pending", "degraded", "failed", "stopped", "unavailable")
EXPOSED_KIND, RUNTIME_KIND, UNAVAILABLE_KIND = "exposed_service", "knative_service", "unavailable"
TAIL_DEFAULT, TAIL_MAX = 200, 1000  # the manager's tailLines default and cap
TAIL_BYTES = 1 << 20  # the most of a log file's end read for its last lines
# Bytes a service watchdog's log may reach before only its end is kept: it gets a line per
# invocation, and a busy service's would otherwise fill the data folder's disk.
LOG_CAP = 16 << 20


@dataclass(frozen=True)
class Deployment:
    """What a backend sees of a service's watchdogs."""

    desired: int  # instances wanted; 0 when stopped
    running: int  # instances there, answering or not
    ready: int  # instances answering
    failed: bool = False  # the backend gave up on them (a crash loop, an image it cannot pull)
    reason: str = ""  # the backend's own latest word, if any
    since: float | None = None  # when that was


@dataclass(frozen=True)
class LogLine:
    message: str
    stamp: float | None = None  # seconds since the epoch, when the source tells


def status_json(
    service: Service, deployment: Deployment | None, namespace: str = ""
) -> dict[str, Any]:
    """The manager's ServiceDeploymentStatus; `None`: the backend has nothing of it."""
    kind = EXPOSED_KIND if service.exposed else RUNTIME_KIND
    if deployment is None:
        reason = ("Current deployment resources are unavailable." if service.exposed else
                  "Current deployment visibility is unavailable for this service runtime.")
        return _status(service, namespace, UNAVAILABLE, reason, None, 0, 0, UNAVAILABLE_KIND)
    desired, ready = deployment.desired, deployment.ready
    # Those wanted and not answering, there or not (a local watchdog waiting out its
    # restart's backoff is not running), and any extra there and not answering (a
    # rollout's surge).
    affected = max(desired - ready, deployment.running - ready, 0)
    if desired == 0:
        state = STOPPED
    elif ready >= desired:
        state = READY
    elif ready > 0:
        state = DEGRADED
    elif deployment.failed:
        state = FAILED
    else:
        state = PENDING
    return _status(service, namespace, state, _reason(state, kind, deployment, affected),
                   deployment.since, deployment.running, affected, kind)


def summary_json(status: dict[str, Any]) -> dict[str, Any]:
    """The manager's ServiceDeploymentSummary (a service's `deployment` with
    `?include=deployment`): the status without the service's name and namespace."""
    return {k: v for k, v in status.items() if k not in ("service_name", "namespace")}


def wants_deployment(include: str | None) -> bool:
    """`?include=a,deployment`, as the manager reads it (a list, any case)."""
    return any(v.strip().lower() == "deployment" for v in (include or "").split(","))


def _reason(state: str, kind: str, deployment: Deployment, affected: int) -> str:
    if state == STOPPED:
        return "Deployment is stopped."
    if deployment.reason:
        return deployment.reason
    if state == DEGRADED:
        return f"{affected} of {deployment.desired} instances are affected."
    if kind == EXPOSED_KIND:
        return "Deployment is ready." if state == READY else ""
    return {READY: "Runtime service is ready.", PENDING: "Runtime service is still reconciling.",
            FAILED: "Runtime service is not ready."}.get(state, "")


def _status(service: Service, namespace: str, state: str, reason: str, since: float | None,
            active: int, affected: int, kind: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"service_name": service.name}
    if namespace:
        answer["namespace"] = namespace
    answer["state"] = state
    if reason:
        answer["reason"] = reason
    if since is not None:
        answer["last_transition_time"] = rfc3339(since)
    answer.update(active_instances=active, affected_instances=affected, resource_kind=kind)
    return answer


def tail_lines(value: str | None) -> int:
    """The `tailLines` query as the manager reads it: 1..1000, else 200."""
    try:
        tail = int(value or "")
    except ValueError:
        return TAIL_DEFAULT
    return TAIL_DEFAULT if tail < 1 else min(tail, TAIL_MAX)


def go_bool(value: str | None) -> bool:
    """Go's strconv.ParseBool, an error being false (as the manager's queries read it)."""
    return (value or "") in ("1", "t", "T", "true", "TRUE", "True")


def logs_json(
    service: Service, lines: Iterable[LogLine] | None, tail: int, timestamps: bool
) -> dict[str, Any]:
    """The manager's DeploymentLogStream: the last `tail` lines, oldest first; `None`:
    the backend has no instance to read them from."""
    answer: dict[str, Any] = {"service_name": service.name, "available": False}
    if lines is None:
        answer.update(message="Deployment logs are unavailable for this service.", entries=[])
        return answer
    # Stable: lines without a time keep their order, after those with one.
    kept = sorted(lines, key=lambda line: (line.stamp is None, line.stamp or 0.0))[-tail:]
    if not kept:
        answer.update(message="Deployment logs are not yet available.", entries=[])
        return answer
    entries = []
    for line in kept:
        entry: dict[str, Any] = {}
        if timestamps and line.stamp is not None:
            entry["timestamp"] = rfc3339(line.stamp)
        entry["message"] = line.message
        entries.append(entry)
    answer.update(available=True, entries=entries)
    return answer


def trim_log(path: Path, cap: int = LOG_CAP, keep: int = TAIL_BYTES) -> bool:
    """A log over `cap` bytes cut to its last `keep` (all read_tail ever reads), in place:
    its writer appends (O_APPEND), so its next line goes after what is kept. A line it
    writes during the copy may be lost: a log, not a record. True when it was cut."""
    try:
        with open(path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size <= cap:
                return False
            f.seek(size - keep)
            tail = f.read()  # and what came meanwhile
            tail = tail[tail.find(b"\n") + 1:]  # from a line's start
            f.seek(0)
            f.write(tail)
            f.truncate(len(tail))
    except FileNotFoundError:
        return False
    return True


def read_tail(path: Path, count: int) -> list[str]:
    """The last `count` lines of a log file, from its last MiB at most ([] if missing)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(size - TAIL_BYTES, 0))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if len(data) == TAIL_BYTES and size > TAIL_BYTES:
        lines = lines[1:]  # the first may be cut
    return [line for line in lines if line.strip()][-count:]


def parse_stamped(line: str) -> LogLine:
    """A line as Docker and Kubernetes give it with timestamps: `RFC3339NANO message`."""
    stamp, _, message = line.partition(" ")
    try:
        # Nanoseconds are more than Python parses: cut to microseconds.
        head, dot, frac = stamp.rstrip("Z").partition(".")
        when = datetime.datetime.fromisoformat(f"{head}{dot}{frac[:6]}").replace(
            tzinfo=datetime.UTC)
    except ValueError:
        return LogLine(line)
    return LogLine(message, when.timestamp())
