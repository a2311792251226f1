"""An update of a service on Kubernetes reaches its running pods: the watchdog reads
function_config.yaml, and the container its envFrom Secret, once, at start, so an update
that changes only those values must still roll the Deployment's pods out, as the local
and docker backends restart their watchdogs. Against the API stand-in, whose Deployment
controller makes new pods when, and only when, the Deployment's spec changes."""

from __future__ import annotations

from typing import Any

import pytest

from faas_supervisor.controller import manifests
from faas_supervisor.controller.backends.kubernetes import KubernetesBackend
from tests.integration import test_kubernetes_backend as k8s
from tests.integration.test_kubernetes_backend import NS, Kube, service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# The stand-in API and a backend talking to it, as test_kubernetes_backend.py makes them.
kube = k8s.kube
backend = k8s.backend


def pods(kube: Kube) -> dict[str, dict[str, Any]]:
    """The service's pods (the stand-in names them after their Deployment)."""
    return {
        name: kube.api.objects[("pods", NS, name)]
        for name in kube.api.names("pods", NS)
        if name.startswith("cowsay-")
    }


# COWSAY's environment is {"variables": {"GREETING": "moo"}, "secrets": {"API_KEY": "s3cr3t"}}.
UPDATES: dict[str, dict[str, Any]] = {
    "variables": {"environment": {"variables": {"GREETING": "baa"},
                                  "secrets": {"API_KEY": "s3cr3t"}}},
    "secrets": {"environment": {"variables": {"GREETING": "moo"},
                                "secrets": {"API_KEY": "rotated"}}},
    "log_level": {"log_level": "DEBUG"},
}


@pytest.mark.parametrize("update", list(UPDATES))
async def test_an_update_of_values_alone_rolls_the_pods(
    kube: Kube, backend: KubernetesBackend, update: str
) -> None:
    await backend.deploy(service())
    before = pods(kube)
    assert before
    await backend.deploy(service(**UPDATES[update]))  # returns once a new pod has started
    after = pods(kube)
    assert after and not set(after) & set(before), "the old pods serve the old values"
    deployment = kube.api.objects[("deployments", NS, "cowsay")]
    want = deployment["spec"]["template"]["metadata"]["annotations"][manifests.CONFIG_HASH]
    for pod in after.values():
        assert pod["metadata"]["annotations"][manifests.CONFIG_HASH] == want


async def test_the_same_definition_again_keeps_the_pods(
    kube: Kube, backend: KubernetesBackend
) -> None:
    """As at every controller start (`restore`): applied again, nothing rolls."""
    await backend.deploy(service())
    before = pods(kube)
    await backend.deploy(service())
    await backend.restore(service())
    assert set(pods(kube)) == set(before)
