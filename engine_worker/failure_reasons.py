"""Why a request failed, in words built only from what the monitor's definition already shows.

Results are read by people who may not see the monitor's credentials, so a reason never carries exception text:
libraries echo the URL as sent (with substituted values, re-encoded: ``+`` for a space, lowercased hosts, IDNA),
the host a redirect went to (which the target chooses), a bad status line as received. A reason names the error
class, an errno or TLS verify code through fixed tables, and the URL's host as the definition writes it (which
holds no placeholder: see ``credvault.url_template``). The scrub of the values is only the second line.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import urllib.parse

import aiohttp

__all__ = ["request_error"]

# OpenSSL verify codes (X509_V_ERR_*) in words; any other is shown by number.
_VERIFY = {
    9: "the certificate is not yet valid",
    10: "the certificate has expired",
    18: "the certificate is self-signed",
    19: "a self-signed certificate is in the chain",
    20: "the issuer is not a trusted CA",
    21: "the first certificate cannot be verified",
    62: "the certificate is not valid for this host name",
}


def _where(template_url: str, failed: aiohttp.ClientConnectorError) -> str:
    """The host and port of the definition's URL, or that it was a host a redirect led to (never that host)."""
    parts = urllib.parse.urlsplit(template_url)
    host = parts.hostname or "the host"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    if failed.host.lower().strip("[]") not in (host, _ascii(host)) or failed.port != port:
        return "the host a redirect led to"
    return f"{host}:{port}"


def _ascii(host: str) -> str:
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def _os_reason(error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return "the host name does not resolve"
    if error.errno == errno.ECONNREFUSED:
        return "connection refused"
    return os.strerror(error.errno).lower() if error.errno else type(error).__name__


def _tls_reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None)  # an OpenSSL mnemonic such as TLSV1_ALERT_UNKNOWN_CA
    return reason if isinstance(reason, str) and reason.replace("_", "").isalnum() and reason.isupper() else ""


def request_error(exc: BaseException, template_url: str, timeout_ms: int, max_redirects: int) -> str:
    """The reason for an exception of an HTTP request, for the monitor's results."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_ms / 1000:g} s"
    if isinstance(exc, aiohttp.TooManyRedirects):
        return f"more than {max_redirects} redirects"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        error = exc.certificate_error
        code = error.verify_code if isinstance(error, ssl.SSLCertVerificationError) else 0
        why = _VERIFY.get(code, f"verify error {code}")
        return f"TLS certificate verify failed for {_where(template_url, exc)}: {why}"
    if isinstance(exc, aiohttp.ClientSSLError):
        reason = _tls_reason(exc.os_error)
        return f"TLS handshake failed with {_where(template_url, exc)}" + (f" ({reason})" if reason else "")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {_where(template_url, exc)}: {_os_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.RedirectClientError):
        return "a redirect led to an invalid or non-HTTP URL"
    if isinstance(exc, aiohttp.InvalidURL):
        return "the URL is not valid after its placeholders were substituted"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without a complete response"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the response body is malformed or cut off"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "the response is not valid HTTP"
    if isinstance(exc, OSError):
        return f"connection error: {_os_reason(exc)}"
    return f"the request failed ({type(exc).__name__})"
