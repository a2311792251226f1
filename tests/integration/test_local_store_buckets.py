"""`faas-supervisor run` on a folder store (storage_providers/local.py): a bucket that is
not there is a storage failure, exit 3, as over S3; an upload makes no bucket."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import faas_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MINIO_EVENT = Path(__file__).resolve().parents[1] / "fixtures" / "events" / "minio.json"


def run(tmp_path: Path, config: str, script: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    (tmp_path / "config.yaml").write_text(config)
    (tmp_path / "script.sh").write_text(script)
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT", "JOB_UUID", "EXEC_TIMEOUT",
                        "exec_timeout", "LOG_LEVEL")}
    env.update(TMPDIR=str(tmp), FAAS_PROVIDER_SECRETS_DIR=str(tmp_path / "no-secrets"))
    return subprocess.run(
        [*faas_command(), "run", "--config", str(tmp_path / "config.yaml"),
         "--script", str(tmp_path / "script.sh"), *args],
        env=env, capture_output=True, timeout=30)


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.mark.parametrize("provider", ["minio.default", "local.files"])
def test_an_output_to_a_bucket_that_is_not_there_is_status_3_and_makes_nothing(
    tmp_path: Path, provider: str
) -> None:
    """The embedded default's `minio` with a `path`, and a `local` store: the job's output
    to `gone-bucket` made that folder (a bucket no name rule checked) and `run` ended 0,
    where over S3 it ends 3 with `no such bucket`. Found by a review."""
    store = tmp_path / "store"
    (store / "results").mkdir(parents=True)
    ptype, pid = provider.split(".")
    config = (f"storage_providers:\n  {ptype}:\n    {pid}: {{path: {store}}}\n"
              f"output:\n  - {{storage_provider: {provider}, path: gone-bucket/out}}\n")
    script = '#!/bin/sh\necho x > "$TMP_OUTPUT_DIR/a.txt"\n'
    result = run(tmp_path, config, script, "--event-file", os.devnull)
    assert result.returncode == 3, result.stderr
    assert result.stderr.decode().splitlines()[-1] == (
        f"faas-supervisor: error: {provider}: cannot write gone-bucket/out/a.txt: "
        "no such bucket")
    assert files(store) == ["results"]
    assert result.stdout == b""

    # Below a bucket that is there, folders are made as before.
    result = run(tmp_path, config.replace("gone-bucket/out", "results/out/deep"), script,
                 "--event-file", os.devnull)
    assert result.returncode == 0, result.stderr
    assert files(store) == ["results", "results/out", "results/out/deep",
                            "results/out/deep/a.txt"]


def test_an_input_from_a_bucket_that_is_not_there_is_status_3_in_the_same_words(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    config = (f"storage_providers:\n  minio:\n    default: {{path: {store}}}\n"
              "input: [{storage_provider: minio, path: plants/input}]\n")
    result = run(tmp_path, config, '#!/bin/sh\necho ran > "$TMP_OUTPUT_DIR/ran"\n',
                 "--event-file", str(MINIO_EVENT))
    assert result.returncode == 3, result.stderr
    assert result.stderr.decode().splitlines()[-1] == (
        "faas-supervisor: error: minio.default: cannot read plants/input/rose+red.jpg: "
        "no such bucket")
    assert files(store) == []
