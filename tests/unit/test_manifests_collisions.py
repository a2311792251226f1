"""`faas-supervisor manifests` refuses an FDL file whose services would make two objects
of the same kind and name: the backend's rule (a name is one service's), said before
`kubectl apply` silently lets the second replace the first."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from faas_supervisor.cli import main

pytestmark = pytest.mark.timeout(60)

MINIO_FLAGS = ["--minio-endpoint", "http://minio:9000", "--minio-access-key", "ak",
               "--minio-secret-key", "sk"]


def fdl(tmp_path: Path, *entries: dict[str, dict[str, object]]) -> str:
    path = tmp_path / "fdl.yaml"
    path.write_text(yaml.safe_dump({"functions": {"oscar": list(entries)}}))
    return str(path)


def svc(name: str, **fields: object) -> dict[str, object]:
    return {"name": name, "image": "ghcr.io/grycap/cowsay", "script": "echo hi\n", **fields}


def refused(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert main(["manifests", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing for kubectl to apply
    assert captured.err.count("\n") == 1
    return captured.err


def test_an_exposed_services_service_and_a_plain_one_of_that_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fdl(tmp_path, {"c": svc("foo", expose={"api_port": 5000})}, {"c": svc("foo-svc")})
    err = refused(capsys, [path])
    assert "service 'foo' and service 'foo-svc'" in err
    assert "Service 'foo-svc'" in err


def test_a_services_minio_secret_and_a_service_of_that_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fdl(tmp_path, {"c": svc("foo")},
               {"c": svc("foo-minio", environment={"secrets": {"API_KEY": "s3cr3t"}})})
    err = refused(capsys, [path, *MINIO_FLAGS])
    assert "service 'foo' and service 'foo-minio'" in err
    assert "Secret 'foo-minio'" in err
    assert "s3cr3t" not in err
    # Without a cluster MinIO, `foo` has no such Secret: nothing collides.
    assert main(["manifests", path]) == 0
    capsys.readouterr()


def test_one_name_for_two_cluster_ids_needs_cluster_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fdl(tmp_path, {"edge": svc("foo"), "core": svc("foo", script="echo core\n")})
    err = refused(capsys, [path])
    assert "cluster id 'edge'" in err and "cluster id 'core'" in err
    assert "--cluster-id" in err
    assert main(["manifests", path, "--cluster-id", "core"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config["data"]["script.sh"] == "echo core\n"


def test_names_that_only_look_alike_are_fine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fdl(tmp_path, {"c": svc("foo", expose={"api_port": 5000})}, {"c": svc("foo-dpl2")},
               {"c": svc("svc-foo")})
    assert main(["manifests", path, *MINIO_FLAGS]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys))
