"""The Kubernetes objects of a service, as OSCAR makes them: plain dicts, no API calls.

The shapes and names follow the OSCAR manager's: the ConfigMap `NAME` (script.sh and
function_config.yaml, mounted at /oscar/config), the Secret `NAME` of
environment.secrets (the container's environment), the MinIO keys mounted at
/var/run/secrets/providers/minio.default (the Secret `NAME-minio`), the credentials of
the FDL's other providers beside them, at /var/run/secrets/providers/TYPE.ID/SETTING
(the Secret `NAME-providers`), never in the ConfigMap; the container `oscar-container`, jobs named
`<service>-<uuid>` with the event in `EVENT`, and for exposed services `NAME-dpl`,
`NAME-svc`, `NAME-hpa` and `NAME-ing`. What differs is the runtime: instead of a shared
volume holding the classic watchdog and the supervisor, an init container of the runtime
image copies faas-supervisor into an `emptyDir` at /oscar/bin, and the user's image runs
`/oscar/bin/faas-supervisor watchdog` (services) or `... run` (jobs). An exposed service
with `default_command` runs its image's own command instead, probed on its api_port, as
OSCAR runs it; one with `nodePort` gets a NodePort Service and no Ingress, as OSCAR's.

Every object carries `oscar_service: NAME` and `app.kubernetes.io/managed-by:
faas-supervisor`, so the backend finds all it made for a service by label alone, and
knows whose an object is: a name made from one service's name can be another's (the
Secret `foo-minio` of service `foo`, or of service `foo-minio`), and the backend replaces
only the service's own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from faas_supervisor import __version__
from faas_supervisor.config import SECRET_KEYS, Mode, text_loader
from faas_supervisor.controller.fdl import Service, manager_labels, url_credential
from faas_supervisor.controller.function_config import function_config
from faas_supervisor.errors import InvalidService

DEFAULT_NAMESPACE = "oscar-svc"  # where the OSCAR manager puts services
DEFAULT_RUNTIME_IMAGE = f"ghcr.io/faas-supervisor/runtime:{__version__}"

CONTAINER = "oscar-container"  # OSCAR's container name: tools that read pods expect it
INIT_CONTAINER = "faas-supervisor-runtime"
RUNTIME_DIR = "/oscar/bin"
RUNTIME = f"{RUNTIME_DIR}/faas-supervisor"
CONFIG_DIR = "/oscar/config"
PROVIDER_SECRETS_DIR = "/var/run/secrets/providers"  # read by the runtime (SPEC 3)
MINIO_KEY_FILES = (("access_key", "accessKey"), ("secret_key", "secretKey"))

SERVICE_LABEL = "oscar_service"
MANAGED_BY = {"app.kubernetes.io/managed-by": "faas-supervisor"}
COMPONENT_LABEL = "faas-supervisor/component"  # service | exposed | job: keeps selectors apart
JOB_LABEL = "faas-supervisor/job"  # on a job's pod, to find it without the Job controller's labels
# On the Deployment's pod template: a digest of the ConfigMap and Secrets its pods read
# (`config_hash`), so that changing only their values still rolls the pods out.
CONFIG_HASH = "faas-supervisor/config-hash"

WATCHDOG_PORT = 8080
SERVICE_PORT = 80  # the port OSCAR gives an exposed service's Service
JOB_TTL_SECONDS = 3600  # the controller keeps the logs; the cluster may forget the Job
EXPOSED_PATH = "/system/services/{name}/exposed"
MANIFEST_KINDS = (
    # (apiVersion, kind) in the order they are applied: what a pod mounts exists first.
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io/v1", "Ingress"),
)


@dataclass(frozen=True)
class Cluster:
    """Where and with what a service's objects are made."""

    namespace: str = DEFAULT_NAMESPACE
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    # The cluster's MinIO (`minio.default`) as the runtime needs it. Its keys go in a
    # Secret, never in the ConfigMap; without an `endpoint` the cluster has no MinIO that
    # pods could reach (the controller's folder store is not theirs), and it is left out.
    default_provider: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def minio(self) -> dict[str, Any]:
        return dict(self.default_provider) if self.default_provider.get("endpoint") else {}


# ---- names and labels ------------------------------------------------------------------


def minio_secret_name(name: str) -> str:
    return f"{name}-minio"


def providers_secret_name(name: str) -> str:
    return f"{name}-providers"


def auth_secret_name(name: str) -> str:
    """OSCAR's name for the basic-auth credentials of an exposed service (`set_auth`)."""
    return f"{name}-auth-expose"


