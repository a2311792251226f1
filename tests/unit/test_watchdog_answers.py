"""The watchdog's one refusal: the error's status and line; closed when the body is unread."""

from __future__ import annotations

from faas_supervisor.errors import PayloadTooLarge, ShuttingDown, UpstreamFailed
from faas_supervisor.watchdog.answers import refusal


def test_a_refusal_is_the_errors_status_and_line() -> None:
    answer = refusal(ShuttingDown("the watchdog is shutting down"))
    assert (answer.status, answer.text) == (503, "the watchdog is shutting down\n")
    assert "Connection" not in answer.headers


def test_an_early_413_or_a_broken_body_closes_the_connection() -> None:
    too_large = refusal(PayloadTooLarge("request body is over max_body_size (8 bytes)"))
    assert (too_large.status, too_large.headers["Connection"]) == (413, "close")
    broken = refusal(UpstreamFailed("the server did not answer: reset"), close=True)
    assert (broken.status, broken.headers["Connection"]) == (502, "close")
