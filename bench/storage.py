"""Storage: one big object down and one big result up, through our S3 provider and through
boto3's own `download_file` / `upload_file`, against the same moto server in the same run.

Targets: our throughput >= 80% of boto3's, and our peak RSS < 150 MiB. Each transfer runs
in a fresh child process (both contenders alike) that reports its elapsed time and its
VmHWM (peak resident set) from /proc, so the memory is the transfer's, not this script's.

moto keeps objects in its own memory and moves about 20 MiB/s on this machine, so 1 GiB
per transfer (x 2 contenders x 2 directions x rounds) takes far more than a couple of
minutes; the default is 256 MiB, and `--size-mib 1024` runs the full size.

    python bench/storage.py [--size-mib 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    WORK_DIR,
    free_port,
    machine,
    median,
    table,
    verdict,
    write_section,
)

MiB = 1 << 20
BUCKET = "bench-storage"
SOURCE_KEY = "input/big.bin"
RSS_TARGET_MIB = 150
RATIO_TARGET = 0.8


# ---- the child: one transfer, then its time and peak memory ------------------------------


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise KeyError("VmHWM")


def child(contender: str, direction: str, endpoint: str, path: str, key: str) -> None:
    """Time the transfer alone: imports and client set-up are the same for both and are
    not what is compared (they do count in the peak RSS)."""
    if contender == "ours":
        from faas_supervisor.config import ProviderConfig, Secret
        from faas_supervisor.storage_providers.s3 import S3Provider

        provider = S3Provider(ProviderConfig("minio", "default", {
            "endpoint": endpoint, "access_key": Secret("bench"), "secret_key": Secret("bench")}))
        assert provider.client is not None  # made on first use: before the clock, as boto3's
        started = time.perf_counter()
        if direction == "download":
            asyncio.run(provider.download(BUCKET, key, Path(path)))
        else:
            asyncio.run(provider.upload(Path(path), BUCKET, key))
        elapsed = time.perf_counter() - started
        provider.close()
    else:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench",
                              aws_secret_access_key="bench", region_name="us-east-1")
        started = time.perf_counter()
        if direction == "download":
            client.download_file(BUCKET, key, path)
        else:
            client.upload_file(path, BUCKET, key)
        elapsed = time.perf_counter() - started
    print(json.dumps({"seconds": elapsed, "vm_hwm": vm_hwm()}))


def run_child(contender: str, direction: str, endpoint: str, path: Path, key: str) -> dict:
    command = [sys.executable, __file__, "--child", contender, direction, endpoint, str(path),
               key]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{contender} {direction} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the parent: moto, the data, interleaved rounds ---------------------------------------


def start_moto(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    import boto3

    exe = shutil.which("moto_server")
    if exe is None:
        sys.exit("moto_server is not installed: pip install 'moto[server]'")
    port = free_port()
    log = open(workdir / "moto.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                               stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench",
                          aws_secret_access_key="bench", region_name="us-east-1")
    deadline = time.monotonic() + 30
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            return process, endpoint
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # polling a port that has no readiness event to await


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = min(left, 64 * MiB)
            out.write(os.urandom(chunk))
            left -= chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MiB
    header = machine()

    import boto3

    workdir = WORK_DIR / "storage"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    process, endpoint = start_moto(workdir)
    try:
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench",
                              aws_secret_access_key="bench", region_name="us-east-1")
        source = workdir / "result.bin"
        print(f"writing {args.size_mib} MiB of random data ...", flush=True)
        make_file(source, size)
        client.upload_file(str(source), BUCKET, SOURCE_KEY)
        results: dict[tuple[str, str], list[dict]] = {}
        for round_no in range(args.rounds):
            # Alternate who goes first, so neither always meets a warmer server.
            order = ("ours", "boto3") if round_no % 2 == 0 else ("boto3", "ours")
            for direction in ("download", "upload"):
                for contender in order:
                    if direction == "download":
                        dest = workdir / f"down-{contender}.bin"
                        result = run_child(contender, direction, endpoint, dest, SOURCE_KEY)
                        if dest.stat().st_size != size:
                            raise RuntimeError(f"{contender} downloaded {dest.stat().st_size} B")
                        dest.unlink()
                    else:
                        key = f"output/{contender}-{round_no}.bin"
                        result = run_child(contender, direction, endpoint, source, key)
                        if client.head_object(Bucket=BUCKET, Key=key)["ContentLength"] != size:
                            raise RuntimeError(f"{contender} uploaded a wrong size")
                        client.delete_object(Bucket=BUCKET, Key=key)  # moto holds it in RAM
                    results.setdefault((contender, direction), []).append(result)
                    print(f"round {round_no + 1} {direction:8} {contender:5} "
                          f"{size / MiB / result['seconds']:7.1f} MiB/s  "
                          f"VmHWM {result['vm_hwm'] / MiB:6.1f} MiB", flush=True)
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, size, args.rounds, header)


def report(results: dict[tuple[str, str], list[dict]], size: int, rounds: int,
           header: str) -> None:
    def rate(contender: str, direction: str) -> float:
        return size / MiB / median([r["seconds"] for r in results[(contender, direction)]])

    def peak(contender: str, direction: str) -> float:
        return max(r["vm_hwm"] for r in results[(contender, direction)]) / MiB

    rows = []
    lines = []
    for direction in ("download", "upload"):
        ours, theirs = rate("ours", direction), rate("boto3", direction)
        for contender, value in (("our `S3Provider`", ours), ("boto3 `" + (
                "download_file" if direction == "download" else "upload_file") + "`", theirs)):
            key = "ours" if contender.startswith("our") else "boto3"
            rows.append([direction, contender, str(rounds), f"{value:.1f} MiB/s",
                         f"{size / MiB / value:.2f} s", f"{peak(key, direction):.1f} MiB"])
        ratio = ours / theirs
        lines.append(f"* {direction}: ours / boto3 = **{ratio:.2f}** "
                     f"(target >= {RATIO_TARGET}): {verdict(ratio >= RATIO_TARGET)}; "
                     f"our peak RSS {peak('ours', direction):.1f} MiB "
                     f"(target < {RSS_TARGET_MIB} MiB): "
                     f"{verdict(peak('ours', direction) < RSS_TARGET_MIB)}")
    size_note = "" if size >= 1024 * MiB else (
        " (not the target's 1 GiB: moto holds objects in memory and moves 15-20 MiB/s "
        "here; `python bench/storage.py --size-mib 1024 --rounds 1` runs it)")
    text = f"""## Storage: a big object down and a big result up (`bench/storage.py`)

Run {header}.

Object size **{size / MiB:.0f} MiB**{size_note}. Same moto
server, same run, rounds interleaved; each transfer in a fresh process whose VmHWM (peak
RSS, interpreter and imports included) is reported. Medians of {rounds} rounds.

{table(["direction", "contender", "runs", "median throughput", "median time",
        "peak RSS (max)"], rows)}

{chr(10).join(lines)}

Our provider: 8 MiB parts, 10 request threads, at most 128 x 256 KiB chunks queued for the
disk; boto3 with its defaults (8 MiB parts, 10 threads)."""
    write_section("storage", text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:7])
    else:
        main()