def exposed_names(name: str) -> dict[str, str]:
    """OSCAR's names for an exposed service's objects."""
    return {
        "Deployment": f"{name}-dpl",
        "Service": f"{name}-svc",
        "HorizontalPodAutoscaler": f"{name}-hpa",
        "Ingress": f"{name}-ing",
    }


def service_selector(name: str) -> str:
    """The label selector of every object made for the service `name` (jobs included)."""
    return ",".join(f"{k}={v}" for k, v in _labels(name).items())


def _labels(name: str, component: str | None = None) -> dict[str, str]:
    labels = {SERVICE_LABEL: name, **MANAGED_BY}
    if component:
        labels[COMPONENT_LABEL] = component
    return labels


def _metadata(
    name: str, service: Service, cluster: Cluster, component: str | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": cluster.namespace,
        "labels": _labels(service.name, component),
    }


def _pod_metadata(
    service: Service, component: str, extra: Mapping[str, str] | None = None
) -> dict[str, Any]:
    # The manager's labels (the user's, `oscar_service`, Yunikorn's) and the user's
    # annotations on pods and jobs, as OSCAR sets them; ours last, so they cannot be undone.
    meta: dict[str, Any] = {
        "labels": {**manager_labels(service), **_labels(service.name, component), **(extra or {})}
    }
    if service.annotations:
        meta["annotations"] = dict(service.annotations)
    return meta


def check(service: Service) -> None:
    """What Kubernetes needs beyond a valid FDL service."""
    if not service.image:
        raise InvalidService("image: missing (on Kubernetes a service runs in its image)")
    if not service.name[0].isalpha():
        # A Service's name is a DNS-1035 label: it starts with a letter.
        raise InvalidService(f"name: {service.name!r} must start with a letter on Kubernetes")
    if service.exposed and fixed_node_port(service) and service.expose.set_auth:
        # The node port reaches the pods past any Ingress, where the credentials are
        # asked for (OSCAR makes none then, and its set_auth guards nothing).
        raise InvalidService(
            "expose.set_auth: a service reached on its nodePort has no Ingress to ask for "
            "the credentials; drop expose.nodePort, or set_auth and let the server check them"
        )
    for ptype, by_id in service.storage_providers.items():
        for pid in by_id:
            # Its credentials become the Secret key `TYPE.ID.SETTING` and the file
            # `TYPE.ID/SETTING`: both refuse other characters, and `..`.
            if not _PROVIDER_ID.fullmatch(str(pid)) or ".." in str(pid):
                raise InvalidService(
                    f"storage_providers.{ptype}.{pid}: on Kubernetes a provider's id is "
                    "letters, digits, '-', '_' and '.'"
                )


_PROVIDER_ID = re.compile(r"[A-Za-z0-9][-._A-Za-z0-9]*")
# The most a ConfigMap's values may hold together (the API server's validation).
CONFIG_MAP_LIMIT = 1 << 20


# ---- configuration and secrets ----------------------------------------------------------


def config_map(service: Service, cluster: Cluster) -> dict[str, Any]:
    """script.sh and function_config.yaml, the same config the local backend writes, minus
    every provider's credentials (mounted from their Secrets, where the runtime reads
    them: a ConfigMap is readable by whoever may read the namespace's configuration)."""
    provider = {k: v for k, v in cluster.minio.items() if k not in dict(MINIO_KEY_FILES)}
    config = function_config(service, provider)
    config["storage_providers"] = {
        ptype: {
            pid: {k: v for k, v in settings.items() if not _credential(ptype, k, v)}
            for pid, settings in by_id.items()
        }
        for ptype, by_id in config["storage_providers"].items()
    }
    data = {
        "script.sh": service.script,
        "function_config.yaml": yaml.safe_dump(config, sort_keys=False),
    }
    size = sum(len(value.encode()) for value in data.values())
    if size > CONFIG_MAP_LIMIT:
        # The API server refuses it; said before any of the service's objects is made.
        raise InvalidService(
            f"script: the ConfigMap {service.name!r} would hold {size} bytes (script.sh and "
            f"function_config.yaml), over the {CONFIG_MAP_LIMIT} (1 MiB) Kubernetes takes"
        )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(service.name, service, cluster),
        "data": data,
    }


