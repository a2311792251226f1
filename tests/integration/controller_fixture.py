"""A real `faas-supervisor controller` process on loopback, with its own data folder.

`ControllerFactory` starts one (or a second on the same data folder, for restarts);
everything it started is stopped at the end, including what a controller killed
outright left behind (found by the data folder in their command lines).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import faas_command, free_port, wait_for_http
from tests.leftovers import kill, processes

USER, PASSWORD = "admin", "controller-test-password"


@dataclass
class ControllerProcess:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log: Path
    s3_port: int = 0  # the S3 endpoint's (when not turned off or replaced)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> tuple[str, str]:
        return (USER, PASSWORD)

    @property
    def storage(self) -> Path:
        return self.data_dir / "storage"

    def request(
        self, method: str, path: str, auth: Any = "admin", **kwargs: Any
    ) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return requests.request(
            method, self.url + path, auth=self.auth if auth == "admin" else auth, **kwargs
        )

    def create(self, service: dict[str, Any]) -> dict[str, Any]:
        response = self.request("POST", "/system/services", json=service)
        assert response.status_code == 201, (
            f"{response.status_code} {response.text}\n{self.log_text()}"
        )
        got = self.request("GET", f"/system/services/{service['name']}")
        assert got.status_code == 200
        result: dict[str, Any] = got.json()
        return result

    def jobs(self, service: str) -> dict[str, dict[str, str]]:
        response = self.request("GET", f"/system/logs/{service}")
        assert response.status_code == 200, response.text
        jobs: dict[str, dict[str, str]] = response.json()["jobs"]
        return jobs

    def wait_jobs(
        self,
        service: str,
        count: int,
        timeout: float = 90,
        done: tuple[str, ...] = ("Succeeded", "Failed"),
    ) -> dict[str, dict[str, str]]:
        """Poll until `count` jobs of the service are in one of `done` states."""
        return wait_until(
            lambda: (
                (jobs := self.jobs(service))
                and sum(j["status"] in done for j in jobs.values()) >= count
                and jobs
            ),
            timeout,
            f"{count} jobs of {service} in {done}",
            self,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def wait_until(
    check: Callable[[], Any], timeout: float, what: str, controller: ControllerProcess | None = None
) -> Any:
    """Poll an HTTP-visible condition: the API has no push channel to await."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{controller.log_text() if controller else ''}")


class ControllerFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[ControllerProcess] = []

    def __call__(
        self,
        data_dir: Path | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ControllerProcess:
        n = len(self.started)
        data_dir = data_dir or self.tmp_path / "data"
        port = free_port()
        # A free port for the S3 endpoint, not 9000: tests (and checkouts) run side by side.
        # A later `--s3-port` in `args` wins.
        s3_port = free_port()
        log = self.tmp_path / f"controller{n}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FAAS_")}
        full_env["TMPDIR"] = str(self.tmp_path)
        full_env.update(env or {})
        cmd = [
            *faas_command(),
            "controller",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--user",
            USER,
            "--password",
            PASSWORD,
            "--s3-port",
            str(s3_port),
            *(args or []),
        ]
        with open(log, "wb") as out:
            process = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                       cwd=cwd)
        controller = ControllerProcess(process, port, data_dir, log, s3_port)
        self.started.append(controller)
        wait_for_http(f"{controller.url}/health", process, log=log)
        return controller

    def close(self) -> None:
        for controller in self.started:
            if controller.process.poll() is None:
                controller.process.send_signal(signal.SIGTERM)
                try:
                    controller.process.wait(30)
                except subprocess.TimeoutExpired:
                    controller.process.kill()
                    controller.process.wait()
        for controller in self.started:
            kill_leftovers(controller.data_dir)


def kill_leftovers(data_dir: Path) -> None:
    """Process groups still running for this data folder (after a SIGKILLed controller):
    SIGTERM first, so that a watchdog or a `run` stops what it started; SIGKILL after."""
    marker = str(data_dir).encode()
    found = [p for p in processes().values() if marker in p.cmdline and p.state != "Z"]
    for proc in found:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = processes()
        left = [p for p in found if (q := now.get(p.pid)) and q.start == p.start and q.state != "Z"]
        if not left:
            return
        time.sleep(0.1)  # not our children: /proc has no event to await
    kill(left)
