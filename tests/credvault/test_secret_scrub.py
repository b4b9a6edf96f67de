"""The scrub of secret values from execution results (credvault.secret_scrub), shared by the engine worker and the
vault: every form a value takes on its way out is found, also mixed, and a value cut at the end of a text too."""

from __future__ import annotations

import base64
import html
import json
import urllib.parse

import pytest
import yarl

from credvault.secret_scrub import MIN_CUT, Scrubber, secrets_of
from credvault.v1 import credentials_pb2 as cpb

# spaces, '+', '/', '&', '"', non-ASCII, upper and lower case: every escape has something to do
PASSWORD = 'Pa ss+wÖrd/x&y"Z9'
SHOWN = "{{CREDENTIALS_VAULT-00000000000000A1.password}}"


def every_form(value: str) -> dict[str, str]:
    """The forms of a value the scrub must find, by name (the tests of each encoding, and the leak tests)."""
    quoted = urllib.parse.quote(value, safe="")
    return {
        "as is": value,
        "lower-cased": value.lower(),
        "upper-cased": value.upper(),
        "percent-encoded": quoted,
        "percent-encoded, lower-case hex": quoted.lower(),
        "percent-encoded, path": urllib.parse.quote(value),
        "plus for space": urllib.parse.quote_plus(value),
        "yarl query": yarl.URL(f"http://h/?p={value}").raw_query_string.removeprefix("p="),
        "JSON": json.dumps(value)[1:-1],
        "JSON, ASCII": json.dumps(value, ensure_ascii=True)[1:-1],
        "JSON, slashes escaped": json.dumps(value)[1:-1].replace("/", "\\/"),
        "HTML": html.escape(value),
        "HTML, numeric": "".join(f"&#{ord(c)};" for c in value),
        "HTML, hex": "".join(f"&#x{ord(c):X};" for c in value),
        "base64": base64.b64encode(value.encode()).decode(),
        "URL-safe base64": base64.urlsafe_b64encode(value.encode()).decode(),
    }


@pytest.mark.parametrize(("name", "form"), list(every_form(PASSWORD).items()))
def test_every_form_of_a_value_is_replaced(name: str, form: str) -> None:
    scrubber = Scrubber({PASSWORD: SHOWN})
    text = f"request 1 failed at <{form}> today"
    assert scrubber.scrub(text) == f"request 1 failed at <{SHOWN}> today", name
    assert scrubber.removed == 1


def test_forms_mixed_within_one_occurrence() -> None:
    mixed = "pA+ss%2bw\\u00d6rd\\/x&amp;y&#34;z9"  # case, plus, percent, JSON and HTML in one value
    assert Scrubber({PASSWORD: SHOWN}).scrub(f"<{mixed}>") == f"<{SHOWN}>"


def test_base64_at_any_alignment_as_in_a_basic_header() -> None:
    scrubber = Scrubber(secrets_of("CREDENTIALS_VAULT-00000000000000A1", pair("alice", PASSWORD)))
    header = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert scrubber.scrub(f"Authorization: {header}") == f"Authorization: Basic {SHOWN}"
    for prefix in ("a", "ab", "abc"):  # the value's bytes start at each of the three positions in a base64 group
        encoded = base64.b64encode(f"{prefix}{PASSWORD}tail".encode()).decode()
        scrubbed = scrubber.scrub(encoded)
        assert SHOWN in scrubbed
        # at most the three characters mixing the prefix or the tail with the value's first or last bits are kept
        assert len(encoded) - (len(scrubbed) - len(SHOWN)) >= len(PASSWORD.encode()) * 4 // 3 - 2


def test_idna_and_punycode_host_labels() -> None:
    value = "geheimnis-wört"
    idna = value.encode("idna").decode()
    scrubber = Scrubber({value: "{{T}}"})
    assert scrubber.scrub(f"cannot connect to {idna}.invalid:80") == "cannot connect to {{T}}.invalid:80"
    # inside a longer label punycode keeps the ASCII characters first: those go too
    label = f"api-{value}".encode("idna").decode()
    assert "geheimnis-wrt" not in scrubber.scrub(f"cannot connect to {label}.invalid")


