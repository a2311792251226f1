"""Whole numbers as a client writes them to S3 (a query's count, a part number, a range's
bounds, a declared length): ASCII digits only, read with a ceiling.

`str.isdigit()` takes "²" (which int() then refuses) and other scripts' digits (which
int() reads: an Arabic-Indic one is 1), and int() refuses more than 4300 digits: each was
a 500, or a number the client never wrote. Every number S3 takes is read here, saturated
at the ceiling its caller gives, so a 5000-digit one costs what a short one does and
compares as "too large".
"""

from __future__ import annotations


def decimal(text: str, ceiling: int) -> int | None:
    """`text` as a number (`ceiling` when larger); None when it is not ASCII digits alone
    (empty, a sign, blanks, `_`, another script's digits)."""
    if not (text.isascii() and text.isdigit()):
        return None
    significant = text.lstrip("0")
    if len(significant) > len(str(ceiling)):
        return ceiling  # more digits than the ceiling has: larger, whatever they are
    return min(int(significant or "0"), ceiling)
