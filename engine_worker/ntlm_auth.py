"""NTLM for one HTTP request of an execution: negotiate -> challenge -> authenticate on one keep-alive connection.

NTLM authenticates a connection, not a request, so the handshake runs on a session of its own whose pool holds at
most one connection (the execution's cookie jar is shared, so cookies flow as for any other request): the negotiate
message and the authenticate message travel on the same connection, and the session is closed with the request.
The NTLM messages come from pyspnego (a maintained implementation of MS-NLMP, NTLMv2 with a MIC); its context lives
for one request and is dropped with it, so nothing is cached across requests or executions.

The username is ``user`` or ``DOMAIN\\user``: pyspnego splits the domain off and puts it in the authenticate
message. Over HTTPS the authenticate message is bound to the TLS channel (RFC 5929 ``tls-server-end-point``: the hash
of the server's certificate, as Windows' Extended Protection for Authentication checks), so a target that requires
channel binding accepts it and a man in the middle cannot relay it to another server.

A failure raises :class:`NtlmError` with a fixed text, never a message of pyspnego or aiohttp, so no value can reach
a result through it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import urllib.parse
from collections.abc import AsyncIterator

import aiohttp
import spnego
import spnego.exceptions
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from spnego.channel_bindings import GssChannelBindings

from engine_worker.outgoing_request import OutgoingRequest

__all__ = ["NtlmError", "ntlm_response"]

_SCHEME = "NTLM"


class NtlmError(Exception):
    """The handshake did not complete; the message is a fixed reason (no value, no library text)."""


def _challenge(response: aiohttp.ClientResponse) -> bytes | None:
    """The NTLM challenge in a 401's ``WWW-Authenticate`` headers, or None."""
    if response.status != 401:
        return None
    for header in response.headers.getall("WWW-Authenticate", []):
        scheme, _, token = header.strip().partition(" ")
        if scheme.upper() == _SCHEME and token.strip():
            try:
                return base64.b64decode(token.strip(), validate=True)
            except ValueError:
                raise NtlmError("the target's NTLM challenge is not base64") from None
    return None


def _channel_bindings(response: aiohttp.ClientResponse) -> GssChannelBindings | None:
    """The ``tls-server-end-point`` bindings of the TLS connection ``response`` came on, or None over plain HTTP.
    RFC 5929: the certificate's signature hash, SHA-256 in place of MD5 and SHA-1 (and where it names none)."""
    # A small answer is read whole with its headers, and aiohttp then hands the connection back to the pool at once
    # (response.connection is None): the protocol the response was read from still holds the transport. Should a
    # version of aiohttp stop keeping it, no bindings are sent and a target that requires them refuses the login
    # (tests/engine_worker/test_ntlm_execution.py checks one that does).
    connection = response.connection
    protocol = connection.protocol if connection is not None else getattr(response, "_protocol", None)
    transport = getattr(protocol, "transport", None)
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    try:
        algorithm = x509.load_der_x509_certificate(der).signature_hash_algorithm
    except (ValueError, UnsupportedAlgorithm):
        algorithm = None
    name = "sha256" if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1) else algorithm.name
    try:
        digest = hashlib.new(name, der).digest()
    except ValueError:  # a hash hashlib lacks
        digest = hashlib.sha256(der).digest()
    return GssChannelBindings(application_data=b"tls-server-end-point:" + digest)


def _authorization(token: bytes) -> str:
    return f"{_SCHEME} {base64.b64encode(token).decode('ascii')}"


@contextlib.asynccontextmanager
async def ntlm_response(
    cookies: aiohttp.abc.AbstractCookieJar, request: OutgoingRequest, *, username: str, password: str
) -> AsyncIterator[aiohttp.ClientResponse]:
    """The response to ``request`` after an NTLM handshake with ``username``/``password``.

    The negotiate request does not follow redirects: a target that answers it with anything but a 401 carrying an
    NTLM challenge did not ask for NTLM, and that answer is the response (a 401 without a challenge included, which
    then fails the request's status check as any 401 does). The authenticate request follows redirects as the
    monitor's request says. The body is sent with both (a server reads it before deciding, as with requests-ntlm).
    The request's timeout applies to each of the two. Raises :class:`NtlmError` or what aiohttp raises.
    """
    try:
        host = urllib.parse.urlsplit(request.url).hostname or "unspecified"  # the SPN HTTP/<host>
        context = spnego.client(username, password, hostname=host, service="HTTP", protocol="ntlm")
        negotiate = context.step()
    except spnego.exceptions.SpnegoError:
        raise NtlmError("the NTLM negotiate message could not be made from the credential") from None
    assert negotiate is not None
    connector = aiohttp.TCPConnector(limit=1, ttl_dns_cache=None)  # one connection: the one NTLM authenticates
    async with aiohttp.ClientSession(connector=connector, cookie_jar=cookies, auto_decompress=True) as session:
        async with request.send(session, authorization=_authorization(negotiate), allow_redirects=False) as first:
            challenge = _challenge(first)
            if challenge is None:
                yield first
                return
            bindings = _channel_bindings(first)
            await first.read()  # drained, so the connection goes back to the pool for the next request
        try:
            authenticate = context.step(challenge, channel_bindings=bindings)
        except Exception:  # the target's bytes: pyspnego's parser raises KeyError, struct.error, ...
            raise NtlmError("the target's NTLM challenge could not be answered") from None
        if authenticate is None:
            raise NtlmError("the target's NTLM challenge could not be answered")
        async with request.send(session, authorization=_authorization(authenticate)) as final:
            yield final
