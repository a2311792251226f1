"""Service tokens and the admin's credentials (controller/auth.py)."""

from faas_supervisor.controller.auth import Credentials, bearer, new_token, token_matches


def test_a_token_of_bytes_that_are_not_utf8_is_wrong_not_an_error() -> None:
    # aiohttp hands header bytes that are not UTF-8 over as surrogates ("\udcff").
    token = new_token()
    assert token_matches(bearer("Bearer \udcff\udcfe"), token) is False
    assert token_matches(bearer(f"Bearer {token}"), token) is True


def test_basic_credentials_that_are_not_utf8_are_refused() -> None:
    assert Credentials("admin", "pw").check_basic("Basic \udcff\udcfe") is False
