"""A service's deployment and the invocations served, in the OSCAR manager's shapes
(pkg/handlers/deployment.go, logs.go; pkg/types/deployment.go)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from faas_supervisor.controller import deployments
from faas_supervisor.controller.deployments import (
    Deployment,
    LogLine,
    go_bool,
    logs_json,
    parse_stamped,
    read_tail,
    status_json,
    tail_lines,
    trim_log,
)
from faas_supervisor.controller.executions import Execution, Executions, go_duration
from faas_supervisor.controller.fdl import parse_service

PLAIN = parse_service({"name": "plain", "script": "echo\n"})
EXPOSED = parse_service({"name": "web", "script": "echo\n", "expose": {"api_port": 80}})


@pytest.mark.parametrize(("seen", "state", "reason", "affected"), [
    (Deployment(2, 2, 2), "ready", "Deployment is ready.", 0),
    (Deployment(2, 2, 1), "degraded", "1 of 2 instances are affected.", 1),
    # One wanted and not there (a local watchdog waiting out its restart's backoff): it
    # is affected too, not "0 of 2".
    (Deployment(2, 1, 1), "degraded", "1 of 2 instances are affected.", 1),
    (Deployment(2, 1, 0), "pending", "", 2),
    (Deployment(2, 3, 2), "ready", "Deployment is ready.", 1),  # a rollout's surge pod
    (Deployment(2, 2, 0, failed=True), "failed", "", 2),
    (Deployment(0, 0, 0), "stopped", "Deployment is stopped.", 0),
    (Deployment(1, 1, 1, reason="NewReplicaSetAvailable: done"), "ready",
     "NewReplicaSetAvailable: done", 0),
])
def test_the_state_of_an_exposed_service(
    seen: Deployment, state: str, reason: str, affected: int
) -> None:
    answer = status_json(EXPOSED, seen)
    assert answer["state"] == state and answer.get("reason", "") == reason
    assert answer["resource_kind"] == "exposed_service"
    assert answer["active_instances"] == seen.running
    assert answer["affected_instances"] == affected


def test_a_service_not_exposed_is_its_runtime_service() -> None:
    assert status_json(PLAIN, Deployment(1, 1, 1), "oscar-svc") == {
        "service_name": "plain", "namespace": "oscar-svc", "state": "ready",
        "reason": "Runtime service is ready.", "active_instances": 1,
        "affected_instances": 0, "resource_kind": "knative_service"}
    assert status_json(PLAIN, Deployment(1, 0, 0))["reason"] == (
        "Runtime service is still reconciling.")
    stamped = status_json(PLAIN, Deployment(1, 1, 1, since=0.0))
    assert stamped["last_transition_time"] == "1970-01-01T00:00:00Z"


def test_what_the_backend_does_not_have_is_unavailable() -> None:
    for service, reason in [
        (EXPOSED, "Current deployment resources are unavailable."),
        (PLAIN, "Current deployment visibility is unavailable for this service runtime."),
    ]:
        assert status_json(service, None) == {
            "service_name": service.name, "state": "unavailable", "reason": reason,
            "active_instances": 0, "affected_instances": 0, "resource_kind": "unavailable"}


def test_logs_oldest_first_the_last_tail_times_when_asked() -> None:
    lines = [LogLine("b", 2.0), LogLine("a", 1.0), LogLine("c", 3.0)]
    assert logs_json(PLAIN, lines, 2, False) == {
        "service_name": "plain", "available": True,
        "entries": [{"message": "b"}, {"message": "c"}]}
    assert logs_json(PLAIN, lines, 1, True)["entries"] == [
        {"timestamp": "1970-01-01T00:00:03Z", "message": "c"}]
    assert logs_json(PLAIN, [LogLine("x"), LogLine("y")], 5, True)["entries"] == [
        {"message": "x"}, {"message": "y"}]  # no time: as read
    assert logs_json(PLAIN, [], 5, False) == {
        "service_name": "plain", "available": False,
        "message": "Deployment logs are not yet available.", "entries": []}
    assert logs_json(PLAIN, None, 5, False)["message"] == (
        "Deployment logs are unavailable for this service.")


@pytest.mark.parametrize(("query", "tail"), [
    (None, 200), ("", 200), ("x", 200), ("0", 200), ("-3", 200), ("1", 1), ("1000", 1000),
    ("5000", 1000)])
def test_tail_lines_as_the_manager_reads_them(query: str | None, tail: int) -> None:
    assert tail_lines(query) == tail


def test_go_bool() -> None:
    assert all(go_bool(v) for v in ("1", "t", "T", "true", "TRUE", "True"))
    assert not any(go_bool(v) for v in (None, "", "yes", "0", "false", "on"))


def test_stamped_lines() -> None:
    assert parse_stamped("2026-01-02T03:04:05.123456789Z hello world") == LogLine(
        "hello world", 1767323045.123456)
    assert parse_stamped("no time here") == LogLine("no time here")


def test_read_tail_reads_the_end_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deployments, "TAIL_BYTES", 16)
    log = tmp_path / "watchdog.log"
    assert read_tail(log, 3) == []
    log.write_bytes(b"first line\nsecond\n\nthird\nfourth\n")
    assert read_tail(log, 2) == ["third", "fourth"]
    assert read_tail(log, 10) == ["third", "fourth"]  # "cond" was cut: dropped


def test_a_watchdog_log_over_its_cap_keeps_its_end(tmp_path: Path) -> None:
    """A line per invocation: a busy service's log filled the data folder's disk. Over
    the cap only its end stays, and its writer (O_APPEND, as the watchdog's stdout) goes
    on after it; the lines read_tail shows are the same."""
    log = tmp_path / "watchdog.log"
    assert not trim_log(log, cap=100, keep=40)  # none yet
    lines = [f"invocation {i:04d}\n".encode() for i in range(20)]
    writer = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(writer, b"".join(lines[:5]))
        assert not trim_log(log, cap=100, keep=40)  # under the cap: left as it is
        os.write(writer, b"".join(lines[5:19]))
        before = read_tail(log, 2)
        assert trim_log(log, cap=100, keep=40)
        assert log.read_bytes() == b"".join(lines[17:19])  # whole lines only
        assert read_tail(log, 2) == before
        os.write(writer, lines[19])
    finally:
        os.close(writer)
    assert log.read_bytes() == b"".join(lines[17:20])


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0000005, "500ns"), (0.0000125, "12.5µs"), (0.347805334, "347.805334ms"),
    (0.014, "14ms"), (1.5, "1.5s"), (2.0, "2s"), (123.25, "2m3.25s"), (3723.0, "1h2m3s")])
def test_latencies_as_go_prints_them(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_executions_kept_the_latest_in_the_managers_shape() -> None:
    executions = Executions(kept=2)
    for i in range(3):
        executions.record(Execution(1761670414.5 + i, 200, 0.0125, "10.0.0.1", "POST",
                                    f"/run/s{i}"))
    logs = executions.json()["logs"]
    assert [e["path"] for e in logs] == ["/run/s1", "/run/s2"]
    assert logs[0] == {
        "timestamp": "2025-10-28T16:53:35.5Z", "status": 200, "latency": "12.5ms",
        "client_ip": "10.0.0.1", "method": "POST", "path": "/run/s1", "user": "oscar",
        "raw": "[GIN-EXECUTIONS-LOGGER] 2025-10-28T16:53:35.5Z | 200 |        12.5ms | "
               "10.0.0.1 | POST    /run/s1 | oscar"}


def test_the_summary_in_a_services_json() -> None:
    from faas_supervisor.controller.deployments import summary_json, wants_deployment

    status = status_json(PLAIN, Deployment(1, 1, 1), "ns")
    assert summary_json(status) == {
        "state": "ready", "reason": "Runtime service is ready.", "active_instances": 1,
        "affected_instances": 0, "resource_kind": "knative_service"}
    assert wants_deployment("deployment") and wants_deployment("volume, Deployment ")
    assert not any(wants_deployment(v) for v in (None, "", "deployments", "volume"))


def test_who_made_a_storage_event() -> None:
    from faas_supervisor.controller.executions import event_identity

    event = (b'{"Records":[{"userIdentity":{"principalId":"minio"},'
             b'"requestParameters":{"sourceIPAddress":"10.1.2.3"}}]}')
    assert event_identity(event) == ("minio", "10.1.2.3")
    for other in (b"not json", b"{}", b'{"Records":[]}', b'{"Records":[{"userIdentity":1}]}'):
        assert event_identity(other) == ("oscar", "")
