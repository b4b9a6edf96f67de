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
    assert scrubber.removed == 0


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


def pair(username: str, password: str) -> cpb.CredentialDetails:
    return cpb.CredentialDetails(username_password=cpb.UsernamePassword(username=username, password=password))