def _credential(ptype: str, key: str, value: Any) -> bool:
    """A provider setting that goes in the `NAME-providers` Secret, not the ConfigMap: a
    credential's (config.SECRET_KEYS), and a URL that may hold a `user:password@` (one
    stored before such URLs were refused, or a `token_endpoint`'s: fdl.url_credential).
    The runtime reads any setting from the Secret's files, so it is moved whole."""
    return key in SECRET_KEYS or url_credential(ptype, key, value)


def env_secret(service: Service, cluster: Cluster) -> dict[str, Any] | None:
    """environment.secrets, given to the container as variables (OSCAR's Secret NAME)."""
    if not service.secrets:
        return None
    return _secret(service.name, service, cluster, dict(service.secrets))


def minio_secret(service: Service, cluster: Cluster) -> dict[str, Any] | None:
    """The cluster MinIO's keys, as the files `accessKey` and `secretKey`."""
    minio = cluster.minio
    keys = {file: str(minio[key]) for key, file in MINIO_KEY_FILES if minio.get(key)}
    if not keys:
        return None
    return _secret(minio_secret_name(service.name), service, cluster, keys)


def _provider_credentials(service: Service, cluster: Cluster) -> dict[str, tuple[str, str]]:
    """The FDL's provider credentials: Secret key `TYPE.ID.SETTING` -> (file path under
    the providers folder, value). The cluster's own `minio.default` replaces any of the
    FDL's (function_config.py), so its keys are the `NAME-minio` Secret's alone."""
    found: dict[str, tuple[str, str]] = {}
    for ptype, by_id in sorted(service.storage_providers.items()):
        for pid, settings in sorted(by_id.items()):
            provider = f"{ptype}.{pid}"
            if provider == "minio.default" and cluster.minio:
                continue
            for key, value in sorted(settings.items()):
                if _credential(ptype, key, value) and value not in (None, ""):
                    text = ("true" if value else "false") if isinstance(value, bool) else value
                    found[f"{provider}.{key}"] = (f"{provider}/{key}", str(text))
    return found


def providers_secret(service: Service, cluster: Cluster) -> dict[str, Any] | None:
    """The credentials of the FDL's storage providers, as files `TYPE.ID/SETTING`."""
    credentials = _provider_credentials(service, cluster)
    if not credentials:
        return None
    data = {key: value for key, (_, value) in credentials.items()}
    return _secret(providers_secret_name(service.name), service, cluster, data)


def _provider_secrets_volume(service: Service, cluster: Cluster) -> dict[str, Any] | None:
    """One read-only folder, /var/run/secrets/providers, projected from both Secrets:
    `minio.default/accessKey` and `secretKey` (SPEC 3's names), `TYPE.ID/SETTING`."""
    sources: list[dict[str, Any]] = []
    if minio_secret(service, cluster) is not None:
        items = [
            {"key": file, "path": f"minio.default/{file}"}
            for key, file in MINIO_KEY_FILES
            if cluster.minio.get(key)
        ]
        sources.append({"secret": {"name": minio_secret_name(service.name), "items": items}})
    credentials = _provider_credentials(service, cluster)
    if credentials:
        items = [{"key": key, "path": path} for key, (path, _) in credentials.items()]
        sources.append({"secret": {"name": providers_secret_name(service.name), "items": items}})
    if not sources:
        return None
    return {"name": "provider-secrets", "projected": {"sources": sources}}


def auth_secret(service: Service, cluster: Cluster) -> dict[str, Any] | None:
    """`set_auth`: the htpasswd line ingress-nginx checks an exposed service's callers
    against, as OSCAR's: the user is the service's name, the password its token. Hashed
    as salted SHA-1 (`{SSHA}`, which nginx's auth_basic reads): the token is 256 random
    bits, so the hash needs no slowness, and the standard library makes it."""
    if not (service.exposed and service.expose.set_auth and service.token):
        # No token (rendered offline, from an FDL file): no Secret, and ingress-nginx,
        # finding none, lets no one in.
        return None
    salt = os.urandom(8)
    digest = hashlib.sha1(service.token.encode() + salt, usedforsecurity=False).digest()
    line = f"{service.name}:{{SSHA}}{base64.b64encode(digest + salt).decode()}"
    return _secret(auth_secret_name(service.name), service, cluster, {"auth": line})


