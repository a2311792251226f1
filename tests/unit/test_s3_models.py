"""The S3 provider's clients share one boto3 session, whose models are read once per process.

A warm job runner reads them ahead (`load_models`), and the jobs forked from it make their
clients without reading a model file again.
"""

from __future__ import annotations

from typing import Any

import botocore.loaders
import pytest

from faas_supervisor.config import ProviderConfig
from faas_supervisor.storage_providers import s3


def test_a_client_made_after_load_models_reads_no_model_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3.load_models()
    reads: list[str] = []
    original = botocore.loaders.JSONFileLoader.load_file

    def counted(self: Any, file_path: str) -> Any:
        reads.append(file_path)
        return original(self, file_path)

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", counted)
    config = ProviderConfig("minio", "default", {
        "endpoint": "http://127.0.0.1:9", "access_key": "akey", "secret_key": "skey-1234",
    })
    client = s3.S3Provider(config).client
    assert client.meta.service_model.service_name == "s3"
    assert reads == []
