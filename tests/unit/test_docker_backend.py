"""The docker backend without an engine: the replica count from its replicas' CPU (the
HPA's rule), and what it does when the engine refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from faas_supervisor.controller.backends.docker import desired_replicas


@pytest.mark.parametrize(
    ("count", "shares", "desired"),
    [
        ([1, [100.0], 2]),  # twice the threshold: double, up to max
        ([2, [100.0, 0.0], 2]),  # mean at the threshold: stays
        ([2, [54.0, 50.0], 2]),  # within 10% of it: stays
        ([1, [400.0], 4]),  # max_scale caps it
        ([3, [0.0, 0.0, 0.0], 1]),  # idle: down to min_scale
        ([4, [20.0, 20.0, 20.0, 20.0], 2]),  # ceil(4 x 20 / 50)
        ([1, [56.0], 2]),  # just over the tolerance: ceil(1.12)
    ],
)
def test_the_hpa_rule(count: int, shares: list[float], desired: int) -> None:
    assert desired_replicas(count, shares, threshold=50, least=1, most=4) == desired


def test_the_floor_holds_even_within_tolerance() -> None:
    # A redeploy raised min_scale above the count the scaler last saw: never below it.
    assert desired_replicas(1, [50.0], threshold=50, least=2, most=4) == 2


def test_a_job_container_that_cannot_start_is_removed(tmp_path: Path) -> None:
    """Made, then refused at start (an image of another architecture: exec format
    error): it was left 'created' under the job's name until the controller's next start.
    The engine is a fake here (no such image can be made on this machine); the backend's
    own code runs."""
    import docker.errors

    from faas_supervisor.controller.backends.docker import DockerBackend
    from faas_supervisor.controller.fdl import parse_service
    from faas_supervisor.errors import DockerError

    removed: list[str] = []

    class Container:
        id = "c0ffee"

        def start(self) -> None:
            raise docker.errors.APIError("500", explanation="exec format error")

        def remove(self, force: bool, v: bool) -> None:
            removed.append(self.id)

    class Containers:
        def create(self, *_args: Any, **_kwargs: Any) -> Container:
            return Container()

        def get(self, container_id: str) -> Container:
            assert container_id == Container.id
            return Container()

    backend = DockerBackend(tmp_path, {}, "runtime:test", {})
    backend._client = type("Client", (), {"containers": Containers()})()
    service = parse_service({"name": "svc", "image": "arm-only", "script": "echo\n"})
    event = tmp_path / "event"
    event.write_text("{}")
    with pytest.raises(DockerError, match="docker: start job svc-1 in arm-only: exec format"):
        backend._create_job(service, tmp_path, "svc-1", event)
    assert removed == ["c0ffee"]


async def test_an_engine_call_never_waits_behind_running_jobs_logs(tmp_path: Path) -> None:
    """Each running job's log stream holds a thread for the job's life. They shared the
    engine calls' 64 threads: from 63 jobs on, deleting a job (removing its container)
    waited until another job ended, its container running on meanwhile."""
    import asyncio
    import threading

    from faas_supervisor.controller.backends.docker import DockerBackend

    backend = DockerBackend(tmp_path, {}, "runtime:test", {})
    release = threading.Event()
    streams = [asyncio.ensure_future(backend._stream(release.wait)) for _ in range(80)]
    try:
        assert await asyncio.wait_for(backend._run(lambda: "removed"), 10) == "removed"
    finally:
        release.set()
        await asyncio.gather(*streams)
        backend._pool.shutdown()
        backend._streams.shutdown()
