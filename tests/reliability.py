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
from collections import Counter
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


HOSTILE = pytest.StashKey[list[HostileRow]]()
FAULT_ROWS = pytest.StashKey[dict[str, FaultRow]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--write-reliability", action="store_true",
                     help=f"write the tables of {DOC.name} at the end (as {ENV}=1 does)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "reliability(fault, promise): the test joins the faults table of docs/RELIABILITY.md",
    )
    config.stash[HOSTILE] = []
    config.stash[FAULT_ROWS] = {}


def record_hostile(config: pytest.Config, row: HostileRow) -> None:
    config.stash[HOSTILE].append(row)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rows = config.stash[FAULT_ROWS]
    for item in items:
        marker = item.get_closest_marker("reliability")
        if marker is None or "fault" not in marker.kwargs:
            continue
        rows[item.nodeid] = FaultRow(str(marker.kwargs["fault"]),
                                     str(marker.kwargs.get("promise", "")), item.nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # The stash is reached through the session's config, which a report does not carry:
    # the rows are found by node id in the plugin's own hook below instead.
    _REPORTS.append(report)


_REPORTS: list[pytest.TestReport] = []


def _outcomes() -> dict[str, str]:
    """A test's outcome: failed if any phase failed, else what its call phase said."""
    found: dict[str, str] = {}
    for report in _REPORTS:
        if report.failed:
            found[report.nodeid] = "xpassed (strict): failed" if hasattr(report, "wasxfail") \
                else "failed"
        elif report.when == "call" or report.skipped:
            if found.get(report.nodeid, "").startswith("failed"):
                continue
            if hasattr(report, "wasxfail"):
                found[report.nodeid] = "xfail: " + str(report.wasxfail)
            else:
                found[report.nodeid] = "skipped" if report.skipped else "passed"
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if not (config.getoption("--write-reliability") or os.environ.get(ENV) == "1"):
        return
    outcomes = _outcomes()
    faults = config.stash[FAULT_ROWS]
    for nodeid, row in faults.items():
        row.outcome = outcomes.get(nodeid, "not run")
    text = DOC.read_text() if DOC.exists() else ""
    hostile = config.stash[HOSTILE]
    if hostile:
        text = replace_block(text, "hostile", hostile_table(hostile))
    text = replace_block(text, "faults", faults_table(list(faults.values())))
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)


def replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
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
    named = Counter(row.fault for row in rows)
    lines = ["| fault | promise | test | outcome |", "|---|---|---|---|"]
    order = list(FAULTS) + sorted(set(named) - set(FAULTS))
    for fault in order:
        tests = [row for row in rows if row.fault == fault]
        if not tests:
            lines.append(f"| {fault} | | no test yet | |")
        for row in tests:
            lines.append(f"| {fault} | {_cell(row.promise)} | `{row.test}` | {row.outcome} |")
    return "\n".join([_run_line(), "", *lines])
