"""Where services and jobs run: one small interface, one module per backend.

The controller keeps the definitions, the jobs' queue, statuses and logs (store.py,
jobs.py); a backend only makes a service reachable, runs one job to its end, and forgets
a service. `local` is the embedded default; `docker` runs containers of the service's image;
`kubernetes` makes OSCAR's objects.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from faas_supervisor.controller.deployments import Deployment, LogLine
from faas_supervisor.controller.fdl import Service
from faas_supervisor.controller.settings import BackendSettings, KubernetesSettings, LocalSettings


class JobInterrupted(Exception):
    """A job started, but its end was lost (the local backend's runner died under it):
    the job failed, and the message says why."""


class Backend(Protocol):
    name: str

    async def start(self) -> None:
        """Ready to deploy; called once before anything else."""

    async def close(self) -> None:
        """Stop every service and job this backend started."""

    async def check(self, service: Service) -> None:
        """Refuse (InvalidService: a 400) what this backend cannot serve, with nothing
        made: called before the service is stored or its buckets made."""

    async def deploy(self, service: Service) -> None:
        """Start the service, or restart it with a new definition."""

    async def remove(self, name: str) -> None:
        """Stop the service and forget its files; unknown names are ignored."""

    async def invoke_url(self, name: str) -> str:
        """The base URL of the service's watchdog, once it answers (else ServiceUnavailable)."""

    def release_waiters(self) -> None:
        """The controller is stopping: invoke_url waits no longer for a starting service,
        now or later (ServiceUnavailable at once), so that no request waiting holds up
        the drain for all of sync_wait."""

    async def run_job(self, service: Service, job: str, event: Path, log: Path) -> int:
        """Run one job with `event` as its event, its output into `log`; its exit status.

        Cancelling the call stops the job."""

    # The service's watchdogs (OSCAR's deployment of a service), for the dashboard.

    async def deployment(self, service: Service) -> Deployment | None:
        """What there is of the service's watchdogs; None when the backend has none."""

    async def deployment_logs(self, service: Service, tail: int) -> list[LogLine] | None:
        """The last `tail` lines of its watchdogs' output; None when there is none to read."""

    async def stop_service(self, service: Service) -> None:
        """Its watchdogs stopped (its jobs still run) until started, updated or redeployed."""

    async def start_service(self, service: Service) -> None:
        """Its watchdogs running again, as many as its definition says."""

    async def restart_service(self, service: Service) -> None:
        """Its watchdogs replaced by new ones (a stopped service stays stopped)."""


@runtime_checkable
class LiveLogs(Protocol):
    """A backend whose running jobs write their logs elsewhere than the job's log file
    (kubernetes: the pod's), until they end."""

    async def live_logs(self, job: str) -> AsyncGenerator[bytes, None] | None:
        """What the running job has written so far, a chunk at a time (a log can be
        large: it is never held whole); None when it has not started. The caller closes
        the generator (`aclose`) when it stops reading before its end."""


def build_backend(
    settings: BackendSettings, data_dir: Path, default_provider: Mapping[str, Any]
) -> Backend:
    if isinstance(settings, LocalSettings):
        from faas_supervisor.controller.backends.local import LocalBackend

        return LocalBackend(data_dir, default_provider, settings.service_env,
                            runner_idle=settings.runner_idle, sync_wait=settings.sync_wait)
    if isinstance(settings, KubernetesSettings):
        from faas_supervisor.controller.backends.kubernetes import KubernetesBackend
        from faas_supervisor.controller.manifests import Cluster

        cluster = Cluster(settings.namespace, settings.runtime_image, default_provider)
        return KubernetesBackend(
            cluster, settings.kubeconfig, in_cluster=settings.in_cluster,
            sync_wait=settings.sync_wait,
        )
    from faas_supervisor.controller.backends.docker import DockerBackend

    return DockerBackend(data_dir, default_provider, settings.runtime_image, settings.engine_env,
                         sync_wait=settings.sync_wait)