@pytest.mark.parametrize("kept", [MIN_CUT, 10, 23, len(PASSWORD) - 1])
@pytest.mark.parametrize("mark", ["", "…", "...", " … "])
def test_a_value_cut_at_the_end_of_a_long_text(kept: int, mark: str) -> None:
    value = "s3cr3t-0123456789-abcdefghijklmnop"  # 33 characters, as the cut seen in the wild
    long_text = "x" * 480 + " GET /login?key="
    scrubber = Scrubber({value: "{{T}}"})
    assert scrubber.scrub(long_text + value[:kept] + mark) == long_text + "{{T}}…"
    assert scrubber.scrub(long_text + urllib.parse.quote(value[:kept]).upper() + mark) == long_text + "{{T}}…"


def test_a_beginning_elsewhere_or_too_short_is_kept() -> None:
    scrubber = Scrubber({"s3cr3t-value": "{{T}}"})
    assert scrubber.scrub("s3cr3 is not at the end") == "s3cr3 is not at the end"
    assert scrubber.scrub("ends with s3c") == "ends with s3c"  # fewer than MIN_CUT characters
    assert scrubber.scrub("ends s3c") == "ends s3c"
    assert scrubber.removed == 0
    assert scrubber.scrub("ends with s3cr") == "ends with {{T}}…"  # MIN_CUT is four


def test_a_value_that_looks_escaped_itself() -> None:
    scrubber = Scrubber({"a%41b-c&amp;d": "{{T}}"})
    assert scrubber.scrub("raw a%41b-c&amp;d, encoded a%2541b-c%26amp%3Bd") == "raw {{T}}, encoded {{T}}"


def test_the_longest_value_wins_and_every_occurrence_goes() -> None:
    secrets = secrets_of("CREDENTIALS_VAULT-00000000000000A1", pair("alice", "pw-alice-1"))
    scrubber = Scrubber(secrets)
    text = "alice:pw-alice-1 then pw-alice-1 and ALICE"
    expected = f"{SHOWN} then {SHOWN} and {{{{CREDENTIALS_VAULT-00000000000000A1.username}}}}"
    assert scrubber.scrub(text) == expected
    assert scrubber.removed == 3


def test_nothing_to_scrub() -> None:
    assert Scrubber({}).scrub("anything") == "anything"
    scrubber = Scrubber({"": "{{empty}}", "value-1": "{{V}}"})  # an empty value would match everywhere: ignored
    assert scrubber.scrub("") == ""
    assert scrubber.scrub("nothing secret here") == "nothing secret here"
    assert scrubber.removed == 0
    assert "value-1" not in repr(scrubber)


def test_secrets_of_each_credential_type() -> None:
    cid = "CREDENTIALS_VAULT-00000000000000A1"
    assert secrets_of(cid, cpb.CredentialDetails(token=cpb.Token(token="tok"))) == {"tok": f"{{{{{cid}}}}}"}
    assert secrets_of(cid, pair("u", "p")) == {"u": f"{{{{{cid}.username}}}}", "p": SHOWN, "u:p": SHOWN}
    key = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqG\nSM49AwEHBG0wawIB\n-----END PRIVATE KEY-----\n"
    cert = cpb.CredentialDetails(certificate=cpb.CertificateDetails(private_key_pem=key))
    assert set(secrets_of(cid, cert)) == {"MIGHAgEAMBMGByqG", "SM49AwEHBG0wawIB"}
    public = cpb.CredentialDetails(public_certificate=cpb.PublicCertificate(pem=b"public"))
    assert secrets_of(cid, public) == {}
    assert secrets_of(cid, cpb.CredentialDetails()) == {}  # no contents


def pair(username: str, password: str) -> cpb.CredentialDetails:
    return cpb.CredentialDetails(username_password=cpb.UsernamePassword(username=username, password=password))


