"""Nothing outlives what started it (issue 8): a script's processes that left its process
group, a stopped job's script, a killed watchdog's children.

Processes are found by a unique marker in their command line; `sh -c 'sleep N; true'`
keeps the shell (and its marker argument, `$0`) from being replaced by `sleep`.
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import WatchdogFactory, faas_command, free_port, script_output
from tests.integration.controller_fixture import ControllerFactory, ControllerProcess
from tests.leftovers import kill, running_with

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

UPSTREAM_APP = Path(__file__).with_name("proxy_upstream.py")


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique word for a test's processes; whatever still carries it at the end is
    killed (after the test has failed on it), so a failing test leaks nothing."""
    word = f"faas-test-{uuid.uuid4().hex}"
    yield word
    kill(running_with(word))


def wait_until(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Poll another process's state: across processes there is no event to await."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def gone(marker: str) -> Callable[[], bool]:
    return lambda: not running_with(marker)


def leaving(start: str, name: str, word: str, shell: str = "sh", double: bool = False) -> str:
    """Script lines: `start` a shell that leaves the group and sleeps on, carrying `word`
    (`double`: from a subshell that exits at once); wait until it has (it writes `.name`
    in the folder it shares, the input folder): a script that exited first would have its
    group killed with it still inside."""
    line = f"{start} {shell} -c ': > .{name}; sleep 300; true' {word} &"
    return (f"({line})" if double else line) + f"\nuntil [ -e .{name} ]; do sleep 0.01; done\n"


def orphans_script(marker: str) -> str:
    """Three ways out of the script's process group, each a process that sleeps on."""
    return (
        leaving("setsid", "setsid", f"{marker}-setsid")  # a session of its own
        + leaving("setsid", "double", f"{marker}-double", double=True)  # re-parented at once
        + leaving("setsid env -i", "noenv", f"{marker}-noenv", shell="/bin/sh")
        + "echo done\n"
    )


def run_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EVENT", "EXEC_TIMEOUT")}
    env.update({"TMPDIR": str(tmp), "EVENT": "{}"})
    return env


# ---- faas-supervisor run -------------------------------------------------------------------


def test_run_leaves_nothing_that_left_the_scripts_group(tmp_path: Path, marker: str) -> None:
    script = tmp_path / "script.sh"
    script.write_text(orphans_script(marker))
    result = subprocess.run([*faas_command(), "run", "--script", str(script)],
                            env=run_env(tmp_path), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert script_output(result.stdout) == b"done\n"  # after the INFO lines
    # `run` killed them before it exited; being killed may take the kernel a moment.
    wait_until(gone(marker), "no process left", timeout=20)


MINIO_EVENT = Path(__file__).resolve().parents[1] / "fixtures" / "events" / "minio.json"


def test_a_job_whose_orphan_holds_its_output_ends_with_its_script(
    tmp_path: Path, marker: str
) -> None:
    """A storage job's output is copied from a pipe until every writer closed it: an
    orphan holding it must not keep the job running (it is killed when the script ends)."""
    store = tmp_path / "store"
    obj = store / "plants" / "input" / "rose+red.jpg"
    obj.parent.mkdir(parents=True)
    obj.write_bytes(b"the rose\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"storage_providers:\n  minio:\n    default: {{path: {store}}}\n"
                      "input:\n  - {storage_provider: minio, path: plants/input}\n")
    script = tmp_path / "script.sh"
    script.write_text(leaving("setsid", "left", marker) + "echo started\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = run_env(tmp)
    del env["EVENT"]
    started = time.monotonic()
    result = subprocess.run([*faas_command(), "run", "--script", str(script), "--config",
                             str(config), "--event-file", str(MINIO_EVENT)],
                            env=env, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert b"started" in result.stderr
    assert time.monotonic() - started < 30  # not the orphan's 300 s
    wait_until(gone(marker), "no process left", timeout=20)
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_run_kills_its_script_and_what_left_its_group(
    tmp_path: Path, marker: str, sig: int
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = tmp_path / "script.sh"
    script.write_text(f"setsid sh -c 'sleep 300; true' {marker}-setsid &\n"
                      f"sh -c 'sleep 300; true' {marker}-script\n")
    process = subprocess.Popen([*faas_command(), "run", "--script", str(script)],
                               env=run_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: running_with(f"{marker}-script") and running_with(f"{marker}-setsid"),
                   "the script to run")
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + sig, stderr
    name = signal.Signals(sig).name
    assert stderr.decode().splitlines()[-1] == f"faas-supervisor: error: stopped by {name}"
    wait_until(gone(marker), "no process left", timeout=20)
    assert list(tmp.iterdir()) == []


# ---- the watchdog --------------------------------------------------------------------------


def script_file(folder: Path, text: str) -> Path:
    path = folder / "script.sh"
    path.write_text(text)
    return path


def test_the_watchdog_kills_what_an_invocation_left_outside_its_group(
    watchdog: WatchdogFactory, tmp_path: Path, marker: str
) -> None:
    wd = watchdog(script_file(tmp_path, orphans_script(marker)))
    response = requests.post(wd.url, data=b"{}", timeout=30)
    assert response.status_code == 200, response.text
    # The two the watchdog can attribute (they carry the invocation's TMP_INPUT_DIR) go
    # at once; the one that cleared its environment, once no invocation is in flight.
    wait_until(gone(marker), "no process left", timeout=20)
    assert wd.process.poll() is None
    assert wd.stop() == 0


def test_an_orphan_lives_as_long_as_its_invocation(
    watchdog: WatchdogFactory, tmp_path: Path, marker: str
) -> None:
    """Two invocations at once, each leaving a process outside its group while it runs:
    the one that ends first loses its own, the other keeps its own until it ends."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    script = (leaving("setsid", "left", f"{marker}$Http_Path", double=True) +
              f'if [ "$Http_Path" = /held ]; then read line < "{fifo}"; fi\n'
              "echo done\n")
    wd = watchdog(script_file(tmp_path, script))
    held_marker, quick_marker = f"{marker}/held", f"{marker}/quick"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(requests.post, f"{wd.url}/held", data=b"{}", timeout=60)
        wait_until(lambda: running_with(held_marker), "the held invocation's orphan")
        quick = requests.post(f"{wd.url}/quick", data=b"{}", timeout=30)
        assert quick.status_code == 200
        wait_until(gone(quick_marker), "the quick invocation's orphan killed", timeout=20)
        assert running_with(held_marker), "killed while its invocation still runs"
        with open(fifo, "w") as writer:
            writer.write("go\n")
        assert held.result(timeout=30).status_code == 200
    wait_until(gone(held_marker), "the held invocation's orphan killed", timeout=20)
    assert wd.stop() == 0


@pytest.mark.reliability(
    fault="watchdog killed outright",
    promise="a SIGKILLed http-mode watchdog takes its upstream server along",
)
def test_a_watchdog_killed_outright_takes_its_upstream_server_along(
    watchdog: WatchdogFactory, tmp_path: Path
) -> None:
    """http mode: the fixtures (or a crash) SIGKILL the watchdog; the user's server must
    not live on, holding the port the next watchdog needs."""
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"environment:\n  variables:\n    PYTHON: {sys.executable}\n"
                      f"    APP: {UPSTREAM_APP}\n")
    wd = watchdog('exec "$PYTHON" "$APP"\n', config,
                  env={"mode": "http", "upstream_port": str(port)})
    server = requests.get(f"http://127.0.0.1:{port}/pid", timeout=10).json()["pid"]
    assert _running(server)
    wd.process.kill()
    wd.process.wait()
    wait_until(lambda: not _running(server), f"the upstream server ({server}) gone")


def _running(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


# ---- the controller, local backend ---------------------------------------------------------


@pytest.fixture
def controllers(tmp_path: Path) -> Iterator[ControllerFactory]:
    factory = ControllerFactory(tmp_path)
    yield factory
    factory.close()


def job_script(marker: str) -> str:
    return (f"setsid sh -c 'sleep 300; true' {marker}-setsid &\n"
            f"sh -c 'sleep 300; true' {marker}-script\n")


def invocation_folders(controller: ControllerProcess, service: str) -> list[str]:
    """The service's TMPDIR's folders: its watchdog's, its jobs' own TMPDIRs (`job-NAME`)
    and theirs in them."""
    tmp = controller.data_dir / "services" / service / "tmp"
    found = (*tmp.glob("faas-*"), *tmp.glob("job-*"), *tmp.glob("job-*/faas-*"))
    return sorted(str(p.relative_to(tmp)) for p in found) if tmp.is_dir() else []


@pytest.mark.parametrize("how", ["delete-job", "delete-service", "stop-controller"])
def test_a_stopped_job_leaves_no_process_and_no_folder(
    controllers: ControllerFactory, marker: str, how: str
) -> None:
    controller = controllers()
    token = controller.create({"name": "sleeper", "script": job_script(marker)})["token"]
    # The service's watchdog keeps a folder of its own in the same TMPDIR while it runs:
    # once it is up, what is there is not the job's.
    log = controller.data_dir / "services" / "sleeper" / "watchdog.log"
    wait_until(lambda: log.is_file() and b"watchdog ready" in log.read_bytes(),
               "the service's watchdog", timeout=60)
    before = invocation_folders(controller, "sleeper")
    job = requests.post(f"{controller.url}/job/sleeper", data=base64.b64encode(b"x"),
                        headers={"Authorization": f"Bearer {token}"}, timeout=30).json()["job"]
    wait_until(lambda: running_with(f"{marker}-script") and running_with(f"{marker}-setsid"),
               "the job's script to run", timeout=60)
    assert invocation_folders(controller, "sleeper") != before
    if how == "delete-job":
        answer = controller.request("DELETE", f"/system/logs/sleeper/{job}")
        assert answer.status_code == 204, answer.text
    elif how == "delete-service":
        answer = controller.request("DELETE", "/system/services/sleeper")
        assert answer.status_code == 204, answer.text
    else:
        assert controller.stop() == 0
    wait_until(gone(marker), "no process left")
    # `run` removes its folders once its script is dead: after the processes, not with them.
    left = before if how == "delete-job" else []  # the service, and so its watchdog, stay
    wait_until(lambda: invocation_folders(controller, "sleeper") == left, "no folder left",
               timeout=30)


@pytest.mark.reliability(
    fault="watchdog killed outright",
    promise="a SIGKILLed service watchdog leaves nothing of its invocations",
)
def test_a_service_watchdog_killed_outright_leaves_nothing_of_its_invocations(
    controllers: ControllerFactory, marker: str
) -> None:
    """The local backend restarts a dead watchdog; what the dead one was running (its
    scripts, in groups of their own) is killed first."""
    controller = controllers()
    token = controller.create({"name": "slow", "script": job_script(marker)})["token"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, f"{controller.url}/run/slow", data=b"{}",
                              headers={"Authorization": f"Bearer {token}"}, timeout=60)
        wait_until(lambda: running_with(f"{marker}-script") and running_with(f"{marker}-setsid"),
                   "the invocation's script to run", timeout=60)
        watchdogs = [p for p in running_with(str(controller.data_dir / "services" / "slow"))
                     if b"\0watchdog\0" in p.cmdline]
        assert len(watchdogs) == 1, watchdogs
        os.kill(watchdogs[0].pid, signal.SIGKILL)
        with pytest.raises(requests.RequestException):
            pending.result(timeout=30).raise_for_status()
    wait_until(gone(marker), "no process left")


# A script in its watchdog's process group, as each script is for a moment while the
# watchdog spawns it (posix_spawn's child joins a group of its own only once it runs, its
# signals back at their defaults): it moves itself there, says so, and ends once told.
IN_WATCHDOGS_GROUP = '''
import os, pathlib, time
os.setpgid(0, os.getpgid(os.getppid()))
marks = pathlib.Path(os.environ["MARKS"])
(marks / "joined").touch()
while not (marks / "release").exists():  # another process's file: polled
    time.sleep(0.02)
print("finished")
'''


@pytest.mark.parametrize("how", ["update", "delete"])
def test_a_watchdog_stopped_by_the_controller_lets_a_script_in_its_group_finish(
    controllers: ControllerFactory, tmp_path: Path, how: str
) -> None:
    """The local backend stopped a watchdog with a SIGTERM to its whole group: a script
    the watchdog was just spawning got it too and died at once (`500 script exited with
    status -15`, a review found it under load). The watchdog alone is signalled, as in a
    container, and drains: what it runs finishes."""
    marks = tmp_path / "marks"
    marks.mkdir()
    app = tmp_path / "in_group.py"
    app.write_text(IN_WATCHDOGS_GROUP)
    variables = {"PYTHON": sys.executable, "APP": str(app), "MARKS": str(marks)}
    service = {"name": "grouped", "script": 'exec "$PYTHON" "$APP"\n',
               "environment": {"variables": variables}}
    controller = controllers()
    token = controller.create(service)["token"]
    log = controller.data_dir / "services" / "grouped" / "watchdog.log"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        call = pool.submit(requests.post, f"{controller.url}/run/grouped", data=b"{}",
                           headers={"Authorization": f"Bearer {token}"}, timeout=60)
        wait_until((marks / "joined").exists, "the script in its watchdog's group")
        if how == "update":
            variables["VERSION"] = "2"
            stopping = pool.submit(controller.request, "PUT", "/system/services", json=service)
        else:
            stopping = pool.submit(controller.request, "DELETE", "/system/services/grouped")
        # Signalled: it drains (or, signalled with its group, lost its script already).
        wait_until(lambda: b"shutting down" in log.read_bytes(), "the watchdog stopping")
        (marks / "release").touch()
        answer = call.result(timeout=30)
        assert (answer.status_code, script_output(answer.text)) == (200, "finished\n"), \
            answer.text
        assert stopping.result(timeout=60).status_code in (200, 204)
