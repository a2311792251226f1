"""A job: `faas-supervisor run` of a MinIO event, with S3 stage-in and stage-out.

What an OSCAR asynchronous invocation costs, from exec to exit: a file lands in a bucket,
the job's container runs the runtime on the event, which downloads the object, runs the
script (`cp` of the input to the output folder) and uploads the result. Contenders, on the
same event, the same script, the same config (`FUNCTION_CONFIG`, `SCRIPT` in base64, the
event on standard input) and the same moto S3 server, interleaved round by round (who goes
first alternates): `faas-supervisor run` of a runtime-only installation of this tree, and
the FaaS Supervisor 1.5.8 (`python -m faassupervisor.supervisor`). After each run the
output object is checked (present, same bytes as the input) and removed.

Peak RSS is the child's `ru_maxrss` from wait4 (the largest of the process and the script
it waited for), taken by a small launcher process (`LAUNCHER`) rather than by this one:
Linux starts a child's high-water mark at its parent's resident size (the copied or
shared address space, kept across exec), so a child of this process, which has boto3
and moto's client loaded (about 50 MiB), could never be seen below that.
Targets: our median time <= 40 % of 1.5.8's, our peak RSS <= 45 MiB.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c

BUCKET = "bench"
INPUT_KEY = "input/data.bin"
SIZE = 1 << 20  # about the size of the fixture's image
TIME_TARGET = 0.40  # of 1.5.8's median
RSS_TARGET = 45 << 20
SCRIPT = 'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/result.bin"\n'


def minio_event(bucket: str, key: str, size: int) -> bytes:
    """A MinIO notification as MinIO sends it (see /work/shared/fixtures/events/minio.json)."""
    record = {
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
        "eventTime": "2026-11-24T10:23:44.000Z", "eventName": "s3:ObjectCreated:Put",
        "userIdentity": {"principalId": "minio"},
        "requestParameters": {"principalId": "minio", "region": "", "sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "17B2C5E3A7F1D0A1"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minio"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": key, "size": size, "eTag": "0", "sequencer": "0"}},
        "source": {"host": "127.0.0.1", "port": "", "userAgent": "MinIO"},
    }
    return json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{key}",
                       "Records": [record]}).encode()


def function_config(endpoint: str, output: str) -> str:
    """The config both read: the cluster's MinIO, one input path, one output path. 1.5.8
    takes the MinIO provider's credentials from `storage_providers.minio.default` too."""
    return (
        "storage_providers:\n  minio:\n    default:\n"
        f"      endpoint: {endpoint}\n      access_key: bench\n      secret_key: benchbench\n"
        "      region: us-east-1\n"
        f"input:\n  - storage_provider: minio.default\n    path: {BUCKET}/input\n"
        f"output:\n  - storage_provider: minio.default\n    path: {BUCKET}/{output}\n"
    )


# `python -S -I -c LAUNCHER FD ARGV...` runs ARGV from its own small address space, and
# writes to FD the seconds from spawn to exit, the peak RSS (KiB) and the exit status.
LAUNCHER = """
import os, sys, time
fd, argv = int(sys.argv[1]), sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawn(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
elapsed = time.perf_counter() - started
os.write(fd, f"{elapsed} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}".encode())
"""


