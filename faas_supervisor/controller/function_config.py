"""A service's function config: the `function_config.yaml` its runtime reads (SPEC 3).

Shared by every backend, so that a service gets the same config wherever it runs: the
local backend writes it to a file, the Kubernetes objects carry it in a ConfigMap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faas_supervisor.controller.fdl import Service


def function_config(service: Service, default_provider: Mapping[str, Any]) -> dict[str, Any]:
    """The FUNCTION config of a service, the cluster's default MinIO provider injected.

    An empty `default_provider` means the cluster has none: `minio.default` is then left
    out rather than written empty, which the runtime would refuse at start-up."""
    providers = {
        ptype: {pid: dict(v) for pid, v in ids.items()}
        for ptype, ids in service.storage_providers.items()
    }
    if default_provider:
        providers.setdefault("minio", {})["default"] = dict(default_provider)
    return {
        "name": service.name,
        "log_level": service.log_level,
        "file_stage_in": service.file_stage_in,
        "environment": {"variables": dict(service.variables)},
        "input": [entry.to_json() for entry in service.input],
        "output": [entry.to_json() for entry in service.output],
        "storage_providers": providers,
        "isolation_level": service.isolation_level,
        "bucket_list": list(service.bucket_list),
    }
