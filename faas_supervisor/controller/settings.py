"""The controller's settings, read once at start-up from its flags and environment.

As config.py does for the runtime: every validation lives here, with errors that name
the flag or variable; below this module nothing reads the process environment or a
flag again.
What a backend takes from the environment (the variables a local service inherits, the
Docker engine's address, the kubeconfig) is picked here and handed down as plain values.
Flags win over the environment.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from faas_supervisor.config import LOG_LEVELS, is_http_url, utf8_encodable
from faas_supervisor.controller.names import DNS_LABEL
from faas_supervisor.errors import ConfigError

# What a local service's processes do not inherit from the controller's environment: the
# runtime's own inputs (each service gets its own) and the controller's settings and
# credentials (FAAS_*, and the storage keys: a job gets its own in its config file),
# which are nobody else's business.
_NOT_INHERITED = ("FUNCTION_CONFIG", "SCRIPT", "EVENT", "JOB_UUID", "port", "mode",
                  "upstream_port", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY")
# The variables the docker CLI reads to find the engine (docker.from_env reads the same).
_DOCKER_ENGINE_VARIABLES = ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
# The most jobs run at once. Each slot is a task waiting for the queue from the start
# (jobs.py), and each job a process (local backend) or a container or Kubernetes Job:
# far more than any one machine or cluster runs at once, yet a million slots took 1.3 GiB
# and 12 s to start, and ten million never got to listen.
MAX_JOBS = 10_000


@dataclass(frozen=True)
class LocalSettings:
    """`--backend local`: services as processes of this machine."""

    name: ClassVar[str] = "local"
    # The base of every service process's environment (watchdogs and `run` jobs).
    service_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    runner_idle: float = 300.0  # seconds a warm job runner is kept with no job
    sync_wait: float = 60.0  # seconds /run and /exposed wait for a starting watchdog


@dataclass(frozen=True)
class DockerSettings:
    """`--backend docker`: containers of the service's image."""

    name: ClassVar[str] = "docker"
    runtime_image: str
    engine_env: Mapping[str, str] = field(default_factory=dict)  # DOCKER_HOST and co.
    sync_wait: float = 60.0  # seconds /run and /exposed wait for a starting watchdog


@dataclass(frozen=True)
class KubernetesSettings:
    """`--backend kubernetes`: OSCAR's objects on an API server."""

    name: ClassVar[str] = "kubernetes"
    namespace: str
    runtime_image: str
    kubeconfig: str = ""  # "" and not in_cluster: the client's default, ~/.kube/config
    in_cluster: bool = False  # the pod's service account
    sync_wait: float = 60.0  # seconds /run waits for a ready replica (--sync-wait)


BackendSettings = LocalSettings | DockerSettings | KubernetesSettings
BACKEND_NAMES = (LocalSettings.name, DockerSettings.name, KubernetesSettings.name)


@dataclass(frozen=True)
class ControllerSettings:
    data_dir: Path
    data_dir_source: str = "--data-dir"  # what gave data_dir, named in its errors
    backend: BackendSettings = field(default_factory=LocalSettings)
    host: str = "0.0.0.0"
    port: int = 8000
    user: str = "oscar"
    password: str | None = field(default=None, repr=False)
    max_jobs: int = 2
    external_url: str = ""
    minio_endpoint: str = ""
    minio_access_key: str = field(default="", repr=False)
    minio_secret_key: str = field(default="", repr=False)
    minio_region: str = "us-east-1"
    s3_port: int = 9000  # the folder store's S3 endpoint; 0: none (and none with minio_endpoint)
    events_queue: str = ""
    reconcile_interval: float = 60.0  # seconds between listings of every input path
    sync_wait: float = 60.0  # seconds /run waits for a starting service
    job_retention: float = 7 * 86400.0  # seconds a finished job is kept
    log_level: str = "INFO"
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; "*": any
    cluster_name: str = "oscar"

    @property
    def public_url(self) -> str:
        """Where storage servers reach the controller (the base of push endpoints)."""
        return self.external_url or f"http://127.0.0.1:{self.port}"

    @property
    def s3_url(self) -> str:
        """Where clients reach the S3 endpoint: the external URL's host, the S3 port.
        Empty when there is none (off, or a MinIO/S3 server given instead)."""
        if not self.s3_port or self.minio_endpoint:
            return ""
        host = urlsplit(self.public_url).hostname or "127.0.0.1"
        return f"http://{f'[{host}]' if ':' in host else host}:{self.s3_port}"


def default_data_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_DATA_HOME") or os.path.join(
        environ.get("HOME") or "/root", ".local", "share"
    )
    return Path(base) / "faas-supervisor"


