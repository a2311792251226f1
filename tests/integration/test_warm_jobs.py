"""Warm jobs on the local backend (issue 10): each job is a child forked by its service's
job runner, and must be indistinguishable from a `faas-supervisor run` process: the same
environment for the script, the same exit statuses, the same stopping; and the runner's
own life (killed, replaced by an update, gone with its service or the controller) costs
no job its final status and leaves no process behind.

A real controller over loopback; the reference is a real `faas-supervisor run` started
by the test with the environment the backend gives a job (the runner's own environment,
read from /proc, plus JOB_UUID and EVENT).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from faas_supervisor.controller.backends.local_runner import Runner
from tests.integration.conftest import RUNTIME_LINE, faas_command
from tests.integration.controller_fixture import ControllerFactory, ControllerProcess, wait_until
from tests.integration.servers import gated_store
from tests.leftovers import kill, processes, running_with

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

EVENT = base64.b64encode(b"warm").decode()
NOT_UTF8 = b"caf\xe9 \xff\xfe{}"


@pytest.fixture
def marker() -> Iterator[str]:
    word = f"faas-warm-{uuid.uuid4().hex}"
    yield word
    kill(running_with(word))


def post_job(controller: ControllerProcess, service: str, token: str, body: str = EVENT) -> str:
    response = requests.post(f"{controller.url}/job/{service}", data=body.encode(),
                             headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 201, response.text
    job: str = response.json()["job"]
    return job


def finished(controller: ControllerProcess, service: str, job: str) -> dict[str, str]:
    info: dict[str, str] = wait_until(
        lambda: (j := controller.jobs(service).get(job)) and j["status"] in ("Succeeded", "Failed")
        and j, 90, f"job {job} to finish", controller)
    return info


def stored(controller: ControllerProcess, job: str) -> tuple[int | None, str]:
    """The job's exit status and reason as the controller stored them."""
    db = sqlite3.connect(f"file:{controller.data_dir / 'controller.sqlite3'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT exit_code, reason FROM jobs WHERE name = ?", (job,)).fetchone()
    finally:
        db.close()
    return row[0], row[1]


def runners(controller: ControllerProcess, service: str) -> list[int]:
    """The service's runner processes (not their job children, which share the command
    line: forked, not executed)."""
    folder = str(controller.data_dir / "services" / service).encode()
    found = {p.pid: p for p in processes().values()
             if b"\0job-runner\0" in p.cmdline and folder in p.cmdline and p.state != "Z"}
    return [pid for pid, p in found.items() if p.ppid not in found]


def environ_of(pid: int) -> dict[str, str]:
    data = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in data.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode("utf-8", "surrogateescape") for k, v in pairs}


def real_run(controller: ControllerProcess, service: str, env: dict[str, str]) -> int:
    """`faas-supervisor run` as the backend would have started it for a job, in the
    job's TMPDIR (made for it, and removed after, as the backend does)."""
    folder = controller.data_dir / "services" / service
    with job_tmpdir(env):
        result = subprocess.run(
            [*faas_command(), "run", "--script", str(folder / "script.sh"),
             "--config", str(folder / "function_config.yaml")],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
        )
    return result.returncode


@contextlib.contextmanager
def job_tmpdir(env: dict[str, str]) -> Iterator[None]:
    """The job's TMPDIR in `env` (job_env) made for a `run` the test starts, then removed."""
    tmp = Path(env["TMPDIR"])
    tmp.mkdir()
    try:
        yield
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def job_env(controller: ControllerProcess, service: str, job: str) -> dict[str, str]:
    """The runner's environment, as the backend gives it to a job: its TMPDIR the job's
    own, in the service's."""
    (runner,) = runners(controller, service)
    env = environ_of(runner)
    return {**env, "JOB_UUID": job, "EVENT": EVENT, "TMPDIR": f"{env['TMPDIR']}/job-{job}"}


def normalized(dump: str) -> list[str]:
    """`env` output with the invocation's own names (random) made equal."""
    uuids = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    return sorted(re.sub(uuids, "U", re.sub(r"/faas-[A-Za-z0-9_]+", "/faas-X", line))
                  for line in dump.splitlines())


@pytest.mark.parametrize(
    "secrets",
    [
        {},
        # A C locale: a fresh interpreter (the cold `run`) coerces it to a UTF-8 one in
        # its environment, which its script inherits (PEP 538); a warm job must too.
        {"LC_CTYPE": "C"},
        {"LANG": "C", "PYTHONCOERCECLOCALE": "0"},  # ... unless told not to
    ],
    ids=["plain", "c-locale", "c-locale-kept"],
)
def test_a_warm_job_gives_its_script_the_environment_run_gives(
    controllers: ControllerFactory, tmp_path: Path, secrets: dict[str, str]
) -> None:
    """The reference is a real cold `run`, given the environment the backend gives a
    job's: what a fresh interpreter makes of it at its start counts too."""
    controller = controllers(env={"WARM_TEST_VAR": "välue with spaces"})
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    script = f'env > "$(mktemp {dumps}/env.XXXXXX)"\necho done\n'
    token = controller.create({"name": "envdump", "script": script,
                               "environment": {"secrets": secrets}})["token"]
    job = post_job(controller, "envdump", token)
    assert finished(controller, "envdump", job)["status"] == "Succeeded"
    (warm,) = [p.read_text() for p in dumps.iterdir()]
    assert real_run(controller, "envdump", job_env(controller, "envdump", job)) == 0
    (cold,) = [p.read_text() for p in dumps.iterdir() if p.read_text() != warm]
    assert normalized(warm) == normalized(cold)
    assert f"JOB_UUID={job}" in warm.splitlines()
    assert "WARM_TEST_VAR=välue with spaces" in warm.splitlines()
    if secrets.get("LC_CTYPE") == "C":  # the case is live: the cold `run` coerced it
        assert "LC_CTYPE=C" not in cold.splitlines()


