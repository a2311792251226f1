"""Who may call the controller: the admin's basic auth, and each service's token.

The admin password comes from `--password` or `FAAS_PASSWORD`; without one, a random one
is made on the first start, printed once, and kept (mode 0600) in the data folder for the
next starts. Every comparison is constant-time; no credential is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from faas_supervisor.controller.s3.sigv4 import Keys, same

PASSWORD_FILE = "admin-password"
S3_KEYS_FILE = "s3-keys"  # the S3 endpoint's access key and secret key, one a line
TOKEN_BYTES = 32  # 256 bits; 64 hex digits, the length the OSCAR manager's tokens have


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)

    def check_basic(self, header: str) -> bool:
        """Whether an `Authorization` header carries these credentials."""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        # Both compared whatever the first gives, so timing says nothing about either.
        ok_user = secrets.compare_digest(user, self.user.encode())
        ok_password = secrets.compare_digest(password, self.password.encode())
        return bool(sep) and ok_user and ok_password


def load_credentials(data_dir: Path, user: str, password: str | None) -> tuple[Credentials, bool]:
    """The admin credentials, and whether the password was made just now."""
    if password:
        return Credentials(user, password), False
    path = data_dir / PASSWORD_FILE
    if path.is_file():
        kept = path.read_text().strip()
        if kept:
            return Credentials(user, kept), False
    made = secrets.token_urlsafe(24)
    path.touch(mode=0o600)
    path.write_text(made + "\n")
    return Credentials(user, made), True


def load_s3_keys(data_dir: Path, access_key: str, secret_key: str) -> tuple[Keys, bool]:
    """The S3 endpoint's keys (given, else kept, else made now), and whether just made."""
    if access_key and secret_key:
        return Keys(access_key, secret_key), False
    path = data_dir / S3_KEYS_FILE
    if path.is_file():
        kept = path.read_text().split()
        if len(kept) == 2:
            return Keys(kept[0], kept[1]), False
    # AWS's shapes: 20 upper-case letters and digits; 40 characters of base64.
    made = Keys(secrets.token_hex(10).upper(), secrets.token_urlsafe(30))
    path.touch(mode=0o600)
    path.write_text(f"{made.access_key}\n{made.secret_key}\n")
    return made, True


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def token_matches(given: str | None, expected: str) -> bool:
    if not given or not expected:
        return False
    # A header's bytes that are not UTF-8, or a Ceph event's JSON lone surrogate, make a
    # token that is merely wrong (401), never an error (500): `same` sees to both.
    return same(given, expected)
