"""NTLM for one HTTP request of an execution: negotiate -> challenge -> authenticate on one keep-alive connection.

NTLM authenticates a connection, not a request, so the handshake runs on a session of its own whose pool holds at
most one connection (the execution's cookie jar is shared, so cookies flow as for any other request): the negotiate
message and the authenticate message travel on the same connection, and the session is closed with the request.
The NTLM messages come from pyspnego (a maintained implementation of MS-NLMP, NTLMv2 with a MIC); its context lives
for one request and is dropped with it, so nothing is cached across requests or executions.

The username is ``user`` or ``DOMAIN\\user``: pyspnego splits the domain off and puts it in the authenticate
message. A failure raises :class:`NtlmError` with a fixed text (a status code at most), never a message of
pyspnego or aiohttp, so no value can reach a result through it.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import spnego
import spnego.exceptions

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
        context = spnego.client(username, password, protocol="ntlm")
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
            await first.read()  # drained, so the connection goes back to the pool for the next request
        try:
            authenticate = context.step(challenge)
        except spnego.exceptions.SpnegoError:
            raise NtlmError("the target's NTLM challenge could not be answered") from None
        if authenticate is None:
            raise NtlmError("the target's NTLM challenge could not be answered")
        async with request.send(session, authorization=_authorization(authenticate)) as final:
            yield final
