"""`faas-supervisor controller`: its flags, and the settings built from them once.

Flags win over the environment (`FAAS_USER`, `FAAS_PASSWORD`, `FAAS_DATA_DIR`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from faas_supervisor.config import current_environ
from faas_supervisor.errors import ConfigError

BACKEND_NAMES = ("local", "docker", "kubernetes")


def default_data_dir(environ: dict[str, str]) -> Path:
    base = environ.get("XDG_DATA_HOME") or os.path.join(
        environ.get("HOME") or "/root", ".local", "share"
    )
    return Path(base) / "faas-supervisor"


def add_controller_parser(commands: Any) -> None:
    sub: argparse.ArgumentParser = commands.add_parser(
        "controller", help="the controller's API server (OSCAR manager compatible)"
    )
    sub.add_argument(
        "--backend",
        default="local",
        choices=BACKEND_NAMES,
        help="where services run (default local: processes of this machine)",
    )
    sub.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    sub.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    sub.add_argument(
        "--data-dir",
        help="services, jobs, logs and the local storage "
        "(default $FAAS_DATA_DIR, else ~/.local/share/faas-supervisor)",
    )
    sub.add_argument("--user", help="basic auth user (default $FAAS_USER, else oscar)")
    sub.add_argument(
        "--password",
        help="basic auth password (default $FAAS_PASSWORD, else a "
        "random one, printed once and kept in the data folder)",
    )
    sub.add_argument(
        "--max-jobs", type=int, default=2, help="jobs run at once; the rest wait (default 2)"
    )
    sub.add_argument(
        "--external-url",
        help="where storage servers reach this controller (default http://127.0.0.1:PORT)",
    )
    sub.add_argument(
        "--minio-endpoint",
        help="a MinIO/S3 server as the default storage provider "
        "(default: a folder under the data folder)",
    )
    sub.add_argument("--minio-access-key", help="its access key (default $MINIO_ACCESS_KEY)")
    sub.add_argument("--minio-secret-key", help="its secret key (default $MINIO_SECRET_KEY)")
    sub.add_argument("--minio-region", help="its region (default us-east-1)")
    sub.add_argument(
        "--events-queue",
        metavar="NAME_OR_URL",
        help="an SQS queue of the --minio-endpoint server (made if missing) that its bucket "
        "notifications go to and the controller reads (for servers that notify by queue)",
    )
    sub.add_argument(
        "--reconcile-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds between listings of every input path for objects that have no job "
        "yet, as when their event was lost (default 60; also at start)",
    )
    kube = sub.add_argument_group("kubernetes and docker backends")
    kube.add_argument("--namespace", help="where services go (default oscar-svc)")
    kube.add_argument(
        "--runtime-image",
        help="the init container's image, which copies the runtime into /oscar/bin "
        "(default ghcr.io/faas-supervisor/runtime:VERSION)",
    )
    kube.add_argument(
        "--kubeconfig",
        help="the API server's kubeconfig (default $KUBECONFIG, else the in-cluster "
        "service account, else ~/.kube/config)",
    )
    sub.set_defaults(handler=cmd_controller)


def cmd_controller(args: argparse.Namespace) -> int:
    from faas_supervisor.controller.server import ControllerSettings, serve

    environ = current_environ()
    if args.max_jobs < 1:
        raise ConfigError("--max-jobs: must be 1 or more")
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port: {args.port} is not a TCP port")
    if not 0 < args.reconcile_interval < float("inf"):
        raise ConfigError("--reconcile-interval: must be a number of seconds above 0")
    endpoint = args.minio_endpoint or ""
    access_key = args.minio_access_key or environ.get("MINIO_ACCESS_KEY", "")
    secret_key = args.minio_secret_key or environ.get("MINIO_SECRET_KEY", "")
    if endpoint and not (access_key and secret_key):
        raise ConfigError("--minio-endpoint needs --minio-access-key and --minio-secret-key")
    if args.events_queue and not endpoint:
        raise ConfigError("--events-queue needs --minio-endpoint (the queue is on that server)")
    data_dir = args.data_dir or environ.get("FAAS_DATA_DIR") or default_data_dir(environ)
    settings = ControllerSettings(
        data_dir=Path(data_dir).expanduser().resolve(),
        backend=args.backend,
        host=args.host,
        port=args.port,
        user=args.user or environ.get("FAAS_USER") or "oscar",
        password=args.password or environ.get("FAAS_PASSWORD") or None,
        max_jobs=args.max_jobs,
        external_url=(args.external_url or "").rstrip("/"),
        minio_endpoint=endpoint,
        minio_access_key=access_key,
        minio_secret_key=secret_key,
        minio_region=args.minio_region or environ.get("MINIO_REGION") or "us-east-1",
        events_queue=args.events_queue or "",
        reconcile_interval=args.reconcile_interval,
        namespace=args.namespace or "",
        runtime_image=args.runtime_image or "",
        kubeconfig=args.kubeconfig or "",
        environ=environ,
    )
    return serve(settings)
