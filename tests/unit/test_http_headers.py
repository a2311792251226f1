"""What a proxy refuses to pass on, or passes on otherwise (http_headers.py)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from faas_supervisor.http_headers import sendable_reason, with_control

# aiohttp refuses to write these in a header or status line: a review found the proxy's
# answer a 500 with a traceback for an upstream header holding an ESC.


@pytest.mark.parametrize("value", ["\x1b[31mred", "a\x7fb", "a\x01b", "a\x00b", "a\x1fb"])
def test_a_value_with_a_control_character_is_named(value: str) -> None:
    headers = CIMultiDict([("X-Fine", "ok"), ("X-Debug", value)])
    assert with_control(headers) == "X-Debug"


def test_tabs_spaces_and_utf8_are_no_control_characters() -> None:
    assert with_control(CIMultiDict([("X-A", "a\tb c"), ("X-B", "café ☕")])) is None


@pytest.mark.parametrize("reason", ["OK", "Très bien", "Not\tFound", ""])
def test_a_clean_reason_phrase_is_kept(reason: str) -> None:
    assert sendable_reason(reason) == reason


# None: aiohttp sends the status's standard phrase. A Latin-1 byte arrives as a lone
# surrogate, which aiohttp dropped on writing (`Très` as `Trs`).
@pytest.mark.parametrize("reason", ["Tr\udce8s bien", "O\x01K", "a\x7f", None])
def test_a_reason_phrase_that_cannot_be_sent_as_it_came_is_replaced(reason: str | None) -> None:
    assert sendable_reason(reason) is None