def test_a_character_that_lower_cases_to_two_moves_nothing() -> None:
    """'İ' lower-cases to two characters: the value after it is still found, and replaced at its own place."""
    scrubber = Scrubber({"s3cret-val": "{{T}}"})
    assert scrubber.scrub("İstanbul s3cret-val end") == "İstanbul {{T}} end"
    assert scrubber.scrub("İSTANBUL S3CRET-VAL end") == "İSTANBUL {{T}} end"


def test_a_stray_percent_byte_before_a_percent_encoded_value() -> None:
    """Bytes that are not UTF-8 are read one by one (as Latin-1), and what follows them is decoded as usual."""
    scrubber = Scrubber({"s3cret-val": "{{T}}"})
    encoded = urllib.parse.quote("s3cret-val", safe="")
    assert scrubber.scrub(f"%FF{encoded} end") == "%FF{{T}} end"
    assert scrubber.scrub(f"%C3{encoded}") == "%C3{{T}}"  # a lead byte whose continuation is missing


@pytest.mark.parametrize("value", ["pw-\U0001f600-x9", "pw-\U0002070e-x9"])
def test_a_character_outside_the_bmp_as_a_json_surrogate_pair(value: str) -> None:
    escaped = json.dumps(value)[1:-1]  # a pair of \\u escapes
    assert Scrubber({value: "{{T}}"}).scrub(f'{{"p": "{escaped}"}}') == '{"p": "{{T}}"}'


def test_a_short_value_cut_at_the_end_keeps_at_least_two_characters() -> None:
    """A value shorter than MIN_CUT counts as cut from all but its last character, and never from one."""
    scrubber = Scrubber({"xyz": "{{T}}", "qw": "{{Q}}", "wxyz": "{{W}}"})
    assert scrubber.scrub("ends with xy") == "ends with {{T}}…"
    assert scrubber.scrub("ends with wxy") == "ends with {{W}}…"
    assert scrubber.scrub("ends with q") == "ends with q"
    assert scrubber.scrub("ends with x") == "ends with x"


@pytest.mark.parametrize(
    "value",
    ["/s3cr3t/", "ö-s3cr3t-ö", "ह-s3cr3t-ह", "߿-s3cr3t-߿", "€-s3cr3t-€", "ｱ-s3cr3t-ｱ", "\U0001f600-s3cr3t-\U0001f600"],
)
def test_a_percent_encoded_value_within_a_longer_run_of_escapes(value: str) -> None:
    """The value begins and ends with characters of 1 to 4 UTF-8 bytes, percent-encoded in one run with escaped
    characters before and after it: exactly the value's escapes are replaced."""
    scrubber = Scrubber({value: "{{T}}"})
    encoded = urllib.parse.quote(value, safe="")
    assert scrubber.scrub(f"q=%2F%2F{encoded}%2F%2F&x") == "q=%2F%2F{{T}}%2F%2F&x"
    assert scrubber.scrub(f"q=%C3%A4{encoded.lower()}%E2%82%AC") == "q=%C3%A4{{T}}%E2%82%AC"
    assert scrubber.scrub(f"q=%7F{encoded}%7F%7F") == "q=%7F{{T}}%7F%7F"  # the last one-byte character


def test_a_text_that_is_only_the_beginning_of_a_value() -> None:
    scrubber = Scrubber({"s3cr3t-value": "{{T}}"})
    assert scrubber.scrub("text ss3cr3t-va") == "text s{{T}}…"  # the value's first character twice: the second
    assert scrubber.scrub("s3cr3t-va") == "{{T}}…"
    assert scrubber.scrub("s3cr3t-valu…") == "{{T}}…"


