"""How the commands take bad settings, as real processes: a bad value stops start-up with
exit status 2 and one line naming it, never a traceback, never a secret."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import faas_command, mounted_tmpfs

SECRET = "SUPERSECRETKEY"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FAAS_") and k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT")}
    env.update(TMPDIR=str(tmp_path), FAAS_PROVIDER_SECRETS_DIR=str(tmp_path / "no-secrets"))
    env.update(extra)
    return env


def _refused(args: list[str], env: dict[str, str]) -> str:
    """The command's one line on stderr; it exited with status 2."""
    done = subprocess.run([*faas_command(), *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert SECRET not in done.stderr + done.stdout
    return lines[0]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "script.sh"
    path.write_text("echo hi\n")
    return path


@pytest.mark.timeout(120)
def test_a_bad_explicitly_tagged_value_is_one_line(tmp_path: Path, script: Path) -> None:
    """`!!bool maybe`, `!!int SECRET`: a traceback quoting the value before (exit 1)."""
    config = tmp_path / "c.yaml"
    config.write_text("name: !!int abc\nlog_level: !!bool maybe\n")
    line = _refused(["run", "--script", str(script), "--config", str(config)],
                    _env(tmp_path, EVENT=""))
    assert line == ("faas-supervisor: error: log_level: 'MAYBE' is not one of DEBUG, INFO, "
                    "WARNING, ERROR, CRITICAL")
    # The tagged secret is read as its text; the endpoint next to it stops the start.
    text = ("storage_providers: {minio: {default: {endpoint: 'http://h:99999', access_key: a, "
            f"secret_key: !!int {SECRET}}}}}}}\n")
    line = _refused(["watchdog", "--script", str(script), "--host", "127.0.0.1", "--port", "0",
                     "--suppress-lock"],
                    _env(tmp_path, FUNCTION_CONFIG=base64.b64encode(text.encode()).decode()))
    assert line == ("faas-supervisor: error: storage_providers.minio.default.endpoint: "
                    "'http://h:99999' is not a server's URL (http(s)://host[:port][/path])")


@pytest.mark.timeout(120)
def test_a_providers_bad_verify_stops_run_before_any_request(
    tmp_path: Path, script: Path
) -> None:
    """Found at the download before: exit 3, as a store that failed."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "input: [{storage_provider: minio, path: plants/input}]\n"
        "storage_providers: {minio: {default: {endpoint: 'https://127.0.0.1:1', access_key: a,"
        f" secret_key: {SECRET}, verify: maybe}}}}}}\n")
    event = ('{"Records": [{"eventSource": "minio:s3", "s3": {"bucket": {"name": "plants"}, '
             '"object": {"key": "input/a.txt"}}}]}')
    line = _refused(["run", "--script", str(script), "--config", str(config)],
                    _env(tmp_path, EVENT=event))
    assert line == ("faas-supervisor: error: storage_providers.minio.default.verify: 'maybe' "
                    "is not true or false")


def _controller(tmp_path: Path, *args: str) -> list[str]:
    return ["controller", "--host", "127.0.0.1", "--port", "0", "--s3-port", "0",
            "--data-dir", str(tmp_path / "data"), *args]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [("minio:9000", True), ("not a url", True), ("http://", True), ("http://[::1", True),
     (f"http://admin:{SECRET}@minio host:9000", False)],
)
def test_a_bad_minio_endpoint_stops_the_controller(
    tmp_path: Path, endpoint: str, shown: bool
) -> None:
    """A traceback from boto3 quoting the URL, its password with it, before."""
    line = _refused(_controller(tmp_path, "--minio-endpoint", endpoint, "--minio-access-key",
                                "AK", "--minio-secret-key", SECRET), _env(tmp_path))
    assert line.startswith("faas-supervisor: error: --minio-endpoint: ")
    assert (repr(endpoint) in line) is shown


@pytest.mark.timeout(120)
def test_an_unusable_data_dir_or_too_many_jobs_stop_the_controller(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    for data_dir, reason in [(a_file, "not a folder"),
                             (Path("/proc/x"), "No such file or directory")]:
        line = _refused(["controller", "--host", "127.0.0.1", "--port", "0", "--s3-port", "0",
                         "--data-dir", str(data_dir)], _env(tmp_path))
        assert line == f"faas-supervisor: error: --data-dir {data_dir}: {reason}"
    line = _refused(_controller(tmp_path, "--max-jobs", "10000000"), _env(tmp_path))
    assert line == "faas-supervisor: error: --max-jobs: must be from 1 to 10000"


@pytest.mark.timeout(120)
def test_a_store_that_cannot_be_opened_stops_the_controller(tmp_path: Path) -> None:
    """A review found a state database cut short, full of garbage, or locked by another
    process (and a full disk) stopped the controller with a sqlite3 traceback, exit 1.
    One line naming the file and sqlite's reason, exit 2; the file left as it was."""
    data = tmp_path / "data"
    data.mkdir()
    database = data / "controller.sqlite3"
    made = sqlite3.connect(database)
    made.execute("CREATE TABLE t (x)")
    made.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 100)
    made.commit()
    made.close()
    cut = database.read_bytes()[:1000]  # a database cut short: its pages gone
    for content, reason in [(cut, "database disk image is malformed"),
                            (b"not a database" * 1000, "file is not a database")]:
        database.write_bytes(content)
        line = _refused(_controller(tmp_path), _env(tmp_path, FAAS_PASSWORD="pw"))
        assert line == (f"faas-supervisor: error: --data-dir {data}: controller.sqlite3: "
                        f"{reason}")
        assert database.read_bytes() == content
    database.unlink()
    # Locked by another process (a copy, a backup tool) for longer than sqlite waits.
    sqlite3.connect(database).close()
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        line = _refused(_controller(tmp_path), _env(tmp_path, FAAS_PASSWORD="pw"))
    finally:
        holder.close()
    assert line == (f"faas-supervisor: error: --data-dir {data}: controller.sqlite3: "
                    "database is locked")


@pytest.mark.timeout(120)
def test_a_full_disk_at_the_lock_file_stops_the_controller(tmp_path: Path) -> None:
    """The lock file's pid could not be written (a full disk): a traceback, exit 1, as a
    review found. One line, exit 2, as the lock's other errors."""
    with mounted_tmpfs(tmp_path / "full") as full:
        with contextlib.suppress(OSError), open(full / "fill", "wb") as fill:
            while True:
                fill.write(b"\0" * 65536)
        data = full / "data"
        line = _refused(["controller", "--host", "127.0.0.1", "--port", "0", "--s3-port", "0",
                         "--data-dir", str(data)], _env(tmp_path, FAAS_PASSWORD="pw"))
    assert line == (f"faas-supervisor: error: --data-dir {data}: controller.lock: "
                    "No space left on device")


@pytest.mark.timeout(120)
def test_a_user_name_no_login_can_give_stops_the_controller(tmp_path: Path) -> None:
    """`a:b` (Basic auth's user-id ends at the first `:`): the controller started, printed
    a password for it, and answered every login 401."""
    line = _refused(_controller(tmp_path, "--user", "a:b", "--password", SECRET),
                    _env(tmp_path))
    assert line == ("faas-supervisor: error: --user: 'a:...' cannot be a user name (no ':' and "
                    "no control characters in Basic authentication)")
    line = _refused(_controller(tmp_path), _env(tmp_path, FAAS_USER="ad\tmin"))
    assert line.startswith("faas-supervisor: error: FAAS_USER: 'ad\\tmin' cannot be")
    # `user:password` given as the user: what follows the `:` is not shown (_refused
    # checks SECRET appears nowhere).
    line = _refused(_controller(tmp_path), _env(tmp_path, FAAS_USER=f"oscar:{SECRET}"))
    assert line.startswith("faas-supervisor: error: FAAS_USER: 'oscar:...' cannot be")
    assert not (tmp_path / "data").exists()  # refused before anything was made


@pytest.mark.timeout(120)
def test_a_password_that_is_not_utf8_stops_the_controller(tmp_path: Path) -> None:
    """Its bytes decoded with surrogates: every login was a 500 (its encoding failed)."""
    password = os.fsdecode(SECRET.encode() + b"\xff")
    line = _refused(_controller(tmp_path, "--password", password), _env(tmp_path))
    assert line == "faas-supervisor: error: --password: is not UTF-8 text"
    line = _refused(_controller(tmp_path), _env(tmp_path, FAAS_PASSWORD=password))
    assert line == "faas-supervisor: error: FAAS_PASSWORD: is not UTF-8 text"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("host", ["127.0.0.1", ""])
def test_port_0_is_logged_as_the_port_bound(tmp_path: Path, host: str) -> None:
    """The start-up line said port=0; the controller answers on the port it names. With
    `--host ""` (every interface, as asyncio reads it) too: it was exit 2 once port 0
    was bound ahead (getaddrinfo of "")."""
    command = _controller(tmp_path, "--password", "p")
    command[command.index("--host") + 1] = host
    process = subprocess.Popen([*faas_command(), *command],
                               env=_env(tmp_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        ready = next((line for line in process.stderr if "controller ready" in line), "")
        found = re.search(r"\bport=(\d+)", ready)
        assert found is not None, ready
        port = int(found.group(1))
        assert port != 0
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        if host == "" and socket.has_ipv6 and _ipv6_loopback():
            # Every interface, IPv6's too, as with a given port (asyncio binds them all):
            # the port bound ahead was IPv4's alone.
            assert requests.get(f"http://[::1]:{port}/health", timeout=10).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0


def _ipv6_loopback() -> bool:
    """Whether this machine has ::1 to connect to (a container may have IPv6 off)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("kind", "path", "problem"), [
    ("output", "plants/../victim", "must not have an empty, '.' or '..' segment"),
    ("output", "plants//out", "must not have an empty, '.' or '..' segment"),
    ("input", "plants/./in", "must not have an empty, '.' or '..' segment"),
    ("output", "plants/a\\\\b", "must not hold a backslash"),
])
def test_a_storage_path_that_climbs_stops_the_start_before_the_script(
    tmp_path: Path, kind: str, path: str, problem: str
) -> None:
    """The controller refuses such a path; a function_config.yaml written elsewhere (an
    OSCAR manager, by hand) had it found only at the first upload, after the script ran:
    `..` sent to an S3 server as is, "outside the store" for the local provider."""
    ran = tmp_path / "ran"
    script = tmp_path / "script.sh"
    script.write_text(f"touch {ran}\n")
    config = tmp_path / "c.yaml"
    config.write_text(f'{kind}: [{{storage_provider: minio, path: "{path}"}}]\n')
    line = _refused(["run", "--script", str(script), "--config", str(config)],
                    _env(tmp_path, EVENT=""))
    shown = path.replace("\\\\", "\\")
    assert line == f"faas-supervisor: error: {kind}[0].path: {shown!r} {problem}"
    assert not ran.exists()
    line = _refused(["watchdog", "--script", str(script), "--config", str(config), "--host",
                     "127.0.0.1", "--port", "0", "--suppress-lock"], _env(tmp_path))
    assert line == f"faas-supervisor: error: {kind}[0].path: {shown!r} {problem}"
