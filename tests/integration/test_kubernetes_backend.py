"""The kubernetes backend end to end: the real `kubernetes` client, configured by a
kubeconfig file, over HTTP to the API stand-in of fake_kube_api.py (no API server can
run here; that module says why and what it does). The stand-in validates every body
against the Kubernetes schema; the tests also hold every request the backend made to
the Role in deploy/kubernetes/10-rbac.yaml.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from faas_supervisor.controller import manifests
from faas_supervisor.controller.backends.kubernetes import KubernetesBackend
from faas_supervisor.controller.fdl import Service, parse_service
from faas_supervisor.errors import KubernetesError
from tests.integration.fake_kube_api import TOKEN, FakeKubeApi

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
NS = "oscar-svc"
MINIO = {
    "endpoint": "http://minio.minio:9000",
    "verify": True,
    "access_key": "minio-ak",
    "secret_key": "minio-sk",
    "region": "us-east-1",
}
CLUSTER = manifests.Cluster(NS, "registry.example/runtime:1", MINIO)
COWSAY = {
    "name": "cowsay",
    "image": "ghcr.io/grycap/cowsay",
    "script": "#!/bin/sh\ncowsay \"$(cat \"$INPUT_FILE_PATH\")\"\n",
    "environment": {"variables": {"GREETING": "moo"}, "secrets": {"API_KEY": "s3cr3t"}},
}


@dataclass
class Kube:
    api: FakeKubeApi
    kubeconfig: Path
    server: str


def write_kubeconfig(path: Path, server: str, token: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester",
                                                  "namespace": NS}}],
        "current-context": "fake",
    }))
    return path


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[Kube]:
    api = FakeKubeApi()
    # Handlers are cancelled when their client goes, as a watch's is by the API server.
    runner = web.AppRunner(api.app(), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server = f"http://127.0.0.1:{port}"
    try:
        yield Kube(api, write_kubeconfig(tmp_path / "kubeconfig", server, TOKEN), server)
    finally:
        await api.close()
        await runner.cleanup()
    assert api.invalid == [], "bodies the schema refused"


@pytest.fixture
async def backend(kube: Kube) -> AsyncIterator[KubernetesBackend]:
    backend = KubernetesBackend(CLUSTER, str(kube.kubeconfig))
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()
    assert_within_role(kube.api)


def assert_within_role(api: FakeKubeApi) -> None:
    """Every request the backend made is one the controller's Role allows."""
    docs = yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "10-rbac.yaml").read_text())
    (role,) = [d for d in docs if d and d["kind"] == "Role"]
    allowed = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    used = {(r.group, r.resource, r.verb) for r in api.requests}
    assert used <= allowed, f"not in the Role: {sorted(used - allowed)}"


def service(**fields: Any) -> Service:
    return parse_service({**COWSAY, **fields})


def stored(api: FakeKubeApi) -> dict[tuple[str, str], dict[str, Any]]:
    """The objects in the namespace but pods (the stand-in's controllers make those)."""
    return {(p, n): o for (p, s, n), o in api.objects.items() if s == NS and p != "pods"}


# ---- deploy ------------------------------------------------------------------------------


async def test_deploy_creates_the_objects(kube: Kube, backend: KubernetesBackend) -> None:
    await backend.deploy(service())
    objects = stored(kube.api)
    assert set(objects) == {
        ("secrets", "cowsay-minio"),
        ("secrets", "cowsay"),
        ("configmaps", "cowsay"),
        ("deployments", "cowsay"),
        ("services", "cowsay"),
    }
    # Each object checked first (a server-side dry run), then made.
    made = [(r.verb, r.dry_run) for r in kube.api.requests if r.verb not in ("list", "watch")]
    assert made == [("create", True)] * 5 + [("create", False)] * 5
    secret = objects[("secrets", "cowsay")]
    assert base64.b64decode(secret["data"]["API_KEY"]) == b"s3cr3t"
    config = objects[("configmaps", "cowsay")]["data"]
    assert config["script.sh"] == COWSAY["script"]
    assert "minio-sk" not in config["function_config.yaml"]
    template = objects[("deployments", "cowsay")]["spec"]["template"]["spec"]
    assert template["initContainers"][0]["image"] == "registry.example/runtime:1"
    assert template["containers"][0]["command"][:2] == ["/oscar/bin/faas-supervisor", "watchdog"]
    for obj in objects.values():
        assert obj["metadata"]["uid"] and obj["metadata"]["resourceVersion"]
        assert obj["metadata"]["labels"]["oscar_service"] == "cowsay"
    assert await backend.invoke_url("cowsay") == "http://cowsay.oscar-svc.svc.cluster.local:80"


