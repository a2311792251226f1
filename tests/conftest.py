"""The whole suite: it leaves no process behind, and it can write docs/RELIABILITY.md's tables.

The test run leaves no process behind (issue 8): checked when the session ends.

A process counts as this session's when it was not there at the start and is a
descendant of pytest, carries this session's marker variable in its environment (every
process the tests start inherits it, whoever it was re-parented to), or names this
session's temporary folder in its command line (one that cleared its environment). Shared
servers (moto, wsgidav, dockerd...) are stopped by their session fixtures, which end
before this check. Processes that existed before the session are never counted; nor are
other sessions' (other markers, other folders).
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from tests.leftovers import Proc, descendants, kill, processes

# The reliability tables of docs/RELIABILITY.md (`make reliability`).
pytest_plugins = ["tests.reliability"]

SESSION_VAR = "TESTRUN_SESSION_ID"  # not FAAS_*: the controllers drop those
GRACE = 10.0  # seconds for processes being stopped at the end to be gone
_before: set[tuple[int, int]] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ[SESSION_VAR] = uuid.uuid4().hex
    _before.update(p.key for p in processes().values())


def _basetemp(session: pytest.Session) -> bytes | None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or factory._basetemp is None:  # no test asked for tmp_path
        return None
    return str(factory.getbasetemp()).encode() + b"/"


def _leftovers(session: pytest.Session) -> list[Proc]:
    table = processes()
    me = os.getpid()
    mine = descendants(me, table)
    marker = f"{SESSION_VAR}={os.environ[SESSION_VAR]}\0".encode()
    basetemp = _basetemp(session)
    found = []
    for proc in table.values():
        if proc.key in _before or proc.pid == me or proc.state == "Z":
            continue
        if (proc.pid in mine or marker in proc.environ() or
                (basetemp is not None and basetemp in proc.cmdline)):
            found.append(proc)
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if SESSION_VAR not in os.environ:
        return
    deadline = time.monotonic() + GRACE
    left = _leftovers(session)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)  # processes being stopped: /proc has no event to await
        left = _leftovers(session)
    if not left:
        return
    lines = [f"{len(left)} process(es) started by this test run are still running:"]
    lines += [f"  pid {p.pid} (parent {p.ppid}): {p.command}" for p in left]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)
    kill(left)  # reported; now they go, so that the next run starts clean
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
