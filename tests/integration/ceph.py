"""A real Ceph RADOS Gateway on loopback, started by ceph-rgw.sh beside this file.

Single node, in memory (a monitor, a memstore OSD, RGW), on free ports; about 15 s to
start. A cluster that cannot start is a test failure carrying the script's output and
the daemons' logs, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import free_port

SCRIPT = Path(__file__).with_name("ceph-rgw.sh")
DAEMONS = ("client.rgw.a", "osd.0", "mon.a")  # stopped in this order
START_TIMEOUT = 240


@dataclass
class CephRgw:
    folder: Path
    port: int
    access_key: str = "K"
    secret_key: str = "S"
    region: str = "default"
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.endpoint,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"}))

    def client(self) -> Any:
        return self._client("s3")

    def sns(self) -> Any:
        return self._client("sns")

    def logs(self) -> str:
        parts = []
        for log in sorted((self.folder / "log").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-40:]
            parts.append(f"--- {log.name} (last lines)\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM each daemon, then wait for its exit (the OSD takes a few seconds)."""
        for name in DAEMONS:
            pid = self.pids.get(name) or _pid_from_file(self.folder / "run" / f"{name}.pid")
            if pid:
                terminate_daemon(pid)


def _pid_from_file(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return None


def terminate_daemon(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`: for daemons that are not our children (they
    daemonize, or a script started them in the background), a pidfd is the event to await."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        if not select.select([fd], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
            select.select([fd], [], [], 10)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def _distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def start_ceph_rgw(folder: Path) -> CephRgw:
    missing = [exe for exe in ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph")
               if shutil.which(exe) is None]
    if missing:
        pytest.fail(f"Ceph is not installed ({', '.join(missing)} missing): run "
                    "`make system-deps` (apt-get install radosgw ceph-mon ceph-osd ceph-common)")
    rgw_port, mon_v2, mon_v1 = _distinct_free_ports(3)
    cluster = folder / "cluster"
    rgw = CephRgw(cluster, rgw_port)
    env = dict(os.environ, CEPH_DIR=str(cluster), RGW_PORT=str(rgw_port),
               MON_PORT_V2=str(mon_v2), MON_PORT_V1=str(mon_v1))
    log = folder / "ceph-rgw.sh.log"
    # To a file, not a pipe: the daemons it starts outlive it and would hold a pipe open.
    with open(log, "wb") as out:
        try:
            returncode = subprocess.run(["bash", str(SCRIPT)], env=env, stdout=out,
                                        stderr=subprocess.STDOUT, timeout=START_TIMEOUT).returncode
        except subprocess.TimeoutExpired:
            returncode = None
    output = log.read_text(errors="replace")
    found = re.search(r"pids: mon=(\d+) osd=(\d+) rgw=(\d+)", output)
    if returncode != 0 or not found:
        rgw.stop()
        why = (f"did not start within {START_TIMEOUT} s" if returncode is None
               else f"did not start (ceph-rgw.sh exited {returncode})")
        pytest.fail(f"Ceph RGW {why}:\n{output}\n{rgw.logs()}")
    rgw.pids = {"mon.a": int(found[1]), "osd.0": int(found[2]), "client.rgw.a": int(found[3])}
    return rgw
