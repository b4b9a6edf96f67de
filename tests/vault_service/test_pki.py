"""The engine PKI: CAs and certificates, files, the `credvault pki` commands, and real mutual TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import pathlib
import shutil
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from credvault.identity import EngineIdentity, identity_from_certificate
from vault_service import pki
from vault_service.errors import InvalidArgument
from vault_service.pki import IssuedCertificate

TD = pki.TRUST_DOMAIN_DEFAULT
ENGINE = EngineIdentity(TD, "loc-1", "engine-7")
UTC = datetime.UTC


@pytest.fixture(scope="module")
def engine_ca() -> IssuedCertificate:
    return pki.create_ca("test engine CA", trust_domain=TD)


@pytest.fixture(scope="module")
def server_ca() -> IssuedCertificate:
    return pki.create_ca("test server CA")


def cert_of(issued: IssuedCertificate) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert_pem)


def ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def verification_store(*cas: IssuedCertificate) -> verification.Store:
    return verification.Store([cert_of(ca) for ca in cas])


# --- the vault's validators (InvalidArgument naming the field) ----------------------------------------------------


@pytest.mark.parametrize("bad", ["", "-a", "a-", "A", "a_b", "a.b", "a b", "a\n", "\na", "a" * 64, "ä", "a/b"])
def test_ids_are_validated_for_callers(bad: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        pki.validate_engine_id(bad)
    assert exc.value.field == "engine_id"
    with pytest.raises(InvalidArgument) as exc:
        pki.validate_location_id(bad)
    assert exc.value.field == "location_id"


@pytest.mark.parametrize("bad", ["", "Credvault.local", "a..b", ".a", "a.", "a:443", "a/b", "u@a", "a b", "a\n"])
def test_trust_domain_is_validated_for_callers(bad: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        pki.validate_trust_domain(bad)
    assert exc.value.field == "trust_domain"


# --- certificates ------------------------------------------------------------------------------------------------


def test_create_ca(engine_ca: IssuedCertificate) -> None:
    cert = cert_of(engine_ca)
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert isinstance(bc.value, x509.BasicConstraints)
    assert bc.value.ca
    assert bc.value.path_length == 0
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert isinstance(ku.value, x509.KeyUsage)
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert ski == x509.SubjectKeyIdentifier.from_public_key(public)
    assert isinstance(public.curve, ec.SECP256R1)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(cert)  # self-signed
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test engine CA"
    assert pki.ca_trust_domain(engine_ca) == TD
    assert engine_ca.chain_pem == engine_ca.cert_pem
    assert b"BEGIN PRIVATE KEY" in engine_ca.key_pem
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3650) <= lifetime <= datetime.timedelta(days=3650, minutes=10)


def test_serials_are_random(engine_ca: IssuedCertificate) -> None:
    serials = {cert_of(pki.issue_engine_certificate(engine_ca, ENGINE)).serial_number for _ in range(5)}
    assert len(serials) == 5
    assert all(s.bit_length() > 64 for s in serials)


def test_server_certificate(server_ca: IssuedCertificate) -> None:
    issued = pki.issue_server_certificate(
        server_ca, ["localhost", "vault.example.com", "127.0.0.1", "::1", "localhost"]
    )
    cert = cert_of(issued)
    san = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "vault.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]  # type: ignore[call-overload]
    ca_ski = ext(cert_of(server_ca), x509.SubjectKeyIdentifier).value
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert isinstance(ca_ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.digest
    assert issued.chain_pem == issued.cert_pem + server_ca.cert_pem
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(UTC)
    assert datetime.timedelta(days=396) < lifetime <= datetime.timedelta(days=397)
    # cryptography's RFC 5280 / CA-B Forum verifier accepts it for both names and IPs
    builder = verification.PolicyBuilder().store(verification_store(server_ca))
    for subject in (x509.DNSName("vault.example.com"), x509.IPAddress(ipaddress.ip_address("::1"))):
        chain = builder.build_server_verifier(subject).verify(cert, [])
        assert chain[-1] == cert_of(server_ca)
    with pytest.raises(verification.VerificationError):
        builder.build_server_verifier(x509.DNSName("other.example.com")).verify(cert, [])


@pytest.mark.parametrize("bad", ["", "UPPER.example", "a..b", "*.com", "exa mple", "-a.b", "a_b.c", "x" * 64 + ".c"])
def test_server_hostnames_are_validated(server_ca: IssuedCertificate, bad: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        pki.issue_server_certificate(server_ca, [bad])
    assert exc.value.field == "hostname"


def test_server_needs_a_hostname(server_ca: IssuedCertificate) -> None:
    with pytest.raises(InvalidArgument):
        pki.issue_server_certificate(server_ca, [])


def test_engine_certificate(engine_ca: IssuedCertificate) -> None:
    issued = pki.issue_engine_certificate(engine_ca, ENGINE)
    cert = cert_of(issued)
    assert cert.subject.rfc4514_string() == "CN=engine-7"
    san = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert list(san) == [x509.UniformResourceIdentifier(ENGINE.spiffe_uri)]  # the SPIFFE URI and nothing else
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    bc = ext(cert, x509.BasicConstraints).value
    assert isinstance(bc, x509.BasicConstraints)
    assert not bc.ca
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(UTC)
    assert datetime.timedelta(days=29) < lifetime <= datetime.timedelta(days=30)
    cert.verify_directly_issued_by(cert_of(engine_ca))
    verifier = verification.PolicyBuilder().store(verification_store(engine_ca)).build_client_verifier()
    verified = verifier.verify(cert, [])
    assert verified.subjects == [x509.UniformResourceIdentifier(ENGINE.spiffe_uri)]
    # the identity comes back from PEM, a PEM chain and DER alike
    der = cert.public_bytes(serialization.Encoding.DER)
    for data in (issued.cert_pem, issued.chain_pem, der):
        assert identity_from_certificate(data, TD) == ENGINE


def test_engine_certificate_validity_overrides(engine_ca: IssuedCertificate) -> None:
    start = datetime.datetime(2020, 1, 1, tzinfo=UTC)
    cert = cert_of(pki.issue_engine_certificate(engine_ca, ENGINE, not_before=start, not_after=start.replace(day=2)))
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == start.replace(day=2)
    with pytest.raises(ValueError, match="timezone-aware"):
        pki.issue_engine_certificate(engine_ca, ENGINE, not_after=datetime.datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="later than"):
        pki.issue_engine_certificate(engine_ca, ENGINE, not_before=start, not_after=start)
    with pytest.raises(ValueError, match="outlive its CA"):
        pki.issue_engine_certificate(engine_ca, ENGINE, days=3651)
    with pytest.raises(InvalidArgument):
        pki.issue_engine_certificate(engine_ca, ENGINE, days=0)


def test_issuing_checks_the_ca(engine_ca: IssuedCertificate, server_ca: IssuedCertificate) -> None:
    leaf = pki.issue_engine_certificate(engine_ca, ENGINE)
    with pytest.raises(ValueError, match="not a CA certificate"):
        pki.issue_engine_certificate(leaf, ENGINE)
    mixed = IssuedCertificate(engine_ca.cert_pem, server_ca.key_pem, engine_ca.chain_pem)
    with pytest.raises(ValueError, match="does not belong"):
        pki.issue_engine_certificate(mixed, ENGINE)


def test_repr_never_shows_the_key(engine_ca: IssuedCertificate) -> None:
    issued = pki.issue_engine_certificate(engine_ca, ENGINE)
    body = b"".join(issued.key_pem.splitlines()[1:-1]).decode()
    for text in (repr(issued), str(issued), f"{issued}", repr([issued])):
        assert "PRIVATE KEY" not in text
        assert body[:16] not in text
        assert issued.key_pem.hex()[:32] not in text
        assert "key_pem=<redacted>" in text
        assert "CN=engine-7" in text
    garbage = IssuedCertificate(b"junk", b"-----BEGIN PRIVATE KEY-----\nsecret\n", b"junk")
    assert "secret" not in repr(garbage)


# --- files -------------------------------------------------------------------------------------------------------


def mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_round_trip(tmp_path: pathlib.Path, engine_ca: IssuedCertificate) -> None:
    directory = tmp_path / "pki"
    issued = pki.issue_engine_certificate(engine_ca, ENGINE)
    pem, key = pki.write_files(directory, "engine-loc-1-engine-7", issued)
    assert (pem, key) == (directory / "engine-loc-1-engine-7.pem", directory / "engine-loc-1-engine-7.key")
    assert mode(key) == 0o600
    assert mode(pem) == 0o644
    assert mode(directory) == 0o700
    assert pem.read_bytes() == issued.chain_pem
    assert pki.read_files(directory, "engine-loc-1-engine-7") == issued
    assert sorted(p.name for p in directory.iterdir()) == ["engine-loc-1-engine-7.key", "engine-loc-1-engine-7.pem"]
    pki.write_files(directory, "engine-ca", engine_ca)
    assert pki.load_ca(directory) == engine_ca


def test_key_file_is_created_0600_and_replaced_atomically(
    tmp_path: pathlib.Path, engine_ca: IssuedCertificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        opened.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", spy)
    old_umask = os.umask(0)  # even with no umask, the key is never readable by others
    try:
        pki.write_files(tmp_path, "ca", engine_ca)
    finally:
        os.umask(old_umask)
    monkeypatch.undo()
    key_opens = [(p, f, m) for p, f, m in opened if ".ca.key." in p]
    assert len(key_opens) == 1
    path, flags, created = key_opens[0]
    assert created == 0o600
    assert flags & os.O_CREAT
    assert flags & os.O_EXCL  # a new temporary file, never an existing one
    assert pathlib.Path(path).parent == tmp_path
    assert not pathlib.Path(path).exists()  # renamed into place
    assert mode(tmp_path / "ca.key") == 0o600

    # a failed replace leaves the old file alone and no temporary file behind
    before = (tmp_path / "ca.key").read_bytes()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        pki.write_files(tmp_path, "ca", pki.create_ca("another"))
    monkeypatch.undo()
    assert (tmp_path / "ca.key").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key", "ca.pem"]


def test_existing_key_file_with_loose_mode_is_tightened_on_rewrite(
    tmp_path: pathlib.Path, engine_ca: IssuedCertificate
) -> None:
    (tmp_path / "ca.key").write_bytes(b"old")
    (tmp_path / "ca.key").chmod(0o644)
    pki.write_files(tmp_path, "ca", engine_ca)
    assert mode(tmp_path / "ca.key") == 0o600


def test_load_ca_refusals(tmp_path: pathlib.Path, engine_ca: IssuedCertificate, server_ca: IssuedCertificate) -> None:
    pki.write_files(tmp_path, "engine-ca", engine_ca)
    (tmp_path / "engine-ca.key").chmod(0o640)
    with pytest.raises(ValueError, match="readable by others"):
        pki.load_ca(tmp_path)
    pki.write_files(tmp_path, "leaf", pki.issue_engine_certificate(engine_ca, ENGINE))
    with pytest.raises(ValueError, match="not a CA certificate"):
        pki.load_ca(tmp_path, "leaf")
    (tmp_path / "leaf.key").write_bytes(server_ca.key_pem)
    with pytest.raises(ValueError, match="does not belong"):
        pki.read_files(tmp_path, "leaf")
    with pytest.raises(FileNotFoundError):
        pki.load_ca(tmp_path, "missing")
    for bad_name in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="file name"):
            pki.read_files(tmp_path, bad_name)


# --- mutual TLS --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MtlsServer:
    port: int
    engine_ca: IssuedCertificate
    server_ca: IssuedCertificate
    server: IssuedCertificate


async def _echo_identity(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    pems = list(context.auth_context().get("x509_pem_cert", []))
    try:
        identity = identity_from_certificate(pems[0] if pems else b"", TD)
    except ValueError as exc:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"no engine identity: {exc}")
    return identity.spiffe_uri.encode()


@pytest.fixture
async def mtls(engine_ca: IssuedCertificate, server_ca: IssuedCertificate) -> AsyncIterator[MtlsServer]:
    issued = pki.issue_server_certificate(server_ca, ["localhost", "127.0.0.1"])
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "t.T",
        {"Echo": grpc.unary_unary_rpc_method_handler(_echo_identity)},
    )
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials(
        [(issued.key_pem, issued.chain_pem)], root_certificates=engine_ca.cert_pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        yield MtlsServer(port, engine_ca, server_ca, issued)
    finally:
        await server.stop(None)


async def call(srv: MtlsServer, client: IssuedCertificate | None) -> bytes:
    creds = grpc.ssl_channel_credentials(
        root_certificates=srv.server_ca.cert_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.chain_pem if client else None,
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{srv.port}", creds) as channel:
        response: bytes = await channel.unary_unary("/t.T/Echo", None, None)(b"ping", timeout=10)
        return response


async def test_mtls_engine_certificate_is_accepted_and_identified(mtls: MtlsServer) -> None:
    client = pki.issue_engine_certificate(mtls.engine_ca, ENGINE)
    assert await call(mtls, client) == ENGINE.spiffe_uri.encode()
    other = EngineIdentity(TD, "loc-2", "e9")
    assert await call(mtls, pki.issue_engine_certificate(mtls.engine_ca, other)) == other.spiffe_uri.encode()


async def test_mtls_certificate_from_another_ca_fails(mtls: MtlsServer) -> None:
    stranger = pki.create_ca("stranger CA", trust_domain=TD)
    client = pki.issue_engine_certificate(stranger, ENGINE)  # same identity, wrong CA
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call(mtls, client)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_server_certificate_is_no_engine_certificate(mtls: MtlsServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call(mtls, mtls.server)  # the vault's own certificate, from the server CA
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_client_without_certificate_fails(mtls: MtlsServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call(mtls, None)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_expired_engine_certificate_fails(mtls: MtlsServer) -> None:
    now = datetime.datetime.now(UTC)
    expired = pki.issue_engine_certificate(
        mtls.engine_ca, ENGINE, not_before=now - datetime.timedelta(days=2), not_after=now - datetime.timedelta(days=1)
    )
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call(mtls, expired)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_other_trust_domain_is_refused_by_the_identity_check(mtls: MtlsServer) -> None:
    client = pki.issue_engine_certificate(mtls.engine_ca, EngineIdentity("other.example", "l1", "e1"))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call(mtls, client)  # the handshake passes (same CA); the identity check does not
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "other.example" in (exc.value.details() or "")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH")
async def test_openssl_s_client_negotiates_tls13(mtls: MtlsServer, tmp_path: pathlib.Path) -> None:
    client = pki.issue_engine_certificate(mtls.engine_ca, ENGINE)
    pem, key = pki.write_files(tmp_path, "engine", client)
    ca_file = tmp_path / "server-ca.pem"
    ca_file.write_bytes(mtls.server_ca.cert_pem)
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{mtls.port}",
        "-cert",
        str(pem),
        "-key",
        str(key),
        "-CAfile",
        str(ca_file),
        "-verify_return_error",
        "-verify_ip",
        "127.0.0.1",
        "-alpn",
        "h2",
        "-brief",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    output = (stdout + stderr).decode(errors="replace")
    assert "Protocol version: TLSv1.3" in output, output
    assert "Verification: OK" in output, output
