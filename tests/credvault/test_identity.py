"""The engine identity both processes share (credvault.identity): the SPIFFE ID's strict form, the rules for its
parts, and reading it from a certificate; every error is a ValueError that says which rule failed."""

from __future__ import annotations

import dataclasses
import datetime

import pytest
from cryptography import x509

from credvault.identity import EngineIdentity, identity_from_certificate
from tests.local_pki import odd_leaf

TD = "credvault.local"
ENGINE = EngineIdentity(TD, "loc-1", "engine-7")
UTC = datetime.UTC
LOCATION = "loc-1"
ENGINE_ID = "eng-1"
SPIFFE = f"spiffe://{TD}/location/{LOCATION}/engine/{ENGINE_ID}"


# --- identities --------------------------------------------------------------------------------------------------


def test_identity_round_trip() -> None:
    assert ENGINE.spiffe_uri == "spiffe://credvault.local/location/loc-1/engine/engine-7"
    assert EngineIdentity.from_uri(ENGINE.spiffe_uri) == ENGINE
    longest = EngineIdentity("a-b.example_x", "a" * 63, "0" * 63)
    assert EngineIdentity.from_uri(longest.spiffe_uri) == longest


@pytest.mark.parametrize("bad", ["", "-a", "a-", "A", "a_b", "a.b", "a b", "a\n", "\na", "a" * 64, "ä", "a/b"])
def test_ids_are_validated(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^location_id: "):
        EngineIdentity(TD, bad, "e1")
    with pytest.raises(ValueError, match=r"^engine_id: "):
        EngineIdentity(TD, "l1", bad)


@pytest.mark.parametrize("bad", ["", "Credvault.local", "a..b", ".a", "a.", "a:443", "a/b", "u@a", "a b", "a\n"])
def test_trust_domain_is_validated(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^trust_domain: "):
        EngineIdentity(bad, "l1", "e1")


GOOD = "spiffe://credvault.local/location/l1/engine/e1"
BAD_URIS = [
    "",
    "spiffe://credvault.local/location/l1/engine/e1/",  # trailing slash
    "spiffe://credvault.local/location/l1/engine/e1/extra",  # extra segment
    "spiffe://credvault.local/location/l1/engine/e1/x/y",
    "spiffe://credvault.local/x/location/l1/engine/e1",  # extra leading segment
    "spiffe://credvault.local//location/l1/engine/e1",  # empty segment
    "spiffe://credvault.local/location/l1",  # no engine
    "spiffe://credvault.local/location/l1/engine",
    "spiffe://credvault.local/location//engine/e1",  # empty id
    "spiffe://credvault.local/location/l1/engine/",
    "spiffe://credvault.local/engine/e1/location/l1",  # swapped
    "spiffe://credvault.local/Location/l1/engine/e1",
    "spiffe://credvault.local/location/./engine/e1",
    "spiffe://credvault.local/location/../engine/e1",
    "spiffe://credvault.local",
    "spiffe://credvault.local/",
    "spiffe:///location/l1/engine/e1",  # empty trust domain
    "spiffe:/credvault.local/location/l1/engine/e1",
    "spiffe:credvault.local/location/l1/engine/e1",
    "https://credvault.local/location/l1/engine/e1",  # wrong scheme
    "SPIFFE://credvault.local/location/l1/engine/e1",
    "spiffe://CREDVAULT.local/location/l1/engine/e1",
    "spiffe://credvault.local:8443/location/l1/engine/e1",  # port
    "spiffe://user@credvault.local/location/l1/engine/e1",  # user info
    "spiffe://credvault..local/location/l1/engine/e1",
    "spiffe://credvault.local/location/l1/engine/e1?x=1",  # query
    "spiffe://credvault.local/location/l1/engine/e1#f",  # fragment
    "spiffe://credvault.local/location/L1/engine/e1",  # bad ids
    "spiffe://credvault.local/location/l1/engine/-e1",
    "spiffe://credvault.local/location/l1/engine/e1-",
    "spiffe://credvault.local/location/l_1/engine/e1",
    "spiffe://credvault.local/location/l%31/engine/e1",  # percent-encoding
    "spiffe://credvault.local/location/l1/engine/" + "e" * 64,
    GOOD + "\n",
    " " + GOOD,
    GOOD + " ",
    "spiffe://credvault.local/location/l1/engine/e1\x00",
]


def test_good_uri_parses() -> None:
    assert EngineIdentity.from_uri(GOOD) == EngineIdentity(TD, "l1", "e1")


@pytest.mark.parametrize("bad", BAD_URIS)
def test_from_uri_is_strict(bad: str) -> None:
    with pytest.raises(ValueError, match="SPIFFE ID"):
        EngineIdentity.from_uri(bad)


# --- from a certificate ----------------------------------------------------------------------------------------


URI = x509.UniformResourceIdentifier


@pytest.mark.parametrize(
    ("cert", "reason"),
    [
        (odd_leaf(None), "no subjectAltName"),
        (odd_leaf([x509.DNSName("engine.example")]), "0 URI"),
        (odd_leaf([URI(GOOD), URI("spiffe://credvault.local/location/l1/engine/e2")]), "2 URI"),
        (odd_leaf([URI(GOOD), URI("https://example.com/")]), "2 URI"),
        (odd_leaf([URI("spiffe://other.example/location/l1/engine/e1")]), "trust domain 'other.example'"),
        # any other trust domain, also one that sorts before the expected one or is a prefix of it
        (odd_leaf([URI("spiffe://aaa.example/location/l1/engine/e1")]), "trust domain 'aaa.example'"),
        (odd_leaf([URI("spiffe://credvault.loca/location/l1/engine/e1")]), "trust domain 'credvault.loca'"),
        (odd_leaf([URI("spiffe://credvault.local/location/l1/engine/e1/x")]), "not an engine SPIFFE ID"),
        (odd_leaf([URI("https://credvault.local/location/l1/engine/e1")]), "not an engine SPIFFE ID"),
        (odd_leaf([URI(GOOD)], ca=True), "CA certificate"),
        (b"not a certificate", "not an X.509 certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not an X.509 certificate"),
    ],
)
def test_identity_from_certificate_errors(cert: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        identity_from_certificate(cert, TD)


def test_identity_from_certificate_accepts_one_uri_among_other_sans() -> None:
    cert = odd_leaf([x509.DNSName("engine.example"), URI(GOOD)])
    assert identity_from_certificate(cert, TD) == EngineIdentity(TD, "l1", "e1")


# --- as the engine reads its own ------------------------------------------------------------------------------


def test_spiffe_id_round_trip() -> None:
    identity = EngineIdentity.from_uri(SPIFFE)
    assert identity == EngineIdentity(TD, LOCATION, ENGINE_ID)
    assert identity.spiffe_uri == SPIFFE


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://credvault.local/location/loc-1/engine/eng-1/",
        "spiffe://credvault.local/location/loc-1/engine/",
        "spiffe://credvault.local/location//engine/eng-1",
        "spiffe://Credvault.local/location/loc-1/engine/eng-1",
        "spiffe://credvault.local/location/LOC-1/engine/eng-1",
        "spiffe://credvault.local:443/location/loc-1/engine/eng-1",
        "spiffe://user@credvault.local/location/loc-1/engine/eng-1",
        "spiffe://credvault.local/location/loc-1/engine/eng-1?x=1",
        "spiffe://credvault.local/location/loc-1/engine/eng-1#f",
        "spiffe://credvault.local/location/loc%2D1/engine/eng-1",
        "spiffe://credvault.local/location/loc-1/engine/eng-1/extra",
        "spiffe://credvault.local/location/-loc/engine/eng-1",
        "https://credvault.local/location/loc-1/engine/eng-1",
        "spiffe:///location/loc-1/engine/eng-1",
    ],
)
def test_spiffe_id_parsing_is_strict(uri: str) -> None:
    with pytest.raises(ValueError, match=r"SPIFFE ID|not a valid"):
        EngineIdentity.from_uri(uri)


def test_without_a_trust_domain_any_is_read() -> None:
    cert = odd_leaf([URI("spiffe://other.example/location/l1/engine/e1")])
    assert identity_from_certificate(cert) == EngineIdentity("other.example", "l1", "e1")


def test_a_trust_domain_of_up_to_255_characters() -> None:
    longest = ".".join(["a" * 63] * 4)  # 255 characters
    assert EngineIdentity(longest, "l1", "e1").trust_domain == longest
    with pytest.raises(ValueError, match=r"^trust_domain: .* at most 255 characters"):
        EngineIdentity(longest + "b", "l1", "e1")


def test_an_identity_cannot_be_changed() -> None:
    """An identity checked once stays what was checked (a session keeps it for its life)."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        ENGINE.location_id = "loc-2"  # type: ignore[misc]


def test_a_leaf_without_basic_constraints_is_an_engine_certificate() -> None:
    """X.509 reads a certificate without basicConstraints as no CA: its SPIFFE ID is read."""
    cert = odd_leaf([x509.UniformResourceIdentifier(SPIFFE)], ca=None)
    assert identity_from_certificate(cert, TD) == EngineIdentity(TD, LOCATION, ENGINE_ID)
