"""The docker backend without an engine: the replica count from its replicas' CPU (the
HPA's rule), and what it does when the engine refuses."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
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
        backend._create_job(service, [], "svc-1", event)
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


# ---- an engine that does not answer, a deletion that races a job, the scaler -----------

SERVICE = {"name": "svc", "image": "img", "script": "echo\n"}
VOLUME = "faas-supervisor-bin-svc-0123456789ab"  # its runtime volume, as deploy made it


@pytest.fixture
async def backend(tmp_path: Path) -> Any:
    from faas_supervisor.controller.backends.docker import DockerBackend

    made = DockerBackend(tmp_path, {}, "runtime:test", {})
    yield made
    made._pool.shutdown()
    made._streams.shutdown()


@pytest.mark.parametrize("call", ["remove", "check", "deployment", "deployment_logs",
                                  "restart_service", "stop_service", "run_job"])
async def test_an_engine_that_does_not_answer_is_a_docker_error(
    backend: Any, tmp_path: Path, call: str
) -> None:
    """No engine behind DOCKER_HOST (the SDK's own client, its socket missing): every call
    that reaches it is a DockerError (502), not requests' ConnectionError (a 500 with a
    traceback), and says so without the SDK's message (the engine's address)."""
    import docker

    from faas_supervisor.controller.backends.docker import _Replica
    from faas_supervisor.controller.fdl import parse_service
    from faas_supervisor.errors import DockerError

    socket = tmp_path / "no-engine.sock"
    backend._client = docker.DockerClient(base_url=f"unix://{socket}", version="1.41")
    service = parse_service(SERVICE)
    backend._replicas["svc"] = [_Replica("c0ffee", 1)]
    backend._volumes["svc"] = VOLUME
    event = tmp_path / "event"
    event.write_text("{}")
    calls = {
        "remove": lambda: backend.remove("svc"),
        "check": lambda: backend.check(service),
        "deployment": lambda: backend.deployment(service),
        "deployment_logs": lambda: backend.deployment_logs(service, 10),
        "restart_service": lambda: backend.restart_service(service),
        "stop_service": lambda: backend.stop_service(service),
        "run_job": lambda: backend.run_job(service, "svc-1", event, tmp_path / "log"),
    }
    with pytest.raises(DockerError, match=r"^docker: the engine does not answer") as caught:
        await calls[call]()
    assert str(socket) not in str(caught.value)
    if call == "remove":
        # Refused: the route keeps the service, and its replicas stay in rotation.
        assert [r.id for r in backend._replicas["svc"]] == ["c0ffee"]


class FakeContainer:
    def __init__(self, engine: FakeEngine, container_id: str, component: str) -> None:
        self.engine, self.id = engine, container_id
        self.labels = {"faas-supervisor/component": component}

    def stop(self, timeout: int) -> None:
        self.engine.log.append(f"stop {self.id} {timeout}")

    def remove(self, force: bool, v: bool) -> None:
        self.engine.log.append(f"remove {self.id}")
        self.engine.containers.made.pop(self.id, None)


class FakeContainers:
    def __init__(self) -> None:
        self.made: dict[str, FakeContainer] = {}

    def list(self, all: bool, filters: Any) -> list[FakeContainer]:
        return list(self.made.values())

    def get(self, container_id: str) -> FakeContainer:
        import docker.errors

        try:
            return self.made[container_id]
        except KeyError:
            raise docker.errors.NotFound(container_id) from None


class Conflict409:
    """The response of an engine's 409, as the SDK's APIError reads it."""

    status_code, reason, url = 409, "Conflict", "http+docker://localhost/volumes/x"


class FakeVolume:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.name = engine, VOLUME

    def remove(self, force: bool) -> None:
        import docker.errors

        if self.engine.containers.made or self.engine.held:
            raise docker.errors.APIError("409", response=Conflict409(),
                                         explanation="volume is in use")
        self.engine.log.append("remove volume")


class FakeEngine:
    """Containers and a volume that a container in the engine holds (409)."""

    def __init__(self) -> None:
        self.containers = FakeContainers()
        self.log: list[str] = []
        self.held = False  # by a container that is not the service's
        self.on_volume: Any = None

    @property
    def volumes(self) -> Any:
        engine = self

        class Volumes:
            def list(self, filters: Any) -> list[FakeVolume]:
                return [FakeVolume(engine)]

            def get(self, name: str) -> FakeVolume:
                if engine.on_volume is not None:
                    engine.on_volume()
                    engine.on_volume = None
                return FakeVolume(engine)

        return Volumes()


async def test_a_volume_held_by_a_job_made_meanwhile_goes_after_another_sweep(
    backend: Any,
) -> None:
    """A job container made between the sweep of a deleted service's containers and the
    removal of its volume holds the volume (409): it is swept too (stopped as a job is:
    SIGTERM, SIGKILL after JOB_STOP_TIMEOUT), and the volume removed after it."""
    from faas_supervisor.controller.backends.docker import JOB_STOP_TIMEOUT

    engine = FakeEngine()
    backend._client = engine
    engine.containers.made["watchdog"] = FakeContainer(engine, "watchdog", "service")

    def a_job_is_made() -> None:
        engine.containers.made["job"] = FakeContainer(engine, "job", "job")

    engine.on_volume = a_job_is_made
    await backend.remove("svc")
    assert engine.log == ["remove watchdog", f"stop job {JOB_STOP_TIMEOUT}", "remove job",
                          "remove volume"]


async def test_a_volume_still_held_after_the_sweeps_is_a_docker_error(backend: Any) -> None:
    from faas_supervisor.controller.backends.docker import _Replica
    from faas_supervisor.errors import DockerError

    engine = FakeEngine()
    engine.held = True
    backend._client = engine
    backend._replicas["svc"] = [_Replica("c0ffee", 1)]
    with pytest.raises(DockerError, match=f"volume {VOLUME} is still in use"):
        await backend.remove("svc")
    assert "svc" not in backend._gone  # its jobs run again
    assert [r.id for r in backend._replicas["svc"]] == ["c0ffee"]


@pytest.mark.parametrize("direction", ["up", "down"])
async def test_the_scaler_lives_on_when_the_engine_fails_a_step(
    backend: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """One scale step the engine refuses (a replica that cannot be made or removed) is
    logged, and asked again at the next check: it used to end the scaler for good."""
    import asyncio
    import itertools

    from faas_supervisor.controller.backends import docker as docker_backend
    from faas_supervisor.controller.backends.docker import _Replica
    from faas_supervisor.controller.fdl import parse_service
    from faas_supervisor.errors import DockerError

    monkeypatch.setattr(docker_backend, "SCALE_INTERVAL", 0.01)
    service = parse_service({**SERVICE, "cpu": "1", "expose": {
        "api_port": 8080, "min_scale": 1, "max_scale": 3, "cpu_threshold": 50}})
    backend._replicas["svc"] = [_Replica("a", 1), _Replica("b", 2)]
    # Busy: a second of CPU more at each read, far over 50%; idle: none.
    used = itertools.count(step=10**9 if direction == "up" else 0)
    monkeypatch.setattr(backend, "_cpu_used", lambda _container: next(used))
    steps = 0
    again = asyncio.Event()

    async def step(*_args: Any) -> None:
        nonlocal steps
        steps += 1
        if steps == 1:
            raise DockerError("docker: the engine does not answer (ConnectionError)")
        again.set()

    monkeypatch.setattr(backend, "_add_replica" if direction == "up" else "_drop_replica", step)
    scaler = asyncio.create_task(backend._autoscale(service, [], "digest", 1))
    try:
        await asyncio.wait_for(again.wait(), 10)
    finally:
        scaler.cancel()
        with contextlib.suppress(asyncio.CancelledError, DockerError):
            await scaler


async def test_the_engines_events_are_followed_again_after_it_did_not_answer(
    backend: Any,
) -> None:
    """The engine's events (a replica's container dying) are asked for again when the
    engine does not answer (requests' ConnectionError, not a DockerException): the thread
    following them used to end, and no replica was taken out of rotation again."""
    import asyncio

    import requests

    from faas_supervisor.controller.backends.docker import _Replica

    replica = _Replica("c0ffee", 1)
    replica.ready.set()
    backend._by_id[replica.id] = replica
    asked = 0

    class Stream(list[dict[str, Any]]):
        def close(self) -> None:
            pass

    class Engine:
        def events(self, **_kwargs: Any) -> Stream:
            nonlocal asked
            asked += 1
            if asked == 1:
                raise requests.ConnectionError("no engine at unix:///secret.sock")
            if asked == 3:  # the events seen: done
                backend._closing.set()
            return Stream([{"Action": "die", "id": replica.id, "time": 1}])

    backend._client = Engine()
    backend._loop = asyncio.get_running_loop()
    await asyncio.wait_for(asyncio.to_thread(backend._follow_events), 10)
    await asyncio.sleep(0)  # the event's callback, posted to this loop, runs
    assert not replica.ready.is_set()


async def test_a_request_waits_for_a_starting_watchdog_at_most_sync_wait(tmp_path: Path) -> None:
    """--sync-wait, as on the other backends (it once waited 60 s whatever the flag)."""
    from faas_supervisor.controller.backends.docker import DockerBackend, _Replica
    from faas_supervisor.errors import ServiceUnavailable

    made = DockerBackend(tmp_path, {}, "runtime:test", {}, sync_wait=0.2)
    try:
        made._replicas["svc"] = [_Replica("c0ffee", 1)]  # its health check not passed yet
        with pytest.raises(ServiceUnavailable, match=r"not answering yet \(waited 0.2 s\)"):
            await asyncio.wait_for(made.invoke_url("svc"), 5)
    finally:
        made._pool.shutdown()
        made._streams.shutdown()


def test_the_controllers_identity_is_kept_and_a_damaged_one_refused(tmp_path: Path) -> None:
    """Made anew over a damaged file, the identity would leave every container labelled
    with the old one on the engine, owned by nobody: the start is refused instead."""
    from faas_supervisor.controller.backends.docker import _keep_identity, _read_identity
    from faas_supervisor.errors import ConfigError

    path = tmp_path / "controller-id"
    assert _read_identity(path) is None
    _keep_identity(path, "0123456789abcdef")
    assert _read_identity(path) == "0123456789abcdef"
    path.write_text("0123456789ab")  # cut short
    with pytest.raises(ConfigError, match="does not hold a controller identity"):
        _read_identity(path)


def test_the_identitys_rename_is_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file and then its folder are synced: a rename lost in a crash would give the
    next start a new identity, the old one's containers owned by nobody."""
    from faas_supervisor.controller.backends.docker import _keep_identity

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _keep_identity(tmp_path / "controller-id", "0123456789abcdef")
    assert synced == ["file", "folder"]


def test_a_file_system_that_syncs_no_folder_still_keeps_the_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync of a folder refused (EINVAL, as some FUSE and network mounts answer): the
    rename is done, the start goes on (a review found it would have stopped it, exit 2)."""
    from faas_supervisor.controller.backends.docker import _keep_identity, _read_identity

    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _keep_identity(tmp_path / "controller-id", "0123456789abcdef")
    assert _read_identity(tmp_path / "controller-id") == "0123456789abcdef"


def test_an_identity_file_not_text_or_not_a_file_is_refused_in_one_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8, or a folder in the file's place, are damage too: the same
    one-line ConfigError (exit status 2), not a UnicodeDecodeError's or IsADirectoryError's
    traceback (a review found both). A folder where the file is written from is one line."""
    from faas_supervisor.controller.backends.docker import _keep_identity, _read_identity
    from faas_supervisor.errors import ConfigError

    path = tmp_path / "controller-id"
    path.write_bytes(b"\xff\xfe0123456789abcd")
    with pytest.raises(ConfigError, match="does not hold a controller identity"):
        _read_identity(path)
    path.unlink()
    path.mkdir()
    with pytest.raises(ConfigError, match="does not hold a controller identity"):
        _read_identity(path)
    path.rmdir()
    (tmp_path / "controller-id.part").mkdir()
    with pytest.raises(ConfigError, match=r"cannot keep the controller's identity in .*: "
                                          r"Is a directory"):
        _keep_identity(path, "0123456789abcdef")


async def test_default_command_is_refused_and_a_stored_one_still_deploys(
    backend: Any, tmp_path: Path
) -> None:
    """`default_command` was stored and ignored (the script ran as the server): refused,
    one line naming it, before the engine is asked anything. A deploy (a stored service
    at start-up) does not refuse it: it reaches the engine (here: none)."""
    import docker

    from faas_supervisor.controller.fdl import parse_service
    from faas_supervisor.errors import DockerError, InvalidService

    backend._client = docker.DockerClient(base_url=f"unix://{tmp_path / 'none.sock'}",
                                          version="1.41")
    service = parse_service({**SERVICE, "expose": {"api_port": 8888, "default_command": True}})
    with pytest.raises(InvalidService, match=r"^expose.default_command: not supported on Docker"
                       ) as refused:
        await backend.check(service)
    assert "\n" not in refused.value.message
    with pytest.raises(DockerError, match=r"^docker: the engine does not answer"):
        await backend.deploy(service)
    # Not exposed, the field means nothing (the manager shows it false): not refused.
    plain = parse_service({**SERVICE, "expose": {"default_command": True}})
    with pytest.raises(DockerError, match=r"^docker: the engine does not answer"):
        await backend.check(plain)
