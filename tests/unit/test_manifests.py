"""The Kubernetes objects of a service: each one the code can make validates against the
Kubernetes 1.30 API schema (kubernetes-validate, strict: no unknown fields), carries the
labels the backend finds it by, and runs the runtime the way SPEC 7.3 says."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from faas_supervisor.cli import main
from faas_supervisor.config import load_function_config
from faas_supervisor.controller import manifests
from faas_supervisor.controller.fdl import Service, load_fdl, parse_service
from faas_supervisor.controller.function_config import function_config
from faas_supervisor.errors import InvalidService

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.30"
MINIO = {
    "endpoint": "http://minio.minio:9000",
    "verify": True,
    "access_key": "minio-ak",
    "secret_key": "minio-sk",
    "region": "us-east-1",
}
WITH_MINIO = manifests.Cluster("oscar-svc", "registry.example/runtime:1", MINIO)
WITHOUT_MINIO = manifests.Cluster()

SERVICES: dict[str, dict[str, Any]] = {
    "sync": {"name": "cowsay", "image": "ghcr.io/grycap/cowsay", "script": "echo hi\n"},
    "sync-secrets-resources": {
        "name": "plants",
        "image": "registry.example/plants:2",
        "script": "#!/bin/sh\npredict \"$INPUT_FILE_PATH\"\n",
        "cpu": "1.5",
        "memory": "2Gi",
        "enable_gpu": True,
        "environment": {"variables": {"MODEL": "small"}, "secrets": {"API_KEY": "s3cr3t"}},
        "annotations": {"example.org/owner": "team-a"},
        "labels": {"team": "a"},
        "input": [{"storage_provider": "minio", "path": "plants/in"}],
        "output": [{"storage_provider": "s3.aws", "path": "results/out", "suffix": [".png"]}],
        "storage_providers": {
            "s3": {"aws": {"access_key": "AK", "secret_key": "SK", "region": "eu-west-1"}}
        },
    },
    "exposed": {
        "name": "exposed",
        "image": "python:3.11-slim",
        "script": "exec python3 -m http.server $upstream_port\n",
        "expose": {"api_port": 5000, "min_scale": 2, "max_scale": 4, "cpu_threshold": 70},
    },
    "exposed-ports-secrets": {
        "name": "notebook",
        "image": "jupyter/base",
        "script": "exec start-notebook\n",
        "memory": "1Gi",
        "environment": {"secrets": {"TOKEN": "t"}},
        "expose": {"api_port": [8080, 9000], "min_scale": 0, "max_scale": 0,
                   "cpu_threshold": 0, "rewrite_target": True},
    },
    "providers": {
        "name": "stores",
        "image": "registry.example/stores:1",
        "script": "cp -r \"$INPUT_FILE_PATH\" \"$TMP_OUTPUT_DIR\"\n",
        "input": [{"storage_provider": "rucio.cern", "path": "user.jo/in"}],
        "output": [{"storage_provider": "webdav.dcache", "path": "results"}],
        "storage_providers": {
            "minio": {"other": {"endpoint": "http://m:9000", "access_key": "MINIO-AK",
                                "secret_key": "MINIO-SK"}},
            "s3": {"aws": {"access_key": "S3-AK", "secret_key": "S3-SK",
                           "region": "eu-west-1"}},
            "webdav": {"dcache": {"hostname": "https://dcache.example.org", "login": "jo",
                                  "password": "DAV-PASSWORD"}},
            "onedata": {"od1": {"oneprovider_host": "op.example.org", "token": "OD-TOKEN",
                                "space": "data"}},
            "rucio": {"cern": {"host": "https://rucio.example.org", "account": "jo",
                               "rse": "CERN_DISK", "access_token": "RUCIO-ACCESS",
                               "refresh_token": "RUCIO-REFRESH",
                               "client_secret": "RUCIO-CLIENT"},
                      "pw": {"host": "https://rucio.example.org", "account": "jo",
                             "rse": "CERN_DISK", "username": "jo",
                             "password": "RUCIO-PASSWORD"}},
        },
    },
    "exposed-auth-private-registry": {
        "name": "private",
        "image": "registry.example/private:1",
        "script": "exec serve\n",
        "image_pull_secrets": ["registry-login", "other.login"],
        "expose": {"api_port": 8000, "set_auth": True},
    },
}


def service(kind: str) -> Service:
    return parse_service(SERVICES[kind])


def validate(obj: dict[str, Any]) -> None:
    """Strict: a field the schema does not know is an error, as `kubectl --validate=strict`."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for obj in objects:
        key = obj["kind"] if obj["kind"] != "Secret" else f"Secret/{obj['metadata']['name']}"
        found[key] = obj
    return found


