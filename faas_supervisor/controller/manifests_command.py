"""`faas-supervisor manifests -f FDL.yaml`: the Kubernetes objects of an FDL file's
services, as YAML for `kubectl apply -f -` (the same objects the kubernetes backend makes).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from faas_supervisor.config import current_environ

if TYPE_CHECKING:
    from faas_supervisor.controller.fdl import Service
    from faas_supervisor.controller.manifests import Cluster


def declare_arguments(sub: argparse.ArgumentParser) -> None:
    """The `manifests` command's flags (cli.py declares the command, and imports this
    module only when it is chosen)."""
    from faas_supervisor.controller.manifests import DEFAULT_NAMESPACE, DEFAULT_RUNTIME_IMAGE

    # `-f FILE` as kubectl and oscar-cli write it; a bare FILE works too.
    sub.add_argument("-f", "--file", help="the FDL file")
    sub.add_argument("fdl", nargs="?", metavar="FILE", help="the FDL file (same as -f)")
    sub.add_argument("--cluster-id", help="only the services of this cluster id")
    sub.add_argument(
        "--namespace", default=DEFAULT_NAMESPACE, help=f"(default {DEFAULT_NAMESPACE})"
    )
    sub.add_argument(
        "--runtime-image",
        default=DEFAULT_RUNTIME_IMAGE,
        help=f"the init container's image, holding the runtime (default {DEFAULT_RUNTIME_IMAGE})",
    )
    sub.add_argument(
        "--minio-endpoint", help="the cluster's MinIO, as pods reach it (default: none)"
    )
    sub.add_argument("--minio-access-key", help="its access key (default $MINIO_ACCESS_KEY)")
    sub.add_argument("--minio-secret-key", help="its secret key (default $MINIO_SECRET_KEY)")
    sub.add_argument("--minio-region", help="its region (default us-east-1)")
    sub.set_defaults(handler=cmd_manifests)


def cmd_manifests(args: argparse.Namespace) -> int:
    from faas_supervisor.controller.fdl import load_fdl
    from faas_supervisor.controller.manifests import Cluster, to_yaml
    from faas_supervisor.errors import ConfigError, InvalidService

    if bool(args.file) == bool(args.fdl):
        raise ConfigError("manifests: give the FDL file once, as -f FILE or FILE")
    args.file = args.file or args.fdl

    environ = current_environ()
    provider: dict[str, Any] = {}
    if args.minio_endpoint:
        provider = {
            "endpoint": args.minio_endpoint,
            "verify": True,
            "access_key": args.minio_access_key or environ.get("MINIO_ACCESS_KEY", ""),
            "secret_key": args.minio_secret_key or environ.get("MINIO_SECRET_KEY", ""),
            "region": args.minio_region or environ.get("MINIO_REGION") or "us-east-1",
        }
        if not (provider["access_key"] and provider["secret_key"]):
            raise ConfigError("--minio-endpoint needs --minio-access-key and --minio-secret-key")
    cluster = Cluster(args.namespace, args.runtime_image, provider)
    try:
        services = load_fdl(args.file, args.cluster_id)
        objects = _objects(services, cluster)
    except InvalidService as exc:  # a bad file is a one-line usage error, exit status 2
        raise ConfigError(exc.message) from None
    if not objects:
        raise ConfigError(f"{args.file}: no services for cluster id {args.cluster_id!r}")
    sys.stdout.write(to_yaml(objects))
    return 0


def _objects(services: Iterable[Service], cluster: Cluster) -> list[dict[str, Any]]:
    """The objects of all the services, for one namespace. The kubernetes backend's rule
    (`_refuse_if_not_own`): an object's name is one service's only, since names are
    made from service names (exposed `foo`'s Service is `foo-svc`, plain `foo-svc`'s
    too; `foo`'s MinIO Secret is `foo-minio`, service `foo-minio`'s Secret too). There
    the first deployed keeps it; here, where all are printed at once, none is:
    `kubectl apply` would replace one service's object with the other's."""
    from faas_supervisor.controller.manifests import service_objects
    from faas_supervisor.errors import InvalidService

    owners: dict[tuple[str, str], Service] = {}
    objects: list[dict[str, Any]] = []
    for service in services:
        for obj in service_objects(service, cluster):
            key = (obj["kind"], obj["metadata"]["name"])
            other = owners.setdefault(key, service)
            if other is not service:
                raise InvalidService(
                    f"name: {_owner(other, service)} and {_owner(service, other)} both "
                    f"make the {key[0]} {key[1]!r}; choose another name"
                    + (" or give --cluster-id" if other.name == service.name else "")
                )
            objects.append(obj)
    return objects


def _owner(service: Service, other: Service) -> str:
    """`service 'foo'`, with its cluster id when the other has the same name."""
    if service.name != other.name:
        return f"service {service.name!r}"
    return f"service {service.name!r} of cluster id {service.cluster_id!r}"