def test_base64_is_looked_for_from_six_characters_of_it() -> None:
    """A shorter base64 fragment of a value is not looked for: it would be found in ordinary words."""
    five, four = (base64.b64encode(v.encode()).decode() for v in ("abcde", "abcd"))
    assert Scrubber({"abcde": "{{T}}"}).scrub(f"x {five} y") == "x {{T}}U= y"  # YWJjZG: six characters
    assert Scrubber({"abcd": "{{T}}"}).scrub(f"x {four} y") == f"x {four} y"  # YWJjZ: five


def test_the_value_without_its_non_ascii_characters_from_min_cut_of_them() -> None:
    """Punycode keeps a label's ASCII characters first: those are looked for when there are MIN_CUT (four) or more."""
    assert Scrubber({"wörd1": "{{T}}"}).scrub("label wrd1 here") == "label {{T}} here"
    assert Scrubber({"wöd1": "{{T}}"}).scrub("label wd1 here") == "label wd1 here"


def test_values_side_by_side_are_both_replaced() -> None:
    """The longer value is found first; the shorter one after or before it, touching it or not, goes too."""
    scrubber = Scrubber({"alpha-111": "{{A}}", "bravo-2": "{{B}}"})
    assert scrubber.scrub("<alpha-111bravo-2>") == "<{{A}}{{B}}>"
    assert scrubber.scrub("<bravo-2alpha-111>") == "<{{B}}{{A}}>"
    assert scrubber.scrub("<bravo-2 and alpha-111>") == "<{{B}} and {{A}}>"
    assert scrubber.removed == 6


@pytest.mark.parametrize(
    ("prefix", "scrubbed"), [("", "{{T}}dGFpbA=="), ("a", "YX{{T}}XRhaWw="), ("ab", "YWJ{{T}}V0YWls")]
)
def test_base64_keeps_only_the_characters_mixing_other_bits(prefix: str, scrubbed: str) -> None:
    """At each alignment exactly the characters made of the value's bits alone go."""
    encoded = base64.b64encode(f"{prefix}s3cr3t-valuetail".encode()).decode()
    assert Scrubber({"s3cr3t-value": "{{T}}"}).scrub(encoded) == scrubbed


def test_a_character_reference_beyond_unicode_is_kept_as_it_is() -> None:
    text = "&#x110000; &#1114112; s3cr3t-value &#x10FFFF;"
    assert Scrubber({"s3cr3t-value": "{{T}}"}).scrub(text) == "&#x110000; &#1114112; {{T}} &#x10FFFF;"


def test_an_occurrence_right_after_one_inside_a_longer_value() -> None:
    """'bb' at 7 lies inside the longer value (kept as it is); the one at 8 right after it goes."""
    scrubber = Scrubber({"alpha-1b": "{{A}}", "bb": "{{B}}"})
    assert scrubber.scrub("alpha-1bbb") == "{{A}}{{B}}"


def test_the_last_code_point_as_a_character_reference() -> None:
    assert Scrubber({"k\U0010ffffey-123": "{{T}}"}).scrub("a k&#x10FFFF;ey-123 b") == "a {{T}} b"


def test_a_value_that_looks_escaped_is_found_cut_as_it_is() -> None:
    """'%41%42' decodes to 'ab', too short to be looked for cut; as it is it is long enough, and found cut. (The
    two forms are searched in a set's order: sixteen values make it all but sure one comes short form first.)"""
    for i in range(16):
        a, b = f"{0x41 + i:02X}", f"{0x42 + i:02X}"
        assert Scrubber({f"%{a}%{b}": "{{T}}"}).scrub(f"x %25{a}%25") == "x {{T}}…", (a, b)


def test_a_character_that_lower_cases_to_two_hides_no_base64() -> None:
    """A text with an 'İ' anywhere was searched as it is for the forms of a value as a whole (base64, IDNA), which
    are lower-cased: upper-case base64 there was never found."""
    encoded = base64.b64encode(b"s3cret-val").decode()
    assert Scrubber({"s3cret-val": "{{T}}"}).scrub(f"İ x {encoded} y") == "İ x {{T}}A== y"


