"""Process logs, text and JSON, go through the redaction filter: a canary secret in a log call's arguments, in its
message and in an exception comes out masked at every level; JSON lines parse."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from credvault import log_redaction
from credvault.log_redaction import MASK, RedactionFilter, redact, register_secret
from credvault.logs import configure_logging

PUBLIC_ID = "cv0c01.CANARYAAAAAAAAAAAAAAAAAA"
TOKEN_SECRET = "SECRETB" + "2" * 57
TOKEN = f"{PUBLIC_ID}.{TOKEN_SECRET}"
PASSWORD = "pw-canary-5d1e"
BEARER = "eyJhbGciOiJIUzI1NiJ9.canary.sig"
REGISTERED = "registered-canary-91b7"
KEY_BODY = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgCANARYKEYBODY"
PEM = f"-----BEGIN PRIVATE KEY-----\n{KEY_BODY}\n-----END PRIVATE KEY-----\n"
SECRETS = (TOKEN_SECRET, PASSWORD, BEARER, REGISTERED, KEY_BODY)
LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, list[str]]]:
    root = logging.getLogger()
    level = root.level
    out = io.StringIO()
    formats: list[str] = []
    yield out, formats
    for handler in [h for h in root.handlers if getattr(h, "_credvault_handler", False)]:
        root.removeHandler(handler)
    root.setLevel(level)


def _log_everything(log: logging.Logger) -> None:
    secret_args = {"password": PASSWORD, "other": "kept"}
    for level in LEVELS:
        name = logging.getLevelName(level)
        # in the arguments
        log.log(level, "%s args: token %s, %r, key %s, value %s", name, TOKEN, secret_args, PEM, REGISTERED)
        # in the message itself
        log.log(level, f"{name} message: password={PASSWORD} authorization: Bearer {BEARER} token={TOKEN} {PEM}")
        # in an exception, with its traceback
        try:
            raise ValueError(f"bad call: ('authorization', 'Api-Token {TOKEN}') secret={REGISTERED} {PEM}")
        except ValueError:
            log.log(level, "%s exception", name, exc_info=True)
        log.log(level, "%s extra", name, extra={"request": f"password={PASSWORD}", "header": f"Api-Token {TOKEN}"})


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_level_is_redacted(fmt: str, capture: tuple[io.StringIO, list[str]]) -> None:
    out, _ = capture
    register_secret(REGISTERED)
    configure_logging("DEBUG", fmt, stream=out)
    _log_everything(logging.getLogger("credvault.test.canary"))
    text = out.getvalue()
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked in {fmt} logs"
    assert PUBLIC_ID in text  # a token's id stays readable
    assert MASK in text
    if fmt == "json":
        records = [json.loads(line) for line in text.splitlines()]
        assert len(records) == 4 * len(LEVELS)
        assert {r["level"] for r in records} == {logging.getLevelName(level) for level in LEVELS}
        exceptions = [r for r in records if r["message"].endswith("exception")]
        assert len(exceptions) == len(LEVELS)
        assert all("ValueError: bad call" in r["exception"] and "Traceback" in r["exception"] for r in exceptions)
        assert all(r["logger"] == "credvault.test.canary" and r["time"].endswith("+00:00") for r in records)
        extras = [r for r in records if r["message"].endswith("extra")]
        assert all(r["request"] == f"password={MASK}" for r in extras)
        assert all("'other': 'kept'" in r["message"] for r in records if "args" in r["message"])
    else:
        for level in LEVELS:
            assert f" {logging.getLevelName(level)} credvault.test.canary: " in text
        assert text.count("ValueError: bad call") == len(LEVELS)


def test_handlers_after_ours_see_the_redacted_record(capture: tuple[io.StringIO, list[str]]) -> None:
    """The filter rewrites the record (message, exception text, no exception object), so a handler that runs after
    ours cannot render the secret again."""
    out, _ = capture
    configure_logging("INFO", "text", stream=out)
    later: list[str] = []

    class Later(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            later.append(logging.Formatter().format(record))

    root = logging.getLogger()
    handler = Later()
    root.addHandler(handler)
    try:
        try:
            raise RuntimeError(f"password={PASSWORD}")
        except RuntimeError:
            logging.getLogger("credvault.test.order").exception("failed with %s", TOKEN)
    finally:
        root.removeHandler(handler)
    assert len(later) == 1
    assert "RuntimeError: password=" in later[0]
    for text in (later[0], out.getvalue()):
        assert PASSWORD not in text
        assert TOKEN_SECRET not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("the token lacks the scope credentialVault.read", "the token lacks the scope credentialVault.read"),
        (
            "malformed authorization: expected 'Api-Token <token>'",
            "malformed authorization: expected 'Api-Token <token>'",
        ),
        ("token_id=cv0c01.AAAAAAAAAAAAAAAAAAAAAAAA", "token_id=cv0c01.AAAAAAAAAAAAAAAAAAAAAAAA"),
        ("postgresql://app:hunter2x@db:5432/vault", f"postgresql://app:{MASK}@db:5432/vault"),
        ("x-api-key: abcdefghijklmnopqrstuvwxyz", f"x-api-key: {MASK}"),
        ('{"client_secret": "a b", "id": 3}', f'{{"client_secret": "{MASK}", "id": 3}}'),
        ("?api_key=abc&page=2", f"?api_key={MASK}&page=2"),
        (
            "b'-----BEGIN EC PRIVATE KEY-----\\nMHcCAQ",
            f"b'-----BEGIN EC PRIVATE KEY-----{MASK}-----END EC PRIVATE KEY-----",
        ),
    ],
)
def test_redact_keeps_prose_and_masks_values(text: str, expected: str) -> None:
    assert redact(text) == expected


class _LoginFailed(Exception):
    """An exception whose arguments carry a secret beside a harmless message."""


def _extras() -> dict[str, object]:
    """One ``extra`` field per shape a value can take in a log record, each carrying a secret."""
    return {
        "nested": {"request": {"headers": {"authorization": f"Api-Token {TOKEN}"}, "password": PASSWORD}},
        "listed": [{"user": "alice", "secret": REGISTERED}, ("token", f"token={TOKEN}")],
        "raw": f"POST /login password={PASSWORD}".encode(),
        "error": _LoginFailed("login failed", {"password": PASSWORD}, f"Bearer {BEARER}"),
        "key": [PEM.encode()],
    }


def _json_records(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_every_shape_of_an_extra_value_is_redacted(capture: tuple[io.StringIO, list[str]]) -> None:
    """Non-string ``extra`` values (nested dicts and lists, bytes, exceptions with args) are masked too: the JSON
    formatter would otherwise render them in full."""
    out, _ = capture
    register_secret(REGISTERED)
    configure_logging("INFO", "json", stream=out)
    logging.getLogger("credvault.test.shapes").info("request failed", extra=_extras())
    (record,) = _json_records(out)
    for name in _extras():
        rendered = str(record[name])
        for secret in SECRETS:
            assert secret not in rendered, f"{secret!r} leaked in the {name!r} extra"
        assert MASK in rendered, f"nothing masked in the {name!r} extra"
    assert "alice" in str(record["listed"])
    assert "login failed" in str(record["error"])
    assert PUBLIC_ID in str(record["nested"])


def test_non_secret_scalars_stay_as_they_are(capture: tuple[io.StringIO, list[str]]) -> None:
    out, _ = capture
    configure_logging("INFO", "json", stream=out)
    logging.getLogger("credvault.test.shapes").info("done", extra={"count": 3, "ok": True, "ratio": 0.5, "gone": None})
    (record,) = _json_records(out)
    assert (record["count"], record["ok"], record["ratio"], record["gone"]) == (3, True, 0.5, None)


def _log_with_stack(log: logging.Logger) -> None:
    log.warning("where am I", stack_info=True)  # this source line is in the stack text: password=pw-canary-5d1e


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_stack_info_is_redacted(fmt: str, capture: tuple[io.StringIO, list[str]]) -> None:
    out, _ = capture
    configure_logging("INFO", fmt, stream=out)
    _log_with_stack(logging.getLogger("credvault.test.stack"))
    text = out.getvalue()
    assert "Stack (most recent call last)" in text
    assert "_log_with_stack" in text
    assert PASSWORD not in text
    assert f"password={MASK}" in text


def test_exception_arguments_and_mapping_arguments_are_redacted(capture: tuple[io.StringIO, list[str]]) -> None:
    """An exception passed as a log argument (its args rendered by %r) and a single mapping used for %(name)s."""
    out, _ = capture
    configure_logging("INFO", "json", stream=out)
    log = logging.getLogger("credvault.test.args")
    log.info("failed: %r", _LoginFailed("login failed", {"password": PASSWORD}, f"Bearer {BEARER}"))
    log.info("user %(user)s with secret=%(secret)s", {"user": "alice", "secret": REGISTERED + "-x"})
    first, second = _json_records(out)
    assert "login failed" in str(first["message"])
    assert PASSWORD not in str(first["message"])
    assert BEARER not in str(first["message"])
    assert second["message"] == f"user alice with secret={MASK}"


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty registry of secrets to mask, for this test only (it is process-wide)."""
    monkeypatch.setattr(log_redaction, "_known", set())
    monkeypatch.setattr(log_redaction, "_known_pattern", None)


