"""The one reader of the numbers S3 takes (counts, part numbers, ranges, lengths): ASCII
digits only, saturated at a ceiling, never int()'s ValueError."""

from __future__ import annotations

import pytest

from faas_supervisor.controller.s3.digits import decimal


@pytest.mark.parametrize(("text", "ceiling", "expected"), [
    ("0", 10, 0),
    ("7", 10, 7),
    ("0007", 10, 7),
    ("10", 10, 10),
    ("11", 10, 10),
    ("99", 10, 10),
    ("9" * 5000, 10, 10),  # over int()'s 4300 digits: the ceiling, not a ValueError
    ("0" * 5000 + "3", 10, 3),  # leading zeros are no size
    ("2147483648", 2**31, 2**31),
    ("5", 0, 0),
])
def test_ascii_digits_are_read_up_to_the_ceiling(text: str, ceiling: int, expected: int
                                                 ) -> None:
    assert decimal(text, ceiling) == expected


@pytest.mark.parametrize("text", [
    "", "\u00b2", "1\u00b2", "\u0661", "\uff11", "-1", "+1", " 1", "1 ", "1_0", "0x1", "1.0",
])
def test_anything_else_is_no_number(text: str) -> None:
    """"²" is a digit to str.isdigit() (int() refuses it); an Arabic-Indic or full-width
    one int() reads as 1; signs, blanks and `_` int() takes too."""
    assert decimal(text, 10**6) is None