def load_controller_settings(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> ControllerSettings:
    """The settings from the `controller` command's flags and the process environment."""
    if not 1 <= args.max_jobs <= MAX_JOBS:
        raise ConfigError(f"--max-jobs: must be from 1 to {MAX_JOBS}")
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port: {args.port} is not a TCP port")
    if not 0 < args.reconcile_interval < float("inf"):
        raise ConfigError("--reconcile-interval: must be a number of seconds above 0")
    if not 0 <= args.sync_wait < float("inf"):
        raise ConfigError("--sync-wait: must be a number of seconds, 0 or more")
    if not 0 < args.job_retention < float("inf"):
        raise ConfigError("--job-retention: must be a number of seconds above 0")
    if not 0 < args.runner_idle < float("inf"):
        raise ConfigError("--runner-idle: must be a number of seconds above 0")
    endpoint = _minio_endpoint(args.minio_endpoint)
    access_key = args.minio_access_key or environ.get("MINIO_ACCESS_KEY", "")
    secret_key = args.minio_secret_key or environ.get("MINIO_SECRET_KEY", "")
    if endpoint and not (access_key and secret_key):
        raise ConfigError("--minio-endpoint needs --minio-access-key and --minio-secret-key")
    if bool(access_key) != bool(secret_key):
        raise ConfigError("--minio-access-key and --minio-secret-key go together")
    if not 0 <= args.s3_port < 65536:
        raise ConfigError(f"--s3-port: {args.s3_port} is not a TCP port (0: no S3 endpoint)")
    if args.events_queue and not endpoint:
        raise ConfigError("--events-queue needs --minio-endpoint (the queue is on that server)")
    level = str(environ.get("LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL: {level!r} is not one of {', '.join(LOG_LEVELS)}")
    data_dir = args.data_dir or environ.get("FAAS_DATA_DIR") or default_data_dir(environ)
    return ControllerSettings(
        data_dir=Path(data_dir).expanduser().resolve(),
        data_dir_source=(
            "FAAS_DATA_DIR" if not args.data_dir and environ.get("FAAS_DATA_DIR") else "--data-dir"
        ),
        backend=_backend_settings(args, environ),
        host=args.host,
        port=args.port,
        user=_user(args.user, environ.get("FAAS_USER")),
        password=_password(args.password, environ.get("FAAS_PASSWORD")),
        max_jobs=args.max_jobs,
        external_url=_external_url(args.external_url),
        minio_endpoint=endpoint,
        minio_access_key=access_key,
        minio_secret_key=secret_key,
        minio_region=_region(args.minio_region or environ.get("MINIO_REGION") or "us-east-1"),
        s3_port=args.s3_port,
        events_queue=_events_queue(args.events_queue),
        reconcile_interval=args.reconcile_interval,
        sync_wait=args.sync_wait,
        job_retention=args.job_retention,
        log_level=level,
        cors_origins=_cors_origins(args.cors_origin),
        cluster_name=_cluster_name(args.cluster_name),
    )


# What botocore takes as a region (a host name's label, as it goes into endpoint names);
# anything else stopped the controller with a traceback at its first S3 client.
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,62}", re.IGNORECASE)


def _region(text: str) -> str:
    if not _REGION.fullmatch(text):
        raise ConfigError(f"--minio-region: {text!r} is not a region name (us-east-1)")
    return text


def _user(flag: str | None, variable: str | None) -> str:
    """The admin's user name: Basic auth's user-id cannot hold `:` (the password starts
    after the first one) or a control character (RFC 7617): such a name could never log
    in, and the controller would have started for nobody."""
    user = flag or variable or "oscar"
    if ":" in user or not user.isprintable():
        given = "--user" if flag else "FAAS_USER"
        # Only what comes before a `:`: what follows is what Basic auth reads as a
        # password (`user:password` given as the user), never to be shown.
        shown = user.split(":", 1)[0] + (":..." if ":" in user else "")
        raise ConfigError(f"{given}: {shown!r} cannot be a user name (no ':' and no control "
                          "characters in Basic authentication)")
    return user


def _password(flag: str | None, variable: str | None) -> str | None:
    """The admin's password (None: made at the first start). One whose bytes are not UTF-8
    (an argument's, decoded with surrogates) could never be compared with what a client
    sends: every login was a 500. Not shown."""
    password = flag or variable or None
    if password is not None and not utf8_encodable(password):
        given = "--password" if flag else "FAAS_PASSWORD"
        raise ConfigError(f"{given}: is not UTF-8 text")
    return password


def _external_url(given: str | None) -> str:
    """`http(s)://host[:port][/path]`, checked now: the controller takes its host apart
    later (s3_url), and storage servers are told to call it (push endpoints)."""
    url = (given or "").rstrip("/")
    if not url:
        return ""
    _no_userinfo("--external-url", url)
    if not is_http_url(url, lowest_port=1):
        raise ConfigError(
            f"--external-url: {given!r} is not a URL of the form http(s)://host[:port][/path]"
        )
    return url


def _minio_endpoint(given: str | None) -> str:
    """`http(s)://host[:port][/path]`, checked now: boto3 refused anything else at the
    first S3 client, with a traceback quoting the URL (and a password in it)."""
    url = given or ""
    if not url:
        return ""
    _no_userinfo("--minio-endpoint", url, "give --minio-access-key and --minio-secret-key")
    if not is_http_url(url, lowest_port=1):
        raise ConfigError(
            f"--minio-endpoint: {url!r} is not a URL of the form http(s)://host[:port][/path]"
        )
    return url


def _events_queue(given: str | None) -> str:
    """A queue's name or URL. Neither holds an `@` (a queue name cannot): a URL's
    `user:password@` reaches no server (the SQS client signs with the MinIO keys) and
    would be shown in the queue's log lines and errors."""
    queue = given or ""
    _no_userinfo("--events-queue", queue,
                 "the queue is read with --minio-access-key and --minio-secret-key")
    return queue


def _no_userinfo(flag: str, url: str, instead: str = "") -> None:
    """A flag's URL refused if it holds an `@`, the URL not shown: what is before the `@`
    may be a password, however the URL is typed (`http:/admin:secret@host` has no `://`
    to find it after)."""
    if "@" in url:
        raise ConfigError(f"{flag}: must not hold a user or password ('@')"
                          + (f": {instead}" if instead else ""))


# What a browser sends as Origin: scheme://host[:port], nothing after.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s@]+")


def _cors_origins(given: list[str]) -> tuple[str, ...]:
    origins: list[str] = []
    for raw in given:
        origin = raw.strip().rstrip("/").lower()  # browsers send it so: lower case, no /
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"--cors-origin: {raw!r} is not an origin (scheme://host[:port], or *)"
            )
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def _cluster_name(name: str | None) -> str:
    name = (name or "oscar").strip()
    if not name or any(c.isspace() or not c.isprintable() for c in name):
        raise ConfigError(f"--cluster-name: {name!r} must be printable, without spaces")
    return name




