"""The direct S3 requests' signing and where they are used (storage_providers/s3_direct.py).

Their round trips, retries and refusals run against real stores in
tests/integration/test_storage_providers.py (Ceph RGW checks the signatures).
"""

from __future__ import annotations

import hashlib

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from faas_supervisor import aws_sigv4
from faas_supervisor.config import ProviderConfig, Secret
from faas_supervisor.storage_providers.s3_direct import direct


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/bucket/plain.txt", b""),
    ("PUT", "/bucket/with%20space/%C3%A9t%C3%A9%2Bplus%25.txt", b"body"),
])
def test_the_authorization_is_botocores_for_the_same_request(method: str, path: str,
                                                             body: bytes) -> None:
    # Over plain HTTP botocore signs the body's SHA-256 too, as the direct requests do.
    request = AWSRequest(method, f"http://127.0.0.1:9000{path}", data=body)
    S3SigV4Auth(Credentials("AKDIRECT", "secret/key+1"), "s3", "eu-west-3").add_auth(request)
    amz_date = request.headers["X-Amz-Date"]
    payload = hashlib.sha256(body).hexdigest()
    assert request.headers["X-Amz-Content-SHA256"] == payload
    ours = aws_sigv4.authorization(
        "AKDIRECT", "secret/key+1", "eu-west-3", method, path,
        {"host": "127.0.0.1:9000", "x-amz-content-sha256": payload, "x-amz-date": amz_date},
        amz_date)
    assert ours == request.headers["Authorization"]


def provider(kind: str = "minio", **settings: str) -> ProviderConfig:
    values: dict[str, str | bool | Secret] = {
        "endpoint": "http://minio.minio:9000", "access_key": Secret("AK"),
        "secret_key": Secret("SK"), **settings}
    return ProviderConfig(kind, "default", {k: v for k, v in values.items() if v != "-"})


def test_used_for_a_minio_provider_on_plain_http_with_its_keys() -> None:
    made = direct(provider(), 5.0, 20.0)
    assert made is not None and made.host == "minio.minio:9000"
    assert made.region == "us-east-1"
    assert "SK" not in repr(made)
    bare = direct(provider(endpoint="minio:9000", region="eu-west-1"), 5.0, 20.0)
    assert bare is not None and (bare.host, bare.region) == ("minio:9000", "eu-west-1")


@pytest.mark.parametrize("kind,settings", [
    ("s3", {}),  # Amazon's addressing is boto3's to choose
    ("minio", {"endpoint": "https://minio.example.org"}),  # TLS and its CAs: boto3's
    ("minio", {"endpoint": "http://proxy.example.org/s3"}),  # a path prefix
    ("minio", {"access_key": "-"}),  # boto3's credential chain
    ("minio", {"secret_key": "-"}),
    ("minio", {"endpoint": "-"}),
])
def test_boto3_does_everything_else(kind: str, settings: dict[str, str]) -> None:
    assert direct(provider(kind, **settings), 5.0, 20.0) is None