def config_hash(service: Service, cluster: Cluster) -> str:
    """A digest of what a service's pods read once, at start: the ConfigMap (the watchdog
    reads function_config.yaml when it starts) and the Secrets of `envFrom` and of the
    providers' folder. Replacing those alone leaves the pod template as it was, and no
    pod would ever see the new values; with this on the template, a change rolls them.

    All of it in one digest, never one per secret, and keyed: an HMAC-SHA256 whose key
    is the service's token (256 random bits, the controller's, stable across updates),
    so that whoever may read Deployments cannot test guesses of a short secret against
    it. Rendered offline there is no token, and the key is the namespace and name: a
    salt only; the secrets are still hashed together with everything else. The
    ingress's auth Secret is no pod's, and salted anew each time: left out."""
    configured = config_map(service, cluster)
    # The config as data (its values as text, as the runtime reads them: `1.10` is not
    # `1.1`), its keys sorted below: the same service read back from the store (variables
    # sorted there) writes its YAML in another order, which must roll nothing.
    configured["data"] = {
        **configured["data"],
        "function_config.yaml": yaml.load(configured["data"]["function_config.yaml"],
                                          Loader=text_loader()),
    }
    used = [
        configured,
        env_secret(service, cluster),
        minio_secret(service, cluster),
        providers_secret(service, cluster),
    ]
    content = {
        f"{obj['kind']}/{obj['metadata']['name']}": obj.get("data") or obj.get("stringData")
        for obj in used
        if obj is not None
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    key = service.token or f"faas-supervisor/{cluster.namespace}/{service.name}"
    return hmac.new(key.encode(), text, hashlib.sha256).hexdigest()


def _secret(
    name: str, service: Service, cluster: Cluster, data: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(name, service, cluster),
        "type": "Opaque",
        "stringData": data,
    }


# ---- pods --------------------------------------------------------------------------------


def _pod_spec(
    service: Service, cluster: Cluster, container: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """The user's image with the runtime copied in by an init container, the config
    mounted at /oscar/config, the secrets where the runtime reads them."""
    mounts = [
        {"name": "oscar-bin", "mountPath": RUNTIME_DIR, "readOnly": True},
        {"name": "oscar-config", "mountPath": CONFIG_DIR, "readOnly": True},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "oscar-bin", "emptyDir": {}},
        {"name": "oscar-config", "configMap": {"name": service.name}},
    ]
    secrets_volume = _provider_secrets_volume(service, cluster)
    if secrets_volume is not None:
        mounts.append(
            {"name": secrets_volume["name"], "mountPath": PROVIDER_SECRETS_DIR, "readOnly": True}
        )
        volumes.append(secrets_volume)
    env = [{"name": "OSCAR_SERVICE_NAME", "value": service.name}]
    if service.exposed:
        env.append(
            {"name": "OSCAR_SERVICE_BASE_PATH", "value": EXPOSED_PATH.format(name=service.name)}
        )
    container = {
        "name": CONTAINER,
        "image": service.image,
        **container,
        "env": [*env, *container.get("env", [])],
        "resources": _resources(service),
        "volumeMounts": mounts,
    }
    if service.secrets:
        container["envFrom"] = [{"secretRef": {"name": service.name}}]
    if service.image_pull_secrets:
        extra = {
            "imagePullSecrets": [{"name": name} for name in service.image_pull_secrets],
            **extra,
        }
    return {
        # The user's code gets no API credentials and no variables of other services.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "initContainers": [
            {
                "name": INIT_CONTAINER,
                "image": cluster.runtime_image,
                # The image's entry point copies the runtime into this folder (SPEC 8).
                "args": [RUNTIME_DIR],
                "volumeMounts": [{"name": "oscar-bin", "mountPath": RUNTIME_DIR}],
            }
        ],
        "containers": [container],
        "volumes": volumes,
        **extra,
    }


def _resources(service: Service) -> dict[str, Any]:
    # OSCAR writes limits only, which Kubernetes copies to requests; written out here,
    # since the autoscaler's CPU utilisation is a share of the request.
    amounts: dict[str, str] = {"cpu": service.cpu, "memory": service.memory}
    limits = dict(amounts)
    if service.enable_gpu:
        limits["nvidia.com/gpu"] = "1"
    return {"requests": amounts, "limits": limits}


def _health_probe(port: str, period: int, failures: int,
                  path: str = "/_/health") -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def watchdog_port(service: Service) -> int:
    """8080, unless the user's server of an exposed service wants it."""
    port = WATCHDOG_PORT
    while port in service.expose.api_port:
        port += 1
    return port


def _api_ports(service: Service) -> list[dict[str, Any]]:
    """The api_ports after the first, reached directly through the Service's 81, 82..."""
    return [
        {"name": f"api-{i}", "containerPort": p}
        for i, p in enumerate(service.expose.api_port)
        if i > 0
    ]


