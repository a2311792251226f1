"""The controller's S3 endpoint: PutObject and GetObject of one big object through boto3,
against our endpoint and against moto's server, in the same run, rounds interleaved.

Targets: each operation's throughput on our endpoint >= 80 % of moto's, and the
controller's memory flat: its peak RSS (VmHWM over the whole run, start-up included)
below 150 MiB whatever the object's size.

One PutObject (a single request, not a multipart upload: boto3's `put_object` with the
file as its body) and one GetObject read to a file, each timed alone, client built
beforehand; boto3's own work (the body's SHA-256 and CRC-32 over plain HTTP) is the same
for both servers.

    python bench/s3_endpoint.py [--size-mib 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    WORK_DIR,
    faas_command,
    free_port,
    machine,
    median,
    proc_status,
    table,
    verdict,
    write_section,
)
from storage import make_file, start_moto

MiB = 1 << 20
BUCKET = "bench-storage"  # the bucket start_moto makes on moto
RATIO_TARGET = 0.8
RSS_TARGET_MIB = 150
PIECE = 1 << 20


def start_controller(workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    port, s3_port = free_port(), free_port()
    log = open(workdir / "controller.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [*faas_command(), "controller", "--host", "127.0.0.1", "--port", str(port),
         "--s3-port", str(s3_port), "--data-dir", str(workdir / "data"), "--password", "bench"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/system/config",
        headers={"Authorization": "Basic " + b64encode(b"oscar:bench").decode()},
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return process, json.load(answer)["minio_provider"]
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # polling a port that has no readiness event to await


def client(endpoint: str, access_key: str, secret_key: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"},
                                      read_timeout=600, retries={"max_attempts": 1}))


def put(s3: Any, source: Path, key: str) -> float:
    started = time.perf_counter()
    with open(source, "rb") as body:
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return time.perf_counter() - started


def get(s3: Any, key: str, target: Path) -> float:
    started = time.perf_counter()
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    with open(target, "wb") as out:
        for piece in iter(lambda: body.read(PIECE), b""):
            out.write(piece)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="object size (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args()
    size = args.size_mib * MiB
    header = machine()
    workdir = WORK_DIR / "s3_endpoint"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    source, target = workdir / "object.bin", workdir / "got.bin"
    make_file(source, size)
    moto, moto_endpoint = start_moto(workdir)
    controller, provider = start_controller(workdir)
    try:
        ours = client(provider["endpoint"], provider["access_key"], provider["secret_key"])
        ours.create_bucket(Bucket=BUCKET)
        contenders = {"ours": ours, "moto": client(moto_endpoint, "bench", "bench")}
        times: dict[tuple[str, str], list[float]] = {}
        for n in range(args.rounds):
            for name, s3 in contenders.items():
                key = f"round-{n}.bin"
                times.setdefault((name, "PutObject"), []).append(put(s3, source, key))
                times.setdefault((name, "GetObject"), []).append(get(s3, key, target))
                if target.stat().st_size != size:
                    sys.exit(f"{name}: GetObject gave {target.stat().st_size} bytes, not {size}")
                target.unlink()
                s3.delete_object(Bucket=BUCKET, Key=key)  # moto holds objects in its memory
                print(f"round {n + 1} {name}: put {times[(name, 'PutObject')][-1]:.2f} s, "
                      f"get {times[(name, 'GetObject')][-1]:.2f} s", flush=True)
        peak = proc_status(controller.pid, "VmHWM") / MiB
    finally:
        for process in (controller, moto):
            process.terminate()
            process.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)
    report(times, size, args.rounds, header, peak)


def report(times: dict[tuple[str, str], list[float]], size: int, rounds: int, header: str,
           peak: float) -> None:
    def rate(name: str, operation: str) -> float:
        return size / MiB / median(times[(name, operation)])

    rows, lines = [], []
    for operation in ("PutObject", "GetObject"):
        for name, label in (("ours", "our endpoint"), ("moto", "moto's server")):
            rows.append([operation, label, str(rounds), f"{rate(name, operation):.1f} MiB/s",
                         f"{median(times[(name, operation)]):.2f} s"])
        ratio = rate("ours", operation) / rate("moto", operation)
        lines.append(f"* {operation}: ours / moto = **{ratio:.2f}** (target >= {RATIO_TARGET}):"
                     f" {verdict(ratio >= RATIO_TARGET)}")
    lines.append(f"* the controller's peak RSS over the run: **{peak:.1f} MiB** (target < "
                 f"{RSS_TARGET_MIB} MiB, flat whatever the size): "
                 f"{verdict(peak < RSS_TARGET_MIB)}")
    text = f"""## The controller's S3 endpoint against moto (`bench/s3_endpoint.py`)

Run {header}. Other engineers' test runs share this machine's 2 cores: the load is theirs
as much as ours, and hits both servers alike (rounds interleaved).

Object size **{size / MiB:.0f} MiB**, one PutObject and one GetObject per round through
boto3 (client made before the clock), the controller (`--backend local`, its S3 endpoint
over the folder store) and moto's server side by side. Medians of {rounds} rounds.

{table(["operation", "server", "runs", "median throughput", "median time"], rows)}

{chr(10).join(lines)}

Our endpoint streams a PutObject's body to a hidden file of the bucket (MD5 and
SHA-256 on the way, in worker threads, 1 MiB at a time) and renames it into place; a
GetObject is sent by sendfile. moto keeps objects in its memory."""
    write_section("s3_endpoint", text)


if __name__ == "__main__":
    main()