@pytest.mark.usefixtures("fresh_registry")
def test_registered_values_from_six_characters_longest_first() -> None:
    register_secret("abcde")  # too short: it would mask ordinary words
    register_secret("abcdef")
    register_secret(None)
    assert redact("abcde abcdef") == f"abcde {MASK}"
    register_secret("abcdefghij")  # the longer one is masked whole, not as "abcdef" + "ghij"
    assert redact("xx abcdefghij xx") == f"xx {MASK} xx"


@pytest.mark.usefixtures("fresh_registry")
def test_at_most_max_known_values_are_registered() -> None:
    for n in range(999):  # the documented bound: at most 1000 values
        register_secret(f"filler-{n:06d}")
    register_secret("the-last-one-kept")
    register_secret("the-last-one-kept")  # again: no place taken
    register_secret("one-too-many")
    assert redact("the-last-one-kept one-too-many") == f"{MASK} one-too-many"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def.ghi", f"Authorization: Bearer {MASK}"),
        ("('authorization', 'Api-Token cv0c01x')", f"('authorization', 'Api-Token {MASK}')"),
        (f"Authorization: Bearer {MASK}", f"Authorization: Bearer {MASK}"),
        ("sent Bearer eyJhbGciOiJIUzI1NiJ9 twice", f"sent Bearer {MASK} twice"),
        (f"sent Bearer {MASK} twice", f"sent Bearer {MASK} twice"),
        ("password=b'hunter22' next", f"password=b'{MASK}' next"),
        (f"password={MASK} next", f"password={MASK} next"),
        (f"password=b'{MASK}' next", f"password=b'{MASK}' next"),
        # a value whose end a registered secret masked: the rest goes too
        (f"password=abc{MASK} next", f"password={MASK} next"),
        (f"Authorization: Bearer abc{MASK}", f"Authorization: Bearer {MASK}"),
        (f"sent Bearer abcdefgh{MASK} twice", f"sent Bearer {MASK} twice"),
        # an API token's public id stays readable, alone and after a header
        (f"sent Api-Token {PUBLIC_ID}.{MASK} twice", f"sent Api-Token {PUBLIC_ID}.{MASK} twice"),
        (f"Authorization: Api-Token '{PUBLIC_ID}.{MASK}'", f"Authorization: Api-Token '{PUBLIC_ID}.{MASK}'"),
    ],
)
def test_headers_schemes_and_quoted_values_keep_their_shape(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_a_record_filtered_twice_is_still_emitted_once_redacted() -> None:
    """Two handlers with the filter see one record: the second must not drop it, nor mask it again."""
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "password=%s", (PASSWORD,), None)
    redaction = RedactionFilter()
    assert redaction.filter(record)
    assert redaction.filter(record)
    assert record.getMessage() == f"password={MASK}"