def _image_command_container(service: Service) -> dict[str, Any]:
    """`default_command`: the image's own entry point and command (none given here), its
    server on the first api_port, which the Service's `http` port reaches; probed there on
    `health_path`, behind the exposed prefix with `rewrite_target` (which passes the
    prefix on to it), as OSCAR probes it. No watchdog: no /_/health, no metrics."""
    health = "/" + service.expose.health_path.lstrip("/")
    if service.expose.rewrite_target:
        health = EXPOSED_PATH.format(name=service.name) + health
    return {
        "ports": [{"name": "http", "containerPort": service.expose.api_port[0]},
                  *_api_ports(service)],
        "readinessProbe": _health_probe("http", 5, 3, health),
        "livenessProbe": _health_probe("http", 10, 3, health),
        "startupProbe": _health_probe("http", 10, 18, health),
    }


def _watchdog_container(service: Service) -> dict[str, Any]:
    port = watchdog_port(service)
    command = [RUNTIME, "watchdog", "--port", str(port)]
    ports = [{"name": "http", "containerPort": port}]
    if service.exposed:
        # The script is the user's server, on the first api_port; the watchdog in front of
        # it keeps health, metrics and graceful shutdown. Other ports go to it directly.
        command += ["--mode", Mode.HTTP.value, "--upstream-port", str(service.expose.api_port[0])]
        ports += _api_ports(service)
    container: dict[str, Any] = {
        "command": command,
        "ports": ports,
        "readinessProbe": _health_probe("http", 5, 3),
        "livenessProbe": _health_probe("http", 10, 3),
    }
    if service.exposed:
        # A server may load a model for minutes before it listens (OSCAR allows 180 s).
        container["startupProbe"] = _health_probe("http", 10, 18)
    return container


# ---- synchronous services ------------------------------------------------------------------


def deployment(service: Service, cluster: Cluster) -> dict[str, Any]:
    """The watchdog serving `/run/NAME` (exposed services: the autoscaled `NAME-dpl`)."""
    component = "exposed" if service.exposed else "service"
    name = exposed_names(service.name)["Deployment"] if service.exposed else service.name
    pod_metadata = _pod_metadata(service, component)
    pod_metadata["annotations"] = {
        **pod_metadata.get("annotations", {}),
        CONFIG_HASH: config_hash(service, cluster),  # last: the user's cannot undo it
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, service, cluster, component),
        "spec": {
            "replicas": max(service.expose.min_scale, 1) if service.exposed else 1,
            "selector": {"matchLabels": _labels(service.name, component)},
            "template": {
                "metadata": pod_metadata,
                "spec": _pod_spec(service, cluster, (
                    _image_command_container(service)
                    if service.exposed and service.expose.default_command
                    else _watchdog_container(service)
                )),
            },
        },
    }


def fixed_node_port(service: Service) -> bool:
    """Whether the service is reached on a node port of its own choosing (its first
    api_port's), which OSCAR makes its way in: no Ingress then. A first node port of 0
    (the cluster's choice: nobody knows it beforehand) keeps the Ingress."""
    return bool(service.exposed and service.expose.node_port and service.expose.node_port[0])


def service_object(service: Service, cluster: Cluster) -> dict[str, Any]:
    """The watchdog's stable address: port 80 (and 81, 82... for further api_port); with
    `nodePort`, each port also on the node port of its api_port (a NodePort Service)."""
    component = "exposed" if service.exposed else "service"
    name = exposed_names(service.name)["Service"] if service.exposed else service.name
    ports: list[dict[str, Any]] = [{"name": "http", "port": SERVICE_PORT, "targetPort": "http"}]
    ports += [
        {"name": f"api-{i}", "port": SERVICE_PORT + i, "targetPort": f"api-{i}"}
        for i in range(1, len(service.expose.api_port))
    ]
    node_ports = service.expose.node_port if service.exposed else ()
    for port, node_port in zip(ports, node_ports, strict=False):
        if node_port:  # 0: the cluster chooses
            port["nodePort"] = node_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, service, cluster, component),
        "spec": {
            "type": "NodePort" if node_ports else "ClusterIP",
            "selector": _labels(service.name, component),
            "ports": ports,
        },
    }


def service_url(service: Service, cluster: Cluster, domain: str = "cluster.local") -> str:
    """The Service's cluster DNS name: where the controller sends invocations."""
    name = service_object(service, cluster)["metadata"]["name"]
    return f"http://{name}.{cluster.namespace}.svc.{domain}:{SERVICE_PORT}"


