"""The tables of docs/RELIABILITY.md, written by the test suite (a pytest plugin).

* **Hostile inputs**: `tests/integration/test_hostile.py` records each case of its
  catalogue (id, category, target, expected, observed, held) with `record_hostile`.
* **Faults**: any test marked `@pytest.mark.reliability(fault="...", promise="...")` joins
  the faults table with its outcome. `FAULTS` lists the faults the project promises to
  survive, so that one with no test yet shows as such instead of silently missing.

The tables are written only when asked (`FAAS_WRITE_RELIABILITY=1` or
`--write-reliability`; `make reliability` does it), so a normal run leaves the tree clean.
Each replaces the text between its markers in docs/RELIABILITY.md, nothing else.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"
ENV = "FAAS_WRITE_RELIABILITY"

# The faults the issue promises to survive, in the order the document gives them. A test
# names one of these in its marker (another name is added below them).
FAULTS = (
    "disk full",
    "store down",
    "killed watchdog restarted",
    "missed events reconciled",
    "kill -9 with 50 jobs",
    "SQS message delivered twice",
    "watchdog killed outright",
    "job runner killed",
)


@dataclass(frozen=True)
class HostileRow:
    id: str
    category: str
    target: str
    description: str
    expected: str
    observed: str
    held: bool
    pending: str | None  # the branch (i8-<pending>) that fixes it
    known: str | None = None  # found by the catalogue, not fixed yet: why


@dataclass
class FaultRow:
    fault: str
    promise: str
    test: str
    outcome: str = "not run"


PLUGIN = "reliability-tables"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--write-reliability", action="store_true",
                     help=f"write the tables of {DOC.name} at the end (as {ENV}=1 does)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "reliability(fault, promise): the test joins the faults table of docs/RELIABILITY.md",
    )
    config.pluginmanager.register(Tables(config), PLUGIN)


def record_hostile(config: pytest.Config, row: HostileRow) -> None:
    """Called by the catalogue's test for each case it ran."""
    tables = config.pluginmanager.get_plugin(PLUGIN)
    assert isinstance(tables, Tables)
    tables.hostile.append(row)


class Tables:
    """The session's rows, and the hooks that fill and write them."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.hostile: list[HostileRow] = []
        self.faults: dict[str, FaultRow] = {}  # by node id

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            marker = item.get_closest_marker("reliability")
            if marker is not None and "fault" in marker.kwargs:
                self.faults[item.nodeid] = FaultRow(
                    str(marker.kwargs["fault"]), str(marker.kwargs.get("promise", "")),
                    item.nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        row = self.faults.get(report.nodeid)
        if row is None:
            return
        if report.failed:
            row.outcome = "XPASS (strict): failed" if hasattr(report, "wasxfail") else "failed"
        elif row.outcome.startswith(("failed", "XPASS")):
            return  # a teardown that passed does not undo a failed call
        elif hasattr(report, "wasxfail"):
            row.outcome = f"xfail ({report.wasxfail})"
        elif report.skipped:
            row.outcome = "skipped"
        elif report.when == "call":
            row.outcome = "passed"

    def pytest_sessionfinish(self) -> None:
        if not (self.config.getoption("--write-reliability") or os.environ.get(ENV) == "1"):
            return
        text = DOC.read_text() if DOC.exists() else ""
        if self.hostile:
            text = replace_block(text, "hostile", hostile_table(self.hostile))
        text = replace_block(text, "faults", faults_table(list(self.faults.values())))
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(text)


def replace_block(text: str, name: str, body: str) -> str:
    """Replace what is between the block's markers, each a line of its own (the same text
    quoted in a sentence is not a marker)."""
    start, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(f"^{re.escape(start)}$.*?^{re.escape(end)}$", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _m: block, text)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def _run_line() -> str:
    return (f"Written by the test suite on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC "
            f"(Linux {platform.release()}, Python {platform.python_version()}).")


def hostile_table(rows: list[HostileRow]) -> str:
    by_category: dict[str, list[HostileRow]] = {}
    for row in rows:
        by_category.setdefault(row.category, []).append(row)
    summary = ["| category | cases | held | pending a fix on a branch | not held |",
               "|---|---|---|---|---|"]
    for category, group in by_category.items():
        held = sum(r.held for r in group)
        pending = sum(not r.held and r.pending is not None for r in group)
        summary.append(f"| {category} | {len(group)} | {held} | {pending} | "
                       f"{len(group) - held - pending} |")
    held = sum(r.held for r in rows)
    pending = sum(not r.held and r.pending is not None for r in rows)
    summary.append(f"| **all** | **{len(rows)}** | **{held}** | **{pending}** | "
                   f"**{len(rows) - held - pending}** |")
    full = ["| id | category | target | input | expected | observed | held |",
            "|---|---|---|---|---|---|---|"]
    for row in rows:
        if row.held:
            verdict = "yes"
        elif row.pending:
            verdict = f"no: fix on `i8-{row.pending}`"
        else:
            verdict = "**no**" + (f": {row.known}" if row.known else "")
        full.append(f"| `{row.id}` | {row.category} | {row.target} | {_cell(row.description)} "
                    f"| {_cell(row.expected)} | {_cell(row.observed)} | {verdict} |")
    return "\n".join([_run_line(), "", *summary, "", *full])


def faults_table(rows: list[FaultRow]) -> str:
    named = {row.fault for row in rows}
    lines = ["| fault | promise | test | outcome |", "|---|---|---|---|"]
    order = list(FAULTS) + sorted(set(named) - set(FAULTS))
    for fault in order:
        tests = [row for row in rows if row.fault == fault]
        if not tests:
            lines.append(f"| {fault} | | no test yet | |")
        for row in tests:
            lines.append(f"| {fault} | {_cell(row.promise)} | `{row.test}` | {row.outcome} |")
    return "\n".join([_run_line(), "", *lines])
