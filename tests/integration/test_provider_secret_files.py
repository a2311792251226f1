"""Provider credentials as files (SPEC 3; issue 12): `faas-supervisor run`, a real
process, with a config that holds no key at all and FAAS_PROVIDER_SECRETS_DIR pointing
at `TYPE.ID/SETTING` files, as the Kubernetes backend's Secret volume lays them out,
against moto's S3 server: stage-in from `minio.default` (SPEC 3's `accessKey` and
`secretKey`), stage-out to `s3.aws` (`access_key`, `secret_key`).

moto accepts any keys, so the proof that the files are read is the start-up: the same
config without them is refused, naming the provider and the key.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from tests.integration.conftest import S3Server, faas_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EVENT = Path(__file__).resolve().parents[1] / "fixtures" / "events" / "minio.json"
KEYS = ("FILE-ACCESS-KEY-1", "FILE-SECRET-KEY-1", "FILE-ACCESS-KEY-2", "FILE-SECRET-KEY-2")


def test_run_takes_provider_keys_from_secret_files(
    tmp_path: Path, moto_server: S3Server
) -> None:
    bucket = f"sec-{uuid.uuid4().hex[:12]}"
    s3 = moto_server.client()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="in/rose red.jpg", Body=b"the rose\n")
    event = json.loads(EVENT.read_text())
    record = event["Records"][0]["s3"]
    record["bucket"]["name"] = bucket
    record["object"]["key"] = quote_plus("in/rose red.jpg", safe="")
    event_path = tmp_path / "event.json"
    event_path.write_text(json.dumps(event))

    config = tmp_path / "function_config.yaml"
    config.write_text(
        "storage_providers:\n"
        f"  minio:\n    default: {{endpoint: '{moto_server.endpoint}', region: us-east-1}}\n"
        f"  s3:\n    aws: {{endpoint: '{moto_server.endpoint}', region: us-east-1}}\n"
        f"input: [{{storage_provider: minio, path: {bucket}/in}}]\n"
        f"output: [{{storage_provider: s3.aws, path: {bucket}/out}}]\n"
    )
    secrets = tmp_path / "secrets"
    for name, value in zip(("minio.default/accessKey", "minio.default/secretKey",
                            "s3.aws/access_key", "s3.aws/secret_key"), KEYS, strict=True):
        (secrets / name).parent.mkdir(parents=True, exist_ok=True)
        (secrets / name).write_text(f"{value}\n")
    script = tmp_path / "script.sh"
    script.write_text('#!/bin/sh\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/copy.jpg"\n')
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT", "AWS_ACCESS_KEY_ID",
                        "AWS_SECRET_ACCESS_KEY")}
    env |= {"TMPDIR": str(tmp_path / "tmp"), "LOG_LEVEL": "DEBUG"}
    command = [*faas_command(), "run", "--config", str(config), "--script", str(script),
               "--event-file", str(event_path)]

    # No files: the config alone lacks the keys, a start-up error naming them.
    missing = subprocess.run(command, capture_output=True, timeout=30,
                             env={**env, "FAAS_PROVIDER_SECRETS_DIR": str(tmp_path / "none")})
    assert missing.returncode == 2, missing.stderr
    assert b"storage provider minio.default has no 'access_key'" in missing.stderr

    # The MinIO files alone: s3.aws still lacks its keys, named likewise.
    only_minio = tmp_path / "only-minio"
    (only_minio / "minio.default").mkdir(parents=True)
    for name in ("accessKey", "secretKey"):
        (only_minio / "minio.default" / name).write_text("k\n")
    partial = subprocess.run(command, capture_output=True, timeout=30,
                             env={**env, "FAAS_PROVIDER_SECRETS_DIR": str(only_minio)})
    assert partial.returncode == 2, partial.stderr
    assert b"storage provider s3.aws has no 'access_key'" in partial.stderr

    done = subprocess.run(command, capture_output=True, timeout=30,
                          env={**env, "FAAS_PROVIDER_SECRETS_DIR": str(secrets)})
    assert done.returncode == 0, done.stderr
    copied = s3.get_object(Bucket=bucket, Key="out/copy.jpg")["Body"].read()
    assert copied == b"the rose\n"
    for key in KEYS:  # DEBUG logs included
        assert key.encode() not in done.stdout + done.stderr