def run_job(command: list[str], env: dict[str, str], event: bytes) -> tuple[float, int, bytes]:
    """Seconds from exec to exit, peak RSS in bytes, and stderr (the job's log)."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as stdin:
        stdin.write(event)
        stdin.seek(0)
        read, write = os.pipe()
        launcher = [sys.executable, "-S", "-I", "-c", LAUNCHER, str(write), *command]
        process = subprocess.Popen(launcher, stdin=stdin, stdout=subprocess.DEVNULL,
                                   stderr=err, env=env, pass_fds=(write,))
        os.close(write)
        with os.fdopen(read, "rb") as report:
            measured = report.read().decode()
        process.wait()
        err.seek(0)
        log = err.read()
    if process.returncode != 0 or not measured:
        raise RuntimeError(f"the launcher of {command[0]} failed:\n"
                           f"{log.decode(errors='replace')[-3000:]}")
    seconds, peak_kib, status = measured.split()
    if status != "0":
        raise RuntimeError(f"{command[0]} exited with {status}:\n"
                           f"{log.decode(errors='replace')[-3000:]}")
    return float(seconds), int(peak_kib) * 1024, log


def start_moto(workdir: Path) -> tuple[subprocess.Popen[bytes], str, Any]:
    import boto3

    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(exe).exists():
        sys.exit("moto_server is not installed: pip install 'moto[server]'")
    port = c.free_port()
    with open(workdir / "moto.log", "wb") as log:
        process = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                   stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench",
                          aws_secret_access_key="benchbench", region_name="us-east-1")
    deadline = time.monotonic() + 30
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            return process, endpoint, client
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.1)  # a port opening in another process: nothing to await


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--against", metavar="REF",
                        help="also run a reference installation (a git revision, or the path "
                             "of a faas-supervisor executable), e.g. today's main")
    args = parser.parse_args()
    header = c.machine()

    contenders: dict[str, list[str]] = {"faas-supervisor run": [str(c.installation()), "run"]}
    if args.against:
        contenders[f"faas-supervisor run ({args.against})"] = [str(c.installation(args.against)),
                                                               "run"]
    contenders["FaaS Supervisor 1.5.8"] = [str(c.baseline_python()), "-m",
                                           "faassupervisor.supervisor"]
    ours = next(iter(contenders))
    baseline = "FaaS Supervisor 1.5.8"

    c.WORK_DIR.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="job-", dir=c.WORK_DIR))
    process, endpoint, client = start_moto(workdir)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    peaks: dict[str, list[int]] = {name: [] for name in contenders}
    try:
        data = os.urandom(SIZE)
        client.put_object(Bucket=BUCKET, Key=INPUT_KEY, Body=data)
        event = minio_event(BUCKET, INPUT_KEY, SIZE)
        tmp = workdir / "tmp"
        tmp.mkdir()
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("AWS_") and k not in (
                    "FUNCTION_CONFIG", "SCRIPT", "EVENT", "LOG_LEVEL", "JOB_UUID")}
        base["TMPDIR"] = str(tmp)
        base["SCRIPT"] = base64.b64encode(SCRIPT.encode()).decode()
        envs = {}
        for number, name in enumerate(contenders):
            config = function_config(endpoint, f"output-{number}")
            envs[name] = {**base, "FUNCTION_CONFIG": base64.b64encode(config.encode()).decode()}
        names = list(contenders)
        for number, name in enumerate(names):  # once each, unmeasured: a warm page cache
            run_job(contenders[name], envs[name], event)
            client.delete_object(Bucket=BUCKET, Key=f"output-{number}/result.bin")
        for round_no in range(args.rounds):
            order = names if round_no % 2 == 0 else names[::-1]
            for name in order:
                seconds, peak, log = run_job(contenders[name], envs[name], event)
                key = f"output-{names.index(name)}/result.bin"
                got = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                if got != data:
                    raise RuntimeError(f"{name}: {key} is not the input ({len(got)} B):\n"
                                       f"{log.decode(errors='replace')[-3000:]}")
                client.delete_object(Bucket=BUCKET, Key=key)
                times[name].append(seconds)
                peaks[name].append(peak)
                print(f"round {round_no + 1:2} {name:40} {c.ms(seconds):>12}  "
                      f"peak RSS {peak / 2**20:5.1f} MiB", flush=True)
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    report(times, peaks, ours, baseline, args.rounds, header)


def report(times: dict[str, list[float]], peaks: dict[str, list[int]], ours: str,
           baseline: str, rounds: int, header: str) -> None:
    rows = [[name, str(len(t)), c.ms(c.median(t)), c.ms(min(t)), c.ms(max(t)),
             f"{c.median(t) / c.median(times[baseline]):.2f}",
             f"{max(peaks[name]) / 2**20:.1f} MiB"] for name, t in times.items()]
    ratio = c.median(times[ours]) / c.median(times[baseline])
    peak = max(peaks[ours])
    time_ok, rss_ok = c.verdict(ratio <= TIME_TARGET), c.verdict(peak <= RSS_TARGET)
    text = f"""
## Job: `faas-supervisor run` of a MinIO event with S3 stage-in and stage-out (`bench/job.py`)

Run {header}.

One job as OSCAR runs it: a MinIO event on standard input, the {SIZE >> 20} MiB object
downloaded from moto's S3 server, the script `cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/"`,
the result uploaded; `FUNCTION_CONFIG` and `SCRIPT` in base64, the same for every
contender. Exec to exit, {rounds} interleaved rounds; each output checked and removed.
Peak RSS: `ru_maxrss` from wait4, in a small launcher process (the bench's
own size would otherwise be every child's floor). Times: spawn to exit, in the launcher.

{c.table(["contender", "runs", "median", "min", "max", "/ 1.5.8", "peak RSS (max)"], rows)}

* time: ours / 1.5.8 = **{ratio:.2f}** (target <= {TIME_TARGET:.2f}): {time_ok}
* peak RSS: **{peak / 2**20:.1f} MiB** (target <= {RSS_TARGET >> 20} MiB): {rss_ok}
"""
    c.write_section("job", text)


if __name__ == "__main__":
    main()
