"""The kubernetes backend end to end: the real `kubernetes` client, configured by a
kubeconfig file, over HTTP to the API stand-in of fake_kube_api.py (no API server can
run here; that module says why and what it does). The stand-in validates every body
against the Kubernetes schema; the tests also hold every request the backend made to
the Role in deploy/kubernetes/10-rbac.yaml.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import hashlib
import json
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from faas_supervisor.controller import manifests
from faas_supervisor.controller.backends import kubernetes as kubernetes_backend
from faas_supervisor.controller.backends.kubernetes import KubernetesBackend
from faas_supervisor.controller.fdl import Service, from_record, parse_service, to_record
from faas_supervisor.errors import InvalidService, KubernetesError, ServiceUnavailable
from tests.integration.fake_kube_api import TOKEN, FakeKubeApi, PodRun, quantity_problem

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
FOREGROUND = {"propagationPolicy": "Foreground"}
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
    await watching(kube.api)
    try:
        yield backend
    finally:
        await backend.close()
    assert_within_role(kube.api)


async def watching(api: FakeKubeApi, count: int = 1) -> None:
    """Until the backend's watches (its threads') have reached the API."""
    for resource in ("jobs", "pods", "deployments"):
        await asyncio.wait_for(api.wait_for_request("watch", resource, count), 20)


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


RUCIO = {"host": "https://rucio.example.org", "auth_host": "https://rucio-auth.example.org",
         "account": "jo", "rse": "CERN_DISK", "username": "jo",
         "password": "RUCIO-PASSWORD"}
WEBDAV = {"hostname": "https://dcache.example.org", "login": "jo", "password": "DAV-PASSWORD"}


def with_providers(rucio: bool = False, webdav: bool = False) -> Service:
    """cowsay reading from rucio.cern and/or writing to webdav.dcache."""
    fields: dict[str, Any] = {"storage_providers": {}}
    if rucio:
        fields["storage_providers"]["rucio"] = {"cern": RUCIO}
        fields["input"] = [{"storage_provider": "rucio.cern", "path": "user.jo/in"}]
    if webdav:
        fields["storage_providers"]["webdav"] = {"dcache": WEBDAV}
        fields["output"] = [{"storage_provider": "webdav.dcache", "path": "results"}]
    return service(**fields)


async def test_provider_credentials_are_a_secret_never_the_config_map(
    kube: Kube, backend: KubernetesBackend
) -> None:
    await backend.deploy(with_providers(rucio=True, webdav=True))
    objects = stored(kube.api)
    config = objects[("configmaps", "cowsay")]["data"]["function_config.yaml"]
    for password in ("RUCIO-PASSWORD", "DAV-PASSWORD", "minio-sk", "minio-ak"):
        assert password not in config
    providers = yaml.safe_load(config)["storage_providers"]
    assert providers["rucio"]["cern"]["username"] == "jo"
    assert "password" not in providers["webdav"]["dcache"]
    secret = objects[("secrets", "cowsay-providers")]
    assert secret["metadata"]["labels"]["oscar_service"] == "cowsay"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {"rucio.cern.password": "RUCIO-PASSWORD",
                    "webdav.dcache.password": "DAV-PASSWORD"}
    pod = objects[("deployments", "cowsay")]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "provider-secrets"]
    files = {item["path"] for source in volume["projected"]["sources"]
             for item in source["secret"]["items"]}
    assert files == {"minio.default/accessKey", "minio.default/secretKey",
                     "rucio.cern/password", "webdav.dcache/password"}
    assert {"name": "provider-secrets", "mountPath": "/var/run/secrets/providers",
            "readOnly": True} in pod["containers"][0]["volumeMounts"]

    # An update without the webdav provider: its file goes from the Secret and the pod.
    await backend.deploy(with_providers(rucio=True))
    objects = stored(kube.api)
    assert set(objects[("secrets", "cowsay-providers")]["data"]) == {"rucio.cern.password"}
    pod = objects[("deployments", "cowsay")]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "provider-secrets"]
    assert [item["path"] for source in volume["projected"]["sources"]
            for item in source["secret"]["items"]][-1] == "rucio.cern/password"
    assert "webdav.dcache/password" not in json.dumps(pod)
    # Without any provider of its own, the Secret goes.
    await backend.deploy(service())
    assert ("secrets", "cowsay-providers") not in stored(kube.api)
    assert ("secrets", "cowsay-providers", FOREGROUND) in kube.api.deletes
    # ... and deleting the service deletes it.
    await backend.deploy(with_providers(webdav=True))
    assert ("secrets", "cowsay-providers") in stored(kube.api)
    kube.api.deletes.clear()
    await backend.remove("cowsay")
    assert stored(kube.api) == {}
    assert ("secrets", "cowsay-providers", FOREGROUND) in kube.api.deletes


# ---- jobs --------------------------------------------------------------------------------


async def start_job(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path, name: str, event: bytes
) -> tuple[asyncio.Task[int], Path, dict[str, Any]]:
    event_file = tmp_path / f"{name}.event"
    event_file.write_bytes(event)
    log = tmp_path / f"{name}.log"
    task = asyncio.create_task(backend.run_job(service(), name, event_file, log))
    made = asyncio.ensure_future(kube.api.wait_for("jobs", NS, name))
    await asyncio.wait({task, made}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if not made.done():
        made.cancel()
        task.cancel()
        await asyncio.gather(task, made, return_exceptions=True)
        task.result() if not task.cancelled() else pytest.fail(f"no Job {name} made")
    return task, log, made.result()


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


# ---- names one service's and another's ---------------------------------------------------


def versions(api: FakeKubeApi) -> dict[tuple[str, str], str]:
    """Each object's resourceVersion but Deployments' (their status changes on its own)."""
    return {k: o["metadata"]["resourceVersion"] for k, o in stored(api).items()
            if k[0] != "deployments"}


async def test_a_service_cannot_take_another_services_secret(
    kube: Kube, backend: KubernetesBackend
) -> None:
    """Names are made from service names: the Secret of service `foo-minio`'s
    environment.secrets is named as service `foo`'s MinIO keys (`NAME-minio`). It is
    refused (400) before anything is made, and removing it leaves foo's Secret be.
    Before, it replaced foo's keys, and its removal deleted them."""
    await backend.deploy(service(name="foo"))
    before = copy.deepcopy(stored(kube.api)[("secrets", "foo-minio")])
    taker = service(name="foo-minio")  # with COWSAY's environment.secrets
    refused = (r"^name: 'foo-minio' cannot be deployed: its Secret 'foo-minio' exists and "
               r"belongs to service 'foo'; choose another name$")
    with pytest.raises(InvalidService, match=refused):
        await backend.check(taker)
    with pytest.raises(InvalidService, match=refused):
        await backend.deploy(taker)
    await backend.remove("foo-minio")
    assert stored(kube.api)[("secrets", "foo-minio")] == before
    assert not [r for r in kube.api.requests
                if (r.resource, r.name) == ("secrets", "foo-minio") and r.verb != "list"]


