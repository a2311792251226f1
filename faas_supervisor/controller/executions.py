"""The invocations the controller served, as the OSCAR manager's `GET /system/logs` lists them.

The manager logs one `[GIN-EXECUTIONS-LOGGER]` line per `/run` and `/job` request and
answers `GET /system/logs` with those of its current log (the dashboard's usage page).
Here the controller keeps the same lines in memory, the latest `KEPT` of them (a restart
starts a new list, as a new manager pod starts a new log). Its storage events reach the
manager as MinIO's `POST /job/NAME` requests, listed with the event's user and address;
those the controller finds itself (a watched folder, a queue, a reconciliation) are
listed alike, as the `POST /job/NAME` they stand for.

Anyone may send `POST /run/<8000 characters>`, which is listed too (a 404, as the
manager lists it): a path is kept cut to the longest a service's can be, and an event's
user and address to `TEXT_MAX`, so that no entry holds more than a few hundred bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from faas_supervisor import strict_json
from faas_supervisor.controller.fdl import NAME_MAX, Service
from faas_supervisor.controller.routes.answers import Handler

Submit = Callable[[Service, bytes], Awaitable[tuple[str, bool]]]

KEPT = 10_000
PREFIX = "[GIN-EXECUTIONS-LOGGER]"
USER = "oscar"  # the manager's user for a request without an OIDC identity
PATH_MAX = len("/run/") + NAME_MAX  # a service's path, kept whole
TEXT_MAX = 256  # an event's user and address
CUT = "…"  # ends what was cut


@dataclass(frozen=True)
class Execution:
    stamp: float
    status: int
    latency: float  # seconds
    client_ip: str
    method: str
    path: str
    user: str = USER

    def to_json(self) -> dict[str, Any]:
        when = _rfc3339_nano(self.stamp)
        latency = go_duration(self.latency)
        return {
            "timestamp": when,
            "status": self.status,
            "latency": latency,
            "client_ip": self.client_ip,
            "method": self.method,
            "path": self.path,
            "user": self.user,
            # The manager's log line, as its log.Printf("%s | %3d | %13v | %s | %-7s %s | %s").
            "raw": f"{PREFIX} {when} | {self.status:3d} | {latency:>13} | {self.client_ip} | "
                   f"{self.method:<7} {self.path} | {self.user}",
        }


class Executions:
    def __init__(self, kept: int = KEPT) -> None:
        self._kept: collections.deque[Execution] = collections.deque(maxlen=kept)

    def record(self, execution: Execution) -> None:
        self._kept.append(dataclasses.replace(
            execution,
            path=_cut(execution.path, PATH_MAX),
            client_ip=_cut(execution.client_ip, TEXT_MAX),
            user=_cut(execution.user, TEXT_MAX),
        ))

    def json(self) -> dict[str, Any]:
        return {"logs": [e.to_json() for e in self._kept]}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Each `POST /run/NAME` and `POST /job/NAME` recorded once answered, failures too."""
        if request.method != "POST" or not request.path.startswith(("/run/", "/job/")):
            return await handler(request)
        started = time.monotonic()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.record(Execution(time.time(), status, time.monotonic() - started,
                                  request.remote or "", request.method, request.path))

    def recording(self, submit: Submit) -> Submit:
        """`submit` (a storage event become a job), each call listed as its `POST /job`."""

        async def submit_and_record(service: Service, event: bytes) -> tuple[str, bool]:
            started = time.monotonic()
            name, new = await submit(service, event)
            user, address = event_identity(event)
            self.record(Execution(time.time(), 201 if new else 200, time.monotonic() - started,
                                  address, "POST", f"/job/{service.name}", user))
            return name, new

        return submit_and_record


def event_identity(event: bytes) -> tuple[str, str]:
    """Who made a MinIO-shaped event, and from where, as the manager reads them."""
    try:
        record = strict_json.loads(event)["Records"][0]
        user = record["userIdentity"]["principalId"]
        address = record.get("requestParameters", {}).get("sourceIPAddress", "")
    except (strict_json.NotJson, KeyError, IndexError, TypeError, AttributeError):
        return USER, ""
    ok = isinstance(user, str) and user and isinstance(address, str)
    return (user, address) if ok else (USER, "")


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most] + CUT


def _rfc3339_nano(stamp: float) -> str:
    """Go's time.RFC3339Nano in UTC: the fraction without trailing zeros."""
    whole = int(stamp)
    fraction = f"{stamp - whole:.9f}"[2:].rstrip("0")
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def go_duration(seconds: float) -> str:
    """A duration as Go's time.Duration prints it: 850ns, 12.5µs, 347.805334ms, 1.5s, 2m3s."""
    ns = round(seconds * 1e9)
    if ns < 1000:
        return f"{ns}ns"
    for unit, size in (("µs", 1_000), ("ms", 1_000_000)):
        if ns < size * 1000:
            return _trim(f"{ns / size:.{len(str(size)) - 1}f}") + unit
    minutes, rest = divmod(ns, 60_000_000_000)
    hours, minutes = divmod(minutes, 60)
    text = _trim(f"{rest / 1e9:.9f}") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def _trim(number: str) -> str:
    return number.rstrip("0").rstrip(".") if "." in number else number