@pytest.mark.parametrize(
    "script",
    [
        "echo fine\n",
        "echo failing >&2\nexit 3\n",
        "kill -TERM $$\n",  # the script killed by a signal
        "kill -KILL $PPID\n",  # `run` itself killed by a signal
    ],
    ids=["success", "failure", "script-signalled", "run-killed"],
)
def test_a_warm_job_exits_with_the_status_run_exits_with(
    controllers: ControllerFactory, script: str
) -> None:
    controller = controllers()
    token = controller.create({"name": "status", "script": script})["token"]
    job = post_job(controller, "status", token)
    finished(controller, "status", job)
    code, _reason = stored(controller, job)
    expected = real_run(controller, "status", job_env(controller, "status", job))
    assert code == expected
    assert (code == 0) == (controller.jobs("status")[job]["status"] == "Succeeded")


def test_a_warm_jobs_timeout_kills_its_scripts_whole_group(
    controllers: ControllerFactory, marker: str, tmp_path: Path
) -> None:
    controller = controllers(env={"EXEC_TIMEOUT": "3"})
    started = tmp_path / "started"
    script = (f"sh -c 'sleep 300; true' {marker}-child &\n"
              f": > {started}\nsh -c 'sleep 300; true' {marker}-main\n")
    token = controller.create({"name": "slow", "script": script})["token"]
    job = post_job(controller, "slow", token)
    assert finished(controller, "slow", job)["status"] == "Failed"
    assert started.exists()  # the script ran (and started its child) before the timeout
    wait_until(lambda: not running_with(marker), 30, "no process of the script left", controller)
    code, _reason = stored(controller, job)
    assert code == real_run(controller, "slow", job_env(controller, "slow", job))


@pytest.mark.reliability(
    fault="job runner killed",
    promise="its job ends Failed naming the cause, its script is gone, later jobs run",
)
def test_a_killed_runner_fails_its_job_clearly_and_later_jobs_run(
    controllers: ControllerFactory, marker: str
) -> None:
    controller = controllers()
    script = f"if [ \"$EVENT\" = '{EVENT}' ]; then sh -c 'sleep 300; true' {marker}; fi\necho ok\n"
    token = controller.create({"name": "victim", "script": script})["token"]
    tmp = controller.data_dir / "services" / "victim" / "tmp"
    job = post_job(controller, "victim", token)
    wait_until(lambda: running_with(marker), 60, "the job's script", controller)
    (runner,) = runners(controller, "victim")
    os.kill(runner, signal.SIGKILL)
    info = finished(controller, "victim", job)
    assert info["status"] == "Failed"
    code, reason = stored(controller, job)
    assert code is None
    assert "job runner of service victim ended (killed by SIGKILL" in reason
    # Said where the user reads it: its log's last line (before, its `run`'s "stopped by
    # SIGTERM", which reads as a delete).
    log = controller.request("GET", f"/system/logs/victim/{job}").text
    assert log.endswith(f"faas-supervisor: the job failed: {reason}\n"), log
    wait_until(lambda: not running_with(marker), 30, "the script gone", controller)
    # Its `run` got SIGTERM and removed its folders (the watchdog keeps one of its own).
    wait_until(lambda: len(list(tmp.glob("faas-*"))) <= 1, 30,
               f"its folders gone: {sorted(p.name for p in tmp.iterdir())}", controller)
    later = post_job(controller, "victim", token, base64.b64encode(b"later").decode())
    assert finished(controller, "victim", later)["status"] == "Succeeded"
    assert runners(controller, "victim") not in ([], [runner])


