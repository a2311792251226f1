"""log_cut.LogWriter: a job's log written by the controller (the Docker backend's), kept
bounded as it grows, on real files."""

from __future__ import annotations

import os
from pathlib import Path

from faas_supervisor.controller.store import cut_note
from faas_supervisor.log_cut import LogWriter

CAP, KEEP = 1000, 800


def numbered(start: int, count: int) -> bytes:
    return b"".join(b"line %05d\n" % n for n in range(start, start + count))


def test_a_log_past_twice_its_cap_keeps_its_end_after_a_line_counting_all(
        tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_bytes(b"an earlier attempt\n")
    writer = LogWriter(log, CAP, KEEP)
    written = b""
    with open(log, "rb") as before:  # a reader of the log as it was: reads it to its end
        for n in range(0, 300, 10):
            chunk = numbered(n, 10)
            writer.write(chunk)
            written += chunk
            assert log.stat().st_size <= 2 * CAP
        assert os.fstat(before.fileno()).st_size > 2 * CAP  # the old file, not cut under it
    total = len(b"an earlier attempt\n") + len(written)
    writer.close()
    kept = log.read_bytes()
    note = cut_note(total, KEEP)
    assert kept == note + written[-KEEP:]
    assert log.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open(log, "ab") made it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.log"]


def test_a_short_log_is_left_whole(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    writer = LogWriter(log, CAP, KEEP)
    writer.write(numbered(0, 50))
    writer.close()
    assert log.read_bytes() == numbered(0, 50)


def test_a_log_removed_meanwhile_is_not_made_again(tmp_path: Path) -> None:
    """Its job deleted while it ran: the cut leaves no file behind."""
    log = tmp_path / "job.log"
    writer = LogWriter(log, CAP, KEEP)
    writer.write(numbered(0, 100))
    log.unlink()
    writer.write(numbered(100, 200))
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_a_log_that_cannot_be_copied_aside_is_cut_in_place(tmp_path: Path) -> None:
    """The new file cannot be made (here a folder holds its name; a full disk would do
    as much): the end is copied to the log's start."""
    log = tmp_path / "job.log"
    (tmp_path / "job.cut.log").mkdir()
    writer = LogWriter(log, CAP, KEEP)
    written = numbered(0, 300)
    writer.write(written)
    assert log.read_bytes() == cut_note(len(written), KEEP) + written[-KEEP:]
    writer.write(b"after\n")
    writer.close()
    assert log.read_bytes() == cut_note(len(written), KEEP) + written[-KEEP:] + b"after\n"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
