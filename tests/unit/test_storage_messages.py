"""A storage failure's message (a 502's first line, `run`'s exit-3 line, a log value):
never a credential, always one printable line, whatever the object key or the store's
answer holds."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from faas_supervisor.config import ProviderConfig, Secret
from faas_supervisor.errors import (
    FaasError,
    StorageError,
    local_write_error,
    storage_failure,
)
from faas_supervisor.responses import failure_body
from faas_supervisor.storage_providers import build_provider, scrub
from faas_supervisor.storage_providers.http import HttpFailure
from faas_supervisor.storage_providers.onedata import OnedataProvider
from faas_supervisor.storage_providers.rucio import RucioProvider
from faas_supervisor.storage_providers.s3 import S3Provider
from faas_supervisor.storage_providers.webdav import WebDavProvider
from tests.unit.test_stage import Store, invoke, make_runtime, minio_config, s3_event

# ---- no credential: a URL's userinfo ----------------------------------------------------


@pytest.mark.parametrize("password", [
    "p@ss@word9",  # an `@` the password holds: the userinfo ends at the authority's last
    "pass/word9",  # a `/`, `?` or `#`: the authority reads as no host[:port]
    "pass?word9",
    "pass#word9",
    "pass/wo@rd9",
])
def test_a_urls_password_is_hidden_whatever_it_holds(password: str) -> None:
    message = f"Could not connect to http://user:{password}@host:9000/bucket/k"
    assert scrub(message, []) == "Could not connect to http://***@host:9000/bucket/k"


def test_an_at_sign_after_the_authority_is_the_paths_and_shown() -> None:
    """A guard (it passed before the fix too): hiding more must not hide a plain URL."""
    for shown in ("http://host:9000/bucket/a@b.txt", "http://[::1]:9000/b/a@b.txt",
                  'the endpoint "http://minio:9000": in/a@b.txt', "https://h/x?q=a@b"):
        assert scrub(shown, []) == shown
    assert scrub("http://h/?next=http://u:pw@i/k", []) == "http://h/?next=http://***@i/k"


# A password that no URL shape reveals: `user:2024` reads as a host and its port, and
# botocore quotes the rest as a path (its `@` encoded).
ENDPOINT = "http://user:2024/URLPASSWORD@127.0.0.1:9000"
QUOTED = ('Could not connect to the endpoint URL: '
          '"http://user:2024/URLPASSWORD%40127.0.0.1%3A9000/b/k"')
CUT = "cannot connect to user:2024 (Name or service not known)"


def _s3(endpoint: str) -> S3Provider:
    return S3Provider(ProviderConfig("minio", "default", {
        "endpoint": endpoint, "access_key": Secret("AKIAKEY1"), "secret_key": Secret("s3cr3t")}))


def _built(kind: str, endpoint: str) -> Any:
    settings: dict[str, dict[str, str | bool | Secret]] = {
        "webdav": {"hostname": endpoint, "login": "oscar", "password": Secret("dav-pass")},
        "onedata": {"oneprovider_host": endpoint, "token": Secret("onedata-token"),
                    "space": "sp"},
        "rucio": {"host": "https://rucio.example.org", "auth_host": endpoint, "account": "a",
                  "rse": "R", "username": "u", "password": Secret("rucio-pass")},
    }
    return build_provider(ProviderConfig(kind, "x", settings[kind]))


async def _http_error(provider: Any, reason: str) -> str:
    """The StorageError a provider makes of a failed request that says `reason`."""
    failure = HttpFailure(reason, False)
    if isinstance(provider, RucioProvider):
        with pytest.raises(StorageError) as caught:
            async with provider._failures("download", "b", "k"):
                raise failure
        return caught.value.message
    assert isinstance(provider, WebDavProvider | OnedataProvider)
    return provider._error("download", "b", "k", failure).message


@pytest.mark.parametrize("reason", [QUOTED, CUT])
async def test_an_endpoints_password_is_hidden_by_value_whatever_the_shape(reason: str) -> None:
    messages = [_s3(ENDPOINT)._error("download", "b", "k", ConnectionError(reason)).message]
    for kind in ("webdav", "onedata", "rucio"):
        messages.append(await _http_error(_built(kind, ENDPOINT), reason))
    for message in messages:
        assert "URLPASSWORD" not in message and "2024" not in message, message
        assert ": cannot download b" in message


async def test_a_percent_encoded_endpoint_password_is_hidden_in_both_forms() -> None:
    provider = _s3(f"http://user:{quote('pa@ss word', safe='')}@127.0.0.1:9000")
    for reason in ("http://user:pa@ss word@127.0.0.1:9000 refused", "pa%40ss%20word"):
        message = provider._error("download", "b", "k", ConnectionError(reason)).message
        assert "ss word" not in message and "ss%20word" not in message, message


# ---- one printable line: the object key ------------------------------------------------

# What breaks a line or a terminal: line ends, escape sequences (ESC, and CSI as one C1
# character), DEL, NEL, the Unicode line separator, a bidirectional mark.
CONTROLS = "\n\r\x1b[2J\x1b]0;pwned\x07\x7f\x9b31m\x85\u2028\u200e"


def test_every_storage_message_quoting_a_key_is_one_printable_line() -> None:
    key = f"in/a{CONTROLS}b.txt"
    errors: list[FaasError] = [
        storage_failure("minio.default", f"download of bucket/{key}", RuntimeError()),
        local_write_error(OSError(errno.ENOSPC, "full"), f"the download of bucket/{key}"),
        _s3("http://127.0.0.1:9")._error("download", "bucket", key, FileNotFoundError()),
        StorageError(f"rucio.x: cannot upload scope:{key}: the store says {CONTROLS}"),
    ]
    for error in errors:
        assert error.message.isprintable(), repr(error.message)
        assert "in/a" in error.message and "\\x1b[2J" in error.message


async def test_a_502s_first_line_shows_a_key_with_control_characters_escaped(
    tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    runtime = make_runtime(tmp_path, minio_config(store))
    key = f"input/a{CONTROLS}b.txt"
    outcome, invocation = await invoke(runtime, s3_event("minio:s3", "plants", quote(key)))
    assert isinstance(outcome.error, StorageError)
    body = failure_body(invocation, outcome.error)
    assert body.data is not None
    first = body.data.decode().split("\n", 1)[0]
    assert first == outcome.error.message  # the line `run` prints after "error: " too
    assert first.isprintable(), repr(first)
    assert first.startswith("minio.default: cannot read plants/input/a")
    assert "\\x1b]0;pwned\\x07" in first
