"""A real NTLM-protected HTTP(S) target on loopback port 0, for HTTP and browser monitors' tests.

The acceptor is pyspnego's NTLM server side (``spnego.server(protocol="ntlm")``), which checks an initiator's
NTLMv2 response against the credential store named by the ``NTLM_USER_FILE`` environment variable. The target writes
that store in the smbpasswd form (``[DOMAIN\\]user:uid:LM hash:NT hash:flags:time``) in a private temporary
directory: it holds the NT hash of the expected password, not the password, which the target does not keep. Since
the variable is process-wide, one target runs at a time in a process (a second one refuses to start).

Over TLS, ``bind_certificate`` (the PEM of the certificate the target presents) makes it require channel binding
(RFC 5929 ``tls-server-end-point``, as Windows' Extended Protection for Authentication does): an authenticate message
without the hash of that certificate is refused. The hash is computed here on its own (SHA-256, the certificate's
signature hash, which the target checks), not by the engine's code.

NTLM authenticates a connection: a request carrying the negotiate message gets a 401 with the challenge, the
authenticate message must come on the same connection, and only then does the connection get a 200 (for that request
and any later one on it). A request without a valid handshake gets a 401 offering NTLM. Every request is recorded
(:class:`NtlmSeen`: the stage, the client's port, the domain and user an authenticate message named, the verdict),
never a password or a message's response fields.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import os
import pathlib
import ssl
import struct
import tempfile
from collections.abc import AsyncIterator

import spnego
import spnego.exceptions
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from spnego._ntlm_raw.crypto import ntowfv1
from spnego._ntlm_raw.messages import Authenticate, AvId, NTClientChallengeV2
from spnego.channel_bindings import GssChannelBindings

__all__ = ["NtlmSeen", "NtlmTarget", "ntlm_target"]

_SIGNATURE = b"NTLMSSP\x00"
_NEGOTIATE, _AUTHENTICATE = 1, 3
_ENV = "NTLM_USER_FILE"


@dataclasses.dataclass(frozen=True)
class NtlmSeen:
    path: str
    client_port: int
    # "none" (no NTLM header), "negotiate", "authenticate", "authenticated" (a request on a connection already
    # authenticated), "invalid" (an NTLM header that is no NTLM message)
    stage: str
    domain: str = ""
    user: str = ""
    accepted: bool = False
    bound: bool = False  # the authenticate message carried channel bindings (not zeros)


@dataclasses.dataclass
class _Connection:
    acceptor: spnego.ContextProxy | None = None
    authenticated_as: str = ""


class NtlmTarget:
    """What the running target saw; ``url(path)`` addresses it (any path answers the same way)."""

    def __init__(self, scheme: str, bindings: GssChannelBindings | None) -> None:
        self.scheme = scheme
        self._bindings = bindings
        self.port = 0
        self.seen: list[NtlmSeen] = []
        self._connections: dict[object, _Connection] = {}

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    @property
    def accepted(self) -> list[NtlmSeen]:
        return [s for s in self.seen if s.accepted and s.stage == "authenticate"]

    async def handle(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        port = int(peer[1]) if peer else 0
        connection = self._connections.setdefault(request.protocol, _Connection())
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.upper() != "NTLM":
            if connection.authenticated_as:
                self.seen.append(NtlmSeen(request.path, port, "authenticated", accepted=True))
                return self._welcome(connection.authenticated_as)
            self.seen.append(NtlmSeen(request.path, port, "none"))
            return _unauthorized()
        try:
            message = base64.b64decode(token.strip(), validate=True)
        except ValueError:
            message = b""
        kind = struct.unpack("<I", message[8:12])[0] if message[:8] == _SIGNATURE and len(message) >= 12 else 0
        if kind == _NEGOTIATE:
            connection.acceptor = spnego.server(protocol="ntlm", channel_bindings=self._bindings)
            connection.authenticated_as = ""
            challenge = connection.acceptor.step(message)
            self.seen.append(NtlmSeen(request.path, port, "negotiate"))
            assert challenge is not None
            return _unauthorized(base64.b64encode(challenge).decode("ascii"))
        if kind != _AUTHENTICATE:
            self.seen.append(NtlmSeen(request.path, port, "invalid"))
            return _unauthorized()
        named = Authenticate.unpack(message)
        domain, user = named.domain_name or "", named.user_name or ""
        acceptor, connection.acceptor = connection.acceptor, None  # one authenticate per negotiate
        accepted = False
        if acceptor is not None:  # else the negotiate went over another connection
            try:
                acceptor.step(message)
                accepted = acceptor.complete
            except spnego.exceptions.SpnegoError:
                accepted = False
        self.seen.append(NtlmSeen(request.path, port, "authenticate", domain, user, accepted, _bound(named)))
        if not accepted:
            return _unauthorized()
        connection.authenticated_as = f"{domain}\\{user}" if domain else user
        return self._welcome(connection.authenticated_as)

    @staticmethod
    def _welcome(who: str) -> web.Response:
        return web.Response(
            text=f"<html><body><p id='who'>NTLM welcome {who}</p></body></html>", content_type="text/html"
        )


def _bound(message: Authenticate) -> bool:
    response = message.nt_challenge_response or b""
    if len(response) <= 24:  # not NTLMv2
        return False
    pairs = NTClientChallengeV2.unpack(response[16:]).av_pairs
    return bool(pairs.get(AvId.channel_bindings, b"\x00" * 16).strip(b"\x00"))


def _end_point_bindings(certificate_pem: bytes) -> GssChannelBindings:
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    if not isinstance(certificate.signature_hash_algorithm, hashes.SHA256):
        raise ValueError("the NTLM target binds to certificates signed with SHA-256 only")
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()
    return GssChannelBindings(application_data=b"tls-server-end-point:" + digest)


def _unauthorized(challenge: str = "") -> web.Response:
    offer = f"NTLM {challenge}" if challenge else "NTLM"
    return web.Response(status=401, text="NTLM authentication required", headers={"WWW-Authenticate": offer})


def _store_line(user: str, password: str) -> str:
    """An smbpasswd line: the NT hash only (the LM hash zeroed, as modern Windows stores it)."""
    if ":" in user:
        raise ValueError("an NTLM target's user cannot hold ':'")
    return f"{user}:1000:{'0' * 32}:{ntowfv1(password).hex().upper()}:[U]:LCT-00000000\n"


def _write_store(directory: pathlib.Path, user: str, password: str) -> pathlib.Path:
    store = directory / "ntlm_users"
    store.touch(mode=0o600)
    store.write_text(_store_line(user, password))
    return store


@contextlib.asynccontextmanager
async def ntlm_target(
    user: str, password: str, *, tls: ssl.SSLContext | None = None, bind_certificate: bytes | None = None
) -> AsyncIterator[NtlmTarget]:
    """A target that accepts ``user`` (``user`` or ``DOMAIN\\user``) with ``password``, over TLS if ``tls`` is a
    server context, requiring channel bindings to ``bind_certificate`` (PEM, the first certificate) if given; stopped,
    and its credential store removed, on exit."""
    if os.environ.get(_ENV):
        raise RuntimeError(f"{_ENV} is already set: one NTLM target at a time in a process")
    if bind_certificate is not None and tls is None:
        raise ValueError("channel binding needs TLS")
    bindings = _end_point_bindings(bind_certificate) if bind_certificate is not None else None
    target = NtlmTarget("https" if tls is not None else "http", bindings)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", target.handle)
    runner = web.AppRunner(app, access_log=None)
    with tempfile.TemporaryDirectory(prefix="ntlm-target-") as directory:
        os.environ[_ENV] = str(_write_store(pathlib.Path(directory), user, password))
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
            await site.start()
            target.port = int(runner.addresses[0][1])
            yield target
        finally:
            await runner.cleanup()
            del os.environ[_ENV]
