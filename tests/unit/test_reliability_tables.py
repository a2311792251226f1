"""The tables of docs/RELIABILITY.md (tests/reliability.py): what they say, where they go."""

from tests.reliability import FaultRow, HostileRow, faults_table, hostile_table, replace_block


def row(id: str, category: str, held: bool, pending: str | None = None,
        known: str | None = None) -> HostileRow:
    return HostileRow(id, category, "watchdog", "a | pipe", "400", "200 x", held, pending, known)


def test_the_hostile_table_counts_held_pending_and_not_held_by_category() -> None:
    text = hostile_table([row("a", "bodies", True), row("b", "bodies", False, "api"),
                          row("c", "headers", False, known="why")])
    assert "| bodies | 2 | 1 | 1 | 0 |" in text
    assert "| headers | 1 | 0 | 0 | 1 |" in text
    assert "| **all** | **3** | **1** | **1** | **1** |" in text
    assert "no: fix on `i8-api`" in text
    assert "**no**: why" in text
    assert "a \\| pipe" in text  # a cell never breaks the table


def test_the_faults_table_lists_promised_faults_without_a_test() -> None:
    text = faults_table([FaultRow("disk full", "507", "t.py::test_disk", "passed")])
    assert "| disk full | 507 | `t.py::test_disk` | passed |" in text
    assert "| store down | | no test yet | |" in text


def test_a_block_replaces_only_its_markers_or_is_appended() -> None:
    doc = ("quoted: `<!-- hostile:begin -->`\n<!-- hostile:begin -->\nold\n"
           "<!-- hostile:end -->\nrest\n")
    assert replace_block(doc, "hostile", "new") == (
        "quoted: `<!-- hostile:begin -->`\n<!-- hostile:begin -->\nnew\n"
        "<!-- hostile:end -->\nrest\n")
    assert replace_block("intro\n", "faults", "t").endswith(
        "intro\n\n<!-- faults:begin -->\nt\n<!-- faults:end -->\n")
