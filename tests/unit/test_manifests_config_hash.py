"""The Deployment's pod template carries a digest of the ConfigMap and Secrets its pods
read at start: an update that changes only their values changes the template, so the
Deployment rolls its pods out (the watchdog reads function_config.yaml, and envFrom is
read, once, when the container starts)."""

from __future__ import annotations

import hashlib
from typing import Any

import kubernetes_validate
import pytest

from faas_supervisor.controller import manifests
from faas_supervisor.controller.fdl import Service, parse_service

pytestmark = pytest.mark.timeout(60)

MINIO = {"endpoint": "http://minio.minio:9000", "verify": True, "access_key": "minio-ak",
         "secret_key": "minio-sk", "region": "us-east-1"}
CLUSTER = manifests.Cluster("oscar-svc", "registry.example/runtime:1", MINIO)
BASE: dict[str, Any] = {
    "name": "plants",
    "image": "registry.example/plants:2",
    "script": "echo \"$GREETING\"\n",
    "log_level": "INFO",
    "environment": {"variables": {"GREETING": "moo"}, "secrets": {"API_KEY": "1234"}},
    "annotations": {"example.org/owner": "team-a"},
    "storage_providers": {
        "s3": {"aws": {"access_key": "AK", "secret_key": "SK", "region": "eu-west-1"}}
    },
    "expose": {"api_port": 5000, "set_auth": True},
}
TOKEN = "a" * 64


def service(token: str = TOKEN, **fields: Any) -> Service:
    return parse_service({**BASE, **fields}).with_token(token)


def template(svc: Service, cluster: manifests.Cluster = CLUSTER) -> dict[str, Any]:
    deployment = manifests.deployment(svc, cluster)
    kubernetes_validate.validate(deployment, "1.30", strict=True)
    result: dict[str, Any] = deployment["spec"]["template"]
    return result


def digest(svc: Service, cluster: manifests.Cluster = CLUSTER) -> str:
    value: str = template(svc, cluster)["metadata"]["annotations"][manifests.CONFIG_HASH]
    return value


UPDATES: dict[str, dict[str, Any]] = {
    "a variable": {"environment": {"variables": {"GREETING": "baa"},
                                   "secrets": {"API_KEY": "1234"}}},
    "a secret": {"environment": {"variables": {"GREETING": "moo"},
                                 "secrets": {"API_KEY": "1235"}}},
    "log_level": {"log_level": "DEBUG"},
    "the script": {"script": "echo \"$GREETING!\"\n"},
    "a provider's setting": {"storage_providers": {
        "s3": {"aws": {"access_key": "AK", "secret_key": "SK", "region": "eu-west-3"}}}},
    "a provider's credential": {"storage_providers": {
        "s3": {"aws": {"access_key": "AK", "secret_key": "SK2", "region": "eu-west-1"}}}},
}


@pytest.mark.parametrize("update", list(UPDATES))
def test_a_change_of_config_or_secret_values_alone_changes_the_pod_template(update: str) -> None:
    before, after = service(), service(**UPDATES[update])
    assert template(before)["spec"] == template(after)["spec"]  # nothing else would roll
    assert template(before) != template(after)
    assert digest(before) != digest(after)


def test_the_cluster_minio_keys_change_it_too() -> None:
    rotated = manifests.Cluster(CLUSTER.namespace, CLUSTER.runtime_image,
                                {**MINIO, "secret_key": "minio-sk2"})
    assert digest(service(), CLUSTER) != digest(service(), rotated)


def test_the_same_definition_keeps_the_same_template() -> None:
    """The controller applies every service again at start: no needless rollout, though
    the auth Secret (not the pods') is salted anew each time."""
    assert manifests.auth_secret(service(), CLUSTER) != manifests.auth_secret(service(), CLUSTER)
    assert template(service()) == template(service())
    offline = service(token="")
    assert template(offline) == template(offline)


def test_the_users_annotations_stay_and_cannot_replace_it() -> None:
    annotations = template(service())["metadata"]["annotations"]
    assert annotations["example.org/owner"] == "team-a"
    forged = service(annotations={manifests.CONFIG_HASH: "mine"})
    assert digest(forged) not in ("mine", "")


def test_no_secret_is_exposed_or_guessable_from_it() -> None:
    """One keyed digest of everything: no secret's value, nor its plain hash, nor the
    hash of the config with a guessed secret, which a reader of Deployments could test
    guesses of a short secret against."""
    svc = service()
    value = digest(svc)
    text = str(template(svc))
    for secret in ("1234", "SK", "minio-sk", TOKEN):
        assert f"'{secret}'" not in text
        assert hashlib.sha256(secret.encode()).hexdigest() != value
    data = {o["metadata"]["name"]: o.get("data") or o.get("stringData")
            for o in manifests.service_objects(svc, CLUSTER)
            if o["kind"] in ("ConfigMap", "Secret")}
    assert all(hashlib.sha256(str(d).encode()).hexdigest() != value for d in data.values())
    # Keyed by the token: the same values under another token give another digest.
    assert digest(service(token="b" * 64)) != value


def test_jobs_need_none() -> None:
    """A job's pod is new for each event: it reads the current values anyway."""
    job = manifests.job(service(), CLUSTER, "plants-1", "{}")
    assert manifests.CONFIG_HASH not in (job["spec"]["template"]["metadata"].get("annotations")
                                         or {})


def test_the_same_service_read_back_from_the_store_rolls_nothing() -> None:
    """The store keeps variables sorted: a service created with `ZED` before `ALPHA`
    wrote its config in another order once restored at the next start, and its pods
    rolled at every restart after a create or an update."""
    from faas_supervisor.controller.fdl import from_record, to_record

    created = service(environment={"variables": {"ZED": "1", "ALPHA": "2"},
                                   "secrets": {"B_KEY": "b", "A_KEY": "a"}})
    restored = from_record(to_record(created))
    assert manifests.config_hash(restored, CLUSTER) == manifests.config_hash(created, CLUSTER)


def test_a_variable_changed_to_what_a_yaml_reader_would_take_for_the_same_rolls() -> None:
    """`1.10` and `1.1` are one float to YAML's implicit types, two values to the runtime."""
    before = service(environment={"variables": {"VERSION": "1.10"}})
    after = service(environment={"variables": {"VERSION": "1.1"}})
    assert manifests.config_hash(before, CLUSTER) != manifests.config_hash(after, CLUSTER)
