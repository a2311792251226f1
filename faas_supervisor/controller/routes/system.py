"""`/health`, `/openapi.json` and `/system/{info,config,status}`: the controller itself."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
from typing import Any

from aiohttp import web

from faas_supervisor import __version__
from faas_supervisor.controller.openapi import document as openapi_document
from faas_supervisor.controller.routes import Routes
from faas_supervisor.controller.routes.answers import json_response, rfc3339, text_response


class SystemRoutes(Routes):
    async def health(self, _request: web.Request) -> web.Response:
        return text_response("Ok")

    async def openapi(self, _request: web.Request) -> web.Response:
        return json_response(openapi_document())

    async def system_info(self, _request: web.Request) -> web.Response:
        return json_response(
            {
                "version": __version__,
                "git_commit": "",
                "architecture": _go_arch(),
                "kubernetes_version": "",
                "serverless_backend": {"name": self.api.info.backend, "version": __version__},
            }
        )

    async def system_config(self, _request: web.Request) -> web.Response:
        return json_response(
            {
                "config": {
                    "name": self.api.info.cluster_name,
                    "namespace": "",
                    "services_namespace": "",
                    "controller_service_account": "",
                    "gpu_available": False,
                    "interLink_available": False,
                    "serverless_backend": self.api.info.backend,
                    "yunikorn_enable": False,
                    "kueue_enable": False,
                    "volume_enable": False,
                    "oidc_groups": [],
                    "minio_quota_enabled": False,
                },
                "minio_provider": self.api.buckets.public_settings(),
                "allowed_image_repositories": [],
            }
        )

    async def system_status(self, _request: web.Request) -> web.Response:
        node = await asyncio.to_thread(_this_node)
        buckets = await asyncio.to_thread(self._bucket_counts)
        jobs = self.api.store.jobs()
        states: dict[str, int] = {}
        for job in jobs:
            states[job.status] = states.get(job.status, 0) + 1
        cpu_free = node["cpu"]["capacity_cores"] - node["cpu"]["usage_cores"]
        mem_free = node["memory"]["capacity_bytes"] - node["memory"]["usage_bytes"]
        return json_response(
            {
                "cluster": {
                    "nodes_count": 1,
                    "metrics": {
                        "cpu": {
                            "total_free_cores": cpu_free,
                            "max_free_on_node_cores": cpu_free,
                            "total_schedulable_cores": node["cpu"]["capacity_cores"],
                            "total_schedulable_on_node_cores": node["cpu"]["capacity_cores"],
                        },
                        "memory": {
                            "total_free_bytes": mem_free,
                            "max_free_on_node_bytes": mem_free,
                            "total_schedulable_bytes": node["memory"]["capacity_bytes"],
                            "max_schedulable_on_node_bytes": node["memory"]["capacity_bytes"],
                        },
                        "gpu": {"total_gpu": 0},
                    },
                    "nodes": [node],
                },
                "oscar": {
                    "deployment_name": "faas-supervisor",
                    "ready": True,
                    "deployment": {
                        "available_replicas": 1,
                        "ready_replicas": 1,
                        "replicas": 1,
                        "creation_timestamp": rfc3339(self.api.info.started),
                        "strategy": "",
                        "labels": {},
                    },
                    "jobs_count": len(jobs),
                    "pods": {"total": len(jobs), "states": dict(sorted(states.items()))},
                    "oidc": {"enabled": False, "issuers": [], "groups": []},
                },
                "minio": {"buckets_count": buckets[0], "total_objects": buckets[1]},
            }
        )

    def _bucket_counts(self) -> tuple[int, int]:
        buckets = self.api.buckets
        try:
            names = buckets.list_buckets()
            return len(names), sum(len(buckets.list_objects(b)) for b in names)
        except Exception:  # the storage server is down: the status says nothing of it
            return 0, 0


def _go_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def _this_node() -> dict[str, Any]:
    """This machine as a Kubernetes node in the manager's status: millicores and bytes."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    meminfo: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                meminfo[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    total = meminfo.get("MemTotal", 0)
    used = total - meminfo.get("MemAvailable", total)
    return {
        "name": socket.gethostname(),
        "cpu": {"capacity_cores": cores * 1000, "usage_cores": min(int(load * 1000), cores * 1000)},
        "memory": {"capacity_bytes": total, "usage_bytes": used},
        "gpu": 0,
        "is_interlink": False,
        "status": "Ready",
        "conditions": [{"type": "Ready", "status": True}],
    }