async def test_deploy_again_replaces_on_conflict_and_prunes(
    kube: Kube, backend: KubernetesBackend
) -> None:
    await backend.deploy(service())
    before = stored(kube.api)
    kube.api.requests.clear()
    # A new script, no secrets any more.
    new = service(script="echo updated\n", environment={"variables": {}})
    await backend.deploy(new)
    after = stored(kube.api)
    assert ("secrets", "cowsay") not in after
    replaced = [
        (r.resource, r.name) for r in kube.api.requests if r.verb == "update" and not r.dry_run
    ]
    assert sorted(replaced) == sorted(
        [("secrets", "cowsay-minio"), ("configmaps", "cowsay"), ("deployments", "cowsay"),
         ("services", "cowsay")]
    )
    config = after[("configmaps", "cowsay")]
    assert config["data"]["script.sh"] == "echo updated\n"
    assert config["metadata"]["uid"] == before[("configmaps", "cowsay")]["metadata"]["uid"]
    assert int(config["metadata"]["resourceVersion"]) > int(
        before[("configmaps", "cowsay")]["metadata"]["resourceVersion"]
    )
    pod = after[("deployments", "cowsay")]["spec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in pod  # no reference to the Secret that went
    assert ("secrets", "cowsay", {"propagationPolicy": "Foreground"}) in kube.api.deletes


async def test_a_sync_service_made_exposed_swaps_its_objects(
    kube: Kube, backend: KubernetesBackend
) -> None:
    await backend.deploy(service())
    exposed = service(expose={"api_port": 5000, "min_scale": 1, "max_scale": 3})
    await backend.deploy(exposed)
    names = {k for k in stored(kube.api) if k[0] != "secrets"}
    assert names == {
        ("configmaps", "cowsay"),
        ("deployments", "cowsay-dpl"),
        ("services", "cowsay-svc"),
        ("horizontalpodautoscalers", "cowsay-hpa"),
        ("ingresses", "cowsay-ing"),
    }
    assert await backend.invoke_url("cowsay") == (
        "http://cowsay-svc.oscar-svc.svc.cluster.local:80"
    )


# ---- jobs --------------------------------------------------------------------------------


async def start_job(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path, name: str, event: bytes
) -> tuple[asyncio.Task[int], Path, dict[str, Any]]:
    event_file = tmp_path / f"{name}.event"
    event_file.write_bytes(event)
    log = tmp_path / f"{name}.log"
    task = asyncio.create_task(backend.run_job(service(), name, event_file, log))
    job = await asyncio.wait_for(kube.api.wait_for("jobs", NS, name), 20)
    return task, log, job


async def test_a_job_that_succeeds(kube: Kube, backend: KubernetesBackend, tmp_path: Path) -> None:
    await backend.deploy(service())
    event = json.dumps({"message": "hello"}).encode()
    task, log, job = await start_job(kube, backend, tmp_path, "cowsay-1111", event)
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EVENT"] == event.decode()
    assert env["JOB_UUID"] == "cowsay-1111"
    assert container["command"] == ["/oscar/bin/faas-supervisor", "run"]
    assert not task.done()  # it waits for the Job
    kube.api.finish_job("cowsay-1111", NS, 0, b" _______\n< hello >\n")
    assert await asyncio.wait_for(task, 20) == 0
    assert log.read_bytes() == b" _______\n< hello >\n"
    watched = {r.resource for r in kube.api.requests if r.verb == "watch"}
    assert "jobs" in watched
    assert ("", "pods/log", "get") in {(r.group, r.resource, r.verb) for r in kube.api.requests}


async def test_a_job_that_fails_gives_the_scripts_exit_code(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    await backend.deploy(service())
    task, log, _ = await start_job(kube, backend, tmp_path, "cowsay-2222", b"{}")
    kube.api.finish_job("cowsay-2222", NS, 3, b"faas-supervisor: error: storage\n")
    assert await asyncio.wait_for(task, 20) == 3
    assert log.read_bytes() == b"faas-supervisor: error: storage\n"


async def test_a_job_run_again_after_a_restart_follows_its_existing_job(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    """A controller killed during a job: the next one re-runs it under the same name,
    which finds the Job still there and waits for it rather than failing or running
    the script twice."""
    await backend.deploy(service())
    first, _, _ = await start_job(kube, backend, tmp_path, "cowsay-5555", b"{}")
    again = KubernetesBackend(CLUSTER, str(kube.kubeconfig))
    await again.start()
    try:
        event_file = tmp_path / "again.event"
        event_file.write_bytes(b"{}")
        log = tmp_path / "again.log"
        task = asyncio.create_task(again.run_job(service(), "cowsay-5555", event_file, log))
        kube.api.finish_job("cowsay-5555", NS, 0, b"ran once\n")
        assert await asyncio.wait_for(task, 20) == 0
        assert log.read_bytes() == b"ran once\n"
    finally:
        await again.close()
    assert await asyncio.wait_for(first, 20) == 0
    creates = [r for r in kube.api.requests if r.resource == "jobs" and r.verb == "create"]
    assert len(creates) == 2  # the second answered 409, and was followed


async def test_the_pod_finishing_after_the_job_is_waited_for(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    """The Job's condition can be seen before the pod's phase: the pod is then watched."""
    await backend.deploy(service())
    task, log, _ = await start_job(kube, backend, tmp_path, "cowsay-3333", b"{}")
    api = kube.api
    pod = api.job_pod("cowsay-3333", NS)
    job = api.objects[("jobs", NS, "cowsay-3333")]
    done = {**job, "status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}}
    api._store("jobs", NS, done, previous=job)
    # Let the backend find the pod still running, then let it finish.
    await asyncio.wait_for(api.wait_for_request("watch", "pods"), 20)
    assert pod["status"]["phase"] == "Pending"
    api.finish_job("cowsay-3333", NS, 7, b"late\n")
    assert await asyncio.wait_for(task, 20) == 7
    assert log.read_bytes() == b"late\n"


async def test_cancelling_a_job_deletes_it(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    await backend.deploy(service())
    task, _, _ = await start_job(kube, backend, tmp_path, "cowsay-4444", b"{}")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ("jobs", "cowsay-4444", {"propagationPolicy": "Foreground"}) in kube.api.deletes
    await asyncio.wait_for(kube.api.wait_gone("jobs", NS, "cowsay-4444"), 20)
    assert not [p for p in kube.api.names("pods", NS) if p.startswith("cowsay-4444")]


async def test_events_a_job_cannot_carry_are_refused_before_asking(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    for event in (b"x" * (97 * 1024), b"\xff\xfe binary", b"nul\0"):
        path = tmp_path / "event"
        path.write_bytes(event)
        with pytest.raises(KubernetesError, match="event"):
            await backend.run_job(service(), "cowsay-5555", path, tmp_path / "log")
    assert kube.api.names("jobs", NS) == set()


# ---- remove ------------------------------------------------------------------------------


async def test_remove_deletes_everything_in_the_foreground(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    exposed = service(expose={"api_port": 5000})
    await backend.deploy(exposed)
    task, _, _ = await start_job(kube, backend, tmp_path, "cowsay-6666", b"{}")
    kube.api.finish_job("cowsay-6666", NS, 0, b"")
    assert await asyncio.wait_for(task, 20) == 0
    made = set(stored(kube.api))
    kube.api.deletes.clear()
    await backend.remove("cowsay")
    assert stored(kube.api) == {}
    deleted = {(plural, name) for plural, name, _ in kube.api.deletes}
    assert deleted == {k for k in made if k[0] != "pods"}  # pods go with their Job
    assert all(o == {"propagationPolicy": "Foreground"} for _, _, o in kube.api.deletes)
    with pytest.raises(Exception, match="not deployed"):
        await backend.invoke_url("cowsay")
    await backend.remove("cowsay")  # unknown names are ignored


async def test_other_services_objects_are_left_alone(
    kube: Kube, backend: KubernetesBackend
) -> None:
    await backend.deploy(service())
    await backend.deploy(service(name="cowsay-two"))
    await backend.remove("cowsay")
    assert {n for _, n in stored(kube.api)} == {"cowsay-two", "cowsay-two-minio"}


# ---- configuration and errors --------------------------------------------------------------


async def test_api_errors_name_the_request(kube: Kube, tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "bad-token", kube.server, "wrong")
    backend = KubernetesBackend(CLUSTER, str(config))
    try:
        # Its first request, the listing of its Jobs, says so.
        with pytest.raises(KubernetesError, match="list Job: 401 Unauthorized"):
            await backend.start()
    finally:
        await backend.close()


async def test_kubeconfig_from_the_environment_and_namespace(kube: Kube, tmp_path: Path) -> None:
    """$KUBECONFIG and --namespace, through the controller's settings to the backend."""
    from faas_supervisor.cli import build_parser
    from faas_supervisor.controller.backends import build_backend
    from faas_supervisor.controller.settings import load_controller_settings

    args = build_parser().parse_args(
        ["controller", "--backend", "kubernetes", "--namespace", "team-a"]
    )
    settings = load_controller_settings(args, {"KUBECONFIG": str(kube.kubeconfig)})
    backend = build_backend(settings.backend, tmp_path, MINIO)
    await backend.start()
    try:
        await backend.deploy(service())
    finally:
        await backend.close()
    assert kube.api.names("configmaps", "team-a") == {"cowsay"}


async def test_a_missing_kubeconfig_is_a_one_line_config_error(tmp_path: Path) -> None:
    from faas_supervisor.errors import ConfigError

    backend = KubernetesBackend(CLUSTER, str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"^kubernetes: cannot load"):
        await backend.start()


# ---- the controller, end to end ------------------------------------------------------------


async def test_the_controller_on_the_kubernetes_backend(kube: Kube, tmp_path: Path) -> None:
    """`faas-supervisor controller --backend kubernetes`: the OSCAR API makes, runs and
    removes Kubernetes objects. The calls are async: the API stand-in shares this loop."""
    import aiohttp

    from tests.integration.controller_fixture import PASSWORD, USER, ControllerFactory

    factory = ControllerFactory(tmp_path)
    try:
        controller = await asyncio.to_thread(
            factory,
            None,
            ["--backend", "kubernetes", "--kubeconfig", str(kube.kubeconfig),
             "--runtime-image", "registry.example/runtime:1"],
        )
        auth = {"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)}
        async with aiohttp.ClientSession(controller.url, headers=auth) as http:
            async with http.post("/system/services", json=COWSAY) as response:
                assert response.status == 201, await response.text()
            assert kube.api.names("configmaps", NS) == {"cowsay"}
            assert kube.api.names("deployments", NS) == {"cowsay"}
            async with http.post("/job/cowsay", data=b'{"message": "hi"}') as response:
                assert response.status == 201, await response.text()
                job = (await response.json())["job"]
            created = await asyncio.wait_for(kube.api.wait_for("jobs", NS, job), 30)
            env = created["spec"]["template"]["spec"]["containers"][0]["env"]
            assert {"name": "EVENT", "value": '{"message": "hi"}'} in env
            kube.api.finish_job(job, NS, 0, b"< hi >\n")
            status = ""
            while status != "Succeeded":
                # The controller's API has no event to await: polled, briefly.
                await asyncio.sleep(0.05)
                async with http.get("/system/logs/cowsay") as response:
                    status = (await response.json())["jobs"][job]["status"]
            async with http.get(f"/system/logs/cowsay/{job}") as response:
                assert await response.text() == "< hi >\n"
            async with http.delete("/system/services/cowsay") as response:
                assert response.status == 204
            # A definition the backend refuses (no image, which a pod needs) is answered
            # with why, and leaves nothing stored: not in the API, not in the cluster.
            imageless = {k: v for k, v in COWSAY.items() if k != "image"} | {"name": "noimage"}
            async with http.post("/system/services", json=imageless) as response:
                assert response.status == 400, await response.text()
                assert "image" in await response.text()
            async with http.get("/system/services/noimage") as response:
                assert response.status == 404
        assert stored(kube.api) == {}
    finally:
        await asyncio.to_thread(factory.close)
    assert_within_role(kube.api)
