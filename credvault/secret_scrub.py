"""Scrubbing known secret values out of execution results, in every form a value takes on its way out.

Results are readable by people who may not see the credentials, so neither the engine worker (which builds the
text) nor the vault (which stores it) lets a value through. Both know the values: the worker those it holds for
the monitor, the vault those it resolved for it (:func:`secrets_of` gives them for one credential, each with the
placeholder shown in its place). A value is found in any of these forms, also mixed within one occurrence:

- as is, and case-folded (a resolver lowercases host names);
- percent-encoded, with upper- or lower-case hex, and ``+`` for a space (yarl leaves ``+`` as is in a query);
- JSON-escaped (``\\u00f6``, ``\\"``, ``\\/``) and HTML-escaped (``&amp;``, ``&#246;``, ``&#xf6;``);
- IDNA (``xn--…`` of a host label), and the value without its non-ASCII characters (punycode keeps those first);
- base64, standard and URL-safe, at any alignment inside a longer base64 text (a Basic header ``user:password``);
- cut: a text that ends with the beginning of a value (a clipped string) loses that beginning too.

How: the text is decoded once into a canonical form (escapes decoded, case folded, ``+`` and space alike) that
remembers where each character came from, and each value, canonical too, is searched in it. No pattern is compiled
per value, so the vault can scrub every result it receives. Scrub before clipping: a clipped value is found only
at the very end of a text (from ``MIN_CUT`` characters).
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Iterable, Mapping

from credvault.formats import placeholder
from credvault.v1 import credentials_pb2

__all__ = ["MIN_CUT", "Scrubber", "secrets_of"]

# The first this many characters of a value at the very end of a text count as that value, cut.
MIN_CUT = 4
# Shorter base64 fragments of a value are not looked for (they would be found in ordinary words).
_MIN_BASE64 = 6
_ESCAPE = re.compile(
    r"(?P<pct>(?:%[0-9A-Fa-f]{2})+)"
    r"|\\u(?P<high>[dD][89abAB][0-9A-Fa-f]{2})\\u(?P<low>[dD][c-fC-F][0-9A-Fa-f]{2})"
    r"|\\u(?P<unit>[0-9A-Fa-f]{4})"
    r"|\\(?P<short>[\"\\/bfnrt])"
    r"|&(?:#(?P<dec>[0-9]{1,7})|#[xX](?P<hex>[0-9A-Fa-f]{1,6})|(?P<named>amp|lt|gt|quot|apos));"
)
_JSON_SHORT = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_FINAL_SIGMA, _SIGMA = "\N{GREEK SMALL LETTER FINAL SIGMA}", "\N{GREEK SMALL LETTER SIGMA}"
_HTML_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def secrets_of(credential_id: str, details: credentials_pb2.CredentialDetails) -> dict[str, str]:
    """The secret values of one credential, each with the placeholder to show in its place."""
    kind = details.WhichOneof("details")
    if kind == "token":
        return {details.token.token: placeholder(credential_id)}
    if kind == "username_password":
        pair = details.username_password
        password = placeholder(credential_id, "password")
        return {
            pair.username: placeholder(credential_id, "username"),
            pair.password: password,
            f"{pair.username}:{pair.password}": password,  # what a Basic header encodes
        }
    # Another kind reaching the branch below (is not for ==: WhichOneof's string is not the literal's object) finds
    # no key lines and gives {} as the end does. Equivalent.
    if kind == "certificate":  # pragma: no mutate: Eq_IsNot
        key_lines = details.certificate.private_key_pem.decode("ascii", "replace").splitlines()
        return {line: placeholder(credential_id) for line in key_lines if line and not line.startswith("-----")}
    return {}


def _lower(text: str) -> str:
    """Lower-cased one character for one (so positions still map): a character that lower-cases to two stays. The
    final sigma is read as sigma: str.lower() writes a capital one final at a word's end and plain elsewhere, so a
    value ending in a capital sigma would not be found inside a longer word."""
    lowered = text.lower()
    # The one-for-one path gives what text.lower() gives, but for the final sigma that replace() below undoes: taking
    # it for texts of equal length too (>=, is not) changes nothing (a few characters lower-case to two, none to
    # none). Equivalent.
    if len(lowered) != len(text):  # pragma: no mutate: NotEq_Gt, NotEq_GtE, NotEq_IsNot
        # one-for-one and nothing lower-cases to nothing: <= 1 is == 1 here. Equivalent.
        lowered = "".join(low if len(low := c.lower()) == 1 else c for c in text)  # pragma: no mutate: Eq_LtE
    return lowered.replace(_FINAL_SIGMA, _SIGMA)


def _fold(text: str) -> str:
    """Case-folded, with ``+`` as a space; one character for one (so positions still map)."""
    return _lower(text).replace("+", " ")


def _percent_decoded(run: str, start: int) -> Iterable[tuple[str, int, int]]:
    """The characters of a run of ``%XX`` (UTF-8, a stray byte as Latin-1), each with its span in the text."""
    raw = bytes.fromhex(run.replace("%", ""))
    i = 0
    while i < len(raw):  # pragma: no mutate: Lt_NotEq -- a character decodes only whole: i lands on len(raw)
        lead = raw[i]
        # The size a lead byte announces. A byte that leads no valid UTF-8 (0x80 to 0xC1, 0xF5 and above) gets one too:
        # its bytes fail to decode whatever the size and are read one by one below, so 0x80 given size 1 (<= for <,
        # or 129 for 0x80) is the same. Equivalent.
        size = (
            1
            if lead < 0x80  # pragma: no mutate: Lt_LtE, NumberReplacer
            else 2
            if lead < 0xE0
            else 3
            if lead < 0xF0
            else 4
        )
        try:
            char = raw[i : i + size].decode("utf-8")
        except UnicodeDecodeError:
            char, size = chr(lead), 1
        yield char, start + 3 * i, start + 3 * (i + size)
        i += size


def _unescaped(m: re.Match[str]) -> Iterable[tuple[str, int, int]]:
    if m["pct"]:
        return _percent_decoded(m["pct"], m.start())
    if m["high"]:
        # high is 0xD800 to 0xDBFF and low 0xDC00 to 0xDFFF (the pattern says so): high % 0xD800 and high ^ 0xD800
        # are high - 0xD800, low % 0xDC00 is low - 0xDC00. Equivalent.
        pair = (
            (int(m["high"], 16) - 0xD800) * 0x400  # pragma: no mutate: Sub_Mod, Sub_BitXor
            + int(m["low"], 16)
            - 0xDC00  # pragma: no mutate: Sub_Mod
            + 0x10000
        )
        char = chr(pair)
    elif m["unit"]:
        char = chr(int(m["unit"], 16))
    elif m["short"]:
        char = _JSON_SHORT[m["short"]]
    elif m["dec"] or m["hex"]:
        point = int(m["dec"]) if m["dec"] else int(m["hex"], 16)
        char = chr(point) if point <= 0x10FFFF else "\ufffd"
    else:
        char = _HTML_NAMED[m["named"]]
    return ((char, m.start(), m.end()),)


class _Canonical:
    """A text decoded once (percent, JSON and HTML escapes) and folded, with each character's span in the text."""

    __slots__ = ("ends", "starts", "text")

    def __init__(self, text: str) -> None:
        chars: list[str] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        done = 0
        for m in _ESCAPE.finditer(text):
            self._literal(text, done, m.start(), chars)
            for char, start, end in _unescaped(m):
                chars.append(char)
                self.starts.append(start)
                self.ends.append(end)
            done = m.end()
        self._literal(text, done, len(text), chars)
        self.text = _fold("".join(chars))

    def _literal(self, text: str, start: int, end: int, chars: list[str]) -> None:
        chars.append(text[start:end])
        self.starts.extend(range(start, end))
        self.ends.extend(range(start + 1, end + 1))


