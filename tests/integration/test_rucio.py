"""Rucio end to end, against a real Rucio server (SPEC 6.1, 6.2; issue 12).

Files and datasets are put on the server with Rucio's own client; the events sent are
the messages Rucio itself recorded for them (its `messages` table, shaped as its Hermes
daemon sends them); the outputs are checked with Rucio's client (listed, downloaded and
compared). The OIDC refresh runs against a small token endpoint of the test's own, the
one stand-in: no identity provider can run here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import yaml
from aiohttp import web

from faas_supervisor.config import ProviderConfig, Secret
from faas_supervisor.errors import StorageError
from faas_supervisor.storage_providers.http import ANSWER_LIMIT
from faas_supervisor.storage_providers.rucio import (
    CHECK_TIMEOUT,
    DEFAULT_SCOPES,
    RucioProvider,
)
from tests.integration.conftest import (
    WatchdogFactory,
    faas_command,
    free_port,
    mounted_tmpfs,
)
from tests.integration.controller_fixture import ControllerFactory
from tests.integration.rucio_server import ACCOUNT, RSE, SCOPE, RucioServer, unique
from tests.integration.servers import streamed_answer
from tests.integration.test_run import stopped

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MiB = 1 << 20

# What the script saw, and a copy of each input under `<name>.out`.
SCRIPT = r"""
set -e
echo "saw $STORAGE_BUCKET:$STORAGE_OBJECT_KEY"
ls "$TMP_INPUT_DIR" > "$TMP_OUTPUT_DIR/listing.txt"
if [ "$INPUT_FILE_PATH" = "$TMP_INPUT_DIR" ]; then echo folder; else echo file; fi \
  > "$TMP_OUTPUT_DIR/listing-input.txt"