@pytest.mark.parametrize("first", ["exposed", "plain"])
async def test_an_exposed_services_names_are_no_other_services(
    kube: Kube, backend: KubernetesBackend, first: str
) -> None:
    """Exposed `foo`'s Service is `foo-svc`, as is plain `foo-svc`'s: whichever comes
    second is refused, and the first's Service keeps its selector (before, plain
    `foo-svc` turned foo's Ingress to its own pods). A name like `my-svc` is no problem
    where nothing has it: the first here is made."""
    exposed = service(name="foo", expose={"api_port": 5000})
    plain = service(name="foo-svc")
    made, taker = (exposed, plain) if first == "exposed" else (plain, exposed)
    await backend.deploy(made)
    before = versions(kube.api)
    with pytest.raises(InvalidService, match=(
        rf"^name: '{taker.name}' cannot be deployed: its Service 'foo-svc' exists and "
        rf"belongs to service '{made.name}'"
    )):
        await backend.check(taker)
    with pytest.raises(InvalidService):
        await backend.deploy(taker)
    await backend.remove(taker.name)
    assert versions(kube.api) == before
    selector = stored(kube.api)[("services", "foo-svc")]["spec"]["selector"]
    assert selector[manifests.SERVICE_LABEL] == made.name


async def test_an_object_no_service_made_is_not_replaced(
    kube: Kube, backend: KubernetesBackend
) -> None:
    """A Secret of the namespace's own (the registry login the services pull with) is no
    service's: a service named like it is refused, not given it."""
    login = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": "registry-login", "namespace": NS}, "data": {}}
    kube.api._store("secrets", NS, login, previous=None)
    with pytest.raises(InvalidService, match=(
        r"^name: 'registry-login' cannot be deployed: its Secret 'registry-login' exists "
        r"and is no service's"
    )):
        await backend.check(service(name="registry-login"))


async def test_a_stored_service_whose_names_are_taken_is_not_restored(
    kube: Kube, backend: KubernetesBackend
) -> None:
    """`foo` and `foo-minio`, both stored before names were checked: the one restored
    second is left undeployed, saying why, rather than the controller not starting or
    taking the other's objects; what it had made of itself goes again."""
    await backend.deploy(service(name="foo"))
    before = versions(kube.api)
    await backend.restore(service(name="foo-minio"))
    assert versions(kube.api)[("secrets", "foo-minio")] == before[("secrets", "foo-minio")]
    await asyncio.wait_for(kube.api.wait_gone("secrets", NS, "foo-minio-minio"), 20)
    assert versions(kube.api) == before
    with pytest.raises(ServiceUnavailable, match="not deployed"):
        await backend.invoke_url("foo-minio")


async def test_a_stored_service_the_api_server_cannot_decode_is_not_restored(
    kube: Kube, backend: KubernetesBackend
) -> None:
    """Memory `1g`, which an older version stored (fdl reads it back): the API server
    cannot decode it (400). The service is left undeployed, saying why, and the others
    are restored: not a controller that cannot start."""
    old = json.loads(to_record(service(name="old")))
    old["memory"] = "1g"
    await backend.restore(from_record(json.dumps(old)))
    await backend.restore(service(name="fine"))
    assert ("configmaps", NS, "old") not in kube.api.objects  # what it made went again
    with pytest.raises(ServiceUnavailable, match="not deployed"):
        await backend.invoke_url("old")
    assert ("configmaps", NS, "fine") in kube.api.objects


async def test_the_deployment_page_never_reaches_another_services_deployment(
    kube: Kube, backend: KubernetesBackend
) -> None:
    """Exposed `foo`'s Deployment is `foo-dpl`, as is plain `foo-dpl`'s: foo's page, stop
    and restart never reach the other's, should both be stored (made before names were
    checked)."""
    await backend.deploy(service(name="foo-dpl"))
    exposed = service(name="foo", expose={"api_port": 5000})
    assert await backend.deployment(exposed) is None
    await backend.stop_service(exposed)
    await backend.restart_service(exposed)
    deployment = kube.api.objects[("deployments", NS, "foo-dpl")]
    assert deployment["spec"]["replicas"] == 1
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    assert kubernetes_backend.RESTARTED_AT not in annotations


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
            # An image the kubelet cannot pull: refused with its reason, nothing kept.
            kube.api.image_errors = {"ghcr.io/grycap/nosuch"}
            unpullable = {**COWSAY, "name": "nosuch", "image": "ghcr.io/grycap/nosuch"}
            async with http.post("/system/services", json=unpullable) as response:
                assert response.status == 400, await response.text()
                assert re.search(
                    "ghcr.io/grycap/nosuch cannot be pulled: (ErrImagePull|ImagePullBackOff)",
                    await response.text(),
                )
            async with http.get("/system/services/nosuch") as response:
                assert response.status == 404
        await asyncio.wait_for(kube.api.wait_until(lambda: not kube.api.names("pods", NS)), 20)
        assert stored(kube.api) == {}
    finally:
        await asyncio.to_thread(factory.close)
    assert_within_role(kube.api)


