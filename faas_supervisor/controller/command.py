"""`faas-supervisor controller`: its flags; settings.py builds the settings from them once.

Flags win over the environment (`FAAS_USER`, `FAAS_PASSWORD`, `FAAS_DATA_DIR`).
"""

from __future__ import annotations

import argparse

from faas_supervisor.config import current_environ
from faas_supervisor.controller.settings import BACKEND_NAMES, load_controller_settings


def declare_arguments(sub: argparse.ArgumentParser) -> None:
    """The `controller` command's flags (cli.py declares the command, and imports this
    module only when it is chosen)."""
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
    sub.add_argument(
        "--minio-access-key",
        help="its access key, or the S3 endpoint's without --minio-endpoint "
        "(default $MINIO_ACCESS_KEY, else made at the first start and kept in the data folder)",
    )
    sub.add_argument(
        "--minio-secret-key", help="its secret key, likewise (default $MINIO_SECRET_KEY)"
    )
    sub.add_argument("--minio-region", help="its region (default us-east-1)")
    sub.add_argument(
        "--s3-port",
        type=int,
        default=9000,
        help="TCP port of the S3 endpoint serving the folder store, path-style (default 9000; "
        "0: none; ignored with --minio-endpoint)",
    )
    sub.add_argument(
        "--events-queue",
        metavar="NAME_OR_URL",
        help="an SQS queue of the --minio-endpoint server (made if missing) that its bucket "
        "notifications go to and the controller reads (for servers that notify by queue)",
    )
    sub.add_argument(
        "--runner-idle",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="local backend: seconds a service's warm job runner is kept with no job before "
        "it is stopped; the next job starts it again (default 300)",
    )
    sub.add_argument(
        "--reconcile-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds between listings of every input path for objects that have no job "
        "yet, as when their event was lost (default 60; also at start)",
    )
    sub.add_argument(
        "--sync-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds /run/NAME waits for a starting service to be ready (default 60)",
    )
    sub.add_argument(
        "--job-retention",
        type=float,
        default=7 * 86400.0,
        metavar="SECONDS",
        help="seconds a finished job (its status and logs) is kept (default 604800: 7 days)",
    )
    sub.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (scheme://host[:port], or * for any) whose browser apps may "
        "call the API (OSCAR's dashboard, say); repeatable (default: none)",
    )
    sub.add_argument(
        "--cluster-name",
        default="oscar",
        metavar="NAME",
        help="the cluster's name in /system/config (default oscar)",
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
    from faas_supervisor.controller.server import serve

    return serve(load_controller_settings(args, current_environ()))