def test_a_record_with_bad_arguments_is_kept_and_masked() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, f"password={PASSWORD} %s %s", ("only one",), None)
    assert RedactionFilter().filter(record)
    message = record.getMessage()
    assert f"password={MASK}" in message
    assert "only one" in message
    assert PASSWORD not in message


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_an_exception_reaches_the_output_through_the_filter_alone(
    fmt: str, capture: tuple[io.StringIO, list[str]]
) -> None:
    """The filter renders the exception itself (masked) and drops the object: no handler before it did (pytest's
    own handlers on the root logger do, so the record goes to the handler directly here)."""
    out, _ = capture
    handler = configure_logging("DEBUG", fmt, stream=out)
    try:
        raise ValueError(f"bad call: password={PASSWORD}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("credvault.test", logging.ERROR, __file__, 1, "failed", None, exc_info)
    handler.handle(record)
    text = out.getvalue()
    assert "Traceback" in text
    assert f"ValueError: bad call: password={MASK}" in text
    assert PASSWORD not in text
    assert record.exc_info is None


def test_a_record_filtered_twice_is_redacted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second filter (a second handler) finds the record done and does no work again."""
    calls: list[str] = []
    real = log_redaction.redact

    def counting(text: str) -> str:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(log_redaction, "redact", counting)
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "password=%s", (PASSWORD,), None)
    record.request = {"password": PASSWORD}
    redaction = RedactionFilter()
    assert redaction.filter(record)
    done = len(calls)
    assert done == 2  # the message and the extra
    assert redaction.filter(record)
    assert len(calls) == done