def test_an_updated_service_gets_a_new_runner_and_its_new_script(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    controller = controllers()
    out = tmp_path / "out"
    definition = {"name": "evolving", "script": f"echo one >> {out}\n"}
    token = controller.create(definition)["token"]
    first = post_job(controller, "evolving", token)
    assert finished(controller, "evolving", first)["status"] == "Succeeded"
    (old,) = runners(controller, "evolving")
    answer = controller.request("PUT", "/system/services",
                                json={**definition, "script": f"echo two >> {out}\n"})
    assert answer.status_code == 204, answer.text
    wait_until(lambda: old not in runners(controller, "evolving"), 30, "the old runner gone",
               controller)
    token = controller.request("GET", "/system/services/evolving").json()["token"]
    second = post_job(controller, "evolving", token)
    assert finished(controller, "evolving", second)["status"] == "Succeeded"
    assert out.read_text() == "one\ntwo\n"
    (new,) = runners(controller, "evolving")
    assert new != old


def test_a_job_submitted_as_its_service_is_updated_runs_one_whole_definition(
    controllers: ControllerFactory,
) -> None:
    """A review found a job submitted just before an update, while its service's runner
    was starting, run the new script with the old secrets: its environment was made from
    the definition it was submitted under, before the wait for the runner, which by then
    was the new definition's. Each job runs one definition whole, whichever it is."""
    controller = controllers()
    script = "echo {v} S=$SEC\n"
    old = {"name": "racing", "script": script.format(v="v1"),
           "environment": {"secrets": {"SEC": "s1"}}}
    new = {**old, "script": script.format(v="v2"), "environment": {"secrets": {"SEC": "s2"}}}
    token = controller.create(old)["token"]
    job = post_job(controller, "racing", token)  # the service's first: its runner starts
    answer = controller.request("PUT", "/system/services", json=new)
    assert answer.status_code == 204, answer.text
    assert finished(controller, "racing", job)["status"] == "Succeeded"
    log = controller.request("GET", f"/system/logs/racing/{job}").text
    printed = [line for line in log.splitlines() if line.startswith("v")]
    assert printed in (["v1 S=s1"], ["v2 S=s2"]), log


def test_a_job_on_the_old_runner_runs_its_own_definitions_script_after_an_update(
    controllers: ControllerFactory,
) -> None:
    """A job already on its runner when its service is updated runs on there, with that
    definition's environment and config; its script is read only once its input is
    downloaded, and was the service's one file, which the update had replaced: the new
    script with the old secrets (`v2 S=s1`). Here the download is held until the update
    is done."""
    controller = controllers()
    with gated_store() as (url, asked, gate):
        script = 'echo {v} S=$SEC; cat "$INPUT_FILE_PATH"\n'
        old = {"name": "slowin", "script": script.format(v="v1"),
               "environment": {"secrets": {"SEC": "s1"}},
               "input": [{"storage_provider": "minio", "path": "slowin/in"}],
               "storage_providers": {"minio": {"gate": {
                   "endpoint": url, "access_key": "AK", "secret_key": "not-a-secret"}}}}
        new = {**old, "script": script.format(v="v2"),
               "environment": {"secrets": {"SEC": "s2"}}}
        token = controller.create(old)["token"]
        # Another server's replica of an object of its input path: downloaded from there.
        event = json.dumps({"storage_provider": "minio.gate", "event": {"Records": [{
            "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
            "s3": {"bucket": {"name": "slowin"}, "object": {"key": "in/f.txt"}}}]}})
        job = post_job(controller, "slowin", token, event)
        assert asked.wait(60), controller.log_text()  # the job's run is downloading
        answer = controller.request("PUT", "/system/services", json=new)
        assert answer.status_code == 204, answer.text
        gate.set()
        assert finished(controller, "slowin", job)["status"] == "Succeeded"
    log = controller.request("GET", f"/system/logs/slowin/{job}").text
    assert [line for line in log.splitlines() if line.startswith(("v", "input"))] == [
        "v1 S=s1", "input"], log
    # The old runner, idle now, is stopped: its links go; the new runner's and its
    # watchdog's (a script and a config each) stay.
    folder = controller.data_dir / "services" / "slowin"
    wait_until(lambda: len(list(folder.glob(".definition-*"))) == 4, 60,
               "the old runner's definition files to go", controller)
    assert (folder / "script.sh").read_text().startswith("echo v2")


def test_a_deleted_service_and_a_stopped_controller_leave_no_runner(
    controllers: ControllerFactory,
) -> None:
    controller = controllers()
    tokens = {name: controller.create({"name": name, "script": "echo hi\n"})["token"]
              for name in ("kept", "dropped")}
    for name, token in tokens.items():
        assert finished(controller, name, post_job(controller, name, token))["status"] == \
            "Succeeded"
        assert len(runners(controller, name)) == 1
    assert controller.request("DELETE", "/system/services/dropped").status_code == 204
    assert runners(controller, "dropped") == []
    assert len(runners(controller, "kept")) == 1
    assert controller.stop() == 0
    marker = str(controller.data_dir).encode()
    assert [p for p in processes().values() if marker in p.cmdline and p.state != "Z"] == []


def test_deleting_a_service_updated_during_a_job_stops_that_job_and_removes_its_folder(
    controllers: ControllerFactory, marker: str, tmp_path: Path
) -> None:
    """The update leaves the job on the runner of the earlier definition, until it is
    idle. Deleting the service stopped only the current runner: the earlier one and its
    job ran on, writing into the service's folder while it was removed (a review found
    `services/NAME/tmp` left behind)."""
    controller = controllers()
    started = tmp_path / "started"
    # Writes into its output folder for ever (in the service's tmp), making the folder
    # again if it is gone: a job left running while the service's folder is removed
    # leaves it behind.
    loop = ('i=0; while :; do i=$((i+1)); '
            'echo x 2>/dev/null > "$TMP_OUTPUT_DIR/f$i" || mkdir -p "$TMP_OUTPUT_DIR"; '
            '[ $((i % 200)) = 0 ] && sleep 0.01; done')
    definition = {"name": "moved", "script": f": > '{started}'\nsh -c '{loop}' {marker}\n"}
    token = controller.create(definition)["token"]
    folder = controller.data_dir / "services" / "moved"
    post_job(controller, "moved", token)
    wait_until(started.exists, 60, "the job's script", controller)
    (old,) = runners(controller, "moved")
    answer = controller.request("PUT", "/system/services",
                                json={**definition, "script": "echo new\n"})
    assert answer.status_code == 204, answer.text
    assert old in runners(controller, "moved") and running_with(marker)  # still on its job
    assert controller.request("DELETE", "/system/services/moved").status_code == 204
    # Once the delete has answered, nothing of the service runs: no watchdog, no runner
    # (the earlier one included), no job's `run`, no script.
    left = [p.command for p in processes().values()
            if str(folder).encode() in p.cmdline and p.state != "Z"]
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))[:5]
    assert (left, running_with(marker), folder.exists(), files) == ([], [], False, [])