# ---- exposed services --------------------------------------------------------------------


def autoscaler(service: Service, cluster: Cluster) -> dict[str, Any]:
    names = exposed_names(service.name)
    # An autoscaler never goes below one replica (zero needs an alpha feature gate), and
    # its maximum is at least its minimum.
    low = max(service.expose.min_scale, 1)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(names["HorizontalPodAutoscaler"], service, cluster, "exposed"),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": names["Deployment"],
            },
            "minReplicas": low,
            "maxReplicas": max(service.expose.max_scale, low),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": max(service.expose.cpu_threshold, 1),
                        },
                    },
                }
            ],
        },
    }


def ingress(service: Service, cluster: Cluster) -> dict[str, Any]:
    """`/system/services/NAME/exposed/...` to the exposed Service, with OSCAR's
    ingress-nginx annotations (the prefix cut off unless `rewrite_target`)."""
    names = exposed_names(service.name)
    base = EXPOSED_PATH.format(name=service.name)
    meta = _metadata(names["Ingress"], service, cluster, "exposed")
    meta["annotations"] = {
        "nginx.ingress.kubernetes.io/use-regex": "true",
        "nginx.ingress.kubernetes.io/rewrite-target": (
            f"{base}/$1" if service.expose.rewrite_target else "/$1"
        ),
        "nginx.ingress.kubernetes.io/proxy-body-size": "0",
    }
    if service.expose.set_auth:  # OSCAR's annotations, and its Secret
        meta["annotations"].update({
            "nginx.ingress.kubernetes.io/auth-type": "basic",
            "nginx.ingress.kubernetes.io/auth-secret": auth_secret_name(service.name),
            "nginx.ingress.kubernetes.io/auth-realm": "Authentication Required",
        })
    path = {
        "path": f"{base}/?(.*)",
        "pathType": "ImplementationSpecific",
        "backend": {"service": {"name": names["Service"], "port": {"number": SERVICE_PORT}}},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": meta,
        "spec": {"rules": [{"http": {"paths": [path]}}]},
    }


# ---- all of a service, and its jobs -------------------------------------------------------


def service_objects(service: Service, cluster: Cluster) -> list[dict[str, Any]]:
    """Everything a service is made of, in the order to apply it (MANIFEST_KINDS)."""
    check(service)
    objects = [
        minio_secret(service, cluster),
        providers_secret(service, cluster),
        env_secret(service, cluster),
        auth_secret(service, cluster),
        config_map(service, cluster),
        deployment(service, cluster),
        service_object(service, cluster),
    ]
    if service.exposed:
        objects.append(autoscaler(service, cluster))
        if not fixed_node_port(service):  # as OSCAR: reached on its node port instead
            objects.append(ingress(service, cluster))
    return [o for o in objects if o is not None]


def escape_env_value(text: str) -> str:
    """`text` as an env value that reaches the process as written. The kubelet expands an
    env value: `$(NAME)` becomes the variable NAME defined before it, `$$` becomes `$`;
    so `$` is written `$$`. The event must arrive byte for byte (a script may hash or
    parse it). Its size in the object may double; at exec it is the event's again."""
    return text.replace("$", "$$")


def job(service: Service, cluster: Cluster, name: str, event: str) -> dict[str, Any]:
    """One asynchronous invocation: `faas-supervisor run` with the event in `EVENT`."""
    check(service)
    container = {
        "command": [RUNTIME, "run"],
        "env": [
            {"name": "EVENT", "value": escape_env_value(event)},
            {"name": "JOB_UUID", "value": name},
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": cluster.namespace,
            **_pod_metadata(service, "job", {JOB_LABEL: name}),
        },
        "spec": {
            "backoffLimit": 0,  # as OSCAR: an event runs once; a failure is the job's outcome
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "template": {
                "metadata": _pod_metadata(service, "job", {JOB_LABEL: name}),
                "spec": _pod_spec(service, cluster, container, restartPolicy="Never"),
            },
        },
    }


# ---- YAML ------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Multi-line text (scripts, configs) as literal blocks: readable in `kubectl get -o`."""

    def ignore_aliases(self, data: Any) -> bool:
        return True  # `&id001` anchors are valid YAML but not what anyone writes by hand


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def to_yaml(objects: Iterable[Mapping[str, Any]]) -> str:
    """A multi-document YAML stream for `kubectl apply -f -`."""
    return yaml.dump_all(
        [dict(o) for o in objects], Dumper=_Dumper, sort_keys=False, explicit_start=True
    )
