"""A real Rucio server on loopback, started by rucio-server.sh beside this file.

Rucio 41 on SQLite behind gunicorn, a username/password login, the RSE `LOCALRSE` backed
by a folder, the scope `test`. Its two venvs (server, clients) are installed once into a
cache folder (RUCIO_VENV, default ~/.cache/faas-supervisor-rucio) and reused; the server's
data is the session's. An install that fails (no package index) is a skip with the
reason printed; a server that installed but does not start is a failure with its logs.

Events are the ones Rucio itself recorded: `messages()` reads its `messages` table and
shapes each row as its Hermes daemon sends it (`event_type` in lower case, the payload,
`created_at` as text), never written by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.ceph import terminate_daemon
from tests.integration.conftest import free_port

SCRIPT = Path(__file__).with_name("rucio-server.sh")
VENV = Path(os.environ.get("RUCIO_VENV") or
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
            / "faas-supervisor-rucio")
INSTALL_TIMEOUT = 1200  # the first install on a shared 2-core machine
START_TIMEOUT = 180
ACCOUNT, USERNAME, PASSWORD = "root", "ddmlab", "secret"
RSE, SCOPE = "LOCALRSE", "test"


@dataclass
class RucioServer:
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rse_folder(self) -> Path:
        return self.folder / "rse"

    def settings(self, **extra: Any) -> dict[str, Any]:
        """A `rucio` provider's settings for this server."""
        return {"host": self.url, "auth_host": self.url, "account": ACCOUNT, "rse": RSE,
                "username": USERNAME, "password": PASSWORD, **extra}

    def client(self, *args: str, cwd: Path | None = None) -> str:
        """Rucio's own command-line client; its output, or a failure showing it."""
        env = {**os.environ, "RUCIO_CONFIG": str(self.folder / "client.cfg")}
        result = subprocess.run([str(VENV / "venv-clients" / "bin" / "rucio"), *args], env=env,
                                cwd=cwd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"rucio {' '.join(args)}:\n{result.stderr}"
        return result.stdout

    def upload(self, files: list[Path], dataset: str | None = None) -> None:
        target = [f"{SCOPE}:{dataset}"] if dataset else []
        self.client("upload", "--rse", RSE, "--scope", SCOPE, "--files",
                    *[str(f) for f in files], *target)

    def download(self, did: str, folder: Path) -> Path:
        """`rucio download` of a file DID; the file it wrote."""
        # rucio-clients 36.5 writes `<dir>/<name>.part` without making the folders a
        # name with `/` needs: made here.
        (folder / did.split(":", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        self.client("download", "--dir", str(folder), "--no-subdir", "-d", did)
        found = [p for p in folder.rglob("*") if p.is_file()
                 and p.name == did.split(":", 1)[1].rsplit("/", 1)[-1]]
        assert len(found) == 1, (did, list(folder.rglob("*")))
        return found[0]

    def messages(self, event_type: str, name: str) -> list[dict[str, Any]]:
        """The messages Rucio recorded about the DID `test:name`, as Hermes sends them."""
        with contextlib.closing(sqlite3.connect(self.folder / "rucio.db")) as db:
            rows = db.execute("SELECT event_type, payload, created_at FROM messages "
                              "WHERE event_type = ? ORDER BY created_at",
                              (event_type,)).fetchall()
        found = []
        for kind, payload, created in rows:
            body = json.loads(payload)
            if body.get("scope") == SCOPE and body.get("name") == name:
                found.append({"event_type": str(kind).lower(), "payload": body,
                              "created_at": str(created)})
        return found

    def token(self) -> str:
        """A Rucio token for the account, as the userpass login gives it."""
        import requests

        response = requests.get(f"{self.url}/auth/userpass", timeout=30, headers={
            "X-Rucio-Account": ACCOUNT, "X-Rucio-Username": USERNAME,
            "X-Rucio-Password": PASSWORD})
        response.raise_for_status()
        return response.headers["X-Rucio-Auth-Token"]

    def stop(self) -> None:
        pid_file = self.folder / "server.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            terminate_daemon(pid)  # gunicorn's master stops its workers


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}"


def start_rucio_server(folder: Path) -> RucioServer:
    env = {**os.environ, "RUCIO_VENV": str(VENV)}
    try:
        installed = subprocess.run(["bash", str(SCRIPT), "install"], env=env,
                                   capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        installed = None
    if installed is None or installed.returncode != 0:
        reason = installed.stderr.strip().splitlines()[-3:] if installed else ["timed out"]
        message = f"Rucio could not be installed into {VENV}: {' / '.join(reason)}"
        print(message)
        pytest.skip(message)
    port = free_port()
    server = RucioServer(folder, port)
    started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True,
                             timeout=START_TIMEOUT,
                             env={**env, "RUCIO_DIR": str(folder), "RUCIO_PORT": str(port)})
    if started.returncode != 0:
        server.stop()
        logs = (folder / "logs" / "server.log")
        pytest.fail(f"the Rucio server did not start:\n{started.stdout}\n{started.stderr}\n"
                    f"{logs.read_text(errors='replace')[-3000:] if logs.exists() else ''}")
    return server