def test_an_event_that_is_not_utf8_is_refused_in_one_line_as_run_refuses_it(
    controllers: ControllerFactory,
) -> None:
    """A small event goes in EVENT, as its bytes (surrogate-escaped through the runner's
    JSON frames). One that is not UTF-8 is no JSON nor base64: exit 2 with one line, as
    `run` itself (it crashed with a traceback on such a variable)."""
    controller = controllers()
    token = controller.create({"name": "bytes", "script": "echo ran\n"})["token"]
    response = requests.post(f"{controller.url}/job/bytes", data=NOT_UTF8,
                             headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 201, response.text
    job = response.json()["job"]
    assert finished(controller, "bytes", job)["status"] == "Failed"
    log = controller.request("GET", f"/system/logs/bytes/{job}").text
    assert "request body is not JSON, base64" in log and "Traceback" not in log, log
    assert stored(controller, job)[0] == 2


def test_a_secret_named_event_never_replaces_a_jobs_event(
    controllers: ControllerFactory,
) -> None:
    """An event too big for the variable goes on stdin; a secret named EVENT was left in
    the environment then, and `run` read it instead (a review found it)."""
    controller = controllers()
    token = controller.create({
        "name": "secretive", "script": 'wc -c < "$INPUT_FILE_PATH"\n',
        "environment": {"secrets": {"EVENT": '{"from": "secret"}'}},
    })["token"]
    big = '{"data": "' + "x" * 200_000 + '"}'
    job = post_job(controller, "secretive", token, big)
    assert finished(controller, "secretive", job)["status"] == "Succeeded"
    log = controller.request("GET", f"/system/logs/secretive/{job}").text
    assert f"\n{len(big)}\n" in f"\n{log}", log


def test_a_watchdog_that_cannot_start_is_said_so_and_its_service_deleted(
    controllers: ControllerFactory,
) -> None:
    """Variables each within bounds, together past the system's (E2BIG): the service's
    watchdog cannot start. Its supervising task used to end with no word, the service
    left unanswered, and the first delete a 500."""
    controller = controllers()
    secrets = {f"S{i}": "x" * (120 << 10) for i in range(24)}  # about 2.9 MB
    controller.create({"name": "toobig", "script": "echo\n",
                       "environment": {"secrets": secrets}})
    wait_until(lambda: "cannot start the service's watchdog" in controller.log_text(), 60,
               "the controller to say so", controller)
    assert "Argument list too long" in controller.log_text()
    assert controller.request("DELETE", "/system/services/toobig").status_code == 204


def test_a_job_that_cannot_start_fails_its_log_saying_why(
    controllers: ControllerFactory,
) -> None:
    """Its runner cannot start (its variables past the system's bound: E2BIG): the job is
    Failed, and its log, else empty, says why (the stored reason is served by no route)."""
    controller = controllers()
    secrets = {f"S{i}": "x" * (120 << 10) for i in range(24)}  # about 2.9 MB
    token = controller.create({"name": "toobig", "script": "echo\n",
                               "environment": {"secrets": secrets}})["token"]
    job = post_job(controller, "toobig", token)
    assert finished(controller, "toobig", job)["status"] == "Failed"
    _code, reason = stored(controller, job)
    assert "Argument list too long" in reason
    log = controller.request("GET", f"/system/logs/toobig/{job}").text
    assert log == f"faas-supervisor: the job failed: {reason}\n"
    # No TMPDIR made for a job that never started, nor left.
    assert not list((controller.data_dir / "services" / "toobig" / "tmp").glob("job-*"))


def test_a_job_whose_run_is_killed_outright_leaves_nothing_in_tmpdir(
    controllers: ControllerFactory, marker: str
) -> None:
    """Its `run` SIGKILLed (the OOM killer) cannot remove its folders: they are in the
    job's own TMPDIR, removed with what it holds before the job is recorded. Before, they
    stayed in the service's TMPDIR (shared: their random names tell no job's from
    another's) until the controller's next start."""
    controller = controllers()
    script = (f'head -c 3000000 /dev/zero > "$TMP_OUTPUT_DIR/big"\n'
              f"sh -c 'sleep 300; true' {marker}\n")
    token = controller.create({"name": "oom", "script": script})["token"]
    tmp = controller.data_dir / "services" / "oom" / "tmp"
    log = controller.data_dir / "services" / "oom" / "watchdog.log"
    wait_until(lambda: log.is_file() and b"watchdog ready" in log.read_bytes(), 60,
               "the service's watchdog (its folder is its own)", controller)
    before = sorted(p.name for p in tmp.iterdir())
    job = post_job(controller, "oom", token)
    (script_proc,) = wait_until(lambda: running_with(marker), 60, "the job's script",
                                controller)
    (runner,) = runners(controller, "oom")
    table = processes()
    run = script_proc.pid
    while table[run].ppid != runner:  # up from the script to the runner's child
        run = table[run].ppid
    os.kill(run, signal.SIGKILL)
    assert finished(controller, "oom", job)["status"] == "Failed"
    assert stored(controller, job)[0] == -signal.SIGKILL
    assert sorted(p.name for p in tmp.iterdir()) == before
    wait_until(lambda: not running_with(marker), 30, "the script gone", controller)


def test_run_refuses_an_event_variable_that_is_not_utf8_in_one_line(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("echo ran\n")
    env = {k.encode(): v.encode() for k, v in os.environ.items() if k != "EVENT"}
    env.update({b"EVENT": NOT_UTF8, b"TMPDIR": str(tmp_path).encode()})
    result = subprocess.run([*faas_command(), "run", "--script", str(script)], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(b"faas-supervisor: error: request body is not JSON")
    assert b"Traceback" not in result.stderr


@pytest.mark.reliability(
    fault="job runner killed with several jobs running",
    promise="each job ends Failed, its `run` removes its folders, nothing is left",
)
def test_a_killed_runners_jobs_each_finish_their_cleanup(
    controllers: ControllerFactory, marker: str
) -> None:
    """Its jobs' `run` processes come to the controller (a subreaper), each stopped
    gracefully by its own job. The first to exit sweeps the controller's orphans: that
    sweep must not SIGKILL the others in the middle of removing their folders (the
    "slow" jobs fill theirs with files, so their removal takes a while)."""
    controller = controllers(args=["--max-jobs", "3"])
    script = (f'if [ "$EVENT" != \'{EVENT}\' ]; then\n'
              f'  mkdir "$TMP_OUTPUT_DIR/many" && cd "$TMP_OUTPUT_DIR/many" && '
              f'seq 1 20000 | xargs touch\nfi\n'
              f"sh -c 'sleep 300; true' {marker}\n")
    token = controller.create({"name": "crowd", "script": script})["token"]
    tmp = controller.data_dir / "services" / "crowd" / "tmp"
    slow = base64.b64encode(b"slow").decode()
    jobs = [post_job(controller, "crowd", token, body) for body in (EVENT, slow, slow)]
    wait_until(lambda: len(running_with(marker)) == 3, 60, "the three scripts", controller)
    (runner,) = runners(controller, "crowd")
    os.kill(runner, signal.SIGKILL)
    for job in jobs:
        assert finished(controller, "crowd", job)["status"] == "Failed"
        assert "job runner of service crowd ended" in stored(controller, job)[1]
    wait_until(lambda: not running_with(marker), 30, "the scripts gone", controller)
    # Every `run` removed its folders (the watchdog keeps one of its own).
    wait_until(lambda: len(list(tmp.glob("faas-*"))) <= 1, 30,
               f"the jobs' folders gone: {sorted(p.name for p in tmp.iterdir())}", controller)


# A stand-in for a job runner: says it is ready, and leaves a process of its own session
# holding its control socket, so that its death brings no end-of-file soon (a runner
# killed while a child it forked had not closed the socket yet does the same).
LINGERING_RUNNER = """
import os, sys, time
from faas_supervisor.job_runner import frame
child = os.fork()
if child == 0:
    os.setsid()
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", sys.argv[1]])
while os.getsid(child) != child:  # out of our group, which is killed with us
    time.sleep(0.001)
os.write(0, frame({"ready": os.getpid()}))
time.sleep(300)
"""


def test_a_runner_found_dead_is_replaced_at_once(tmp_path: Path, marker: str) -> None:
    """A job submitted right after its runner died must go to a new runner, not to the
    dead one's socket (it would fail "could not run") while the dead one's supervision
    still waits for its last messages."""

    def record(pid: int) -> Path:
        path = tmp_path / f"{pid}.pid"
        path.write_text(str(pid))
        return path

    async def main() -> tuple[int, int]:
        runner = Runner("lingering", [sys.executable, "-c", LINGERING_RUNNER, marker],
                        dict(os.environ), tmp_path / "runner.log", record)
        try:
            await runner.ensure()
            assert runner._process is not None
            first = runner._process.pid
            os.kill(first, signal.SIGKILL)
            # Dead (a zombie, or reaped already by the runner's supervision).
            with contextlib.suppress(ChildProcessError):
                await asyncio.to_thread(os.waitid, os.P_PID, first, os.WEXITED | os.WNOWAIT)
            await asyncio.wait_for(runner.ensure(), 60)
            return first, runner._process.pid
        finally:
            await runner.stop()

    first, second = asyncio.run(main())
    assert second != first


# The backend in a process of its own: it makes that process a subreaper whose sweeps kill
# every child it did not spawn, which in the test process would be the servers the other
# tests' fixtures started (dockerd, moto...).
CLOSE_WHILE_RETIRING = """
import asyncio, json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from faas_supervisor.controller.backends.local import LocalBackend
from faas_supervisor.controller.fdl import parse_service
from tests.leftovers import running_with

tmp_path, marker = Path(sys.argv[1]), sys.argv[2]
event = tmp_path / "event"
event.write_bytes(b"")
definition = {"name": "moving", "script": f"sh -c 'sleep 300; true' {marker}\\n"}


async def main():
    backend = LocalBackend(tmp_path / "data", {}, {"PATH": os.environ["PATH"]})
    await backend.start()
    await backend.deploy(parse_service(definition))
    job = asyncio.ensure_future(
        backend.run_job(parse_service(definition), "job-1", event, tmp_path / "job.log"))
    old = backend._runners["moving"]
    try:
        # Not this process: the marker is in its own command line.
        while not [p for p in running_with(marker) if p.pid != os.getpid()]:
            assert not job.done(), job
            await asyncio.sleep(0.05)  # the script started: /proc has no event for it
        await backend.deploy(parse_service({**definition, "script": "echo new\\n"}))
        await asyncio.wait_for(backend.close(), 60)
        assert old._process is not None
        return old._process.returncode
    finally:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        await old.stop()

print(json.dumps(asyncio.run(main())))
"""


def test_closing_the_backend_stops_a_replaced_runner_still_running_a_job(
    tmp_path: Path, marker: str
) -> None:
    """The backend itself, in a process of its own: closed while the runner of a service's
    earlier definition still runs a job (its retire task waiting for it to be idle), that
    runner is stopped with its job, not left to exit once the controller's socket closes."""
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", CLOSE_WHILE_RETIRING, str(tmp_path), marker, root],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() not in ("", "null"), done.stdout  # stopped, reaped by close()


def test_a_controller_stopped_right_after_an_update_leaves_no_pid_file(
    controllers: ControllerFactory,
) -> None:
    """The updated service's new watchdog is stopped before it answers its health check:
    it is seen to its end all the same, so that a next start has no pid to chase (one
    that may name another process by then)."""
    controller = controllers()
    definition = {"name": "updated", "script": "echo one\n"}
    controller.create(definition)
    answer = controller.request("PUT", "/system/services",
                                json={**definition, "script": "echo two\n"})
    assert answer.status_code == 204, answer.text
    assert controller.stop() == 0
    assert sorted(p.name for p in (controller.data_dir / "pids").iterdir()) == []


PRINTING = ('echo "job line one"\necho "job line two" >&2\n'
            'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/result"\n')


def _comparable(log: bytes) -> bytes:
    """A job's log with what differs between two runs of it (times, durations) made equal."""
    log = re.sub(rb"(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", b"T ", log)
    return re.sub(rb"seconds=\d+\.\d+", b"seconds=S", log)


@pytest.mark.parametrize("level", ["INFO", "CRITICAL"])
def test_a_jobs_logs_show_its_script_output_whatever_the_event(
    controllers: ControllerFactory, tmp_path: Path, level: str
) -> None:
    """A job whose event is a plain body (not a storage event) logged its base64 result
    alone: its script's lines were lost. Warm (the runner's child) and cold (a `run` of
    its own, given the job's log as stdout and stderr, as the backend gives it) alike."""
    controller = controllers()
    token = controller.create({"name": "printer", "script": PRINTING,
                               "log_level": level})["token"]
    chatty = controller.create({"name": "chatty", "script": 'echo "no result file"\n',
                                "log_level": level})["token"]
    job = post_job(controller, "printer", token)  # base64 of b"warm"
    assert finished(controller, "printer", job)["status"] == "Succeeded"
    warm = controller.request("GET", f"/system/logs/printer/{job}").content
    lines = b"job line one\njob line two\n"
    result = base64.b64encode(b"warm")
    if level == "CRITICAL":
        assert warm == lines + result  # the script's output, then the result (stdout)
    else:
        assert re.fullmatch(rb"\S+ INFO event received kind=base64 bytes=4\n" + lines
                            + rb"\S+ INFO script exited status=0 seconds=\d+\.\d+\n" + result,
                            warm), warm

    env = job_env(controller, "printer", job)
    with open(tmp_path / "cold.log", "wb") as out, job_tmpdir(env):
        folder = controller.data_dir / "services" / "printer"
        subprocess.run(
            [*faas_command(), "run", "--script", str(folder / "script.sh"),
             "--config", str(folder / "function_config.yaml")],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=120,
            check=True,
        )
    assert _comparable((tmp_path / "cold.log").read_bytes()) == _comparable(warm)

    # No output file: the response is the logs, which the log is already: once.
    other = post_job(controller, "chatty", chatty)
    assert finished(controller, "chatty", other)["status"] == "Succeeded"
    text = controller.request("GET", f"/system/logs/chatty/{other}").content
    assert re.sub(RUNTIME_LINE, b"", text) == b"no result file\n"
    assert (text == b"no result file\n") == (level == "CRITICAL")


# ---- the runner itself, driven over its control socket as the backend drives it ----------


class DirectRunner:
    """`faas-supervisor job-runner FOLDER`, its stdin one end of a socket pair."""

    def __init__(self, folder: Path, script: str, config: str = "name: direct\nlog_level: INFO\n",
                 env: dict[str, str] | None = None) -> None:
        from faas_supervisor.job_runner import Frames

        self.folder = folder
        (folder / "tmp").mkdir(parents=True)
        (folder / "script.sh").write_text(script)
        (folder / "function_config.yaml").write_text(config)
        self.env = {**(os.environ if env is None else env), "TMPDIR": str(folder / "tmp"),
                    "suppress_lock": "true"}
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.process = subprocess.Popen([*faas_command(), "job-runner", str(folder)],
                                        stdin=theirs.fileno(), env=self.env,
                                        start_new_session=True)
        theirs.close()
        self.sock.settimeout(60)
        self.frames = Frames()
        self.pid = int(self.receive()["ready"])

    def receive(self) -> dict[str, object]:
        while (message := self.frames.pop()) is None:
            data = self.sock.recv(1 << 16)
            assert data, "the runner closed its socket"
            self.frames.feed(data, ())
        return message

    def start(self, log: Path) -> tuple[str, int]:
        """A job given to the runner: its name, its child's pid."""
        from faas_supervisor.job_runner import frame

        job = f"direct-{uuid.uuid4()}"
        message = {"op": "run", "job": job, "fds": 1,
                   "args": ["run", "--script", str(self.folder / "script.sh"),
                            "--config", str(self.folder / "function_config.yaml")],
                   "env": {**self.env, "JOB_UUID": job, "EVENT": EVENT}}
        with open(log, "ab") as out:
            socket.send_fds(self.sock, [frame(message)], [out.fileno()])
        started = self.receive()
        assert started == {"job": job, "pid": started["pid"]}, started
        return job, int(str(started["pid"]))

    def end(self, job: str) -> int:
        """The job's exit status, once it has ended."""
        ended = self.receive()
        assert ended["job"] == job and "status" in ended, ended
        return int(str(ended["status"]))

    def run(self, log: Path) -> tuple[int, int]:
        """One job: the child's pid, its exit status."""
        job, pid = self.start(log)
        return pid, self.end(job)

    def children(self) -> list[int]:
        return [p.pid for p in processes().values() if p.ppid == self.pid and p.state != "Z"]

    def close(self) -> None:
        self.sock.close()  # as a controller gone: the runner exits once its jobs are
        try:
            self.process.wait(60)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def signal_masks(pid: int) -> list[str]:
    """Blocked, ignored and caught signals, as /proc shows them."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return [line for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt"))]


def fds_of(pid: int) -> list[str]:
    folder = Path(f"/proc/{pid}/fd")
    found = []
    for fd in os.listdir(folder):
        # A spare's rehearsal (an event loop's life) opens and closes descriptors as we read.
        with contextlib.suppress(FileNotFoundError):
            found.append(f"{fd}:{os.readlink(folder / fd)}")
    return sorted(found)


def test_a_jobs_child_is_forked_ahead_fresh_and_the_next_one_after_it(tmp_path: Path) -> None:
    """The spare child waits for its job in its own process group, holding none of the
    runner's descriptors but its own socket; a job taken by it runs as `run` (status,
    log), and a new spare is forked for the next job."""
    runner = DirectRunner(tmp_path / "svc", 'echo "ran $JOB_UUID"\nexit 3\n')
    try:
        (spare,) = wait_until(lambda: runner.children() or None, 30, "a spare child", None)
        assert os.getpgid(spare) == spare
        # Once past its start (which closes what it got from the runner): 0, 1, 2 and
        # its own socket.
        spare_fds = wait_until(lambda: len(fds := fds_of(spare)) == 4 and fds, 30,
                               f"the spare to close the runner's descriptors: {fds_of(spare)}")
        # What it ran ahead (job_runner._rehearse) left a fresh interpreter's signals.
        fresh = subprocess.Popen([sys.executable, "-c", "print(flush=True); input()"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert fresh.stdout is not None and fresh.stdout.readline() == b"\n"
            assert signal_masks(spare) == signal_masks(fresh.pid)
        finally:
            fresh.communicate(b"\n", timeout=30)
        sockets = {fd.split(":", 1)[1] for fd in fds_of(runner.pid) if ":socket:" in fd}
        assert not {fd.split(":", 1)[1] for fd in spare_fds} & sockets
        log = tmp_path / "job.log"
        pid, status = runner.run(log)
        assert (pid, status) == (spare, 3)
        assert "ran direct-" in log.read_text()
        (second,) = wait_until(lambda: runner.children() or None, 30, "the next spare", None)
        assert second != spare and os.getpgid(second) == second
        assert runner.run(tmp_path / "job2.log") == (second, 3)
    finally:
        runner.close()
    assert runner.process.returncode == 0
    assert not [p for p in processes().values() if p.ppid == runner.pid and p.state != "Z"]


@pytest.mark.reliability(fault="job runner's spare child killed",
                         promise="the next job gets a child forked at once and runs; "
                                 "the dead spare is reaped")
def test_a_spare_child_that_died_is_replaced_by_a_fork_at_the_job(tmp_path: Path) -> None:
    runner = DirectRunner(tmp_path / "svc", "echo fine\n")
    try:
        (spare,) = wait_until(lambda: runner.children() or None, 30, "a spare child", None)
        os.kill(spare, signal.SIGKILL)
        wait_until(lambda: processes()[spare].state == "Z" if spare in processes() else True,
                   30, "the spare to die", None)
        pid, status = runner.run(tmp_path / "job.log")
        assert status == 0 and pid != spare
        assert spare not in processes()  # reaped, not left a zombie
        assert runner.run(tmp_path / "job2.log")[1] == 0
    finally:
        runner.close()
    assert runner.process.returncode == 0


def test_a_runner_stopped_by_sigterm_ends_its_spare(tmp_path: Path) -> None:
    runner = DirectRunner(tmp_path / "svc", "echo fine\n")
    try:
        (spare,) = wait_until(lambda: runner.children() or None, 30, "a spare child", None)
        runner.process.send_signal(signal.SIGTERM)
        assert runner.process.wait(60) == 0
        assert spare not in processes()
    finally:
        runner.close()


@contextlib.contextmanager
def s3_stub() -> Iterator[tuple[int, list[str]]]:
    """An S3 endpoint on loopback that takes any request (200, an ETag): its port, and
    the requests it got ("PUT /bucket/key")."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(f"{self.command} {self.path}")
            self.send_response(200)
            self.send_header("ETag", '"0"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = do_POST = do_PUT

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port, seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_warm_job_reads_the_aws_config_file_as_it_is_at_its_start(tmp_path: Path) -> None:
    """A boto3 session keeps what it read of the AWS config file: the runner's warm-up
    read it at the runner's start, and every job used that (a review found a job sending
    its outputs to the endpoint the file named before an edit). Each job reads it afresh,
    as a cold `run` does; only the models are the runner's."""
    aws_config = tmp_path / "aws-config"
    config = ("name: direct\nlog_level: INFO\nstorage_providers:\n  s3:\n"
              "    stub: {access_key: AKIDEXAMPLE, secret_key: not-a-secret, region: us-east-1}\n"
              "output:\n  - {storage_provider: s3.stub, path: bucket/out}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = str(aws_config)
    with s3_stub() as (first, to_first), s3_stub() as (second, to_second):
        aws_config.write_text(f"[default]\nendpoint_url = http://127.0.0.1:{first}\n")
        runner = DirectRunner(tmp_path / "svc", 'echo hi > "$TMP_OUTPUT_DIR/result.txt"\n',
                              config, env)
        try:
            assert runner.run(tmp_path / "job1.log")[1] == 0, (tmp_path / "job1.log").read_text()
            aws_config.write_text(f"[default]\nendpoint_url = http://127.0.0.1:{second}\n")
            assert runner.run(tmp_path / "job2.log")[1] == 0, (tmp_path / "job2.log").read_text()
        finally:
            runner.close()
    put = "PUT /bucket/out/result.txt"
    assert (to_first, to_second) == ([put], [put])


def test_a_controller_started_beside_other_code_runs_its_services_on_its_own(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    """`python -m` puts the working directory first on sys.path: a controller started in a
    folder holding another `faas_supervisor` (a checkout of another version) must still
    run its watchdogs and job runners on its own code."""
    decoy = tmp_path / "elsewhere"
    (decoy / "faas_supervisor").mkdir(parents=True)
    (decoy / "faas_supervisor" / "__init__.py").write_text(
        "raise SystemExit('the decoy faas_supervisor was imported')\n")
    (decoy / "faas_supervisor" / "__main__.py").write_text("")
    controller = controllers(cwd=decoy)
    token = controller.create({"name": "own", "script": "echo own code\n"})["token"]
    job = post_job(controller, "own", token)
    assert finished(controller, "own", job)["status"] == "Succeeded"
    assert "decoy" not in (controller.data_dir / "services" / "own" / "runner.log").read_text()
    response = requests.post(f"{controller.url}/run/own", data=EVENT,
                             headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert response.status_code == 200 and "own code" in response.text, response.text


def test_a_long_job_does_not_leave_the_next_one_without_a_spare(tmp_path: Path) -> None:
    """The next spare is forked shortly after a job starts (job_runner.SPARE_DELAY), not
    only when it ends: a job arriving while a long one runs waits for no fork either."""
    release = tmp_path / "release"
    runner = DirectRunner(tmp_path / "svc", f"while [ ! -e {release} ]; do sleep 0.05; done\n")
    try:
        (spare,) = wait_until(lambda: runner.children() or None, 30, "a spare child", None)
        job, pid = runner.start(tmp_path / "job.log")
        assert pid == spare
        (second,) = wait_until(lambda: [p for p in runner.children() if p != pid] or None, 30,
                               "a spare while the job runs", None)
        assert not release.exists() and pid in runner.children()  # the job still runs
        release.touch()
        assert runner.end(job) == 0
        assert runner.run(tmp_path / "job2.log") == (second, 0)
    finally:
        release.touch()
        runner.close()


def test_an_idle_runner_is_stopped_and_the_next_job_starts_it_again(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    """--runner-idle: a runner with no job for that long is stopped, its spare child with
    it (its memory given back); the service's next job starts a new one."""
    controller = controllers(args=["--runner-idle", "1"])
    release = tmp_path / "release"
    script = f"while [ ! -e '{release}' ]; do sleep 0.05; done\necho ok\n"
    token = controller.create({"name": "idler", "script": script})["token"]
    first = post_job(controller, "idler", token)
    wait_until(lambda: runners(controller, "idler"), 60, "the runner", controller)
    (runner,) = runners(controller, "idler")
    release.touch()
    assert finished(controller, "idler", first)["status"] == "Succeeded"
    # Nothing of it is left: no runner, no spare (which, orphaned, would be listed here),
    # and no pid file (removed once the runner is reaped: just after it is gone from /proc).
    pid_file = controller.data_dir / "pids" / f"{runner}.pid"
    wait_until(lambda: not runners(controller, "idler") and not pid_file.exists(), 60,
               "the idle runner stopped and its pid file removed", controller)
    second = post_job(controller, "idler", token)
    assert finished(controller, "idler", second)["status"] == "Succeeded"
    assert runners(controller, "idler") not in ([], [runner])


def test_a_runner_with_a_job_running_is_not_stopped_as_idle(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    controller = controllers(args=["--runner-idle", "0.5"])
    release, started = tmp_path / "release", tmp_path / "started"
    script = (f"touch '{started}'\nwhile [ ! -e '{release}' ]; do sleep 0.05; done\n"
              "echo ok\n")
    token = controller.create({"name": "busy", "script": script})["token"]
    job = post_job(controller, "busy", token)
    wait_until(lambda: started.exists(), 60, "the job's script", controller)
    (runner,) = runners(controller, "busy")
    # What is shown is that nothing happens in three idle times: no event to await.
    time.sleep(1.5)
    assert runners(controller, "busy") == [runner]
    release.touch()
    assert finished(controller, "busy", job)["status"] == "Succeeded"


# First on a job runner's sys.path (PYTHONPATH, a secret of its service): the runner's
# start waits there, connected to the test's socket (its name in RUNNER_GATE, abstract),
# until the test closes it. Other processes (the watchdog) go on.
GATED_START = """
import os, socket
if b"job-runner" in open("/proc/self/cmdline", "rb").read().split(b"\\0"):
    gate = socket.socket(socket.AF_UNIX)
    gate.connect("\\0" + os.environ["RUNNER_GATE"])
    gate.recv(1)
    gate.close()
"""


def test_a_runner_whose_first_job_is_deleted_during_its_start_is_stopped_as_idle(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    """The job that starts its service's runner, deleted while the runner starts: the
    wait for it cancelled, its idle clock was never started, and the runner and its
    spare child stayed for good (a review found it)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GATED_START)
    name = f"faas-gate-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX) as gate:
        gate.bind("\0" + name)
        gate.listen()
        gate.settimeout(60)
        controller = controllers(args=["--runner-idle", "1"])
        secrets = {"PYTHONPATH": str(site), "RUNNER_GATE": name}
        token = controller.create({"name": "gated", "script": "echo ok\n",
                                   "environment": {"secrets": secrets}})["token"]
        job = post_job(controller, "gated", token)
        starting, _ = gate.accept()  # the runner, in its start
        with starting:
            (runner,) = runners(controller, "gated")
            ended = os.pidfd_open(runner)  # readable once it has exited
            answer = controller.request("DELETE", f"/system/logs/gated/{job}")
            assert answer.status_code == 204, answer.text
    try:
        # Its start goes on (its end of the gate closed), to no job: stopped a second later.
        assert select.select([ended], [], [], 30)[0] == [ended], "the idle runner still runs"
    finally:
        os.close(ended)
    assert runners(controller, "gated") == []  # its spare child too