def containers(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(pod spec, init container, the user's container) of a Deployment or Job."""
    spec = obj["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    (main_container,) = spec["containers"]
    return spec, init, main_container


# ---- every object validates --------------------------------------------------------------


@pytest.mark.parametrize("cluster", [WITH_MINIO, WITHOUT_MINIO], ids=["minio", "no-minio"])
@pytest.mark.parametrize("kind", list(SERVICES))
def test_every_object_validates_and_is_labelled(kind: str, cluster: manifests.Cluster) -> None:
    svc = service(kind)
    objects = [*manifests.service_objects(svc, cluster), manifests.job(svc, cluster, "j-1", "{}")]
    for obj in objects:
        validate(obj)
        meta = obj["metadata"]
        assert meta["namespace"] == cluster.namespace
        assert meta["labels"]["oscar_service"] == svc.name
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "faas-supervisor"
    # ... and survives the YAML the `manifests` command prints.
    for obj in yaml.safe_load_all(manifests.to_yaml(objects)):
        validate(obj)


def test_kinds_of_a_sync_and_an_exposed_service() -> None:
    sync = [o["kind"] for o in manifests.service_objects(service("sync"), WITHOUT_MINIO)]
    assert sync == ["ConfigMap", "Deployment", "Service"]
    exposed = manifests.service_objects(service("exposed-ports-secrets"), WITH_MINIO)
    assert [(o["kind"], o["metadata"]["name"]) for o in exposed] == [
        ("Secret", "notebook-minio"),
        ("Secret", "notebook"),
        ("ConfigMap", "notebook"),
        ("Deployment", "notebook-dpl"),
        ("Service", "notebook-svc"),
        ("HorizontalPodAutoscaler", "notebook-hpa"),
        ("Ingress", "notebook-ing"),
    ]
    order = [k for _, k in manifests.MANIFEST_KINDS]
    kinds = [o["kind"] for o in exposed]
    assert kinds == sorted(kinds, key=order.index)


# ---- the ConfigMap and the Secrets ---------------------------------------------------------


def test_config_map_is_the_local_backends_config_without_any_credentials() -> None:
    svc = service("sync-secrets-resources")
    cm = manifests.config_map(svc, WITH_MINIO)
    assert cm["metadata"]["name"] == "plants"
    assert cm["data"]["script.sh"] == svc.script
    config = yaml.safe_load(cm["data"]["function_config.yaml"])
    local = function_config(svc, MINIO)
    local["storage_providers"]["minio"]["default"] = {
        k: v for k, v in MINIO.items() if k not in ("access_key", "secret_key")
    }
    local["storage_providers"]["s3"]["aws"] = {"region": "eu-west-1"}
    assert config == local
    for secret in ("minio-sk", "minio-ak", "SK", "AK"):
        assert secret not in cm["data"]["function_config.yaml"]


# Every credential setting of the `providers` service, by the file the runtime reads.
PROVIDER_FILES = {
    "minio.other/access_key": "MINIO-AK",
    "minio.other/secret_key": "MINIO-SK",
    "s3.aws/access_key": "S3-AK",
    "s3.aws/secret_key": "S3-SK",
    "webdav.dcache/password": "DAV-PASSWORD",
    "onedata.od1/token": "OD-TOKEN",
    "rucio.cern/access_token": "RUCIO-ACCESS",
    "rucio.cern/refresh_token": "RUCIO-REFRESH",
    "rucio.cern/client_secret": "RUCIO-CLIENT",
    "rucio.pw/password": "RUCIO-PASSWORD",
}


@pytest.mark.parametrize("cluster", [WITH_MINIO, WITHOUT_MINIO], ids=["minio", "no-minio"])
def test_provider_credentials_go_to_a_secret_mounted_where_the_runtime_reads_them(
    cluster: manifests.Cluster,
) -> None:
    svc = service("providers")
    objects = by_kind(manifests.service_objects(svc, cluster))
    text = objects["ConfigMap"]["data"]["function_config.yaml"]
    for value in [*PROVIDER_FILES.values(), "minio-ak", "minio-sk"]:
        assert value not in text
    # What is not a credential stays, so the runtime has every other setting.
    providers = yaml.safe_load(text)["storage_providers"]
    assert providers["webdav"]["dcache"] == {"hostname": "https://dcache.example.org",
                                             "login": "jo"}
    assert providers["rucio"]["pw"]["username"] == "jo"
    assert providers["onedata"]["od1"] == {"oneprovider_host": "op.example.org",
                                           "space": "data"}

    secret = objects["Secret/stores-providers"]
    assert secret["metadata"]["labels"]["oscar_service"] == "stores"
    stored = secret["stringData"]
    for obj in (objects["Deployment"], manifests.job(svc, cluster, "stores-1", "{}")):
        spec, _, container = containers(obj)
        mount = {m["name"]: m for m in container["volumeMounts"]}["provider-secrets"]
        assert mount == {"name": "provider-secrets",
                         "mountPath": "/var/run/secrets/providers", "readOnly": True}
        volume = {v["name"]: v for v in spec["volumes"]}["provider-secrets"]
        files = {}  # path in the folder -> the value the Secret gives it
        for source in volume["projected"]["sources"]:
            name = source["secret"]["name"]
            data = objects[f"Secret/{name}"]["stringData"]
            for item in source["secret"]["items"]:
                files[item["path"]] = data[item["key"]]
        expected = dict(PROVIDER_FILES)
        if cluster is WITH_MINIO:  # SPEC 3's names for the cluster MinIO's keys
            expected |= {"minio.default/accessKey": "minio-ak",
                         "minio.default/secretKey": "minio-sk"}
        assert files == expected
    assert set(stored.values()) == set(PROVIDER_FILES.values())


# Provider URLs holding a `user:password@` (or a token as the user), as a store may hold
# them: new definitions with one in a server's URL are refused (fdl.py), these are not.
URL_SECRETS = {
    "minio.own/endpoint": "http://urluser:URLPASS888@minio.example:9000",
    "webdav.dc/hostname": "https://wuser:URLPASSB@dav.example",
    "onedata.od/oneprovider_host": "URLTOKEN7@op.example",
    "rucio.r/auth_host": "https://ru:URLPASSR@auth.example",
    "rucio.r/token_endpoint": "https://cid:CLIENTPW9@iam.example/token",
}


def test_a_provider_urls_password_goes_to_the_providers_secret_not_the_config_map(
    tmp_path: Path,
) -> None:
    """The ConfigMap held such URLs whole (the named credentials went to Secrets): each
    goes whole to the providers' Secret instead, where the runtime reads it just as well
    (config.py reads any setting from /var/run/secrets/providers/TYPE.ID/SETTING)."""
    providers: dict[str, Any] = {
        "minio": {"own": {"access_key": "AK", "secret_key": "SK"}},
        "webdav": {"dc": {"login": "wuser", "password": "WP"}},
        "onedata": {"od": {"token": "OT", "space": "s"}},
        "rucio": {"r": {"host": "https://rucio.example", "account": "a", "rse": "R",
                        "username": "u", "password": "RP"}},
    }
    for path, url in URL_SECRETS.items():
        provider, key = path.split("/")
        ptype, pid = provider.split(".")
        providers[ptype][pid][key] = url
    svc = parse_service({**SERVICES["sync"], "storage_providers": providers,
                         "output": [{"storage_provider": p.split("/")[0], "path": "bkt/out"}
                                    for p in URL_SECRETS]}, stored=True)
    objects = by_kind(manifests.service_objects(svc, WITH_MINIO))
    text = objects["ConfigMap"]["data"]["function_config.yaml"]
    for secret in ("URLPASS888", "URLPASSB", "URLTOKEN7", "URLPASSR", "CLIENTPW9"):
        assert secret not in text
    config = yaml.safe_load(text)["storage_providers"]
    assert config["webdav"]["dc"] == {"login": "wuser"}
    assert config["rucio"]["r"]["host"] == "https://rucio.example"
    for obj in objects.values():
        validate(obj)
    # The runtime's view: the ConfigMap's file and the Secret's files as the pod has them.
    (tmp_path / "function_config.yaml").write_text(text)
    spec, _, _ = containers(objects["Deployment"])
    volume = {v["name"]: v for v in spec["volumes"]}["provider-secrets"]
    for source in volume["projected"]["sources"]:
        data = objects[f"Secret/{source['secret']['name']}"]["stringData"]
        for item in source["secret"]["items"]:
            (tmp_path / "secrets" / item["path"]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "secrets" / item["path"]).write_text(data[item["key"]])
    read = load_function_config(str(tmp_path / "function_config.yaml"), {},
                                tmp_path / "secrets")
    for path, url in URL_SECRETS.items():
        provider, key = path.split("/")
        assert read.provider(provider).get(key) == url


def test_the_fdls_own_minio_default_keys_without_a_cluster_minio() -> None:
    svc = parse_service({**SERVICES["sync"], "storage_providers": {"minio": {"default": {
        "endpoint": "http://m:9000", "access_key": "OWN-AK", "secret_key": "OWN-SK"}}}})
    objects = by_kind(manifests.service_objects(svc, WITHOUT_MINIO))
    assert objects["Secret/cowsay-providers"]["stringData"] == {
        "minio.default.access_key": "OWN-AK", "minio.default.secret_key": "OWN-SK"}
    assert "OWN-SK" not in objects["ConfigMap"]["data"]["function_config.yaml"]
    # With the cluster's MinIO, the cluster's replaces it: no second copy of its keys.
    objects = by_kind(manifests.service_objects(svc, WITH_MINIO))
    assert "Secret/cowsay-providers" not in objects


def test_a_provider_id_that_cannot_be_a_file_name_is_refused() -> None:
    svc = parse_service({**SERVICES["sync"], "storage_providers": {"webdav": {"a/b": {
        "hostname": "https://h", "login": "l", "password": "p"}}}})
    with pytest.raises(InvalidService, match=r"storage_providers\.webdav\.a/b: on Kubernetes"):
        manifests.service_objects(svc, WITH_MINIO)


def test_without_a_cluster_minio_the_config_has_no_default_provider() -> None:
    svc = service("sync")
    text = manifests.config_map(svc, WITHOUT_MINIO)["data"]["function_config.yaml"]
    config = yaml.safe_load(text)
    assert config["storage_providers"] == {}
    # The controller's folder store is not reachable from pods: left out likewise.
    folder = manifests.Cluster(default_provider={"path": "/data/buckets"})
    config = yaml.safe_load(manifests.config_map(svc, folder)["data"]["function_config.yaml"])
    assert config["storage_providers"] == {}
    # The local backend keeps injecting whatever it is given.
    assert function_config(svc, {"path": "/x"})["storage_providers"] == {
        "minio": {"default": {"path": "/x"}}
    }


def test_secrets_env_from_and_minio_keys_mounted_where_the_runtime_reads_them() -> None:
    svc = service("sync-secrets-resources")
    objects = by_kind(manifests.service_objects(svc, WITH_MINIO))
    assert objects["Secret/plants"]["stringData"] == {"API_KEY": "s3cr3t"}
    assert objects["Secret/plants-minio"]["stringData"] == {
        "accessKey": "minio-ak",
        "secretKey": "minio-sk",
    }
    for obj in (objects["Deployment"], manifests.job(svc, WITH_MINIO, "plants-1", "{}")):
        spec, _, container = containers(obj)
        assert container["envFrom"] == [{"secretRef": {"name": "plants"}}]
        mount = {m["name"]: m for m in container["volumeMounts"]}["provider-secrets"]
        assert mount["mountPath"] == "/var/run/secrets/providers"
        volume = {v["name"]: v for v in spec["volumes"]}["provider-secrets"]
        minio, _ = volume["projected"]["sources"]  # and the s3.aws keys
        assert minio["secret"] == {"name": "plants-minio", "items": [
            {"key": "accessKey", "path": "minio.default/accessKey"},
            {"key": "secretKey", "path": "minio.default/secretKey"}]}


def test_no_secret_objects_or_references_without_secrets() -> None:
    svc = service("sync")
    objects = manifests.service_objects(svc, WITHOUT_MINIO)
    assert all(o["kind"] != "Secret" for o in objects)
    _, _, container = containers(by_kind(objects)["Deployment"])
    assert "envFrom" not in container
    assert {m["name"] for m in container["volumeMounts"]} == {"oscar-bin", "oscar-config"}


# ---- the pods: runtime injected, config mounted, resources -----------------------------------


def test_sync_deployment_runs_the_watchdog_from_the_injected_runtime() -> None:
    svc = service("sync")
    deployment = by_kind(manifests.service_objects(svc, WITH_MINIO))["Deployment"]
    spec, init, container = containers(deployment)
    assert init["image"] == "registry.example/runtime:1"
    assert init["args"] == ["/oscar/bin"]
    assert container["name"] == "oscar-container"
    assert container["image"] == "ghcr.io/grycap/cowsay"
    assert container["command"] == ["/oscar/bin/faas-supervisor", "watchdog", "--port", "8080"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["oscar-bin"] == {"name": "oscar-bin", "emptyDir": {}}
    assert volumes["oscar-config"]["configMap"]["name"] == "cowsay"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {
        "/oscar/bin": "oscar-bin",
        "/oscar/config": "oscar-config",
        "/var/run/secrets/providers": "provider-secrets",
    }
    assert [m["mountPath"] for m in init["volumeMounts"]] == ["/oscar/bin"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/_/health", "port": "http"}
    assert container["resources"]["limits"] == {"cpu": "0.2", "memory": "256Mi"}
    assert spec["automountServiceAccountToken"] is False


def test_resources_from_cpu_memory_and_gpu() -> None:
    deployment = manifests.deployment(service("sync-secrets-resources"), WITH_MINIO)
    _, _, container = containers(deployment)
    assert container["resources"] == {
        "requests": {"cpu": "1.5", "memory": "2Gi"},
        "limits": {"cpu": "1.5", "memory": "2Gi", "nvidia.com/gpu": "1"},
    }


def test_pods_carry_the_managers_labels_and_the_users_annotations() -> None:
    svc = service("sync-secrets-resources")
    deployment = manifests.deployment(svc, WITH_MINIO)
    template = deployment["spec"]["template"]["metadata"]
    assert template["labels"]["team"] == "a"
    assert template["labels"]["oscar.grycap/user-service"] == "true"
    assert template["annotations"] == {
        "example.org/owner": "team-a",
        manifests.CONFIG_HASH: manifests.config_hash(svc, WITH_MINIO),
    }
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["labels"].items()
    # The service's selector never takes a job's pod in.
    job = manifests.job(svc, WITH_MINIO, "plants-1", "{}")
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    service_obj = manifests.service_object(svc, WITH_MINIO)
    assert service_obj["spec"]["selector"] == selector


def test_service_url_is_the_cluster_dns_name() -> None:
    assert manifests.service_url(service("sync"), WITH_MINIO) == (
        "http://cowsay.oscar-svc.svc.cluster.local:80"
    )
    assert manifests.service_url(service("exposed"), WITH_MINIO) == (
        "http://exposed-svc.oscar-svc.svc.cluster.local:80"
    )


# ---- jobs ---------------------------------------------------------------------------------


def test_job_runs_once_with_the_event_in_EVENT_and_its_name_in_JOB_UUID() -> None:
    event = '{"Records": [{"eventSource": "minio:s3"}]}'
    job = manifests.job(service("sync"), WITH_MINIO, "cowsay-1234", event)
    validate(job)
    assert job["metadata"]["name"] == "cowsay-1234"
    assert job["spec"]["backoffLimit"] == 0
    spec, init, container = containers(job)
    assert spec["restartPolicy"] == "Never"
    assert init["image"] == WITH_MINIO.runtime_image
    assert container["command"] == ["/oscar/bin/faas-supervisor", "run"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["EVENT"] == event
    assert env["JOB_UUID"] == "cowsay-1234"
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels[manifests.JOB_LABEL] == "cowsay-1234"
    assert labels["oscar_service"] == "cowsay"
    assert "readinessProbe" not in container


# ---- exposed services -------------------------------------------------------------------------


def test_exposed_service_deployment_service_autoscaler_ingress() -> None:
    svc = service("exposed")
    objects = by_kind(manifests.service_objects(svc, WITH_MINIO))
    deployment = objects["Deployment"]
    assert deployment["metadata"]["name"] == "exposed-dpl"
    assert deployment["spec"]["replicas"] == 2
    _, _, container = containers(deployment)
    assert container["command"] == [
        "/oscar/bin/faas-supervisor", "watchdog", "--port", "8080",
        "--mode", "http", "--upstream-port", "5000",
    ]
    assert "startupProbe" in container
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["OSCAR_SERVICE_BASE_PATH"] == "/system/services/exposed/exposed"
    svc_obj = objects["Service"]
    assert svc_obj["metadata"]["name"] == "exposed-svc"
    assert svc_obj["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "exposed-dpl"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    target = hpa["spec"]["metrics"][0]["resource"]["target"]
    assert target == {"type": "Utilization", "averageUtilization": 70}
    ingress = objects["Ingress"]
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == "/system/services/exposed/exposed/?(.*)"
    assert path["backend"]["service"] == {"name": "exposed-svc", "port": {"number": 80}}
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/rewrite-target"] == "/$1"


def test_exposed_edge_values_stay_valid() -> None:
    """api_port 8080 moves the watchdog; scale 0 and threshold 0 become what an
    autoscaler accepts; further ports are published beside the watchdog's."""
    svc = service("exposed-ports-secrets")
    objects = by_kind(manifests.service_objects(svc, WITH_MINIO))
    _, _, container = containers(objects["Deployment"])
    assert container["command"][2:4] == ["--port", "8081"]
    assert container["command"][-2:] == ["--upstream-port", "8080"]
    assert container["ports"] == [
        {"name": "http", "containerPort": 8081},
        {"name": "api-1", "containerPort": 9000},
    ]
    assert [p["port"] for p in objects["Service"]["spec"]["ports"]] == [80, 81]
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 1)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 1
    annotations = objects["Ingress"]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/rewrite-target"] == (
        "/system/services/notebook/exposed/$1"
    )


def test_default_command_runs_the_images_own_command_on_its_api_port() -> None:
    """`default_command` was ignored: the watchdog ran the script as the server. As OSCAR:
    no command given (the image's entry point and command run), the first api_port is
    what the Service reaches, probed there on health_path."""
    svc = parse_service({"name": "jupyter", "image": "jupyter/base-notebook",
                         "script": "echo unused\n",
                         "expose": {"api_port": [8888, 9000], "default_command": True,
                                    "health_path": "api"}})
    objects = by_kind(manifests.service_objects(svc, WITH_MINIO))
    for obj in objects.values():
        validate(obj)
    _, _, container = containers(objects["Deployment"])
    assert "command" not in container and "args" not in container
    assert container["ports"] == [
        {"name": "http", "containerPort": 8888},
        {"name": "api-1", "containerPort": 9000},
    ]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/api", "port": "http"}
    assert objects["Service"]["spec"]["ports"][0] == {
        "name": "http", "port": 80, "targetPort": "http"}
    assert "Ingress" in objects
    # With rewrite_target the server gets the whole path: probed behind the prefix too.
    rewritten = parse_service({**svc_definition(svc), "expose": {
        "api_port": 8888, "default_command": True, "rewrite_target": True}})
    _, _, container = containers(by_kind(manifests.service_objects(rewritten, WITH_MINIO))[
        "Deployment"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/system/services/jupyter/exposed/"
    # Not exposed, default_command means nothing: the watchdog runs the script.
    plain = parse_service({**svc_definition(svc), "expose": {"default_command": True}})
    _, _, container = containers(by_kind(manifests.service_objects(plain, WITH_MINIO))[
        "Deployment"])
    assert container["command"][:2] == ["/oscar/bin/faas-supervisor", "watchdog"]


def svc_definition(svc: Service) -> dict[str, Any]:
    return {"name": svc.name, "image": svc.image, "script": svc.script}


def test_node_port_makes_a_node_port_service_and_no_ingress() -> None:
    """`nodePort` was dropped: a ClusterIP Service and an Ingress. As OSCAR: the i-th
    api_port's port on the i-th node port, and no Ingress."""
    svc = parse_service({"name": "web", "image": "nginx", "script": "exec nginx\n",
                         "expose": {"api_port": [8000, 9000], "nodePort": [30080, 31000]}})
    objects = by_kind(manifests.service_objects(svc, WITH_MINIO))
    for obj in objects.values():
        validate(obj)
    spec = objects["Service"]["spec"]
    assert spec["type"] == "NodePort"
    assert [(p["targetPort"], p["nodePort"]) for p in spec["ports"]] == [
        ("http", 30080), ("api-1", 31000)]
    assert "Ingress" not in objects
    assert "HorizontalPodAutoscaler" in objects
    # set_auth is asked for by the Ingress: with a node port nothing would ask.
    guarded = parse_service({**svc_definition(svc), "expose": {
        "api_port": 8000, "nodePort": 30080, "set_auth": True}})
    with pytest.raises(InvalidService, match=r"^expose.set_auth: .*nodePort"):
        manifests.service_objects(guarded.with_token("t" * 43), WITH_MINIO)


def test_a_node_port_of_0_is_the_clusters_choice_and_keeps_the_ingress() -> None:
    """OSCAR's 0 (what the dashboard sends for a field left empty) lets the cluster choose
    the node port: a NodePort Service with no `nodePort` there, and, the first one being
    nobody's to know beforehand, the Ingress kept (and set_auth with it). It was a 400."""
    svc = parse_service({"name": "web", "image": "nginx", "script": "exec nginx\n",
                         "expose": {"api_port": [8000, 9000], "nodePort": [0, 31000],
                                    "set_auth": True}})
    assert svc.expose.node_port == (0, 31000)
    objects = by_kind(manifests.service_objects(svc.with_token("t" * 43), WITH_MINIO))
    for obj in objects.values():
        validate(obj)
    spec = objects["Service"]["spec"]
    assert spec["type"] == "NodePort"
    assert [(p["targetPort"], p.get("nodePort")) for p in spec["ports"]] == [
        ("http", None), ("api-1", 31000)]
    assert "Ingress" in objects
    # Two zeros are no duplicate.
    assert parse_service({**svc_definition(svc), "expose": {
        "api_port": [8000, 9000], "nodePort": [0, 0]}}).expose.node_port == (0, 0)


def test_the_manifests_command_refuses_labels_kubernetes_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 0 with objects the API server refuses, before (a review found it)."""
    fdl = tmp_path / "fdl.yaml"
    for field in ("labels: {'team name': 'data science'}",
                  "labels: {'example.com/owner': 'x/y'}",
                  "annotations: {'bad annotation': v}"):
        fdl.write_text("functions: {oscar: [{c1: {name: jupyter, image: i, script: x,\n"
                       f"  {field}}}}}]}}\n")
        assert main(["manifests", "-f", str(fdl)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("labels" in err or "annotations" in err), err


# ---- what Kubernetes refuses, said before asking it ---------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"image": ""}, "image"), ({"name": "1st"}, "name")],
)
def test_kubernetes_requirements_name_the_field(fields: dict[str, Any], field: str) -> None:
    svc = parse_service({**SERVICES["sync"], **fields})
    with pytest.raises(InvalidService, match=f"^{field}:"):
        manifests.service_objects(svc, WITH_MINIO)


def test_a_script_a_config_map_cannot_hold_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ConfigMap holds the script: over 1 MiB with function_config.yaml, the API server
    refuses it. `manifests` printed it anyway (exit 0; left alone in an earlier session's
    note), to fail at `kubectl apply`. It says so now: one line naming the field, exit 2
    (the controller, which asked the API server's dry run, says it before asking)."""
    big = "#" * manifests.CONFIG_MAP_LIMIT
    with pytest.raises(InvalidService, match=r"^script: the ConfigMap 'cowsay' would hold "
                                             r"\d+ bytes .* over the 1048576 \(1 MiB\)"):
        manifests.service_objects(parse_service({**SERVICES["sync"], "script": big}), WITH_MINIO)
    fits = "#" * (manifests.CONFIG_MAP_LIMIT - 4096)
    manifests.service_objects(parse_service({**SERVICES["sync"], "script": fits}), WITH_MINIO)
    (tmp_path / "script.sh").write_text(big)
    fdl = tmp_path / "fdl.yaml"
    fdl.write_text("functions: {oscar: [{c: {name: big, image: i, script: script.sh}}]}\n")
    assert main(["manifests", "-f", str(fdl)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "script: the ConfigMap 'big' would hold" in err, err


# ---- `faas-supervisor manifests -f` ---------------------------------------------------------

FDL_FILES = sorted({*REPO.glob("examples/fdl.yaml"), *REPO.glob("examples/*/fdl.yaml")})


def test_there_are_example_fdl_files() -> None:
    assert FDL_FILES, "no FDL file under examples/"


@pytest.mark.parametrize("fdl", FDL_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_manifests_command_prints_valid_yaml(
    fdl: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["manifests", "-f", str(fdl), "--minio-endpoint", "http://minio:9000",
                 "--minio-access-key", "ak", "--minio-secret-key", "sk"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    names = {s.name for s in load_fdl(fdl)}
    assert {d["metadata"]["labels"]["oscar_service"] for d in docs} == names
    for doc in docs:
        validate(doc)


def test_manifests_command_flags(capsys: pytest.CaptureFixture[str]) -> None:
    fdl = REPO / "examples" / "fdl.yaml"
    assert main(["manifests", "-f", str(fdl), "--namespace", "team-a",
                 "--runtime-image", "local/runtime:dev"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert {d["metadata"]["namespace"] for d in docs} == {"team-a"}
    inits = [d["spec"]["template"]["spec"]["initContainers"][0]["image"]
             for d in docs if d["kind"] == "Deployment"]
    assert inits and set(inits) == {"local/runtime:dev"}
    assert all(d["kind"] != "Secret" for d in docs)  # no MinIO given, no keys to keep


def test_manifests_command_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["manifests", "-f", str(tmp_path / "absent.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    bad = tmp_path / "fdl.yaml"
    bad.write_text("functions: {oscar: [{c: {name: x, script: 'echo'}}]}\n")
    assert main(["manifests", "-f", str(bad)]) == 2
    assert "image: missing" in capsys.readouterr().err
    assert main(["manifests"]) == 2  # no FDL file
    assert "give the FDL file" in capsys.readouterr().err
    assert main(["manifests", "-f", str(bad), str(bad)]) == 2  # two
    capsys.readouterr()


@pytest.mark.parametrize(
    ("flag", "value"), [("--namespace", "Bad_NS"), ("--runtime-image", ""), ("--namespace", "")]
)
def test_manifests_refuses_a_namespace_or_image_kubernetes_refuses(flag: str, value: str) -> None:
    """The real command: exit status 2, one line naming the flag, nothing printed (a
    review found `namespace: Bad_NS` and `image: ''` printed, exit status 0)."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("faas-supervisor")
    command = [exe] if exe else [sys.executable, "-m", "faas_supervisor"]
    done = subprocess.run(
        [*command, "manifests", "-f", str(REPO / "examples" / "fdl.yaml"), flag, value],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stdout[:200]
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"faas-supervisor: error: {flag}: {value!r} is not a"
        + (" namespace name (at most 63 lower-case letters, digits or '-', starting and "
           "ending with a letter or digit)" if flag == "--namespace" else
           "n image reference (registry/name:tag, without spaces)")
    ]


def test_manifests_takes_the_file_with_or_without_f(capsys: pytest.CaptureFixture[str]) -> None:
    fdl = str(REPO / "examples" / "fdl.yaml")
    assert main(["manifests", fdl]) == 0
    bare = capsys.readouterr().out
    assert main(["manifests", "-f", fdl]) == 0
    assert capsys.readouterr().out == bare
    assert "kind: ConfigMap" in bare


SHARED_FDL = """\
functions:
  oscar:
  - edge: &plants
      name: plants
      image: grycap/plants
      script: script.sh
      input:
      - {storage_provider: s3.aws, path: data/in}
    core:
      <<: *plants
      name: plants-core
storage_providers:
  s3: {aws: {access_key: AK, secret_key: SK, region: eu-west-1}}
"""


def test_manifests_reads_an_fdl_file_as_service_apply_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several cluster ids in one entry and a top-level `storage_providers` (merged into
    each service): `manifests -f` refused both before the two readers became one."""
    (tmp_path / "script.sh").write_text("#!/bin/sh\necho plants\n")
    fdl = tmp_path / "fdl.yaml"
    fdl.write_text(SHARED_FDL)
    assert main(["manifests", "-f", str(fdl)]) == 0, capsys.readouterr().err
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    assert set(maps) == {"plants", "plants-core"}
    for data in maps.values():
        assert data["script.sh"] == "#!/bin/sh\necho plants\n"
        config = yaml.safe_load(data["function_config.yaml"])
        assert config["storage_providers"]["s3"]["aws"]["region"] == "eu-west-1"
    assert [s.cluster_id for s in load_fdl(fdl)] == ["edge", "core"]
    assert [s.name for s in load_fdl(fdl, cluster_id="core")] == ["plants-core"]


# ---- the controller's own objects ---------------------------------------------------------------

DEPLOY_FILES = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))


def test_deploy_folder_is_there() -> None:
    kinds = {d["kind"] for f in DEPLOY_FILES for d in yaml.safe_load_all(f.read_text()) if d}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Deployment",
            "Service"} <= kinds


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: p.name)
def test_deploy_files_validate(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        validate(doc)


def test_controller_runs_the_kubernetes_backend_in_the_roles_namespace() -> None:
    docs = [d for f in DEPLOY_FILES for d in yaml.safe_load_all(f.read_text()) if d]
    (role,) = [d for d in docs if d["kind"] == "Role"]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    (controller,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = controller["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert binding["subjects"][0]["namespace"] == account["metadata"]["namespace"]
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    args = pod["containers"][0]["args"]
    assert "--backend=kubernetes" in args
    assert f"--namespace={role['metadata']['namespace']}" in args


def test_set_auth_gives_the_ingress_basic_auth_from_a_secret() -> None:
    """OSCAR's names and annotations; the htpasswd line a salted SHA-1 of the token."""
    token = "k" * 64
    objects = by_kind(manifests.service_objects(
        service("exposed-auth-private-registry").with_token(token), WITH_MINIO
    ))
    secret = objects["Secret/private-auth-expose"]
    validate(secret)
    user, _, hashed = secret["stringData"]["auth"].partition(":")
    assert user == "private" and hashed.startswith("{SSHA}")
    raw = base64.b64decode(hashed.removeprefix("{SSHA}"))
    assert hashlib.sha1(token.encode() + raw[20:]).digest() == raw[:20]
    assert token not in repr(objects)
    annotations = objects["Ingress"]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-type"] == "basic"
    assert annotations["nginx.ingress.kubernetes.io/auth-secret"] == "private-auth-expose"
    assert annotations["nginx.ingress.kubernetes.io/auth-realm"] == "Authentication Required"
    # Without a token (rendered from an FDL file), no Secret: ingress-nginx lets no one in.
    offline = by_kind(manifests.service_objects(service("exposed-auth-private-registry"),
                                                WITH_MINIO))
    assert "Secret/private-auth-expose" not in offline
    assert "nginx.ingress.kubernetes.io/auth-secret" in offline["Ingress"]["metadata"][
        "annotations"]


def test_image_pull_secrets_reach_every_pod() -> None:
    svc = service("exposed-auth-private-registry")
    want = [{"name": "registry-login"}, {"name": "other.login"}]
    deployment = by_kind(manifests.service_objects(svc, WITH_MINIO))["Deployment"]
    assert deployment["spec"]["template"]["spec"]["imagePullSecrets"] == want
    job = manifests.job(svc, WITH_MINIO, "private-1", "{}")
    assert job["spec"]["template"]["spec"]["imagePullSecrets"] == want
    validate(job)


def test_image_pull_secrets_are_names() -> None:
    with pytest.raises(InvalidService, match=r"^image_pull_secrets: 'Bad Name' is not"):
        parse_service({**SERVICES["sync"], "image_pull_secrets": ["Bad Name"]})
    with pytest.raises(InvalidService, match=r"^image_pull_secrets: must be a list"):
        parse_service({**SERVICES["sync"], "image_pull_secrets": "login"})


def test_image_pull_secrets_in_the_service_json_only_when_given() -> None:
    from faas_supervisor.controller.fdl import from_record, service_json, to_record

    given = service("exposed-auth-private-registry")
    keys = list(service_json(given, {}))
    assert keys[keys.index("script") + 1] == "image_pull_secrets"  # the manager's order
    assert from_record(to_record(given)).image_pull_secrets == ("registry-login", "other.login")
    assert "image_pull_secrets" not in service_json(service("sync"), {})


def test_the_deploy_folder_validates_and_serves_what_config_hands_out() -> None:
    """deploy/kubernetes/: every object valid for 1.30; the controller's Service carries the
    ports its arguments serve (the S3 endpoint's too, which /system/config hands out)."""
    import kubernetes_validate

    folder = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
    documents = [doc for path in sorted(folder.glob("*.yaml"))
                 for doc in yaml.safe_load_all(path.read_text()) if doc]
    for doc in documents:
        kubernetes_validate.validate(doc, "1.30", strict=True)
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    served = {int(a.partition("=")[2]) for a in container["args"]
              if a.startswith(("--port=", "--s3-port="))}
    assert served == {8000, 9000}
    assert {p["containerPort"] for p in container["ports"]} == served
    (service,) = [d for d in documents if d["kind"] == "Service"]
    assert {p["port"] for p in service["spec"]["ports"]} == served


# ---- `manifests -f` with set_auth: the Secret its Ingress names -----------------------------

AUTH_FDL = """\
functions:
  oscar:
  - c1:
      name: web
      image: nginx:1
      script: exec nginx
      expose: {api_port: 8000, set_auth: true}
"""


def printed(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict[str, Any], str]:
    """`manifests`' objects by kind/name, and what it wrote to stderr."""
    assert main(["manifests", *args]) == 0
    out, err = capsys.readouterr()
    docs = [d for d in yaml.safe_load_all(out) if d]
    for doc in docs:
        validate(doc)
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}, err


def password_of(secret: dict[str, Any], user: str, token: str) -> bool:
    name, _, hashed = secret["stringData"]["auth"].partition(":")
    raw = base64.b64decode(hashed.removeprefix("{SSHA}"))
    return name == user and hashlib.sha1(token.encode() + raw[20:]).digest() == raw[:20]


def test_manifests_with_set_auth_prints_the_secret_its_ingress_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No token in the FDL: one made for the printout, in the Secret (its `auth` is only a
    hash), said on stderr in one line that does not hold it; the pods' config hash is
    not keyed by it, so that another run does not roll them."""
    fdl = tmp_path / "fdl.yaml"
    fdl.write_text(AUTH_FDL)
    objects, err = printed(capsys, "-f", str(fdl))
    name = objects["Ingress/web-ing"]["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/auth-secret"]
    secret = objects[f"Secret/{name}"]
    token = secret["stringData"]["token"]
    assert len(token) == 64 and password_of(secret, "web", token)
    assert err.count("\n") == 1 and "warning" in err and token not in err
    assert "kubectl -n oscar-svc get secret web-auth-expose" in err
    keys = list(objects)
    assert keys.index(f"Secret/{name}") < keys.index("ConfigMap/web")  # with the Secrets
    again, _ = printed(capsys, "-f", str(fdl))
    assert again["Secret/web-auth-expose"]["stringData"]["token"] != token
    hashes = [o["Deployment/web-dpl"]["spec"]["template"]["metadata"]["annotations"][
        manifests.CONFIG_HASH] for o in (objects, again)]
    assert hashes[0] == hashes[1]


def test_manifests_with_set_auth_takes_the_fdls_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fdl = tmp_path / "fdl.yaml"
    fdl.write_text(AUTH_FDL.replace("set_auth: true}", "set_auth: true}\n      token: pass-w0rd"))
    objects, err = printed(capsys, "-f", str(fdl))
    secret = objects["Secret/web-auth-expose"]
    assert password_of(secret, "web", "pass-w0rd")
    assert set(secret["stringData"]) == {"auth"} and err == ""
    fdl.write_text(AUTH_FDL.replace("set_auth: true}", "set_auth: true}\n      token: [1]"))
    assert main(["manifests", "-f", str(fdl)]) == 2
    assert "functions.oscar[0].c1.token: must be a string" in capsys.readouterr().err
