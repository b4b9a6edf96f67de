"""Redaction of log records: the last line of defence, should a secret ever reach a log call.

Code must never log a secret; this filter masks what slips through anyway, in the formatted message (so also in the
arguments), in exception and stack text, and in string ``extra`` fields. It masks:

- API tokens ``cv0c01.<public id>.<secret>``: the ``cv0c01.<public id>`` part (the token's id) stays;
- PEM private key blocks (also when cut off before their END line);
- ``password=…``, ``secret=…``, ``token=…``, ``api_key=…`` and similar pairs, ``"password": "…"`` in JSON or reprs;
- ``Authorization``/``Api-Token``/``X-Api-Key`` header values and ``Api-Token …``/``Bearer …``/``Basic …`` values;
- the password in URLs (``postgresql://user:password@host``);
- values registered at run time with :func:`register_secret` (for example the database password).

Shared by the vault and the engine worker (the worker never imports ``vault_service``).
"""

from __future__ import annotations

import logging
import re
import threading

from credvault.formats import TOKEN_PREFIX, TOKEN_PUBLIC_ID_CHARS

__all__ = ["MASK", "RedactionFilter", "redact", "register_secret"]

MASK = "<redacted>"

_TOKEN = re.compile(rf"\b({TOKEN_PREFIX}\.[A-Za-z0-9]{{{TOKEN_PUBLIC_ID_CHARS}}})\.[A-Za-z0-9]+")
_PEM = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)([^@\s/]+)(@)")
# A header name and its separator (": ", "=", or "', '" as in a metadata tuple's repr), then a value: after a
# scheme any value, without one only a long token-like value (so "authorization: expected ..." stays readable).
_HEADER = re.compile(
    r"""(\b(?:proxy-)?authorization|\bx-api-(?:key|token)|\bapi-token(?=["']?\s*[:=,]))"""
    r"""((?:["']\s*[:=,]|\s*[:=])\s*["']?)"""
    r"""(?:((?:Api-Token|Bearer|Basic|Token|Digest)\s+)([^\s"',;)\]}]+)|([A-Za-z0-9._~+/=-]{16,}))""",
    re.IGNORECASE,
)
# A scheme alone ("Api-Token cv0c01…", "Bearer eyJ…"), with a token-like value (not a word like "token").
# A value whose end a registered secret already masked is masked whole (its beginning may be secret too).
_SCHEME = re.compile(
    r"\b(Api-Token|Bearer)(\s+)([A-Za-z0-9._~+/=-]{8,}(?:<redacted>)?)(?![A-Za-z0-9._~+/=<-])", re.IGNORECASE
)
_KEYWORDS = r"(?:password|passwd|passphrase|secret|token|api[_-]?key|private[_-]?key|credentials?)"
# key=value anywhere; key: value only with a quoted key (JSON, dict reprs), so prose like "token: malformed" stays.
_KV = re.compile(
    rf"""(?P<key>\b[\w.-]*{_KEYWORDS}\s*=\s*|["'][\w.-]*{_KEYWORDS}["']\s*[:=]\s*)"""
    r"""(?P<value>b?"(?:[^"\\]|\\.)*"|b?'(?:[^'\\]|\\.)*'|[^\s,;&)\]}]+)""",
    re.IGNORECASE,
)

_known_lock = threading.Lock()
_known: set[str] = set()
_known_pattern: re.Pattern[str] | None = None
MIN_KNOWN_LENGTH = 6
MAX_KNOWN = 1000


def register_secret(value: str | None) -> None:
    """Mask this value wherever it appears in a log record from now on (values shorter than 6 characters are
    ignored: they would mask ordinary words). At most 1000 values are kept."""
    global _known_pattern
    if value is None or len(value) < MIN_KNOWN_LENGTH:
        return
    with _known_lock:
        # the registry grows by one at a time and stops at MAX_KNOWN: == is >= here. Equivalent.
        if value in _known or len(_known) >= MAX_KNOWN:  # pragma: no mutate: GtE_Eq
            return
        _known.add(value)
        alternatives = sorted(_known, key=len, reverse=True)
        _known_pattern = re.compile("|".join(re.escape(v) for v in alternatives))


