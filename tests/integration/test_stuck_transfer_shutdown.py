"""The watchdog stopped (SIGTERM) while an invocation's S3 transfer is stuck on a store
that answers a response head and then nothing: real `faas-supervisor watchdog`
processes, a real stalled socket, moto for a multipart upload (README "Signals",
docs/RELIABILITY.md "Timeouts": the drain on SIGTERM).

The transfer's worker threads stay blocked on their read (20 s per attempt, boto3 retries
three): the watchdog must neither wait for them at its exit nor let its handler be
cancelled while the transfer cleans up, which left the client without its 503.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import S3Server, WatchdogFactory
from tests.integration.servers import stalling_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

DRAIN = 1.0  # healthcheck_interval, seconds
# After the drain: an S3 transfer cut short waits up to 5 s (s3.CANCEL_WAIT) for its
# cleanup before its invocation answers; then the answer and the exit, at once.
AFTER_DRAIN = 5.0 + 2.0
EVENT = Path(__file__).resolve().parents[1] / "fixtures" / "events" / "minio.json"
SCRIPT = '#!/bin/sh\necho ran\necho data > "$TMP_OUTPUT_DIR/o.txt"\n'


def _event(provider: str) -> bytes:
    if not EVENT.is_file():
        pytest.fail(f"{EVENT} is missing: the shared event fixtures are needed")
    data = EVENT.read_bytes()
    return data.replace(b'"minio:s3"', b'"aws:s3"') if provider == "s3" else data


def _post(url: str, body: bytes) -> tuple[int, str]:
    """The answer's status and text; 0 and the error when there was no answer."""
    try:
        answer = requests.post(url, data=body, timeout=60)
    except requests.RequestException as exc:
        return 0, repr(exc)
    return answer.status_code, answer.text


@pytest.mark.parametrize("step", ["stage-in", "stage-out"])
@pytest.mark.parametrize("provider", ["minio", "s3"])  # the direct path, then boto3's
def test_a_watchdog_stopped_during_a_stalled_transfer_answers_503_and_exits(
    watchdog: WatchdogFactory, provider: str, step: str
) -> None:
    """SIGTERM once the store has the transfer's request: after healthcheck_interval the
    invocation is answered 503, its folders removed, and the watchdog exits 0, without
    waiting for the threads still blocked on the store. Before, a direct transfer held
    the exit for its read_timeout (20 s: past the local backend's 15 s), and a boto3 one
    a minute, its client left with no answer (its handler cancelled while s3transfer's
    cleanup was still waited for)."""
    requested = threading.Event()
    with contextlib.ExitStack() as stack:
        endpoint, held = stack.enter_context(stalling_store(requested.set))
        path = "input" if step == "stage-in" else "output"
        folder = "plants/input" if step == "stage-in" else "plants/out"
        config = (f"storage_providers:\n  {provider}:\n    default: {{endpoint: '{endpoint}', "
                  "access_key: AKIDEXAMPLE, secret_key: not-a-secret}\n"
                  f"{path}:\n  - {{storage_provider: {provider}.default, path: {folder}}}\n")
        wd = watchdog(SCRIPT, config, env={"healthcheck_interval": f"{DRAIN:g}s"})
        body = _event(provider) if step == "stage-in" else b"{}"
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(1))
        in_flight = pool.submit(_post, wd.url, body)
        assert requested.wait(30), "the store never got the transfer's request"
        started = time.monotonic()
        wd.process.send_signal(signal.SIGTERM)
        status, text = in_flight.result(timeout=60)
        assert status == 503, text
        assert text.splitlines()[0] == "the watchdog is shutting down"
        # The store still holds every connection it took: nothing ends the threads' reads.
        exit_status = wd.process.wait(60)
        elapsed = time.monotonic() - started
        assert held, "no connection reached the store"
        assert exit_status == 0
        assert elapsed < DRAIN + AFTER_DRAIN, f"exited {elapsed:.1f} s after SIGTERM"
    assert wd.invocation_folders() == []
    log = wd.log.read_text()
    assert "Traceback" not in log, log
    logged = [line for line in log.splitlines() if "[info     ] invocation " in line]
    assert len(logged) == 1 and "error='the watchdog is shutting down'" in logged[0], logged


def test_a_watchdog_stopped_during_a_multipart_stage_out_aborts_the_upload(
    watchdog: WatchdogFactory, moto_server: S3Server
) -> None:
    """SIGTERM (no drain) while boto3 uploads an output in parts: the invocation is
    answered 503 once s3transfer has aborted the upload, whose parts are not left in the
    store: the exit, which no longer waits for any thread, comes after that."""
    s3 = moto_server.client()
    bucket = f"mpu-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    config = (f"storage_providers:\n  minio:\n    default: {{endpoint: '{moto_server.endpoint}', "
              f"access_key: {moto_server.access_key}, secret_key: {moto_server.secret_key}}}\n"
              f"output:\n  - {{storage_provider: minio, path: {bucket}/out}}\n")
    script = '#!/bin/sh\nhead -c 300000000 /dev/zero > "$TMP_OUTPUT_DIR/big.bin"\n'
    wd = watchdog(script, config, env={"healthcheck_interval": "0s"})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(_post, wd.url, b"{}")
        deadline = time.monotonic() + 60
        while not s3.list_multipart_uploads(Bucket=bucket).get("Uploads"):
            assert in_flight.running(), in_flight.result()
            assert time.monotonic() < deadline, "no multipart upload started in 60 s"
            time.sleep(0.02)  # the store's state: no event to await
        wd.process.send_signal(signal.SIGTERM)
        status, text = in_flight.result(timeout=60)
        assert status == 503, text
        assert wd.process.wait(30) == 0
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads") is None
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    assert wd.invocation_folders() == []
