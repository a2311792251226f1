"""`faas-supervisor manifests -f FDL.yaml`: the Kubernetes objects of an FDL file's
services, as YAML for `kubectl apply -f -` (the same objects the kubernetes backend makes).

An exposed service with `set_auth` has its Ingress's basic-auth Secret too, whose
password is the service's token: the controller makes one per service; here it is the
FDL's `token`, or, when it gives none, one made for this printout and put in that Secret
as `token` too (its `auth` holds only a hash), where `kubectl get secret` reads it.
Without the Secret, ingress-nginx would let no one in.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
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
    from faas_supervisor.controller.auth import new_token
    from faas_supervisor.controller.fdl import fdl_definitions, parse_service
    from faas_supervisor.controller.manifests import Cluster, auth_secret_name, to_yaml
    from faas_supervisor.controller.settings import namespace_flag, runtime_image_flag
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
    cluster = Cluster(namespace_flag(args.namespace), runtime_image_flag(args.runtime_image),
                      provider)
    generated: list[str] = []  # the services whose token is made here
    try:
        # As load_fdl reads them, each with the token its definition gives.
        services = []
        for where, definition in fdl_definitions(Path(args.file), args.cluster_id):
            service = parse_service(definition, where, yaml_scalars=True)
            service = service.with_token(_given_token(definition, where))
            if service.exposed and service.expose.set_auth and not service.token:
                service = service.with_token(new_token())
                generated.append(service.name)
            services.append(service)
        objects = _objects(services, cluster, set(generated))
    except InvalidService as exc:  # a bad file is a one-line usage error, exit status 2
        raise ConfigError(exc.message) from None
    if not objects:
        raise ConfigError(f"{args.file}: no services for cluster id {args.cluster_id!r}")
    sys.stdout.write(to_yaml(objects))
    if generated:  # the token is in the Secret printed; never here
        names = ", ".join(f"{name!r}" for name in generated)
        secret = auth_secret_name(generated[0] if len(generated) == 1 else "SERVICE")
        print(f"faas-supervisor: warning: set_auth without a token in the FDL ({names}): "
              f"a new token is made at each run (give `token` in the FDL to keep one); "
              f"read it with: kubectl -n {cluster.namespace} get secret {secret} "
              "-o jsonpath='{.data.token}' | base64 -d", file=sys.stderr)
    return 0


def _given_token(definition: Mapping[str, Any], where: str) -> str:
    """The FDL's `token` for the service (the password of its `set_auth`); "" if none."""
    from faas_supervisor.errors import InvalidService

    token = definition.get("token")
    if token is None or token == "":
        return ""
    if not isinstance(token, str) or not token.strip() or "\n" in token:
        raise InvalidService(f"{where}.token: must be a string of one line")
    return token


def _objects(
    services: Iterable[Service], cluster: Cluster, generated: Collection[str] = ()
) -> list[dict[str, Any]]:
    """The objects of all the services, for one namespace. The kubernetes backend's rule
    (`_refuse_if_not_own`): an object's name is one service's only, since names are
    made from service names (exposed `foo`'s Service is `foo-svc`, plain `foo-svc`'s
    too; `foo`'s MinIO Secret is `foo-minio`, service `foo-minio`'s Secret too). There
    the first deployed keeps it; here, where all are printed at once, none is:
    `kubectl apply` would replace one service's object with the other's.

    A service's token keys only its auth Secret here: elsewhere (the config hash) a
    token made anew at each run would roll the service's pods at each `kubectl apply`.
    `generated`: the services whose token was made here, which their Secret holds."""
    from faas_supervisor.controller.manifests import auth_secret, service_objects
    from faas_supervisor.errors import InvalidService

    owners: dict[tuple[str, str], Service] = {}
    objects: list[dict[str, Any]] = []
    for service in services:
        made = service_objects(service.with_token(""), cluster)
        secret = auth_secret(service, cluster)
        if secret is not None:
            if service.name in generated:
                secret["stringData"]["token"] = service.token
            # Where service_objects puts it: with the Secrets, before the ConfigMap.
            at = next(i for i, obj in enumerate(made) if obj["kind"] == "ConfigMap")
            made.insert(at, secret)
        for obj in made:
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
