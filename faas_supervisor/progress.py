"""A one-line progress bar on stderr for the client's large transfers.

Written here rather than taken from a library: it is forty lines, and the runtime is
bundled into user images, where every dependency costs size. It draws only on a
terminal, only once a transfer is large, and at most ten times a second, so piping the
client's output or sending a small file never shows it.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

THRESHOLD = 1 << 20  # transfers smaller than this finish before a bar would help
INTERVAL = 0.1  # seconds between redraws
WIDTH = 30


class Progress:
    def __init__(self, label: str, total: int | None, *, stream: TextIO | None = None,
                 threshold: int = THRESHOLD) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.threshold = threshold
        self.done = 0
        self.started = time.monotonic()
        self.drawn_at: float | None = None
        # A known small total never draws; an unknown one draws once it is large.
        self.enabled = self._is_tty() and (total is None or total >= threshold)

    def _is_tty(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):  # a closed or unusual stream
            return False

    def update(self, count: int) -> None:
        self.done += count
        if not self.enabled or self.done < self.threshold:
            return
        now = time.monotonic()
        if self.drawn_at is None or now - self.drawn_at >= INTERVAL:
            self._draw(now)

    def close(self) -> None:
        """Draw the final state and end the line, if anything was drawn."""
        if self.drawn_at is not None:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
            self.drawn_at = None

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        rate = f"{_size(int(self.done / elapsed))}/s"
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            filled = int(fraction * WIDTH)
            bar = "#" * filled + "-" * (WIDTH - filled)
            return (f"{self.label} [{bar}] {fraction:4.0%} "
                    f"{_size(self.done)}/{_size(self.total)} {rate}")
        return f"{self.label} {_size(self.done)} {rate}"

    def _draw(self, now: float) -> None:
        # \r and a clearing escape: the line is rewritten in place, shorter or not.
        self.stream.write("\r\x1b[K" + self.line(now))
        self.stream.flush()
        self.drawn_at = now


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
