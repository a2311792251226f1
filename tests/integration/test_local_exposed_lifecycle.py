"""An exposed service's watchdog.log on the local backend, kept to its cap whatever state
its watchdogs are in, against a real controller and real watchdogs.

The limits are made small in the controller process only (a sitecustomize.py on its
PYTHONPATH, as test_warm_jobs.py gates a runner's start): a few hundred KiB of output
show what 16 MiB would, and the periodic look comes as often as a test needs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.controller_fixture import ControllerFactory, ControllerProcess, wait_until

pytestmark = pytest.mark.integration

CAP, KEEP = 256 << 10, 64 << 10  # a log past CAP bytes is cut to its last KEEP
RUN_OUTPUT = 200 << 10  # what the service's script prints at each start
SLACK = 16 << 10  # the watchdog's own lines
# The controller's trim_log limits and LOG_CHECK, from the environment the test gives it.
SMALL_LOG_LIMITS = """
import functools, os
if b"controller" in open("/proc/self/cmdline", "rb").read().split(b"\\0"):
    from faas_supervisor.controller import deployments
    from faas_supervisor.controller.backends import local
    local.trim_log = functools.partial(
        deployments.trim_log, cap=int(os.environ["TEST_LOG_CAP"]),
        keep=int(os.environ["TEST_LOG_KEEP"]))
    local.LOG_CHECK = float(os.environ["TEST_LOG_CHECK"])
"""
# RUN_OUTPUT bytes on stdout, in lines of 100.
PRINT = '"$PYTHON" -c "import sys; sys.stdout.write((\'x\' * 99 + \'\\\\n\') * 2048)"\n'


def small_log_controller(controllers: ControllerFactory, tmp_path: Path,
                         check: float) -> ControllerProcess:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SMALL_LOG_LIMITS)
    return controllers(env={"PYTHONPATH": str(site), "TEST_LOG_CAP": str(CAP),
                            "TEST_LOG_KEEP": str(KEEP), "TEST_LOG_CHECK": str(check)})


def exposed(name: str, script: str, variables: dict[str, str] | None = None) -> dict[str, Any]:
    env = {"PYTHON": sys.executable, **(variables or {})}
    return {"name": name, "script": script, "environment": {"variables": env},
            "expose": {"api_port": 8081}}


@pytest.mark.timeout(120)
def test_a_crash_looping_service_log_is_kept_to_its_cap(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    """A server that prints a lot and exits before it listens, started again and again:
    its log was trimmed only while a watchdog ran healthy, so never (50 MB a minute in
    the review's run). The periodic look made rare here: each start's own look shows."""
    controller = small_log_controller(controllers, tmp_path, check=3600)
    controller.create(exposed("noisy", PRINT + "exit 1\n"))
    log = controller.data_dir / "services/noisy/watchdog.log"
    sizes: list[int] = []

    def restarted(times: int) -> bool:
        sizes.append(log.stat().st_size if log.exists() else 0)
        return controller.log_text().count("service watchdog exited; restarting") >= times

    # Five starts: 1000 KiB printed in all, four times the cap.
    wait_until(lambda: restarted(4), 60, "four restarts", controller)
    assert sizes[-1] > 0
    assert max(sizes) <= CAP + RUN_OUTPUT + SLACK, sizes


@pytest.mark.timeout(120)
def test_a_log_printed_through_a_long_health_wait_is_trimmed(
    controllers: ControllerFactory, tmp_path: Path
) -> None:
    """A server that prints past the cap and then takes long to listen (here: never,
    within its upstream_start_timeout of 120 s): the look came only once it was healthy."""
    controller = small_log_controller(controllers, tmp_path, check=0.2)
    printed = tmp_path / "printed"
    script = PRINT + PRINT + f': > "{printed}"\nexec sleep 300\n'
    controller.create(exposed("loading", script))
    log = controller.data_dir / "services/loading/watchdog.log"
    wait_until(printed.exists, 60, "the script's output", controller)
    wait_until(lambda: 0 < log.stat().st_size <= CAP, 30, "the log trimmed", controller)
    status = controller.request("GET", "/system/services/loading/deployment").json()
    assert status["state"] == "pending"  # still waiting for its server
    # Its end kept: the script's last lines (the watchdog's own line that it started the
    # server may come after them, written by another process into the same file).
    assert b"x" * 99 + b"\n" in log.read_bytes()[-4096:]
