"""`faas-supervisor run`: one invocation from the command line, as a job runs it (SPEC 5).

Real processes: the event comes from --event-file, EVENT or standard input; the response
goes to standard output, logs to standard error; the exit status is the script's.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import RUNTIME_LINE, S3Server, faas_command, script_output
from tests.integration.servers import stalling_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

COPY = '#!/bin/sh\ncp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/out"\n'


def run(
    tmp_path: Path,
    script: str | None = COPY,
    *args: str,
    env: dict[str, str] | None = None,
    stdin: bytes = b"",
    timeout: float = 30,
) -> subprocess.CompletedProcess[bytes]:
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT", "JOB_UUID", "EXEC_TIMEOUT",
                             "exec_timeout", "LOG_LEVEL")}
    full_env["TMPDIR"] = str(tmp)
    full_env.update(env or {})
    cmd = [*faas_command(), "run"]
    if script is not None:
        path = tmp_path / "script.sh"
        path.write_text(script)
        cmd += ["--script", str(path)]
    result = subprocess.run([*cmd, *args], input=stdin, env=full_env, capture_output=True,
                            timeout=timeout)
    # Whatever happened, nothing is left in TMPDIR: no invocation folder, no runtime folder.
    assert list(tmp.iterdir()) == [], result.stderr.decode()
    return result


def event_file(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / f"event-{uuid.uuid4().hex}.json"
    path.write_bytes(data)
    return str(path)


def stopped(args: list[str], env: dict[str, str], ready: Callable[[], bool], what: str,
            sig: int = signal.SIGTERM, timeout: float = 20, pause: float = 0.02
            ) -> tuple[int, bytes]:
    """`faas-supervisor ARGS`, sent `sig` once `ready()` (polled every `pause` seconds: a
    file or a store's state, no event to await), then awaited at most `timeout` seconds:
    its status and standard error. Killed, whatever happens."""
    process = subprocess.Popen([*faas_command(), *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, f"{what}: not in 60 s"
            time.sleep(pause)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr


# ---- where the event comes from --------------------------------------------------------


def test_event_from_event_file(tmp_path: Path) -> None:
    result = run(tmp_path, COPY, "--event-file", event_file(tmp_path, b'{"from": "file"}'))
    assert result.returncode == 0, result.stderr
    assert base64.b64decode(result.stdout, validate=True) == b'{"from": "file"}'


def test_event_from_EVENT(tmp_path: Path) -> None:
    result = run(tmp_path, COPY, env={"EVENT": '{"from": "EVENT"}'})
    assert result.returncode == 0, result.stderr
    assert base64.b64decode(result.stdout, validate=True) == b'{"from": "EVENT"}'


def test_event_from_standard_input(tmp_path: Path) -> None:
    data = os.urandom(300_000)  # larger than a pipe's buffer, base64 with newlines
    result = run(tmp_path, COPY, stdin=base64.encodebytes(data))
    assert result.returncode == 0, result.stderr
    assert base64.b64decode(result.stdout, validate=True) == data


def test_event_sources_in_order(tmp_path: Path) -> None:
    both = run(tmp_path, COPY, "--event-file", event_file(tmp_path, b'"file"'),
               env={"EVENT": '"env"'}, stdin=b'"stdin"')
    assert base64.b64decode(both.stdout) == b'"file"'
    env_over_stdin = run(tmp_path, COPY, env={"EVENT": '"env"'}, stdin=b'"stdin"')
    assert base64.b64decode(env_over_stdin.stdout) == b'"env"'


def test_empty_event_has_no_input_file(tmp_path: Path) -> None:
    script = '#!/bin/sh\necho "input=${INPUT_FILE_PATH-unset}"\n'
    result = run(tmp_path, script, stdin=b"")
    assert result.returncode == 0, result.stderr
    # No output file: the logs (the runtime's lines at INFO, then this one).
    assert script_output(result.stdout) == b"input=unset\n"


def test_a_closed_standard_input_is_an_empty_event(tmp_path: Path) -> None:
    # `run ... <&-`: Python has no sys.stdin at all; once a traceback and exit 1.
    script = tmp_path / "script.sh"
    script.write_text('#!/bin/sh\necho "input=${INPUT_FILE_PATH-unset}"\n')
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT")}
    result = subprocess.run(["sh", "-c", 'exec "$@" <&-', "sh", *faas_command(), "run",
                             "--script", str(script)],
                            env={**env, "TMPDIR": str(tmp)}, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert script_output(result.stdout) == b"input=unset\n"
    assert list(tmp.iterdir()) == []


def test_stdout_is_the_response_alone(tmp_path: Path) -> None:
    """Logs go to standard error, even at DEBUG: standard output is only the response."""
    script = COPY + 'echo "script chatter"\necho "script errors" >&2\n'
    result = run(tmp_path, script, env={"LOG_LEVEL": "DEBUG", "EVENT": "[42]"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == base64.b64encode(b"[42]")
    assert b"running script" in result.stderr  # a DEBUG line of the runtime, on stderr


def test_several_outputs_are_a_base64_zip(tmp_path: Path) -> None:
    import io
    import zipfile

    script = ('#!/bin/sh\nmkdir "$TMP_OUTPUT_DIR/d"\necho 1 > "$TMP_OUTPUT_DIR/one"\n'
              'echo 2 > "$TMP_OUTPUT_DIR/d/two"\n')
    result = run(tmp_path, script, env={"EVENT": "{}"})
    archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(result.stdout, validate=True)))
    assert {n: archive.read(n) for n in archive.namelist()} == {"one": b"1\n", "d/two": b"2\n"}


# ---- the script's environment ----------------------------------------------------------


def test_job_uuid_is_in_the_scripts_environment(tmp_path: Path) -> None:
    script = '#!/bin/sh\necho "job=$JOB_UUID event=$EVENT"\n'
    job = str(uuid.uuid4())
    given = run(tmp_path, script, env={"JOB_UUID": job, "EVENT": "[1]"})
    assert given.returncode == 0, given.stderr
    # A job's logs response is its log stream's lines: not written twice (cli.py).
    assert given.stdout == b""
    assert re.sub(RUNTIME_LINE, b"", given.stderr) == f"job={job} event=[1]\n".encode()
    made = run(tmp_path, script, env={"EVENT": "[1]"})
    match = re.fullmatch(rb"job=(\S+) event=\[1\]\n", script_output(made.stdout))
    assert match, made.stdout
    uuid.UUID(match.group(1).decode())  # one is made when the job has none


def test_a_jobs_output_is_not_kept_a_second_time(tmp_path: Path) -> None:
    """A job's log stream is its log: `run` kept the script's output in an unnamed file
    of TMPDIR as well, for a logs response it never prints, so a job printing without end
    filled TMPDIR (the data folder's disk on the local backend) however its log was cut."""
    script = tmp_path / "script.sh"
    script.write_text("head -c 4000000 /dev/zero | tr '\\0' a; echo; echo last; exec sleep 60\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("FUNCTION_CONFIG", "SCRIPT")}
    env.update(TMPDIR=str(tmp), JOB_UUID=str(uuid.uuid4()), EVENT="")
    with subprocess.Popen([*faas_command(), "run", "--script", str(script)], env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE) as job:
        try:
            assert job.stderr is not None
            # Mirrored after it was written to the log, if kept: all before it is there.
            for line in job.stderr:
                if line == b"last\n":
                    break
            kept = [os.stat(f"/proc/{job.pid}/fd/{fd}").st_size
                    for fd in os.listdir(f"/proc/{job.pid}/fd")
                    if os.path.isfile(f"/proc/{job.pid}/fd/{fd}")]
            assert max(kept, default=0) < 1_000_000, kept
        finally:
            job.send_signal(signal.SIGTERM)
            job.communicate(timeout=30)
    assert list(tmp.iterdir()) == []


def test_config_variables_and_script_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("environment:\n  variables: {MODEL: tiny}\n"
                      "script: |\n  #!/bin/sh\n  echo \"model=$MODEL\"\n")
    result = run(tmp_path, None, "--config", str(config), env={"EVENT": "{}"})
    assert result.returncode == 0, result.stderr
    assert script_output(result.stdout) == b"model=tiny\n"


def test_script_from_SCRIPT(tmp_path: Path) -> None:
    script = base64.b64encode(b'#!/bin/sh\necho "from SCRIPT"\n').decode()
    result = run(tmp_path, None, env={"SCRIPT": script, "EVENT": "{}"})
    assert result.returncode == 0, result.stderr
    assert script_output(result.stdout) == b"from SCRIPT\n"


# ---- exit statuses ---------------------------------------------------------------------


def test_exit_status_is_the_scripts(tmp_path: Path) -> None:
    script = '#!/bin/sh\necho "some output"\necho "the reason" >&2\nexit 3\n'
    result = run(tmp_path, script, env={"EVENT": "{}"})
    assert result.returncode == 3
    assert result.stdout == b""  # a failed job has no response
    assert b"status 3" in result.stderr
    assert b"some output" in result.stderr and b"the reason" in result.stderr


def test_success_is_zero_even_without_output(tmp_path: Path) -> None:
    assert run(tmp_path, "#!/bin/sh\ntrue\n", env={"EVENT": "{}"}).returncode == 0


@pytest.mark.parametrize(
    ("case", "args", "env", "stdin"),
    [
        ("garbage event", [], {}, b"this is not an event!"),
        ("broken JSON", [], {"EVENT": '{"a": '}, b""),
        ("missing event file", ["--event-file", "/nonexistent/event.json"], {}, b""),
        ("bad config", ["--config", "CONFIG"], {}, b"{}"),
        ("bad LOG_LEVEL", [], {"LOG_LEVEL": "LOUD", "EVENT": "{}"}, b""),
        ("bad EXEC_TIMEOUT", [], {"EXEC_TIMEOUT": "later", "EVENT": "{}"}, b""),
    ],
)
def test_bad_config_or_event_is_status_2(tmp_path: Path, case: str, args: list[str],
                                         env: dict[str, str], stdin: bytes) -> None:
    marker = tmp_path / "ran"
    config = tmp_path / "bad.yaml"
    config.write_text("output:\n  - {storage_provider: minio.nowhere, path: b/o}\n")
    args = [str(config) if a == "CONFIG" else a for a in args]
    result = run(tmp_path, f'#!/bin/sh\ntouch "{marker}"\n', *args, env=env, stdin=stdin)
    assert result.returncode == 2, result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[0].startswith(b"faas-supervisor: error:")
    assert result.stdout == b""
    assert not marker.exists()  # the script never ran


def test_settings_only_the_watchdog_reads_do_not_break_a_job(tmp_path: Path) -> None:
    """A job's environment may hold anything `run` does not use (a `port` for a server of
    its script): `run` reads only what one invocation needs, so these are not errors."""
    env = {"EVENT": "{}", "port": "notaport", "max_inflight": "many", "mode": "threads",
           "read_timeout": "soon", "healthcheck_interval": "x", "upstream_port": "0",
           "suppress_lock": "maybe"}
    result = run(tmp_path, '#!/bin/sh\necho "port=$port"\n', env=env)
    assert result.returncode == 0, result.stderr
    assert script_output(result.stdout) == b"port=notaport\n"


def test_timeout_is_124_and_kills_the_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f'#!/bin/sh\nsleep 1000 &\necho "$$ $!" > "{pids}"\nsleep 1000\n'
    started = time.monotonic()
    result = run(tmp_path, script, env={"EXEC_TIMEOUT": "1s", "EVENT": "{}"})
    assert result.returncode == 124, result.stderr
    assert time.monotonic() - started < 20
    assert b"exec_timeout" in result.stderr
    for pid in (int(p) for p in pids.read_text().split()):
        # SIGKILL is sent; the process may take a moment to be gone (or a zombie).
        deadline = time.monotonic() + 10
        while not _gone(pid):
            assert time.monotonic() < deadline, f"process {pid} still runs"
            time.sleep(0.02)  # /proc has no event to await


def test_no_script_is_status_2(tmp_path: Path) -> None:
    if Path("/oscar/config/script.sh").exists():
        reason = "this machine has /oscar/config/script.sh, so a script is always found"
        print(reason)
        pytest.skip(reason)
    result = run(tmp_path, None, env={"EVENT": "{}"})
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "no script" in lines[0], lines


# ---- outputs: uploaded on success only (SPEC 5, 6.3) --------------------------------------


def _store_config(tmp_path: Path, store: Path) -> Path:
    config = tmp_path / "store.yaml"
    config.write_text(f"storage_providers:\n  local:\n    files: {{path: {store}}}\n"
                      "output:\n  - {storage_provider: local.files, path: results/out}\n")
    return config


def test_outputs_are_uploaded_and_a_failed_job_uploads_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "results").mkdir(parents=True)  # its bucket
    config = _store_config(tmp_path, store)
    script = ('#!/bin/sh\nmkdir "$TMP_OUTPUT_DIR/sub"\necho r > "$TMP_OUTPUT_DIR/sub/r.txt"\n'
              'exit "$(cat "$INPUT_FILE_PATH")"\n')
    failed = run(tmp_path, script, "--config", str(config), env={"EVENT": "5"})
    assert failed.returncode == 5
    assert [p for p in store.rglob("*") if p.is_file()] == []
    done = run(tmp_path, script, "--config", str(config), env={"EVENT": "0"})
    assert done.returncode == 0, done.stderr
    assert (store / "results" / "out" / "sub" / "r.txt").read_text() == "r\n"


def test_upload_failure_is_status_3(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.write_text("a file where the store's folder should be\n")
    config = _store_config(tmp_path, store)
    script = '#!/bin/sh\necho r > "$TMP_OUTPUT_DIR/r.txt"\n'
    result = run(tmp_path, script, "--config", str(config), env={"EVENT": "{}"})
    assert result.returncode == 3, result.stderr
    assert b"local.files" in result.stderr
    assert result.stdout == b""


def test_a_local_store_reads_only_regular_files_inside_the_events_bucket(
    tmp_path: Path,
) -> None:
    """A link in one bucket's folder (any process with the store's path can make one)
    had its target read, another bucket's object, handed to the script; a FIFO failed
    with `cannot read in/fifo: None`."""
    store = tmp_path / "store"
    (store / "in").mkdir(parents=True)
    (store / "private").mkdir()
    (store / "private" / "s.txt").write_text("SECRET\n")
    (store / "in" / "link").symlink_to("../private")
    os.mkfifo(store / "in" / "fifo")
    (store / "in" / "ok.txt").write_text("fine\n")
    config = tmp_path / "local.yaml"
    config.write_text(f"storage_providers:\n  local:\n    x: {{path: {store}}}\n"
                      "input:\n  - {storage_provider: local.x, path: in}\n")

    def event(key: str) -> str:
        return json.dumps({"storage_provider": "local.x", "event": {"Records": [{
            "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
            "s3": {"bucket": {"name": "in"}, "object": {"key": key}}}]}})

    script = '#!/bin/sh\ncat "$INPUT_FILE_PATH"\n'
    linked = run(tmp_path, script, "--config", str(config), env={"EVENT": event("link/s.txt")})
    assert linked.returncode == 2, linked.stderr
    assert linked.stderr.decode().splitlines()[-1] == (
        "faas-supervisor: error: object in/link/s.txt is outside its bucket in the store local.x")
    assert b"SECRET" not in linked.stdout + linked.stderr
    fifo = run(tmp_path, script, "--config", str(config), env={"EVENT": event("fifo")})
    assert fifo.returncode == 3, fifo.stderr
    assert fifo.stderr.decode().splitlines()[-1] == (
        "faas-supervisor: error: local.x: cannot read in/fifo: not a regular file")
    fine = run(tmp_path, script, "--config", str(config), env={"EVENT": event("ok.txt")})
    assert fine.returncode == 0 and b"fine" in fine.stdout + fine.stderr, fine.stderr


def _gone(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


# ---- a storage event: the job's output is its log (SPEC 5) --------------------------------

MINIO_EVENT = Path(__file__).resolve().parents[1] / "fixtures" / "events" / "minio.json"
# The fixture's object is under this input path: a service serves only its own inputs.
PLANTS_INPUT = "input: [{storage_provider: minio, path: plants/input}]\n"


@pytest.mark.parametrize("print_response", [False, True])
def test_storage_event_prints_nothing_unless_asked(tmp_path: Path, print_response: bool) -> None:
    if not MINIO_EVENT.is_file():
        pytest.fail(f"{MINIO_EVENT} is missing: the shared event fixtures are needed")
    store = tmp_path / "store"
    obj = store / "plants" / "input" / "rose+red.jpg"
    obj.parent.mkdir(parents=True)
    obj.write_bytes(b"the rose\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"storage_providers:\n  minio:\n    default: {{path: {store}}}\n"
                      f"{PLANTS_INPUT}")
    script = ('#!/bin/sh\necho "job log line: $STORAGE_OBJECT_KEY"\n'
              'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/out"\n')
    args = ["--config", str(config), "--event-file", str(MINIO_EVENT)]
    result = run(tmp_path, script, *args, *(["--print-response"] if print_response else []))
    assert result.returncode == 0, result.stderr
    assert b"job log line: input/rose+red.jpg" in result.stderr  # the script's output
    if print_response:
        assert base64.b64decode(result.stdout, validate=True) == b"the rose\n"
    else:
        assert result.stdout == b""


def test_a_storage_job_past_its_timeout_is_124_with_its_log(tmp_path: Path) -> None:
    """A job's output is mirrored through a pipe: on timeout the copy ends with the
    script's group, its lines so far are on stderr, and nothing is left behind."""
    store = tmp_path / "store"
    obj = store / "plants" / "input" / "rose+red.jpg"
    obj.parent.mkdir(parents=True)
    obj.write_bytes(b"the rose\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"storage_providers:\n  minio:\n    default: {{path: {store}}}\n"
                      f"{PLANTS_INPUT}")
    script = '#!/bin/sh\necho "before the wait"\nsleep 1000 &\nsleep 1000\n'
    started = time.monotonic()
    result = run(tmp_path, script, "--config", str(config), "--event-file", str(MINIO_EVENT),
                 env={"EXEC_TIMEOUT": "1s"})
    assert result.returncode == 124, result.stderr
    assert time.monotonic() - started < 20
    assert b"before the wait" in result.stderr
    assert b"Traceback" not in result.stderr


def test_a_missing_objects_error_line_names_its_key_as_it_is(tmp_path: Path) -> None:
    """Two spaces and a tab in the key: the line names that key (the tab escaped), not
    `a b c.txt`, another one."""
    store = tmp_path / "store"
    (store / "plants" / "input").mkdir(parents=True)
    config = tmp_path / "config.yaml"
    config.write_text(f"storage_providers:\n  minio:\n    default: {{path: {store}}}\n"
                      f"{PLANTS_INPUT}")
    event = json.loads(MINIO_EVENT.read_text())
    event["Records"][0]["s3"]["object"]["key"] = "input%2Fa%20%20b%09c.txt"
    result = run(tmp_path, COPY, "--config", str(config),
                 "--event-file", event_file(tmp_path, json.dumps(event).encode()))
    assert result.returncode == 3, result.stderr
    assert result.stderr.decode().splitlines()[-1] == (
        "faas-supervisor: error: minio.default: cannot read plants/input/a  b\\tc.txt: "
        "No such file or directory")


# ---- a job stopped from outside ---------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_job_kills_its_script_and_leaves_no_folder(tmp_path: Path, sig: int) -> None:
    """`run` stopped (a job deleted, Ctrl-C): the script's group dies with it, and the
    invocation's folders go; it exits 128 + the signal's number, as a shell would."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    pids = tmp_path / "pids"
    script = tmp_path / "script.sh"
    script.write_text(f'#!/bin/sh\nsleep 1000 &\necho "$$ $!" > "{pids}.tmp"\n'
                      f'mv "{pids}.tmp" "{pids}"\nsleep 1000\n')
    env = {k: v for k, v in os.environ.items() if k not in ("EVENT", "EXEC_TIMEOUT")}
    env.update({"TMPDIR": str(tmp), "EVENT": "{}"})
    status, stderr = stopped(["run", "--script", str(script)], env, pids.exists,
                             "the script's start", sig)
    assert status == 128 + sig, stderr
    assert b"Traceback" not in stderr
    for pid in (int(p) for p in pids.read_text().split()):
        deadline = time.monotonic() + 10
        while not _gone(pid):
            assert time.monotonic() < deadline, f"process {pid} still runs"
            time.sleep(0.02)  # /proc has no event to await
    assert list(tmp.iterdir()) == []


def test_a_job_stopped_as_it_starts_leaves_no_folder(tmp_path: Path) -> None:
    """SIGTERM just after start-up made the runtime's folder, before the handlers are in
    place (a job deleted as it starts): the signal waits for them, and the folder goes.
    Python's default action would end `run` at once and leave the folder behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("EVENT", "EXEC_TIMEOUT")}
    # The script as text: start-up writes it into the runtime's folder.
    env.update({"TMPDIR": str(tmp), "EVENT": "{}",
                "SCRIPT": base64.b64encode(b"sleep 1000\n").decode()})
    for _ in range(5):
        # The folder's appearance, seen as soon as can be (no pause): signalled in the
        # few milliseconds before the handlers are in place.
        status, stderr = stopped(["run"], env, lambda: bool(os.listdir(tmp)),
                                 "the runtime's folder", pause=0)
        assert status in (128 + signal.SIGTERM, -signal.SIGTERM), stderr
        assert list(tmp.iterdir()) == [], status


@pytest.mark.parametrize("provider", ["minio", "s3"])  # the direct path, then boto3's
def test_a_job_stopped_during_a_stalled_stage_in_ends_at_once(
    tmp_path: Path, provider: str
) -> None:
    """The store sends a response head and then nothing. SIGTERM: `run` removes its
    folders and exits 143 at once, without waiting for the thread still blocked on the
    read (18 s direct, 78 s with boto3's retries): a backend kills at 10 s."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    store = contextlib.ExitStack()
    endpoint, held = store.enter_context(stalling_store())
    config = tmp_path / "config.yaml"
    config.write_text(f"storage_providers:\n  {provider}:\n    default: {{endpoint: {endpoint}, "
                      "access_key: AKIDEXAMPLE, secret_key: not-a-secret}\n"
                      f"input:\n  - {{storage_provider: {provider}.default, path: b/in}}\n")
    source = "aws:s3" if provider == "s3" else "minio:s3"
    event = json.dumps({"Records": [{"eventSource": source, "s3": {
        "bucket": {"name": "b"}, "object": {"key": "in/f.txt"}}}]})
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    env = {k: v for k, v in os.environ.items() if k not in ("EVENT", "EXEC_TIMEOUT")}
    env.update({"TMPDIR": str(tmp), "EVENT": event})
    with store:
        status, stderr = stopped(["run", "--config", str(config), "--script", str(script)],
                                 env, lambda: bool(held), "the download's request", timeout=8)
    assert status == 128 + signal.SIGTERM, stderr
    assert b"Traceback" not in stderr and b"ran" not in stderr
    assert list(tmp.iterdir()) == []


def test_a_job_stopped_during_a_multipart_stage_out_aborts_the_upload(
    tmp_path: Path, moto_server: S3Server
) -> None:
    """SIGTERM while boto3 uploads an output in parts: the upload is aborted, its parts
    not left in the store. s3transfer aborts it from its own threads, which a stopped
    `run` no longer waits for as such: it waits a few seconds for that cleanup alone."""
    s3 = moto_server.client()
    bucket = f"mpu-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"storage_providers:\n  minio:\n    default: {{endpoint: '{moto_server.endpoint}', "
        f"access_key: {moto_server.access_key}, secret_key: {moto_server.secret_key}}}\n"
        f"output:\n  - {{storage_provider: minio, path: {bucket}/out}}\n")
    script = tmp_path / "script.sh"
    script.write_text('#!/bin/sh\nhead -c 300000000 /dev/zero > "$TMP_OUTPUT_DIR/big.bin"\n')
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("EVENT", "EXEC_TIMEOUT")}
    env.update({"TMPDIR": str(tmp), "EVENT": "{}"})
    status, stderr = stopped(
        ["run", "--config", str(config), "--script", str(script)], env,
        lambda: bool(s3.list_multipart_uploads(Bucket=bucket).get("Uploads")),
        "a multipart upload's start")
    assert status == 128 + signal.SIGTERM, stderr
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads") is None
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    assert list(tmp.iterdir()) == []


def test_a_relative_tmpdir_gives_the_script_absolute_folders(tmp_path: Path) -> None:
    """The script runs in its input folder: a relative TMPDIR must not reach it as is."""
    (tmp_path / "tmp").mkdir()
    script = tmp_path / "script.sh"
    script.write_text('echo "$TMP_OUTPUT_DIR $INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/paths"\n')
    env = {k: v for k, v in os.environ.items()
           if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT", "JOB_UUID")}
    env["TMPDIR"] = "tmp"
    result = subprocess.run([*faas_command(), "run", "--script", str(script)], input=b"aGkK",
                            env=env, cwd=tmp_path, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    output_dir, input_file = base64.b64decode(result.stdout).decode().split()
    assert output_dir.startswith(f"{tmp_path}/tmp/"), output_dir
    assert input_file.startswith(f"{tmp_path}/tmp/"), input_file
    assert list((tmp_path / "tmp").iterdir()) == []



def test_a_reader_that_leaves_early_is_one_line_and_no_traceback(tmp_path: Path) -> None:
    """`run ... | head -c 10`: the response's writes fail (EPIPE). It once ended in a
    BrokenPipeError traceback, exit 1; the folders still go, as before."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = tmp_path / "script.sh"
    script.write_text('head -c 3000000 /dev/zero > "$TMP_OUTPUT_DIR/big"\n')
    env = {k: v for k, v in os.environ.items()
           if k not in ("FUNCTION_CONFIG", "SCRIPT", "EVENT", "JOB_UUID")}
    env.update({"TMPDIR": str(tmp), "EVENT": "aGkK"})
    process = subprocess.Popen([*faas_command(), "run", "--script", str(script)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    assert len(process.stdout.read(10)) == 10
    process.stdout.close()  # as `head -c 10` does once it has its bytes
    stderr = process.stderr.read()
    assert process.wait(30) == 1
    assert stderr.endswith(b"faas-supervisor: error: cannot write the response to standard "
                           b"output: Broken pipe\n"), stderr
    assert b"Traceback" not in stderr and b"Exception ignored" not in stderr
    assert list(tmp.iterdir()) == []


# ---- the job's log stream (SPEC 5) -----------------------------------------------------

PRINTS = COPY + 'echo "script says hi"\necho "script warns" >&2\n'


@pytest.mark.parametrize("level", ["INFO", "CRITICAL"])
@pytest.mark.parametrize(
    ("kind", "event", "stdin"),
    [("json", '{"x": 1}', b""), ("base64", base64.b64encode(b"raw").decode(), b""),
     ("stdin", None, b'["on stdin"]')],
)
def test_a_jobs_log_stream_has_its_script_output_whatever_the_event(
    tmp_path: Path, level: str, kind: str, event: str | None, stdin: bytes
) -> None:
    """Not a storage event: the result on stdout, and the script's lines on stderr (they
    were lost: the response was the output file alone)."""
    env = {"LOG_LEVEL": level, "JOB_UUID": str(uuid.uuid4())}
    if event is not None:
        env["EVENT"] = event
    result = run(tmp_path, PRINTS, env=env, stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert base64.b64decode(result.stdout, validate=True)  # the output file, the result
    lines = b"script says hi\nscript warns\n"
    if level == "CRITICAL":
        assert result.stderr == lines  # the script's output alone
    else:  # chronological: the input, the script's output, its exit
        assert re.sub(RUNTIME_LINE, b"", result.stderr) == lines
        stream = result.stderr.decode()
        assert re.match(r"\S+ INFO event received kind=(json|base64) bytes=\d+\n", stream)
        assert re.search(r"\nscript warns\n\S+ INFO script exited status=0 seconds=", stream)


def test_a_logs_response_is_written_once_where_stdout_is_the_log(tmp_path: Path) -> None:
    """No output file: the response is the logs, which the log stream carried already;
    where stdout is that same file (the local backend's jobs, a terminal) it is not
    written again, and in a job (JOB_UUID) neither: Docker's and Kubernetes' logs of a
    job are both its streams."""
    script = '#!/bin/sh\necho "only once"\n'
    path = tmp_path / "script.sh"
    path.write_text(script)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("FUNCTION_CONFIG", "SCRIPT", "JOB_UUID", "LOG_LEVEL")}
    env.update({"TMPDIR": str(tmp), "EVENT": "{}"})
    log = tmp_path / "job.log"
    with open(log, "wb") as out:
        subprocess.run([*faas_command(), "run", "--script", str(path)], env=env,
                       stdout=out, stderr=out, timeout=30, check=True)
    assert re.sub(RUNTIME_LINE, b"", log.read_bytes()) == b"only once\n"
    in_a_job = run(tmp_path, script, env={"EVENT": "{}", "JOB_UUID": str(uuid.uuid4())})
    assert in_a_job.stdout == b""
    assert re.sub(RUNTIME_LINE, b"", in_a_job.stderr) == b"only once\n"
    by_hand = run(tmp_path, script, env={"EVENT": "{}"})  # stdout read apart: the response
    assert script_output(by_hand.stdout) == b"only once\n"
    assert re.sub(RUNTIME_LINE, b"", by_hand.stderr) == b"only once\n"


def test_a_failed_jobs_log_stream_has_its_reason_and_output_once(tmp_path: Path) -> None:
    script = '#!/bin/sh\necho "before failing"\nexit 4\n'
    result = run(tmp_path, script, env={"EVENT": "[1]"})
    assert result.returncode == 4
    assert result.stdout == b""
    assert result.stderr.count(b"before failing") == 1
    assert result.stderr.endswith(b"faas-supervisor: error: script exited with status 4\n")