_MASKED_TOKEN = re.compile(rf"{TOKEN_PREFIX}\.[A-Za-z0-9]{{{TOKEN_PUBLIC_ID_CHARS}}}\.{re.escape(MASK)}")


def _keep_masked(value: str) -> bool:
    """Masked already (redacting again changes nothing): the mask alone or an API token's public id with its secret
    masked (the id is not secret), quoted or not. Any other value that only ends with the mask (a registered secret
    at its end) is masked whole: what comes before may be secret too."""
    bare = value.removeprefix("b").strip("\"'")
    return bare == MASK or _MASKED_TOKEN.fullmatch(bare) is not None


def _header(m: re.Match[str]) -> str:
    name, sep, scheme, value = m.group(1), m.group(2), m.group(3) or "", m.group(4) or m.group(5)
    return m.group(0) if _keep_masked(value) else f"{name}{sep}{scheme}{MASK}"


def _scheme(m: re.Match[str]) -> str:
    return m.group(0) if _keep_masked(m.group(3)) else f"{m.group(1)}{m.group(2)}{MASK}"


def _kv(m: re.Match[str]) -> str:
    value = m.group("value")
    if _keep_masked(value):
        return m.group(0)
    opening = re.match(r"""b?["']""", value)  # a quoted value keeps its quotes (and bytes prefix)
    prefix = opening.group(0) if opening else ""
    return f"{m.group('key')}{prefix}{MASK}{prefix[-1:]}"


def redact(text: str) -> str:
    """``text`` with every secret-looking part masked."""
    if _known_pattern is not None:
        text = _known_pattern.sub(MASK, text)
    text = _PEM.sub(rf"-----BEGIN \1PRIVATE KEY-----{MASK}-----END \1PRIVATE KEY-----", text)
    text = _TOKEN.sub(rf"\1.{MASK}", text)
    text = _URL_PASSWORD.sub(rf"\1{MASK}\3", text)
    text = _HEADER.sub(_header, text)
    text = _SCHEME.sub(_scheme, text)
    return _KV.sub(_kv, text)


# Attributes every LogRecord has; anything else on a record came in through ``extra=``. (A record's attribute names
# do not depend on its level or line number; and the filter leaves the standard ones as they are either way: by
# the time it looks at them the message is redacted, the arguments and the exception object gone, every other one a
# name, a number or a path, which redaction returns unchanged, so leaving out or taking in message and asctime,
# formatted later, changes no output. Equivalent.)
_RECORD = logging.LogRecord("", 0, "", 0, "", None, None).__dict__  # pragma: no mutate: NumberReplacer
_FORMATTED = {"message", "asctime"}  # set by formatters
STANDARD_ATTRIBUTES = frozenset(_RECORD) | _FORMATTED  # pragma: no mutate: BitOr_Sub, BitOr_BitAnd, BitOr_BitXor
_DONE = "_credvault_redacted"


class RedactionFilter(logging.Filter):
    """Attach to a handler: every record it emits is redacted first (message with its arguments merged in,
    exception and stack text, string extras). Never drops a record."""

    def __init__(self) -> None:
        super().__init__()
        self._exceptions = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _DONE, False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad arguments: keep what there is, masked
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self._exceptions.formatException(record.exc_info)
            record.exc_info = None  # no formatter may render the exception again from the object
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(record.__dict__.items()):
            # and for or takes the standard attributes in too: unchanged by redaction (see above). Equivalent.
            if name in STANDARD_ATTRIBUTES or name.startswith("_"):  # pragma: no mutate: OrWithAnd
                continue
            if isinstance(value, str):
                setattr(record, name, redact(value))
            elif not isinstance(value, bool | int | float | type(None)):
                setattr(record, name, redact(str(value)))
        setattr(record, _DONE, True)
        return True