for f in "$TMP_INPUT_DIR"/*; do cp "$f" "$TMP_OUTPUT_DIR/$(basename "$f").out"; done
"""


def config(server: RucioServer, input_path: str, out: str, **settings: Any) -> str:
    """A function config: rucio input, `.out` files to `out`, listings to `out-meta`."""
    return yaml.safe_dump({
        "storage_providers": {"rucio": {"default": server.settings(**settings)}},
        "input": [{"storage_provider": "rucio", "path": input_path}],
        "output": [
            {"storage_provider": "rucio.default", "path": f"{SCOPE}/{out}", "suffix": [".out"]},
            {"storage_provider": "rucio", "path": f"{SCOPE}/{out}-meta", "prefix": ["listing"]},
        ],
    })


def run(tmp_path: Path, cfg: str, event: Any, script: str = SCRIPT,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    (tmp_path / "config.yaml").write_text(cfg)
    (tmp_path / "script.sh").write_text(script)
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("FUNCTION_CONFIG", "SCRIPT")}
    env.update(TMPDIR=str(tmp), EVENT=json.dumps(event))
    result = subprocess.run([*faas_command(), "run", "--config", str(tmp_path / "config.yaml"),
                             "--script", str(tmp_path / "script.sh")], env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert list(tmp.iterdir()) == [], result.stderr  # nothing left behind
    return result


def write_files(folder: Path, names: list[str]) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    blobs = {}
    for name in names:
        data = f"{name}: {os.urandom(8).hex()}\n".encode()
        (folder / name).write_bytes(data)
        blobs[name] = data
    return blobs


def uploaded_file(
    server: RucioServer, tmp_path: Path, did_name: str, data: bytes | None = None
) -> tuple[bytes, dict[str, Any]]:
    """A file put with `rucio upload` (`data`, else a short random line), and the RULE_OK
    message Rucio recorded once a rule asking to be notified (`--notify Y`) was satisfied."""
    base = did_name.rsplit("/", 1)[-1]
    if data is None:
        data = write_files(tmp_path / "src", [base])[base]
    else:
        (tmp_path / "src").mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / base).write_bytes(data)
    server.client("upload", "--rse", RSE, "--scope", SCOPE, "--name", did_name, "--files",
                  str(tmp_path / "src" / base))
    server.client("rule", "add", "-d", f"{SCOPE}:{did_name}", "--rses", f"{RSE}=True",
                  "--copies", "1", "--notify", "Y")
    messages = server.messages("RULE_OK", did_name)
    assert len(messages) == 1, messages
    return data, messages[0]


def check_output(server: RucioServer, tmp_path: Path, did_name: str, expected: bytes) -> None:
    """The DID is listed on the RSE by Rucio's client, and downloads as `expected`."""
    listed = server.client("replica", "list", "file", "-d", f"{SCOPE}:{did_name}")
    assert RSE in listed, listed
    got = server.download(f"{SCOPE}:{did_name}", tmp_path / "check" / did_name.replace("/", "_"))
    assert got.read_bytes() == expected


# ---- a file: `run`, then again (same content), then other content (409 / 3) -------------


def test_a_file_event_rucio_recorded_is_a_job_whose_outputs_land_on_the_rse(
    rucio_server: RucioServer, tmp_path: Path
) -> None:
    inp, out = unique("in"), unique("out")
    name = f"{inp}/photo.txt"
    data, event = uploaded_file(rucio_server, tmp_path, name)
    assert event["event_type"] == "rule_ok"
    cfg = config(rucio_server, f"{SCOPE}/{inp}", out)
    result = run(tmp_path, cfg, event)
    assert result.returncode == 0, result.stderr
    assert f"saw {SCOPE}:{name}" in result.stderr
    check_output(rucio_server, tmp_path, f"{out}/photo.txt.out", data)
    check_output(rucio_server, tmp_path, f"{out}-meta/listing-input.txt", b"file\n")
    assert "secret" not in result.stderr  # the password never reaches a log line
    # Again: the outputs exist with the same content, which is no error.
    again = run(tmp_path, cfg, event)
    assert again.returncode == 0, again.stderr
    # Other content for the same DIDs: Rucio's DIDs are immutable, so 3 naming the DID.
    changed = SCRIPT + 'echo changed >> "$TMP_OUTPUT_DIR/photo.txt.out"\n'
    other = run(tmp_path, cfg, event, script=changed)
    assert other.returncode == 3, other.stderr
    assert f"{SCOPE}:{out}/photo.txt.out" in other.stderr
    assert "other content" in other.stderr


def test_an_event_outside_the_input_path_is_refused(
    rucio_server: RucioServer, tmp_path: Path
) -> None:
    name = f"{unique('elsewhere')}/x.txt"
    _, event = uploaded_file(rucio_server, tmp_path, name)
    result = run(tmp_path, config(rucio_server, f"{SCOPE}/{unique('in')}", unique("out")), event)
    assert result.returncode == 2, result.stderr
    assert "not under an input path" in result.stderr


# ---- a dataset: the watchdog, every file staged in ---------------------------------------


def test_a_dataset_close_event_stages_in_every_file(
    rucio_server: RucioServer, watchdog: WatchdogFactory, tmp_path: Path
) -> None:
    dataset, out = unique("ds"), unique("out")
    names = [f"{dataset}-{n}.txt" for n in ("a", "b", "c")]
    blobs = write_files(tmp_path / "src", names)
    rucio_server.upload([tmp_path / "src" / n for n in names], dataset=dataset)
    rucio_server.client("did", "update", "--close", "-d", f"{SCOPE}:{dataset}")
    [event] = rucio_server.messages("CLOSE", dataset)
    assert event["event_type"] == "close" and event["payload"]["length"] == 3
    wd = watchdog(SCRIPT, config(rucio_server, SCOPE, out))
    response = requests.post(f"{wd.url}/run", json=event, timeout=120)
    assert response.status_code == 200, (response.text, wd.log.read_text())
    for name, data in blobs.items():
        check_output(rucio_server, tmp_path, f"{out}/{name}.out", data)
    check_output(rucio_server, tmp_path, f"{out}-meta/listing.txt",
                 "".join(f"{n}\n" for n in sorted(names)).encode())
    check_output(rucio_server, tmp_path, f"{out}-meta/listing-input.txt", b"folder\n")
    assert wd.invocation_folders() == []
    # A DID name that would leave the input folder: refused before anything is read.
    bad = {**event, "payload": {**event["payload"], "name": f"{dataset}/../../../etc/passwd"}}
    refused = requests.post(f"{wd.url}/run", json=bad, timeout=60)
    assert refused.status_code == 400 and "'..'" in refused.text, refused.text
    missing = {**event, "payload": {"scope": SCOPE}}
    refused = requests.post(f"{wd.url}/run", json=missing, timeout=60)
    assert refused.status_code == 400 and "payload.name" in refused.text, refused.text


# ---- the controller: /job/NAME, an FDL service with rucio inputs and outputs --------------


@pytest.mark.timeout(400)
def test_the_controller_runs_a_job_for_a_rucio_event(
    rucio_server: RucioServer, tmp_path: Path
) -> None:
    inp, out, name = unique("in"), unique("out"), unique("svc")
    data, event = uploaded_file(rucio_server, tmp_path, f"{inp}/sample.txt")
    factory = ControllerFactory(tmp_path)
    try:
        controller = factory()
        service = {
            "name": name,
            "script": SCRIPT,
            "storage_providers": {"rucio": {"default": rucio_server.settings()}},
            "input": [{"storage_provider": "rucio", "path": f"{SCOPE}/{inp}"}],
            "output": [{"storage_provider": "rucio", "path": f"{SCOPE}/{out}",
                        "suffix": [".out"]}],
        }
        created = controller.create(service)
        # The password is the controller's to keep: hidden in what the API shows.
        assert created["storage_providers"]["rucio"]["default"]["password"] != "secret"
        response = requests.post(f"{controller.url}/job/{name}", json=event, timeout=60,
                                 headers={"Authorization": f"Bearer {created['token']}"})
        assert response.status_code == 201, response.text
        jobs = controller.wait_jobs(name, 1, timeout=240)
        assert [j["status"] for j in jobs.values()] == ["Succeeded"], controller.log_text()
        check_output(rucio_server, tmp_path, f"{out}/sample.txt.out", data)
        assert "secret" not in controller.log_text()
    finally:
        factory.close()


# ---- failures ---------------------------------------------------------------------------


@pytest.mark.reliability(
    fault="store down",
    promise="the Rucio server down at stage-in: exit 3 within 30 s naming the provider and the DID",
)
def test_the_server_down_at_stage_in_is_exit_3_in_bounded_time(
    rucio_server: RucioServer, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = config(rucio_server, SCOPE, unique("out"), host=down, auth_host=down)
    event = {"event_type": "close", "payload": {"scope": SCOPE, "name": "ds-gone"},
             "created_at": "2026-11-30 12:00:00.000000"}
    started = time.monotonic()
    result = run(tmp_path, cfg, event)
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert "rucio.default" in result.stderr and f"{SCOPE}:ds-gone" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 30, elapsed  # 3 attempts with backoff, not a hang


@pytest.fixture
def tiny_tmpdir(tmp_path: Path) -> Iterator[Path]:
    """`run`'s TMPDIR (tmp_path/tmp) as a 256 KiB tmpfs, unmounted at the end."""
    with mounted_tmpfs(tmp_path / "tmp") as folder:
        yield folder


@pytest.mark.reliability(
    fault="disk full",
    promise="a Rucio stage-in that fills TMPDIR: exit 4 naming the DID, nothing left behind",
)
def test_a_stage_in_that_fills_tmpdir_is_exit_4_naming_the_did(
    rucio_server: RucioServer, tiny_tmpdir: Path, tmp_path: Path
) -> None:
    """Our disk is full, not the store: `run` exits 4 (the watchdog's 507), as with S3."""
    inp = unique("big")
    name = f"{inp}/big.bin"
    _, event = uploaded_file(rucio_server, tmp_path, name, data=os.urandom(2 << 20))
    script = 'echo "the script ran"\n'
    result = run(tmp_path, config(rucio_server, f"{SCOPE}/{inp}", unique("out")), event,
                 script=script)  # run() checks that TMPDIR is left empty
    assert result.returncode == 4, result.stderr
    assert (f"no space left on device writing the download of {SCOPE}:{name} "
            "(rucio.default)") in result.stderr
    assert "the script ran" not in result.stderr and "Traceback" not in result.stderr


def test_a_job_stopped_while_it_uploads_leaves_nothing_on_the_rse(
    rucio_server: RucioServer, tmp_path: Path
) -> None:
    """SIGTERM while a large output is copied onto the RSE: `run` ends with os._exit,
    which killed the copying thread and left its `.rucio.upload` file in the RSE's folder
    for good (found by a review). The copy stops, its file goes, no DID is made."""
    out = unique("stopped")
    cfg = yaml.safe_dump({
        "storage_providers": {"rucio": {"default": rucio_server.settings()}},
        "output": [{"storage_provider": "rucio", "path": f"{SCOPE}/{out}"}],
    })
    (tmp_path / "config.yaml").write_text(cfg)
    script = tmp_path / "script.sh"
    # Sparse: made at once; checksummed, then copied, in a few seconds.
    script.write_text('#!/bin/sh\ntruncate -s 1G "$TMP_OUTPUT_DIR/big.bin"\n')
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("FUNCTION_CONFIG", "SCRIPT")}
    env.update(TMPDIR=str(tmp), EVENT="{}")

    def on_rse() -> list[Path]:  # the RSE's deterministic paths: SCOPE/xx/yy/NAME
        return [p for p in rucio_server.rse_folder.glob(f"{SCOPE}/*/*/{out}/*")
                if not p.is_dir()]

    def copying() -> bool:
        return any(p.name.endswith(".rucio.upload") for p in on_rse())

    status, stderr = stopped(["run", "--config", str(tmp_path / "config.yaml"), "--script",
                              str(script)], env, copying, "the copy's temporary file",
                             pause=0.005)
    assert status == 128 + signal.SIGTERM, stderr
    assert b"Traceback" not in stderr
    assert on_rse() == []
    assert list(tmp.iterdir()) == []
    meta = requests.get(f"{rucio_server.url}/dids/{SCOPE}/{out}%2Fbig.bin/meta", timeout=30,
                        headers={"X-Rucio-Auth-Token": rucio_server.token()})
    assert meta.status_code == 404, meta.text  # no DID, as no file


async def test_a_rerun_makes_the_rule_a_failed_upload_could_not(
    rucio_server: RucioServer, tmp_path: Path
) -> None:
    """The replica is registered, then its rule is refused (no quota left): the DID
    exists with no rule. A rerun (same content) must make the rule, not skip the file."""
    name = f"{unique('norule')}/r.txt"
    src = tmp_path / "r.txt"
    src.write_bytes(b"keep me\n")
    provider = RucioProvider(ProviderConfig("rucio", "default", rucio_server.settings()))

    def rules() -> str:
        return rucio_server.client("rule", "list", "--did", f"{SCOPE}:{name}")

    def limit(value: str) -> None:
        rucio_server.client("account", "limit", "add", "--account", ACCOUNT, "--rses", RSE,
                            "--bytes", value)

    limit("1")
    try:
        with pytest.raises(StorageError) as failure:
            await provider.upload(src, SCOPE, name)
    finally:
        limit("infinity")
    assert "insufficient quota" in str(failure.value), failure.value
    assert f"{SCOPE}:{name}" not in rules()
    await provider.upload(src, SCOPE, name)
    listed = [line.split() for line in rules().splitlines() if f"{SCOPE}:{name}" in line]
    assert [(row[1], row[4]) for row in listed] == [(ACCOUNT, RSE)], rules()
    check_output(rucio_server, tmp_path, name, b"keep me\n")
    # Once more: the rule exists, which is no error and no second rule.
    await provider.upload(src, SCOPE, name)
    assert len([line for line in rules().splitlines() if f"{SCOPE}:{name}" in line]) == 1


def test_an_access_token_that_cannot_be_refreshed_is_a_clear_error(
    rucio_server: RucioServer, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/token"
    settings = {"username": "", "password": "", "access_token": jwt(time.time() + 5),
                "refresh_token": "refresh-me-secretly", "token_endpoint": nowhere}
    event = {"event_type": "close", "payload": {"scope": SCOPE, "name": "anything"},
             "created_at": "2026-11-30 12:00:00.000000"}
    result = run(tmp_path, config(rucio_server, SCOPE, unique("out"), **settings), event)
    assert result.returncode == 3, result.stderr
    assert "cannot refresh the OIDC access token" in result.stderr
    assert "Traceback" not in result.stderr and "refresh-me-secretly" not in result.stderr
    # Expired, and nothing to renew it with: refused at start-up.
    expired = {**settings, "refresh_token": "", "access_token": jwt(time.time() - 60)}
    result = run(tmp_path, config(rucio_server, SCOPE, unique("out"), **expired), event)
    assert result.returncode == 2, result.stderr
    assert "access_token expired" in result.stderr


# ---- the OIDC refresh against a stand-in token endpoint ---------------------------------


def jwt(expires: float) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': int(expires), 'sub': 'u'})}.c2ln"


@pytest.fixture
async def token_endpoint(
    rucio_server: RucioServer,
) -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """POST /token: records each form, answers a real Rucio token (the server takes it as
    the access token), rotated refresh token, an hour of life; POST /refuse: 400."""
    seen: list[dict[str, str]] = []
    real = rucio_server.token()

    async def token(request: web.Request) -> web.Response:
        seen.append(dict(await request.post()))  # type: ignore[arg-type]
        return web.json_response({"access_token": real, "expires_in": 3600,
                                  "refresh_token": "rotated", "token_type": "Bearer"})

    async def refuse(request: web.Request) -> web.Response:
        seen.append(dict(await request.post()))  # type: ignore[arg-type]
        return web.json_response({"error": "invalid_grant"}, status=400)

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_post("/refuse", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_an_expiring_access_token_is_refreshed_before_use(
    rucio_server: RucioServer, token_endpoint: tuple[str, list[dict[str, str]]],
    tmp_path: Path
) -> None:
    base, seen = token_endpoint
    name = f"{unique('oidc')}/f.txt"
    data, _ = uploaded_file(rucio_server, tmp_path, name)
    settings: dict[str, Any] = {
        k: v for k, v in rucio_server.settings().items() if k not in ("username", "password")}
    settings.update(access_token=Secret(jwt(time.time() + 20)),  # inside the margin
                    refresh_token=Secret("r-1"), token_endpoint=f"{base}/token",
                    client_id="faas", oidc_audience="rucio")
    provider = RucioProvider(ProviderConfig("rucio", "oidc", settings))
    folder = tmp_path / "in"
    folder.mkdir()
    [got] = await provider.download_all(SCOPE, name, folder)
    assert got.read_bytes() == data
    assert seen == [{"grant_type": "refresh_token", "refresh_token": "r-1", "client_id": "faas",
                     "scope": DEFAULT_SCOPES, "resource": "rucio"}]
    await provider.upload(got, SCOPE, f"{name}.copy")  # the token is good for an hour
    assert len(seen) == 1
    check_output(rucio_server, tmp_path, f"{name}.copy", data)
    # A refresh the endpoint refuses: a StorageError naming the provider and the DID.
    settings.update(access_token=Secret(jwt(time.time() + 20)), token_endpoint=f"{base}/refuse")
    refused = RucioProvider(ProviderConfig("rucio", "oidc", settings))
    with pytest.raises(StorageError) as failure:
        await refused.download_all(SCOPE, name, tmp_path)
    assert f"rucio.oidc: cannot download {SCOPE}:{name}" in str(failure.value)
    assert "HTTP 400" in str(failure.value) and "r-1" not in str(failure.value)


def test_a_dataset_holding_a_name_that_leaves_the_folder_is_refused(
    rucio_server: RucioServer, tmp_path: Path
) -> None:
    """Rucio accepts `x/..` as a DID name (its schema allows `.` and `/`): a dataset
    holding one is refused (exit 2, the DID named) before any file is written."""
    dataset, evil = unique("dsbad"), f"{unique('evil')}/.."
    headers = {"X-Rucio-Auth-Token": rucio_server.token()}
    for method, path, body in [
        ("POST", "/replicas", {"rse": RSE, "files": [
            {"scope": SCOPE, "name": evil, "bytes": 1, "adler32": "00020002"}]}),
        ("POST", f"/dids/{SCOPE}/{dataset}", {"type": "DATASET"}),
        ("POST", f"/dids/{SCOPE}/{dataset}/dids", {"dids": [{"scope": SCOPE, "name": evil}]}),
    ]:
        answer = requests.request(method, rucio_server.url + path, json=body, headers=headers,
                                  timeout=30)
        assert answer.status_code == 201, answer.text
    rucio_server.client("did", "update", "--close", "-d", f"{SCOPE}:{dataset}")
    [event] = rucio_server.messages("CLOSE", dataset)
    script = 'echo "the script ran"\n'
    result = run(tmp_path, config(rucio_server, SCOPE, unique("out")), event, script=script)
    assert result.returncode == 2, result.stderr
    assert f"DID {SCOPE}:{evil} in {SCOPE}:{dataset}" in result.stderr
    assert "the script ran" not in result.stderr


async def test_a_dataset_file_named_as_another_s_temporary_file_is_staged_in_too(
    rucio_server: RucioServer, tmp_path: Path
) -> None:
    """A dataset holding `x` and `.x.partial`: `x` was copied through `.x.partial`, written
    over the file of that name staged in before it, then renamed away: one file lost, no
    error. Both pairs' orders are there, whichever order Rucio lists them in."""
    folder, dataset = unique("tmpnames"), unique("dstmp")
    provider = RucioProvider(ProviderConfig("rucio", "default", rucio_server.settings()))
    names = [".x.partial", "x", "y", ".y.partial"]
    blobs = write_files(tmp_path / "src", names)
    for name in names:
        await provider.upload(tmp_path / "src" / name, SCOPE, f"{folder}/{name}")
    headers = {"X-Rucio-Auth-Token": rucio_server.token()}
    made: list[tuple[str, dict[str, Any]]] = [
        (f"/dids/{SCOPE}/{dataset}", {"type": "DATASET"}),
        (f"/dids/{SCOPE}/{dataset}/dids",
         {"dids": [{"scope": SCOPE, "name": f"{folder}/{n}"} for n in names]}),
    ]
    for path, body in made:
        answer = requests.post(rucio_server.url + path, json=body, headers=headers, timeout=30)
        assert answer.status_code == 201, answer.text
    staged = tmp_path / "in"
    staged.mkdir()
    written = await provider.download_all(SCOPE, dataset, staged)
    assert sorted(p.name for p in written) == sorted(names)
    assert {p.name: p.read_bytes() for p in staged.iterdir()} == blobs


# ---- answers bigger than any Rucio sends: a server of the test's own ----------------------


async def test_answers_are_read_only_as_far_as_they_are_used(tmp_path: Path) -> None:
    """A login answered with a 32 MiB body, an error with one, a DID's metadata of over
    ANSWER_LIMIT: the first two are read a little (what the server could send before
    the connection closed bounds it), the third is a clear failure. All were once read
    whole into memory."""
    size = 32 * MiB
    sent: list[int] = []
    finished: list[asyncio.Event] = []

    async def streamed(request: web.Request, status: int,
                       headers: dict[str, str]) -> web.StreamResponse:
        done = asyncio.Event()
        finished.append(done)
        try:
            return await streamed_answer(request, status, headers, size, sent)
        finally:
            done.set()

    async def login(request: web.Request) -> web.StreamResponse:
        return await streamed(request, 200, {"X-Rucio-Auth-Token": "root-token"})

    async def files(request: web.Request) -> web.StreamResponse:
        return await streamed(request, 500, {})

    async def meta(_request: web.Request) -> web.Response:
        return web.json_response({"adler32": "01", "pad": "x" * ANSWER_LIMIT})

    app = web.Application()
    app.router.add_get("/auth/userpass", login)
    app.router.add_get(f"/dids/{SCOPE}/broken/files", files)
    app.router.add_get(f"/dids/{SCOPE}/big/meta", meta)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    provider = RucioProvider(ProviderConfig("rucio", "odd", {
        "host": url, "account": ACCOUNT, "rse": RSE, "username": "u", "password": "p"}))
    (tmp_path / "f").write_bytes(b"x")
    try:
        with pytest.raises(StorageError) as failure:
            await provider.upload(tmp_path / "f", SCOPE, "big")
        assert str(failure.value) == (f"rucio.odd: cannot upload {SCOPE}:big: the server's "
                                      f"answer is over {ANSWER_LIMIT} bytes")
        with pytest.raises(StorageError, match=r"cannot download test:broken: HTTP 500"):
            await provider.download_all(SCOPE, "broken", tmp_path)
        await asyncio.gather(*(done.wait() for done in finished))
    finally:
        await runner.cleanup()
    assert len(sent) == 4, sent  # the login, then the 3 attempts at the listing
    assert max(sent) < size // 2, sent


# ---- a watchdog stopped while it registers an output --------------------------------------


@pytest.fixture
async def slow_registry(rucio_server: RucioServer) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A pass-through to the Rucio server that holds POST /replicas (never forwarded: no
    DID is made) and, once one came, a DID's meta if `state["hold_meta"]`: a Rucio that
    turned slow mid-upload. Its URL, and `state` (`registering`: an event set when the
    registration comes). What it holds is let go at the end."""
    state: dict[str, Any] = {"hold_meta": False, "registering": asyncio.Event()}
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "POST" and request.path == "/replicas":
            state["registering"].set()
            await release.wait()
            return web.Response(status=503)
        if state["registering"].is_set() and state["hold_meta"] \
                and request.path.endswith("/meta"):
            await release.wait()
            return web.Response(status=503)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession() as session, session.request(
                request.method, rucio_server.url + request.path_qs, data=body,
                headers=headers, allow_redirects=False) as answer:
            return web.Response(status=answer.status, body=await answer.read(),
                                content_type=answer.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        release.set()
        await runner.cleanup()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hold_meta", [False, True], ids=["look-answered", "look-held"])
async def test_a_watchdog_stopped_while_it_registers_an_output_answers_503(
    rucio_server: RucioServer, watchdog: WatchdogFactory,
    slow_registry: tuple[str, dict[str, Any]], hold_meta: bool
) -> None:
    """SIGTERM (no drain) while the output's replica is being registered: the upload is
    cut, and its clean-up asks Rucio whether a DID names the file it placed. Answered
    (none), the file goes; held, the look is given up after CHECK_TIMEOUT and the file
    left (a replica registered must never lose its bytes). Either way the client gets its
    503 and the log says why. Before (found by a review), a held look outlasted the
    watchdog's ABORT_GRACE: its server cancelled the handler, which cut the look; the
    client got no answer at all, the invocation logged with `error=None`."""
    url, state = slow_registry
    state["hold_meta"] = hold_meta
    out = unique("stopped")
    cfg = yaml.safe_dump({
        "storage_providers": {"rucio": {"default": rucio_server.settings(host=url)}},
        "output": [{"storage_provider": "rucio", "path": f"{SCOPE}/{out}"}],
    })
    wd = watchdog('echo hello > "$TMP_OUTPUT_DIR/out.txt"\n', cfg,
                  env={"healthcheck_interval": "0s"})

    def post() -> tuple[int, str]:
        try:
            answer = requests.post(wd.url, json={}, timeout=60)
        except requests.RequestException as exc:
            return 0, repr(exc)
        return answer.status_code, answer.text

    in_flight = asyncio.ensure_future(asyncio.to_thread(post))
    await asyncio.wait_for(state["registering"].wait(), 30)
    started = time.monotonic()
    wd.process.send_signal(signal.SIGTERM)
    status, text = await in_flight
    elapsed = time.monotonic() - started
    assert status == 503, (text, wd.log.read_text())
    assert text.splitlines()[0] == "the watchdog is shutting down"
    assert elapsed < CHECK_TIMEOUT + 2.0, f"answered {elapsed:.1f} s after SIGTERM"
    assert await asyncio.to_thread(wd.process.wait, 30) == 0
    on_rse = [p.name for p in rucio_server.rse_folder.glob(f"{SCOPE}/*/*/{out}/*")]
    assert on_rse == (["out.txt"] if hold_meta else []), on_rse
    meta = requests.get(f"{rucio_server.url}/dids/{SCOPE}/{out}%2Fout.txt/meta", timeout=30,
                        headers={"X-Rucio-Auth-Token": rucio_server.token()})
    assert meta.status_code == 404, meta.text  # never registered
    logged = [line for line in wd.log.read_text().splitlines()
              if "[info     ] invocation " in line]
    assert len(logged) == 1 and "error='the watchdog is shutting down'" in logged[0], logged
