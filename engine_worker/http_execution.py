"""One execution of a held monitor: its HTTP requests in sequence with the credentials the vault resolved, checked
against the validation rules, as a ``MonitorResult``.

Each execution is isolated (seed 000: "no memory or scripts are shared among executions"): its own aiohttp session
with its own connection pool and cookie jar, closed when it ends, and for a client-certificate login its own TLS
context; requests of one execution share that session (a login step's cookie reaches the next step), nothing else
does. The one thing executions share is the stateless TLS context that only verifies servers (see target_tls).

Credentials are looked up in the :class:`~engine_worker.config_store.ConfigStore` when the request is made, so an
overwritten credential is used by the next execution without a restart. Results never carry a secret: URLs are the
monitor's own (with their ``{{CREDENTIALS_VAULT-…}}`` placeholders), failure reasons are built from the definition
(see :mod:`engine_worker.failure_reasons`), never from exception text, and, as a second line, every reason is
scrubbed of each value of the credentials this execution looked up (in every encoding, see
:mod:`credvault.secret_scrub`) before it is clipped. A URL with a placeholder before its path is not sent at all.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable

import aiohttp
from google.protobuf import timestamp_pb2

from credvault.formats import PLACEHOLDER
from credvault.url_template import ORIGIN_PLACEHOLDER_HINT, placeholder_before_path
from credvault.v1 import credentials_pb2, monitors_pb2
from engine_worker.config_store import ConfigStore, HeldMonitor
from engine_worker.failure_reasons import request_error
from engine_worker.looked_up_secrets import LookedUpSecrets
from engine_worker.ntlm_auth import NtlmError, ntlm_response
from engine_worker.outgoing_request import OutgoingRequest
from engine_worker.target_tls import TargetTls, TargetTlsError

__all__ = ["NOT_EXECUTABLE_REASON", "ExecutionSettings", "HttpExecutor"]

DEFAULT_TIMEOUT_MS = 10_000
NOT_EXECUTABLE_REASON = (
    "browser monitors cannot run on this engine: it found no Chromium"
    " (install the distribution's chromium package, or point --chromium-path at it)"
)


@dataclasses.dataclass(frozen=True)
class ExecutionSettings:
    # Bytes of a response body read for the body validation rules (the rest is not read).
    max_body_bytes: int = 1024 * 1024
    max_redirects: int = 10


class _Failed(Exception):
    """A request step failed; the message is a reason to report (scrubbed before it is)."""


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class HttpExecutor:
    """Runs held monitors. ``tls`` makes the TLS contexts for targets (system roots plus ``--target-ca``). Browser
    monitors go to ``browser`` (see engine_worker.browser_execution); without one they are NOT_EXECUTABLE."""

    def __init__(
        self,
        store: ConfigStore,
        tls: TargetTls,
        settings: ExecutionSettings | None = None,
        browser: Callable[[HeldMonitor], Awaitable[monitors_pb2.MonitorResult]] | None = None,
    ) -> None:
        self._store = store
        self._tls = tls
        self._settings = settings or ExecutionSettings()
        self._browser = browser

    async def execute(self, held: HeldMonitor) -> monitors_pb2.MonitorResult:
        monitor = held.monitor
        if monitor.WhichOneof("script") == "browser" and self._browser is not None:
            return await self._browser(held)
        started_wall, started = time.time(), time.perf_counter()
        result = monitors_pb2.MonitorResult(monitor_id=held.id, monitor_version=held.monitor_version)
        result.start_time.CopyFrom(_timestamp(started_wall))
        if monitor.WhichOneof("script") != "http":
            result.status = monitors_pb2.EXECUTION_STATUS_NOT_EXECUTABLE
            result.failure_reason = NOT_EXECUTABLE_REASON
            return result
        substitutions = LookedUpSecrets()
        try:
            await self._run_requests(monitor.http.requests, result, substitutions)
        finally:
            substitutions.clear()
            result.duration_ms = (time.perf_counter() - started) * 1000
        return result

    async def _run_requests(
        self,
        requests: Iterable[monitors_pb2.HttpRequest],
        result: monitors_pb2.MonitorResult,
        substitutions: LookedUpSecrets,
    ) -> None:
        connector = aiohttp.TCPConnector(limit=4, ttl_dns_cache=None)  # this execution's pool, closed with it
        cookies = aiohttp.CookieJar(unsafe=True)  # also for targets addressed by IP
        async with aiohttp.ClientSession(connector=connector, cookie_jar=cookies, auto_decompress=True) as session:
            for index, request in enumerate(requests):
                step = result.requests.add(
                    index=index, description=request.description, method=request.method or "GET", url=request.url
                )
                started = time.perf_counter()
                try:
                    if request.authentication.WhichOneof("method") == "client_certificate_credential_id":
                        tls = self._client_certificate_tls(
                            request.authentication.client_certificate_credential_id, substitutions
                        )
                    else:
                        tls = self._tls.verifying()
                    await self._request(session, request, step, tls, substitutions)
                    step.success = True
                except _Failed as exc:
                    step.failure_reason = substitutions.scrub(str(exc))
                finally:
                    step.duration_ms = (time.perf_counter() - started) * 1000
                if not step.success:
                    name = request.description or f"{step.method} {request.url}"
                    result.status = monitors_pb2.EXECUTION_STATUS_FAILED
                    result.failure_reason = substitutions.scrub(f"request {index + 1} ({name}): {step.failure_reason}")
                    return
        result.status = monitors_pb2.EXECUTION_STATUS_SUCCESS

    async def _request(
        self,
        session: aiohttp.ClientSession,
        request: monitors_pb2.HttpRequest,
        step: monitors_pb2.RequestResult,
        tls: ssl.SSLContext,
        substitutions: LookedUpSecrets,
    ) -> None:
        if placeholder_before_path(request.url):
            raise _Failed(f"not sent: the URL {ORIGIN_PLACEHOLDER_HINT}")
        url = self._substitute(request.url, substitutions)
        headers = [(h.name, self._substitute(h.value, substitutions)) for h in request.headers]
        body = self._substitute(request.body, substitutions).encode() if request.body else None
        auth = request.authentication.WhichOneof("method")
        if auth == "basic_credential_id":
            headers.append(
                ("Authorization", self._basic_auth(request.authentication.basic_credential_id, substitutions))
            )
        timeout_ms = request.timeout_ms or DEFAULT_TIMEOUT_MS
        outgoing = OutgoingRequest(
            step.method,
            url,
            headers,
            body,
            request.follow_redirects,
            self._settings.max_redirects,
            tls,
            aiohttp.ClientTimeout(total=timeout_ms / 1000),
        )
        responding: contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]
        if auth == "ntlm_credential_id":
            pair = self._pair(request.authentication.ntlm_credential_id, substitutions)
            responding = ntlm_response(session.cookie_jar, outgoing, username=pair.username, password=pair.password)
        else:
            responding = outgoing.send(session)
        try:
            async with responding as response:
                step.status_code = response.status
                text = ""
                if any(r.WhichOneof("rule") != "status_code_in" for r in request.validation):
                    text = _decode(await response.content.read(self._settings.max_body_bytes), response.charset)
        except NtlmError as exc:
            raise _Failed(str(exc)) from None
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise _Failed(request_error(exc, request.url, timeout_ms, self._settings.max_redirects)) from None
        _validate(request.validation, step.status_code, text)

    # --- credentials -------------------------------------------------------------------------------------------

    def _details(self, credential_id: str, substitutions: LookedUpSecrets) -> credentials_pb2.CredentialDetails:
        details = substitutions.look_up(self._store, credential_id)
        if details is None:
            raise _Failed(f"credential {credential_id} is not held by this engine")
        return details

    def _substitute(self, text: str, substitutions: LookedUpSecrets) -> str:
        if "{{" not in text:
            return text

        def value(match: re.Match[str]) -> str:
            credential_id, field = match.group(1), match.group(2)
            details = self._details(credential_id, substitutions)
            if field is None and details.WhichOneof("details") == "token":
                return details.token.token
            if field is not None and details.WhichOneof("details") == "username_password":
                return str(getattr(details.username_password, field))
            raise _Failed(f"placeholder {match.group(0)} does not fit credential {credential_id}")

        return PLACEHOLDER.sub(value, text)

    def _pair(self, credential_id: str, substitutions: LookedUpSecrets) -> credentials_pb2.UsernamePassword:
        details = self._details(credential_id, substitutions)
        if details.WhichOneof("details") != "username_password":
            raise _Failed(f"credential {credential_id} is not a username and password")
        return details.username_password

    def _basic_auth(self, credential_id: str, substitutions: LookedUpSecrets) -> str:
        """The Authorization header value (RFC 7617, UTF-8); aiohttp drops it on a redirect to another origin."""
        pair = self._pair(credential_id, substitutions)
        if ":" in pair.username:
            raise _Failed(f"credential {credential_id}: a username with ':' cannot log in with basic auth")
        return "Basic " + base64.b64encode(f"{pair.username}:{pair.password}".encode()).decode()

    def _client_certificate_tls(self, credential_id: str, substitutions: LookedUpSecrets) -> ssl.SSLContext:
        details = self._details(credential_id, substitutions)
        if details.WhichOneof("details") != "certificate":
            raise _Failed(f"credential {credential_id} is not a certificate")
        try:
            return self._tls.context(details.certificate)
        except TargetTlsError as exc:
            raise _Failed(f"credential {credential_id}: {exc}") from None


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", errors="replace")


def _validate(rules: Iterable[monitors_pb2.ValidationRule], status: int, body: str) -> None:
    """Raises _Failed with the first rule that does not hold. Without a status rule, 4xx and 5xx fail."""
    rules = list(rules)
    if not any(r.WhichOneof("rule") == "status_code_in" for r in rules) and status >= 400:
        raise _Failed(f"HTTP status {status}")
    for rule in rules:
        kind = rule.WhichOneof("rule")
        if kind == "status_code_in" and status not in rule.status_code_in.codes:
            expected = ", ".join(str(c) for c in rule.status_code_in.codes)
            raise _Failed(f"HTTP status {status}, expected one of {expected}")
        if kind == "body_contains" and rule.body_contains not in body:
            raise _Failed(f"the response body does not contain {rule.body_contains!r}")
        if kind == "body_not_contains" and rule.body_not_contains in body:
            raise _Failed(f"the response body contains {rule.body_not_contains!r}")
        if kind == "body_matches_regex":
            try:
                matched = re.search(rule.body_matches_regex, body) is not None
            except re.error as exc:
                raise _Failed(f"the validation regex is invalid: {exc}") from None
            if not matched:
                raise _Failed(f"the response body does not match {rule.body_matches_regex!r}")
