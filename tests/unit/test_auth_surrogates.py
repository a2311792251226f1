"""A token or signature that is a lone surrogate is wrong, never an error.

JSON may spell a lone surrogate ("\\ud800"), which no bytes are: a Ceph event carrying one
as its `opaqueData` made `token_matches` raise UnicodeEncodeError (a 500 where a 401
belongs). Every constant-time comparison of what a client sent goes through
`sigv4.same`, so both are checked here.
"""

from __future__ import annotations

import pytest

from faas_supervisor.controller.auth import new_token, token_matches
from faas_supervisor.controller.routes.invocations import _ceph_token_ok
from faas_supervisor.controller.s3 import sigv4

LONE_SURROGATES = ["\ud800", "\udfff", "abc\ud800", "\ud83d"]


@pytest.mark.parametrize("given", LONE_SURROGATES)
def test_a_lone_surrogate_token_matches_nothing(given: str) -> None:
    assert token_matches(given, new_token()) is False


@pytest.mark.parametrize("given", LONE_SURROGATES)
def test_a_lone_surrogate_signature_is_not_the_expected_one(given: str) -> None:
    assert sigv4.same(given, "0" * 64) is False


def test_the_right_token_still_matches_and_header_surrogates_stay_wrong() -> None:
    token = new_token()
    assert token_matches(token, token) is True
    assert sigv4.same(token, token) is True
    # aiohttp's own surrogates (bytes that are not UTF-8) are compared as those bytes.
    assert token_matches("\udcff" + token[1:], token) is False


def test_a_ceph_event_whose_opaque_data_is_a_lone_surrogate_is_refused() -> None:
    token = new_token()
    lone = b'{"Records":[{"eventSource":"ceph:s3","opaqueData":"\\ud800"}]}'
    assert _ceph_token_ok(lone, token) is False
    good = b'{"Records":[{"eventSource":"ceph:s3","opaqueData":"%s"}]}' % token.encode()
    assert _ceph_token_ok(good, token) is True
    # One record that cannot match spoils the whole event.
    mixed = (b'{"Records":[{"eventSource":"ceph:s3","opaqueData":"%s"},'
             b'{"eventSource":"ceph:s3","opaqueData":"\\udfff"}]}' % token.encode())
    assert _ceph_token_ok(mixed, token) is False