def namespace_flag(namespace: str) -> str:
    """`--namespace`, of `controller` and `manifests`: refused here, in one line, rather
    than by the API server at the first object (or by `kubectl apply`, for the printout)."""
    if len(namespace) > 63 or not DNS_LABEL.fullmatch(namespace):  # an RFC 1123 label
        raise ConfigError(f"--namespace: {namespace!r} is not a namespace name (at most 63 "
                          "lower-case letters, digits or '-', starting and ending with a "
                          "letter or digit)")
    return namespace


def runtime_image_flag(image: str) -> str:
    """`--runtime-image`, of `controller` and `manifests`: what a pod's init container (or
    a container) is made from. Only what no engine or cluster takes is refused (empty,
    spaces, control characters): the registry says whether the image is there."""
    if not image or not image.isprintable() or any(c.isspace() for c in image):
        raise ConfigError(f"--runtime-image: {image!r} is not an image reference "
                          "(registry/name:tag, without spaces)")
    return image


def _backend_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> BackendSettings:
    # Here, not at the top: the manifests' module is slow to import, and the command line
    # is parsed (this module's names imported) for every command.
    from faas_supervisor.controller.manifests import DEFAULT_NAMESPACE, DEFAULT_RUNTIME_IMAGE

    runtime_image = runtime_image_flag(args.runtime_image or DEFAULT_RUNTIME_IMAGE)
    if args.backend == LocalSettings.name:
        return LocalSettings(service_env={
            k: v for k, v in environ.items()
            if k not in _NOT_INHERITED and not k.startswith("FAAS_")
        }, runner_idle=args.runner_idle, sync_wait=args.sync_wait)
    if args.backend == DockerSettings.name:
        return DockerSettings(
            runtime_image=runtime_image,
            engine_env={k: environ[k] for k in _DOCKER_ENGINE_VARIABLES if k in environ},
            sync_wait=args.sync_wait,
        )
    if args.backend == KubernetesSettings.name:
        kubeconfig = args.kubeconfig or environ.get("KUBECONFIG", "")
        return KubernetesSettings(
            namespace=namespace_flag(args.namespace or DEFAULT_NAMESPACE),
            runtime_image=runtime_image,
            kubeconfig=kubeconfig,
            in_cluster=not kubeconfig and bool(environ.get("KUBERNETES_SERVICE_HOST")),
            sync_wait=args.sync_wait,
        )
    raise ConfigError(f"--backend: {args.backend!r} is unknown (one of {', '.join(BACKEND_NAMES)})")
