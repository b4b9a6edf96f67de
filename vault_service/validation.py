"""Input checks shared by the domain services. Each raises InvalidArgument naming the field; none echoes a secret."""

from __future__ import annotations

import re

from vault_service.errors import InvalidArgument

MAX_NAME = 200
MAX_DESCRIPTION = 2000
MAX_USERNAME = 128
MAX_SHARED_USERS = 100
MAX_SECRET_FIELD = 16 * 1024
MAX_APPS = 100
MAX_APP_ID = 200

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+\-]*$")
_APP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def text(field: str, value: str, *, max_len: int, required: bool, multiline: bool = False) -> str:
    stripped = value.strip()
    if required and not stripped:
        raise InvalidArgument(field, "must not be empty")
    if len(value) > max_len:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most {max_len} are allowed")
    bad = _CONTROL.search(value.replace("\n", "").replace("\t", "") if multiline else value)
    if bad:
        raise InvalidArgument(field, "must not contain control characters")
    return stripped


def username(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if len(value) > MAX_USERNAME:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most {MAX_USERNAME} are allowed")
    if not _USERNAME.match(value):
        raise InvalidArgument(field, "may hold letters, digits and . _ @ + - only, starting with a letter or digit")
    return value


def app_id(field: str, value: str) -> str:
    if len(value) > MAX_APP_ID or not _APP_ID.match(value):
        raise InvalidArgument(field, f"must be 1-{MAX_APP_ID} characters of letters, digits and . _ : -")
    return value


def secret_field(field: str, value: str, *, required: bool, max_len: int = MAX_SECRET_FIELD) -> str:
    """Checks a secret's length only; the value never appears in a message."""
    if required and not value:
        raise InvalidArgument(field, "must not be empty")
    if len(value) > max_len:
        raise InvalidArgument(field, f"is too long; at most {max_len} characters are allowed")
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL characters")
    return value
