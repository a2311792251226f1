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


def test_a_session_made_after_load_models_has_the_handlers_of_a_session_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sessions after load_models() take its emitter of botocore's built-in handlers
    instead of registering them again (4 ms): they must get exactly a fresh session's
    handlers, boto3's own included, each once. Read through botocore's internals: there
    is no public listing of an emitter's handlers."""
    import boto3.session

    monkeypatch.setattr(s3, "_models", None)
    s3.load_models()
    ours = s3._new_session()._session.get_component("event_emitter")
    fresh = boto3.session.Session()._session.get_component("event_emitter")

    def handlers(emitter: Any, event: str) -> list[str]:
        found = emitter._emitter._handlers.prefix_search(emitter._alias_event_name(event))
        # boto3's are closures made per session (lazy_call): what they close over counts.
        return [f"{h.__module__}.{h.__qualname__}"
                f"{[c.cell_contents for c in getattr(h, '__closure__', None) or ()]}"
                for h in found]

    for event in ("creating-client-class.s3", "before-parameter-build.s3.PutObject",
                  "before-call.s3.PutObject", "choose-signer.s3.PutObject",
                  "before-sign.s3.PutObject", "needs-retry.s3.PutObject",
                  "before-endpoint-resolution.s3", "after-call.s3.GetObject"):
        assert handlers(ours, event) == handlers(fresh, event), event
    assert ours._emitter._unique_id_handlers.keys() == fresh._emitter._unique_id_handlers.keys()