def _base64_fragments(value: str) -> set[str]:
    """The parts of base64 texts that depend on the value alone, for each of the three alignments it can have."""
    raw = value.encode()
    out = set()
    # range(4) adds offset 3, a whole group before the value: the fragment of offset 0 again. Equivalent (the pragma
    # skips range(2) too).
    for offset in range(3):  # pragma: no mutate: NumberReplacer
        encoded = base64.b64encode(bytes(offset) + raw).decode()
        start = -(-offset * 4 // 3)  # characters holding bits of the padding before the value
        end = (offset + len(raw)) * 8 // 6  # characters made of whole value bits
        fragment = encoded[start:end]
        if len(fragment) >= _MIN_BASE64:
            out |= {fragment, fragment.replace("+", "-").replace("/", "_")}
    return out


def _whole_forms(value: str) -> set[str]:
    """Forms that change the value as a whole, not character by character (searched in the text as it is)."""
    forms = _base64_fragments(value)
    if not value.isascii():
        basic = "".join(c for c in value if c.isascii())
        if len(basic) >= MIN_CUT:
            forms.add(basic)
        for codec in ("idna", "punycode"):
            with contextlib.suppress(UnicodeError):  # not a valid host label: nothing encodes it so
                forms.add(value.encode(codec).decode("ascii"))
    return {f.lower() for f in forms if f}


def _occurrences(haystack: str, needle: str) -> Iterable[int]:
    at = haystack.find(needle)
    while at >= 0:
        yield at
        at = haystack.find(needle, at + 1)


class _Secret:
    __slots__ = ("canonical", "shown", "whole")

    def __init__(self, value: str, shown: str) -> None:
        self.shown = shown
        # as it would read once decoded, and as is (a value that looks escaped itself, e.g. "a%41b")
        self.canonical = {_Canonical(value).text, _fold(value)}
        self.whole = sorted(_whole_forms(value), key=len, reverse=True)


class Scrubber:
    """Replaces the given secret values (value -> what to show instead) in texts; counts what it replaced in
    ``removed``. Holds the values for as long as it lives: make one per execution or per result."""

    __slots__ = ("_secrets", "removed")

    def __init__(self, secrets: Mapping[str, str]) -> None:
        values = sorted((v for v in secrets if v), key=len, reverse=True)  # longest first: a pair before its password
        self._secrets = [_Secret(v, secrets[v]) for v in values]
        self.removed = 0

    def scrub(self, text: str) -> str:
        # and for or: with values and no text, or a text and no values, the search below finds nothing. Equivalent.
        if not self._secrets or not text:  # pragma: no mutate: OrWithAnd
            return text
        canonical = _Canonical(text)
        lowered = _lower(text)
        spans: list[tuple[int, int, str]] = []
        for secret in self._secrets:
            for needle in secret.canonical:
                for at in _occurrences(canonical.text, needle):
                    _add(spans, canonical.starts[at], canonical.ends[at + len(needle) - 1], secret.shown)
            for form in secret.whole:
                for at in _occurrences(lowered, form):
                    _add(spans, at, at + len(form), secret.shown)
        self._cut(canonical, len(text), spans)
        if not spans:
            return text
        self.removed += len(spans)
        out, done = [], 0
        for start, end, shown in sorted(spans):
            out += [text[done:start], shown]
            done = end
        out.append(text[done:])
        return "".join(out)

    def _cut(self, canonical: _Canonical, length: int, spans: list[tuple[int, int, str]]) -> None:
        """The longest beginning of a value (from MIN_CUT characters) that the text ends with, up to its end."""
        body = canonical.text.rstrip()
        body = body.removesuffix("…").removesuffix("...").rstrip()  # the mark of a clipped text
        for secret in self._secrets:
            for needle in secret.canonical:
                least = min(MIN_CUT, len(needle) - 1)
                if least < 2:
                    continue
                # A search from further back (the pragmas' mutants: len(body) >> ..., and (len(body) - len(needle)) ^ 1,
                # | 1, >> 1, - 1, + 0 (NumberReplacer skips + 2 too), // 1, * 1, ** 1) finds the same: a beginning of
                # the value lies within its length of the end, and one further back overlaps a whole occurrence,
                # already replaced. Equivalent.
                at = body.find(
                    needle[0],
                    max(
                        0,
                        len(body)
                        - len(needle)  # pragma: no mutate: Sub_RShift
                        + 1,  # pragma: no mutate: BitXor, BitOr, RShift, Sub, FloorDiv, Mul, Pow, NumberReplacer
                    ),
                )
                while 0 <= at <= len(body) - least:
                    if needle.startswith(body[at:]):
                        _add(spans, canonical.starts[at], length, secret.shown + "…")
                        return
                    at = body.find(needle[0], at + 1)

    def __repr__(self) -> str:
        return f"Scrubber({len(self._secrets)} values, redacted)"


def _add(spans: list[tuple[int, int, str]], start: int, end: int, shown: str) -> None:
    """Adds a span unless it overlaps one found before (of a longer value)."""
    if all(end <= s or start >= e for s, e, _ in spans):
        spans.append((start, end, shown))