def test_a_stray_percent_byte_right_before_an_escaped_value() -> None:
    """A byte that is not UTF-8 stands for one character only: the escape right after it is read on its own."""
    scrubber = Scrubber({"/s3cret": "{{T}}"})
    assert scrubber.scrub("%FF%2Fs3cret end") == "%FF{{T}} end"
    assert scrubber.scrub("%FF%FE%2Fs3cret") == "%FF%FE{{T}}"


@pytest.mark.parametrize("lead", ["\U00040000", "\U0005a5a5", "\U000e0100", "\U0010fffd"])
def test_a_four_byte_character_led_by_f1_to_f4_in_a_percent_run(lead: str) -> None:
    """Characters from U+40000 are led by F1 to F4: they are four bytes too, and decoded whole."""
    value = f"{lead}s3cret"
    assert lead.encode()[0] in range(0xF1, 0xF5)
    assert Scrubber({value: "{{T}}"}).scrub(f"q={urllib.parse.quote(value, safe='')}&x") == "q={{T}}&x"


@pytest.mark.parametrize("before", ["", "%41", "%41%42", "%41%42%43"])
def test_a_percent_encoded_value_ending_at_each_position_of_its_run(before: str) -> None:
    """The replaced span ends exactly after the value's last escape, wherever it falls in the run (an odd or even
    byte position), and the escapes after it stay."""
    value = "s3c/"  # ends with an escape: %2F
    encoded = urllib.parse.quote(value, safe="")
    assert Scrubber({value: "{{T}}"}).scrub(f"x{before}{encoded}%2F%2F") == f"x{before}{{{{T}}}}%2F%2F"
    run = "".join(f"%{ord(c):02X}" for c in value)  # every character escaped: the value's end at byte 3 + offset
    assert Scrubber({value: "{{T}}"}).scrub(f"x{before}{run}%2Fy") == f"x{before}{{{{T}}}}%2Fy"


def test_a_percent_run_longer_than_256_bytes() -> None:
    """A long run of escapes is decoded to its end (no bound on the run's length)."""
    value = "s3cret/value"
    text = "%2F" * 300 + urllib.parse.quote(value, safe="") + "%2F" * 300
    assert Scrubber({value: "{{T}}"}).scrub(text) == "%2F" * 300 + "{{T}}" + "%2F" * 300


# Greek capital and small alpha, capital sigma, small sigma and final sigma
ALPHA, SMALL_ALPHA = "\N{GREEK CAPITAL LETTER ALPHA}", "\N{GREEK SMALL LETTER ALPHA}"
SIGMA, SMALL_SIGMA, FINAL_SIGMA = (
    "\N{GREEK CAPITAL LETTER SIGMA}",
    "\N{GREEK SMALL LETTER SIGMA}",
    "\N{GREEK SMALL LETTER FINAL SIGMA}",
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        # a value ending in a capital sigma, inside a longer word (lower-cased: final in the value alone, not there)
        (f"pw-{ALPHA}{SIGMA}", f"a pw-{ALPHA}{SIGMA}b c"),
        (f"pw-{SMALL_ALPHA}{FINAL_SIGMA}", f"a PW-{ALPHA}{SIGMA} c"),  # typed with a final sigma, found in capitals
        (f"pw-{SMALL_ALPHA}{SMALL_SIGMA}", f"a pw-{SMALL_ALPHA}{FINAL_SIGMA} c"),  # and the other way round
        (f"{SIGMA}{SIGMA}-pw", f"x{SIGMA}{SIGMA}-pw"),
    ],
)
def test_a_greek_sigma_is_one_letter_in_every_position(value: str, text: str) -> None:
    """str.lower() writes a capital sigma as the final sigma at the end of a word and as the small sigma elsewhere:
    the scrub reads both as one letter, so a value is found whatever its sigma's neighbours in the text or in the
    value alone."""
    scrubbed = Scrubber({value: "{{T}}"}).scrub(text)
    assert "{{T}}" in scrubbed
    assert "pw" not in scrubbed.lower()
