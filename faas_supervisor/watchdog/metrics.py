"""The watchdog's Prometheus metrics, in a registry of its own (kept apart from routing)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, float("inf"))
# Set on a request once its WebSocket upgrade is sent: the session counts as the 101 it
# was, however it ends. aiohttp cancels the handler of a session that closed (it closes
# the connection), which would otherwise count as a client gone (499).
UPGRADED = web.RequestKey("upgraded", bool)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.invocations = Counter(
            "faas_invocations", "Invocations by HTTP status code.", ["code"], registry=self.registry
        )
        self.duration = Histogram(
            "faas_invocation_duration_seconds",
            "Time from request to the end of the response.",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge("faas_inflight", "Invocations in flight.", registry=self.registry)
        self.bytes_in = Counter("faas_bytes_in", "Request body bytes read.", registry=self.registry)
        self.bytes_out = Counter(
            "faas_bytes_out", "Response body bytes written.", registry=self.registry
        )
        self._by_code: dict[int, Counter] = {}

    def observe(self, status: int, seconds: float) -> None:
        by_code = self._by_code.get(status)
        if by_code is None:  # labels() checks and looks up its arguments: once per code
            by_code = self._by_code[status] = self.invocations.labels(code=str(status))
        by_code.inc()
        self.duration.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