def peak_memory(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_a_running_jobs_large_log_is_streamed_not_held(
    kube: Kube, tmp_path: Path
) -> None:
    """GET /system/logs/NAME/JOB of a running job read its pod's whole log into the
    controller's memory and sent it as one chunk (a 150 MB log: +416 MB peak)."""
    import aiohttp

    from tests.integration.controller_fixture import PASSWORD, USER, ControllerFactory

    size = 64 << 20
    factory = ControllerFactory(tmp_path)
    try:
        controller = await asyncio.to_thread(
            factory, None, ["--backend", "kubernetes", "--kubeconfig", str(kube.kubeconfig),
                            "--runtime-image", "registry.example/runtime:1"])
        auth = {"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)}
        async with aiohttp.ClientSession(controller.url, headers=auth) as http:
            async with http.post("/system/services", json=COWSAY) as response:
                assert response.status == 201, await response.text()
            kube.api.autorun = PodRun(run=120, logs=b"x" * size)
            async with http.post("/job/cowsay", data=b"{}") as response:
                job = (await response.json())["job"]
            await asyncio.wait_for(kube.api.wait_for("jobs", NS, job), 30)
            before = peak_memory(controller.process.pid)
            read = 0
            while read == 0:  # empty until the controller has seen its pod run: polled
                async with http.get(f"/system/logs/cowsay/{job}") as response:
                    assert response.status == 200
                    async for chunk in response.content.iter_chunked(1 << 20):
                        read += len(chunk)
                if read == 0:
                    await asyncio.sleep(0.05)
            assert read == size
            grown = peak_memory(controller.process.pid) - before
            assert grown < size // 4, f"the controller's peak memory grew {grown >> 20} MiB"
    finally:
        await asyncio.to_thread(factory.close)
    assert_within_role(kube.api)


# ---- deploys checked, refused whole ----------------------------------------------------------


async def test_a_deploy_the_server_refuses_makes_nothing(
    kube: Kube, backend: KubernetesBackend
) -> None:
    """The dry run meets the refusal (a quota, here) before anything is made."""
    kube.api.admission = lambda obj: (
        "exceeded quota: compute, requested: limits.cpu=4, limited: limits.cpu=2"
        if obj["kind"] == "Deployment" else None
    )
    with pytest.raises(KubernetesError, match="403 exceeded quota: compute"):
        await backend.deploy(service(cpu="4"))
    assert stored(kube.api) == {}
    assert not [r for r in kube.api.requests if r.verb == "create" and not r.dry_run]


async def test_a_body_the_api_server_cannot_decode_is_a_400(
    kube: Kube, backend: KubernetesBackend
) -> None:
    """A memory that is no Kubernetes quantity (`1g`; the FDL refuses it now, this one
    comes from elsewhere) makes a body the API server cannot even decode: 400 BadRequest
    to its dry run, the definition's fault as a 422 is, so a 400 (before: a 502)."""
    with pytest.raises(InvalidService, match=(
        r'400 Deployment in version "v1" cannot be handled as a Deployment: '
        "quantities must match the regular expression"
    )):
        await backend.check(dataclasses.replace(service(), memory="1g"))
    assert stored(kube.api) == {}


@pytest.mark.parametrize(
    ("field", "amount"),
    [("memory", m) for m in ("256Mi", "1.5Gi", "512k", "1G", "1E", "1e9", "128974848")]
    + [("cpu", c) for c in ("0.5", "500m", ".5", "2.25", "1.5m")],
)
def test_every_amount_the_fdl_takes_the_api_server_decodes(field: str, amount: str) -> None:
    assert quantity_problem(manifests.deployment(service(**{field: amount}), CLUSTER)) is None


@pytest.mark.parametrize(
    ("field", "amount"),
    # What the FDL refuses ("'1g' is not a memory amount"), so no manifest carries it.
    [("memory", m) for m in ("1g", "512K", "1t", "1p", "1E3", "1m")]
    + [("cpu", c) for c in ("1k", "1e3", "0.5Ki")],
)
def test_amounts_the_fdl_refuses_never_reach_a_manifest(field: str, amount: str) -> None:
    with pytest.raises(InvalidService):
        service(**{field: amount})


async def test_a_deploy_failing_half_way_takes_back_what_it_made(
    kube: Kube, backend: KubernetesBackend
) -> None:
    """Refused after its dry run passed (the quota used up meanwhile): what it had
    created goes again."""
    seen: list[str] = []

    def quota(obj: dict[str, Any]) -> str | None:
        seen.append(obj["kind"])
        refused = obj["kind"] == "Service" and seen.count("Service") > 1
        return "exceeded quota: services" if refused else None

    kube.api.admission = quota
    with pytest.raises(KubernetesError, match="exceeded quota: services"):
        await backend.deploy(service())
    await asyncio.wait_for(
        kube.api.wait_until(lambda: not stored(kube.api) and not kube.api.names("pods", NS)), 20
    )
    assert {(p, n) for p, n, _ in kube.api.deletes} == {
        ("secrets", "cowsay-minio"), ("secrets", "cowsay"), ("configmaps", "cowsay"),
        ("deployments", "cowsay"),
    }


async def test_an_image_that_cannot_be_pulled_refuses_the_deploy(
    kube: Kube, backend: KubernetesBackend
) -> None:
    kube.api.image_errors = {"ghcr.io/grycap/cowsay"}
    with pytest.raises(InvalidService, match=r"^image: ghcr.io/grycap/cowsay cannot be pulled: "
                       r"(ErrImagePull|ImagePullBackOff): "):
        await backend.deploy(service())


async def test_run_waits_for_a_ready_replica(kube: Kube, tmp_path: Path) -> None:
    kube.api.ready_delay = 1.0
    backend = KubernetesBackend(CLUSTER, str(kube.kubeconfig), sync_wait=0.1)
    await backend.start()
    try:
        await backend.deploy(service())  # not started within sync_wait: left starting
        with pytest.raises(ServiceUnavailable, match=r"no ready replica after 0\.1 s"):
            await backend.invoke_url("cowsay")
        backend.sync_wait = 20
        url = await backend.invoke_url("cowsay")
        assert url == "http://cowsay.oscar-svc.svc.cluster.local:80"
        assert kube.api.objects[("deployments", NS, "cowsay")]["status"]["readyReplicas"] == 1
    finally:
        await backend.close()


async def test_the_objects_of_an_exposed_service(kube: Kube, backend: KubernetesBackend) -> None:
    """set_auth, rewrite_target, the autoscaler, image_pull_secrets and enable_gpu, as the
    API server takes them (every body validated against the 1.30 schema)."""
    token = "t" * 64
    exposed = service(
        expose={"api_port": 5000, "min_scale": 2, "max_scale": 5, "cpu_threshold": 60,
                "set_auth": True, "rewrite_target": True},
        image_pull_secrets=["registry-login"],
        enable_gpu=True,
    ).with_token(token)
    await backend.deploy(exposed)
    objects = stored(kube.api)
    user, _, hashed = base64.b64decode(
        objects[("secrets", "cowsay-auth-expose")]["data"]["auth"]
    ).decode().partition(":")
    assert user == "cowsay" and hashed.startswith("{SSHA}")
    raw = base64.b64decode(hashed.removeprefix("{SSHA}"))
    assert hashlib.sha1(token.encode() + raw[20:]).digest() == raw[:20]
    annotations = objects[("ingresses", "cowsay-ing")]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-type"] == "basic"
    assert annotations["nginx.ingress.kubernetes.io/auth-secret"] == "cowsay-auth-expose"
    assert annotations["nginx.ingress.kubernetes.io/rewrite-target"] == (
        "/system/services/cowsay/exposed/$1"
    )
    hpa = objects[("horizontalpodautoscalers", "cowsay-hpa")]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    pod = objects[("deployments", "cowsay-dpl")]["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-login"}]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # Made no more once the service no longer asks for it.
    await backend.deploy(service(expose={"api_port": 5000}).with_token(token))
    assert ("secrets", "cowsay-auth-expose") not in stored(kube.api)


# ---- jobs: failures, logs, watches -------------------------------------------------------------


async def test_a_job_whose_image_cannot_be_pulled_fails_with_the_reason(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    await backend.deploy(service())
    kube.api.image_errors = {"ghcr.io/grycap/cowsay"}
    (tmp_path / "event").write_bytes(b"{}")
    with pytest.raises(KubernetesError, match="cannot be pulled: ErrImagePull"):
        await asyncio.wait_for(
            backend.run_job(service(), "cowsay-7777", tmp_path / "event", tmp_path / "log"), 20
        )
    assert ("jobs", "cowsay-7777", {"propagationPolicy": "Foreground"}) in kube.api.deletes
    await asyncio.wait_for(kube.api.wait_gone("jobs", NS, "cowsay-7777"), 20)


def kubelet_says(api: FakeKubeApi, job: str, status: dict[str, Any]) -> None:
    """The job's pod's status, as the kubelet writes it where the stand-in does not play
    it (a Secret missing, a pod no node can take)."""
    name = api.job_pod(job, NS)["metadata"]["name"]
    current = api.objects[("pods", NS, name)]
    api._store("pods", NS, {**copy.deepcopy(current), "status": status}, previous=current)


def waiting(container: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"name": container, "image": "", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}}


@contextlib.asynccontextmanager
async def backend_with(kube: Kube, **options: Any) -> AsyncIterator[KubernetesBackend]:
    backend = KubernetesBackend(CLUSTER, str(kube.kubeconfig), **options)
    await backend.start()
    await watching(kube.api)
    try:
        yield backend
    finally:
        await backend.close()
    assert_within_role(kube.api)


async def test_a_job_whose_secret_an_update_deleted_fails_with_the_reason(
    kube: Kube, tmp_path: Path
) -> None:
    """An update dropping `environment.secrets` deletes the Secret a pending job's pod
    names: the kubelet cannot make its container, for ever (a Job sets no deadline for
    its pending phase). The job fails once that has lasted `start_error_grace`, saying
    why, and its worker is free again."""
    async with backend_with(kube, start_error_grace=0.5) as backend:
        await backend.deploy(service())
        task, _, _ = await start_job(kube, backend, tmp_path, "cowsay-9999", b"{}")
        await backend.deploy(service(environment={"variables": {}}))
        assert ("secrets", "cowsay") not in stored(kube.api)
        began = asyncio.get_running_loop().time()
        kubelet_says(kube.api, "cowsay-9999", {"phase": "Pending", "containerStatuses": [
            waiting(manifests.CONTAINER, "CreateContainerConfigError",
                    'secret "cowsay" not found'),
        ]})
        with pytest.raises(KubernetesError, match=(
            r"^Job cowsay-9999: its pod cowsay-9999-\w+: container oscar-container cannot "
            r'start: CreateContainerConfigError: secret "cowsay" not found$'
        )):
            await asyncio.wait_for(task, 20)
        assert asyncio.get_running_loop().time() - began >= 0.5
        assert ("jobs", "cowsay-9999", FOREGROUND) in kube.api.deletes
        await asyncio.wait_for(kube.api.wait_gone("jobs", NS, "cowsay-9999"), 20)


@pytest.mark.parametrize("reason", ["CreateContainerError", "RunContainerError"])
async def test_a_job_whose_container_cannot_start_fails_on_one_line(
    kube: Kube, tmp_path: Path, reason: str
) -> None:
    async with backend_with(kube, start_error_grace=0.2) as backend:
        await backend.deploy(service())
        task, _, _ = await start_job(kube, backend, tmp_path, "cowsay-9998", b"{}")
        kubelet_says(kube.api, "cowsay-9998", {"phase": "Pending", "containerStatuses": [
            waiting(manifests.CONTAINER, reason, "failed to create:\nexec: no such file"),
        ]})
        with pytest.raises(KubernetesError) as raised:
            await asyncio.wait_for(task, 20)
        message = str(raised.value)
        assert message.endswith(f"cannot start: {reason}: failed to create: exec: no such file")


async def test_a_container_runtime_error_that_passes_fails_nothing(
    kube: Kube, tmp_path: Path
) -> None:
    """A busy runtime reports CreateContainerError for a moment ("failed to reserve
    container name") and the kubelet's retry then starts the container: failed at once,
    such a job would have failed for nothing."""
    async with backend_with(kube, start_error_grace=3600) as backend:
        await backend.deploy(service())
        task, _, _ = await start_job(kube, backend, tmp_path, "cowsay-9995", b"{}")
        kubelet_says(kube.api, "cowsay-9995", {"phase": "Pending", "containerStatuses": [
            waiting(manifests.CONTAINER, "CreateContainerError",
                    "failed to reserve container name"),
        ]})
        # Once the backend's cache holds that state, its waiter is woken: without the
        # grace the job would fail then. Half a second for it to (not) end.
        deadline = asyncio.get_running_loop().time() + 20
        while not any(
            (status.get("state") or {}).get("waiting", {}).get("reason") == "CreateContainerError"
            for pod in backend._cache["Pod"].values()
            if pod["metadata"]["name"].startswith("cowsay-9995")
            for status in (pod.get("status") or {}).get("containerStatuses") or []
        ):
            assert asyncio.get_running_loop().time() < deadline, "the state never reached it"
            await asyncio.sleep(0.01)  # the backend's own watch: polled, in this process
        done, _ = await asyncio.wait({task}, timeout=0.5)
        assert not done, task
        kubelet_says(kube.api, "cowsay-9995", {"phase": "Running", "containerStatuses": [
            {"name": manifests.CONTAINER, "image": "", "imageID": "", "ready": True,
             "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]})
        kube.api.finish_job("cowsay-9995", NS, 0, b"moo\n")
        assert await asyncio.wait_for(task, 20) == 0


async def test_a_job_whose_pod_stays_pending_fails_after_the_limit(
    kube: Kube, tmp_path: Path
) -> None:
    """No node can take the pod (or a volume cannot be mounted, which only the pod's
    events tell): after `pending_limit` seconds in that state, the job fails."""
    async with backend_with(kube, pending_limit=0.5) as backend:
        await backend.deploy(service())
        began = asyncio.get_running_loop().time()
        task, _, _ = await start_job(kube, backend, tmp_path, "cowsay-9997", b"{}")
        kubelet_says(kube.api, "cowsay-9997", {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient memory."},
        ]})
        with pytest.raises(KubernetesError, match=(
            r"^Job cowsay-9997: its pod cowsay-9997-\w+ has not started in 0.5 s: "
            r"Unschedulable: 0/3 nodes are available: 3 Insufficient memory. "
            r"\(its events say why: kubectl describe pod\)$"
        )):
            await asyncio.wait_for(task, 20)
        assert asyncio.get_running_loop().time() - began >= 0.5
        await asyncio.wait_for(kube.api.wait_gone("jobs", NS, "cowsay-9997"), 20)


async def test_a_pod_getting_on_or_running_is_not_failed_by_the_limit(
    kube: Kube, tmp_path: Path
) -> None:
    """The limit is on one pending state, not on the job: each step of the pod's start
    (scheduled, its init container run) counts anew, and a running job runs on. Time is
    what is tested: the steps are paced by the clock."""
    limit = 1.0
    async with backend_with(kube, pending_limit=limit) as backend:
        await backend.deploy(service())
        task, log, _ = await start_job(kube, backend, tmp_path, "cowsay-9996", b"{}")
        steps: list[dict[str, Any]] = [
            {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]},
            {"phase": "Pending", "initContainerStatuses": [
                waiting(manifests.INIT_CONTAINER, "PodInitializing")]},
            {"phase": "Pending", "containerStatuses": [
                waiting(manifests.CONTAINER, "ContainerCreating")]},
            {"phase": "Running", "containerStatuses": [
                {"name": manifests.CONTAINER, "image": "", "imageID": "", "ready": True,
                 "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]},
        ]
        for status in steps:
            kubelet_says(kube.api, "cowsay-9996", status)
            await asyncio.sleep(0.6 * limit)
            assert not task.done(), task
        await asyncio.sleep(0.6 * limit)  # running: past the limit since the last step
        assert not task.done(), task
        kube.api.finish_job("cowsay-9996", NS, 0, b"moo\n")
        assert await asyncio.wait_for(task, 20) == 0
        assert log.read_bytes() == b"moo\n"


async def test_an_oom_killed_job_says_so(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    await backend.deploy(service())
    kube.api.autorun = PodRun(start=0.01, run=0.01, logs=b"allocating\n", oom=True)
    task, log, _ = await start_job(kube, backend, tmp_path, "cowsay-8888", b"{}")
    assert await asyncio.wait_for(task, 20) == 137
    assert log.read_bytes() == (
        b"allocating\nfaas-supervisor: the job's container was killed for its memory "
        b"(OOMKilled; its limit is 256Mi)\n"
    )


async def test_an_interrupted_job_whose_job_is_gone_is_not_run_twice(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    """A controller down for longer than a finished Job's TTL: the Job and its pods are
    gone when it starts again. Creating the Job anew would run the script twice; the job
    fails saying why. An interrupted job whose Job is still there is followed."""
    await backend.deploy(service())
    backend.interrupted(["cowsay-lost"])
    event = tmp_path / "lost.event"
    event.write_bytes(b"{}")
    with pytest.raises(KubernetesError, match="is gone: it ended while the controller"):
        await backend.run_job(service(), "cowsay-lost", event, tmp_path / "lost.log")
    assert "cowsay-lost" not in kube.api.names("jobs", NS)
    assert not [r for r in kube.api.requests if r.verb == "create" and r.resource == "jobs"]


async def test_a_completed_job_whose_pod_is_gone_succeeds_without_its_logs(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    """The Job Complete and its pod deleted before the backend saw it end (the pod
    garbage collector, an eviction; bench/scale.py met it under load): the Job
    controller's word stands, the logs are said to be lost. Before: a failed job."""
    await backend.deploy(service())
    task, log, _ = await start_job(kube, backend, tmp_path, "cowsay-gone", b"{}")
    await asyncio.wait_for(kube.api.wait_until(lambda: bool(
        kube.api._owned.get((NS, "jobs.cowsay-gone")))), 20)
    pod = kube.api.job_pod("cowsay-gone", NS)["metadata"]["name"]
    kube.api._remove("pods", NS, pod)
    stored = kube.api.objects[("jobs", NS, "cowsay-gone")]
    complete = {**stored, "status": {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True"}]}}
    kube.api._store("jobs", NS, complete, previous=stored)
    assert await asyncio.wait_for(task, 30) == 0
    assert log.read_bytes() == (
        b"faas-supervisor: the job's pod was deleted before its logs could be read\n")


async def test_logs_are_read_from_the_pod_while_the_job_runs(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    """Streamed, a chunk at a time; a reader that stops early lets go of its connection,
    which serves no other request with the rest of that log."""
    await backend.deploy(service())
    logs = b"half way\n" * 100_000  # several chunks
    kube.api.autorun = PodRun(run=60, logs=logs)
    task, _, _ = await start_job(kube, backend, tmp_path, "cowsay-9999", b"{}")
    await asyncio.wait_for(kube.api.wait_until(
        lambda: kube.api.job_pod("cowsay-9999", NS)["status"]["phase"] == "Running"), 20)
    # The backend learns of it from its watch; the API has no event for the test to await.
    for _ in range(400):
        if (live := await backend.live_logs("cowsay-9999")) is not None:
            break
        await asyncio.sleep(0.025)
    assert live is not None
    first = await anext(live)
    assert 0 < len(first) <= kubernetes_backend.LOG_CHUNK
    await live.aclose()  # the rest left unread
    again = await backend.live_logs("cowsay-9999")
    assert again is not None
    assert b"".join([chunk async for chunk in again]) == logs
    assert await backend.deployment(service()) is not None  # the next request, answered
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_job_costs_two_requests_and_no_watch_of_its_own(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    await backend.deploy(service())
    kube.api.autorun = PodRun(logs=b"ok\n")
    before = len(kube.api.requests)
    tasks = [
        (await start_job(kube, backend, tmp_path, f"cowsay-{n}", b"{}"))[0] for n in range(5)
    ]
    assert await asyncio.wait_for(asyncio.gather(*tasks), 20) == [0] * 5
    made = sorted((r.verb, r.resource) for r in kube.api.requests[before:])
    assert made == [("create", "jobs")] * 5 + [("get", "pods/log")] * 5
    # Nothing of them is kept once they have ended (many jobs, little memory).
    assert backend._cache["Job"] == {} and backend._job_pods == {}


async def test_the_watches_resume_after_a_disconnect(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    await backend.deploy(service())
    task, log, _ = await start_job(kube, backend, tmp_path, "cowsay-1212", b"{}")
    await kube.api.drop_watches()
    await asyncio.wait_for(kube.api.wait_for_request("watch", "jobs", 2), 20)
    resumed = [r.since for r in kube.api.requests if r.verb == "watch" and r.resource == "jobs"]
    assert resumed[1] and int(resumed[1]) >= int(resumed[0])  # from where it was, not anew
    kube.api.finish_job("cowsay-1212", NS, 0, b"after the break\n")
    assert await asyncio.wait_for(task, 20) == 0
    assert log.read_bytes() == b"after the break\n"


async def test_a_watch_too_old_to_resume_lists_again(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    """The job ends while the watches are down and the history is compacted: the watch
    is answered 410 Gone, the backend lists again, and finds it ended."""
    await backend.deploy(service())
    task, log, _ = await start_job(kube, backend, tmp_path, "cowsay-1313", b"{}")
    lists = sum(r.verb == "list" and r.resource == "jobs" for r in kube.api.requests)
    await kube.api.drop_watches()
    kube.api.finish_job("cowsay-1313", NS, 4, b"while away\n")
    kube.api.compact()
    assert await asyncio.wait_for(task, 20) == 4
    assert log.read_bytes() == b"while away\n"
    # The pods' listing may have told the end first: the Jobs' is awaited.
    await asyncio.wait_for(kube.api.wait_until(
        lambda: sum(r.verb == "list" and r.resource == "jobs" for r in kube.api.requests) > lists
    ), 20)


async def test_a_silent_watch_is_given_up_and_resumed(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch whose connection goes silent (half-open: a node or a load balancer gone
    without a reset) is given up once silent past its end, and resumed from where it
    was: a job that ends meanwhile is seen to end. Before, its thread waited in recv for
    ever, and the job with it."""
    monkeypatch.setattr(kubernetes_backend, "WATCH_SECONDS", 1)
    monkeypatch.setattr(kubernetes_backend, "WATCH_MARGIN", 0.5)
    await backend.deploy(service())
    watches = sum(r.verb == "watch" and r.resource == "jobs" for r in kube.api.requests)
    kube.api.silent = True
    await kube.api.drop_watches()  # back at once, with the new timeouts, into silence
    await watching(kube.api, watches + 1)
    kube.api.silent = False  # for the watches after those, which stay silent
    task, log, _ = await start_job(kube, backend, tmp_path, "cowsay-1515", b"{}")
    kube.api.finish_job("cowsay-1515", NS, 0, b"heard\n")
    try:
        assert await asyncio.wait_for(task, 10) == 0
    finally:
        task.cancel()
    assert log.read_bytes() == b"heard\n"
    since = [r.since for r in kube.api.requests if r.verb == "watch" and r.resource == "jobs"]
    assert since[watches + 1] == since[watches]  # from where it was, not listed anew


async def test_jobs_never_made_are_not_remembered(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    """A Job the API server refuses (a quota) never exists, so no deletion of it will be
    seen: nothing of it is kept. Before, each one's name was, for the controller's life."""
    await backend.deploy(service())
    kube.api.admission = lambda obj: (
        "exceeded quota: count/jobs.batch" if obj["kind"] == "Job" else None
    )
    (tmp_path / "event").write_bytes(b"{}")
    for n in range(3):
        with pytest.raises(KubernetesError, match="403 exceeded quota"):
            await backend.run_job(service(), f"cowsay-q{n}", tmp_path / "event",
                                  tmp_path / "log")
    assert backend._done == set()


async def test_jobs_deleted_while_unwatched_are_forgotten_at_the_listing(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    """An ended job's name is kept until its Job's deletion is seen. One deleted while
    the watches were down past the history (410 Gone, then listed again) is forgotten at
    that listing; one still there is kept."""
    await backend.deploy(service())
    for job in ("cowsay-1616", "cowsay-1717"):
        task, _, _ = await start_job(kube, backend, tmp_path, job, b"{}")
        kube.api.finish_job(job, NS, 0, b"")
        assert await asyncio.wait_for(task, 20) == 0
    assert backend._done == {"cowsay-1616", "cowsay-1717"}
    watches = sum(r.verb == "watch" and r.resource == "jobs" for r in kube.api.requests)
    await kube.api.drop_watches()
    kube.api._collect("jobs", NS, "cowsay-1616")  # its TTL, say, while nothing watched
    kube.api.compact()
    # The watch back is answered 410 Gone; the next one comes after the listing.
    await asyncio.wait_for(kube.api.wait_for_request("watch", "jobs", watches + 2), 20)
    assert backend._done == {"cowsay-1717"}


async def test_a_finished_job_is_cleaned_by_its_ttl(
    kube: Kube, backend: KubernetesBackend, tmp_path: Path
) -> None:
    kube.api.ttl_factor = 1e-4  # an hour in a third of a second
    await backend.deploy(service())
    task, _, job = await start_job(kube, backend, tmp_path, "cowsay-1414", b"{}")
    assert job["spec"]["ttlSecondsAfterFinished"] == manifests.JOB_TTL_SECONDS
    kube.api.finish_job("cowsay-1414", NS, 0, b"")
    assert await asyncio.wait_for(task, 20) == 0
    await asyncio.wait_for(kube.api.wait_gone("jobs", NS, "cowsay-1414"), 20)
    assert not [p for p in kube.api.names("pods", NS) if p.startswith("cowsay-1414")]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
async def test_a_restarted_controller_catches_up_with_its_jobs(
    kube: Kube, tmp_path: Path, stop: signal.Signals
) -> None:
    """A controller stopped (or killed) during two jobs, which it leaves running; one
    ends while no controller runs, the other after the next one started: that one finds
    both Jobs by their labels (its listing), follows them without running them again,
    and records both outcomes and logs. A running job's logs are read from its pod."""
    import aiohttp

    from tests.integration.controller_fixture import PASSWORD, USER, ControllerFactory

    args = ["--backend", "kubernetes", "--kubeconfig", str(kube.kubeconfig),
            "--runtime-image", "registry.example/runtime:1", "--max-jobs", "4"]
    auth = {"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)}
    factory = ControllerFactory(tmp_path)
    try:
        first = await asyncio.to_thread(factory, None, args)
        async with aiohttp.ClientSession(first.url, headers=auth) as http:
            async with http.post("/system/services", json=COWSAY) as response:
                assert response.status == 201, await response.text()
            jobs = []
            for _ in range(2):
                async with http.post("/job/cowsay", data=b"{}") as response:
                    jobs.append((await response.json())["job"])
        ended, running = jobs
        for job in jobs:
            await asyncio.wait_for(kube.api.wait_for("jobs", NS, job), 30)
        await asyncio.to_thread(first.stop, stop)
        assert [d for d in kube.api.deletes if d[0] == "jobs"] == []  # left running
        kube.api.finish_job(ended, NS, 0, b"ended while away\n")
        # The other one runs on, writing.
        pod = kube.api.job_pod(running, NS)
        kube.api.logs[pod["metadata"]["name"]] = b"still going\n"
        running_pod = {**pod, "status": {"phase": "Running", "containerStatuses": [{
            "name": manifests.CONTAINER, "image": COWSAY["image"], "imageID": "",
            "ready": True, "restartCount": 0, "state": {"running": {}}}]}}
        kube.api._store("pods", NS, running_pod, previous=pod)

        second = await asyncio.to_thread(factory, first.data_dir, args)
        async with aiohttp.ClientSession(second.url, headers=auth) as http:
            async def status(job: str) -> str:
                async with http.get("/system/logs/cowsay") as response:
                    return str((await response.json())["jobs"][job]["status"])

            async def logs(job: str) -> str:
                async with http.get(f"/system/logs/cowsay/{job}") as response:
                    return await response.text()

            # No event to await through the API: polled, briefly.
            while await status(ended) != "Succeeded" or not (
                await logs(running)
            ).endswith("still going\n"):
                await asyncio.sleep(0.05)
            assert await logs(ended) == (
                "faas-supervisor: the controller stopped while the job was running; "
                "it is followed again\nended while away\n"
            )
            assert await status(running) == "Running"
            kube.api.finish_job(running, NS, 3, b"still going\nended after\n")
            while await status(running) != "Failed":
                await asyncio.sleep(0.05)
            assert (await logs(running)).endswith("still going\nended after\n")
        creates = [r for r in kube.api.requests if r.resource == "jobs" and r.verb == "create"]
        assert len(creates) == 4  # each Job made once; the second tries answered 409
    finally:
        await asyncio.to_thread(factory.close)
    assert_within_role(kube.api)


# ---- the deployment page of the dashboard (issue 11) --------------------------------------


async def test_the_deployment_as_the_dashboard_sees_and_drives_it(
    kube: Kube, backend: KubernetesBackend
) -> None:
    from faas_supervisor.controller.deployments import Deployment, LogLine

    exposed = service(expose={"api_port": 5000, "min_scale": 2, "max_scale": 4})
    assert await backend.deployment(exposed) is None
    assert await backend.deployment_logs(exposed, 10) is None
    await backend.deploy(exposed)
    key = ("deployments", NS, "cowsay-dpl")
    # The Deployment controller's part: the status it writes.
    kube.api.objects[key]["status"] = {
        "replicas": 2, "availableReplicas": 1,
        "conditions": [
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "lastUpdateTime": "2026-01-02T03:04:00Z"},
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
             "message": "Deployment does not have minimum availability.",
             "lastUpdateTime": "2026-01-02T03:04:05Z"},
        ],
    }
    assert await backend.deployment(exposed) == Deployment(
        desired=2, running=2, ready=1,
        reason="MinimumReplicasUnavailable: Deployment does not have minimum availability.",
        since=1767323045.0)

    # Its pods' logs, with the times the kubelet puts in front.
    template = kube.api.objects[key]["spec"]["template"]
    kube.api._store("pods", NS, {"apiVersion": "v1", "kind": "Pod",
                                 "metadata": {"name": "cowsay-dpl-1",
                                              "labels": template["metadata"]["labels"]},
                                 "spec": template["spec"], "status": {"phase": "Running"}},
                    previous=None)
    kube.api.logs["cowsay-dpl-1"] = b"2026-01-02T03:04:06Z world\n2026-01-02T03:04:05.5Z hello\n"
    assert await backend.deployment_logs(exposed, 10) == [
        LogLine("world", 1767323046.0), LogLine("hello", 1767323045.5)]

    # stop: no replicas, the manager's annotations, no autoscaler to scale it up again.
    await backend.stop_service(exposed)
    stopped = kube.api.objects[key]
    assert stopped["spec"]["replicas"] == 0
    assert stopped["metadata"]["annotations"] == {"oscar.grycap.io/previous-replicas": "2",
                                                  "oscar.grycap.io/stopped": "true"}
    assert ("horizontalpodautoscalers", NS, "cowsay-hpa") not in kube.api.objects
    assert (await backend.deployment(exposed) or Deployment(1, 1, 1)).desired == 0
    await backend.restart_service(exposed)  # a stopped Deployment stays as it is
    assert kube.api.objects[key]["spec"]["replicas"] == 0

    await backend.start_service(exposed)
    assert kube.api.objects[key]["spec"]["replicas"] == 2
    assert ("horizontalpodautoscalers", NS, "cowsay-hpa") in kube.api.objects
    await backend.restart_service(exposed)
    annotations = kube.api.objects[key]["spec"]["template"]["metadata"]["annotations"]
    assert "oscar.grycap.io/restarted-at" in annotations


class StatusWrites:
    """The deployment controller's part between the backend's read of a Deployment and
    its replace: a status write, which gives the Deployment a new resourceVersion. On the
    first `times` reads (every one: None)."""

    def __init__(self, kube: Kube, backend: KubernetesBackend, times: int | None) -> None:
        self.kube, self.backend, self.times = kube, backend, times
        self.reads = 0
        self.read = backend._read_deployment
        self.loop = asyncio.get_running_loop()

    def __call__(self, service: Service) -> Any:  # in the backend's thread
        found = self.read(service)
        self.reads += 1
        if self.times is None or self.reads <= self.times:
            asyncio.run_coroutine_threadsafe(self.write_status(), self.loop).result(10)
        return found

    async def write_status(self) -> None:
        key = ("deployments", NS, "cowsay")
        current = self.kube.api.objects[key]
        updated = copy.deepcopy(current)
        updated["status"] = {**current.get("status", {}), "observedGeneration": self.reads}
        self.kube.api._store("deployments", NS, updated, previous=current)


async def test_stop_and_restart_read_again_after_a_conflict(
    kube: Kube, backend: KubernetesBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await backend.deploy(service())
    key = ("deployments", NS, "cowsay")
    writes = StatusWrites(kube, backend, times=2)
    monkeypatch.setattr(backend, "_read_deployment", writes)
    await backend.stop_service(service())
    assert writes.reads == 3  # two conflicts, then the replace
    assert kube.api.objects[key]["spec"]["replicas"] == 0
    assert kube.api.objects[key]["metadata"]["annotations"] == {
        "oscar.grycap.io/previous-replicas": "1", "oscar.grycap.io/stopped": "true"}

    await backend.start_service(service())
    assert kube.api.objects[key]["spec"]["replicas"] == 1
    writes.reads, writes.times = 0, 2
    await backend.restart_service(service())
    assert writes.reads == 3
    annotations = kube.api.objects[key]["spec"]["template"]["metadata"]["annotations"]
    assert "oscar.grycap.io/restarted-at" in annotations


async def test_a_deployment_always_written_meanwhile_gives_up_with_the_conflict(
    kube: Kube, backend: KubernetesBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await backend.deploy(service())
    writes = StatusWrites(kube, backend, times=None)
    monkeypatch.setattr(backend, "_read_deployment", writes)
    with pytest.raises(KubernetesError, match="409") as raised:
        await backend.stop_service(service())
    assert raised.value.status == 409
    assert writes.reads == kubernetes_backend.CONFLICT_TRIES
    assert kube.api.objects[("deployments", NS, "cowsay")]["spec"]["replicas"] == 1


# ---- an autoscaled Deployment's replicas are the HPA's -----------------------------------


def scale_to(kube: Kube, name: str, replicas: int) -> None:
    """The HorizontalPodAutoscaler's part: the Deployment's replicas set to its choice."""
    key = ("deployments", NS, name)
    current = kube.api.objects[key]
    updated = copy.deepcopy(current)
    updated["spec"]["replicas"] = replicas
    kube.api._store("deployments", NS, updated, previous=current)


HPA_DEPLOYMENT = ("deployments", NS, "cowsay-dpl")


def autoscaled(variable: str = "moo", **expose: int) -> Service:
    return service(environment={"variables": {"GREETING": variable}},
                   expose={"api_port": 5000, "min_scale": 2, "max_scale": 10, **expose})


async def test_an_update_keeps_the_replicas_the_autoscaler_chose(
    kube: Kube, backend: KubernetesBackend
) -> None:
    """Replaced with min_scale's replicas, every update of an exposed service would kill
    the pods the HPA had added; they are kept, within the bounds (as the HPA would)."""
    await backend.deploy(autoscaled())
    assert kube.api.objects[HPA_DEPLOYMENT]["spec"]["replicas"] == 2  # made: the minimum
    scale_to(kube, "cowsay-dpl", 8)
    await backend.deploy(autoscaled("baa"))  # one variable changed
    assert kube.api.objects[HPA_DEPLOYMENT]["spec"]["replicas"] == 8
    await backend.deploy(autoscaled("baa", max_scale=5))
    assert kube.api.objects[HPA_DEPLOYMENT]["spec"]["replicas"] == 5
    await backend.deploy(autoscaled("baa", min_scale=7, max_scale=9))
    assert kube.api.objects[HPA_DEPLOYMENT]["spec"]["replicas"] == 7


async def test_a_restart_keeps_the_replicas_the_autoscaler_chose(
    kube: Kube, backend: KubernetesBackend
) -> None:
    """A restarted controller (a new backend) applies its stored services again
    (`restore`): the HPA's replicas stay."""
    await backend.deploy(autoscaled())
    scale_to(kube, "cowsay-dpl", 8)
    await backend.close()
    again = KubernetesBackend(CLUSTER, str(kube.kubeconfig))
    await again.start()
    try:
        await again.restore(autoscaled())
    finally:
        await again.close()
    assert kube.api.objects[HPA_DEPLOYMENT]["spec"]["replicas"] == 8
