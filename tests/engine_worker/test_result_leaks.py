"""No secret leaves through execution results: monitors run against a hostile target that echoes what it gets in
malformed responses, redirects to URLs and hosts carrying the value, and error pages echoing headers; a long URL;
a token in the host. No form of a value (every encoding credvault.secret_scrub knows) is in the results or logs,
and the reasons still say what went wrong."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator

import pytest

from credvault.secret_scrub import MIN_CUT
from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from engine_worker.target_tls import TargetTls
from tests.credvault.test_secret_scrub import every_form
from tests.engine_worker.test_http_execution import FAILED, PAIR, TOKEN, Engine, basic, monitor, request, rule
from tests.hostile_target import HostileTarget

SECRET_TOKEN = "CvPriv5B89-Tok3n-0123456789abcdef"  # 33 characters, a valid host label
SECRET_PASSWORD = "Pa ss+wörd Zq8&x/y"  # spaces, '+', non-ASCII, '&', '/'
TOKEN_REF = f"{{{{{TOKEN}}}}}"
PASSWORD_REF = f"{{{{{PAIR}.password}}}}"


def leaked_forms() -> dict[str, str]:
    """Every form of the two values that must not appear anywhere, by name."""
    forms = {f"token {name}": form for name, form in every_form(SECRET_TOKEN).items()}
    forms |= {f"password {name}": form for name, form in every_form(SECRET_PASSWORD).items()}
    forms["basic header"] = base64.b64encode(f"alice:{SECRET_PASSWORD}".encode()).decode()
    forms["token cut"] = SECRET_TOKEN[: MIN_CUT + 6]
    forms["token cut, lower-cased"] = SECRET_TOKEN[: MIN_CUT + 6].lower()
    forms["password cut"] = SECRET_PASSWORD[: MIN_CUT + 4]
    return forms


def assert_nowhere(*texts: str) -> None:
    found = [(name, i) for i, text in enumerate(texts) for name, form in leaked_forms().items() if form in text]
    assert not found, f"secret forms found (name, text index): {found}"


def texts_of(result: mpb.MonitorResult) -> list[str]:
    fields = [result.failure_reason]
    for step in result.requests:
        fields += [step.failure_reason, step.url, step.description]
    return [*fields, result.SerializeToString().decode("utf-8", "replace")]


def credentials() -> tuple[epb.CredentialResource, epb.CredentialResource]:
    up = cpb.UsernamePassword(username="alice", password=SECRET_PASSWORD)
    return (
        epb.CredentialResource(id=PAIR, version=1, details=cpb.CredentialDetails(username_password=up)),
        epb.CredentialResource(id=TOKEN, version=1, details=cpb.CredentialDetails(token=cpb.Token(token=SECRET_TOKEN))),
    )


@pytest.fixture
def engine() -> Engine:
    return Engine(TargetTls())  # the targets here speak plain HTTP


@pytest.fixture
async def hostile() -> AsyncIterator[HostileTarget]:
    t = await HostileTarget().start()
    yield t
    await t.stop()


def hostile_requests(hostile: HostileTarget) -> dict[str, tuple[mpb.HttpRequest, str]]:
    """Requests that make libraries echo the values, each with the reason it must fail with."""
    echo_headers = basic(
        hostile.url(f"/echo?k={TOKEN_REF}"),
        headers=[mpb.Header(name="X-Api-Key", value=TOKEN_REF)],
        validation=[rule(body_contains="welcome")],
    )
    return {
        "malformed response echoing the URL": (
            basic(hostile.url(f"/malformed?p={PASSWORD_REF}&k={TOKEN_REF}")),
            "the response is not valid HTTP",
        ),
        "long URL": (
            # the token straddles the 500th character of the reason the worker used to clip before scrubbing
            request(hostile.url("/malformed/" + "a" * 364 + f"?k={TOKEN_REF}&p={PASSWORD_REF}")),
            "the response is not valid HTTP",
        ),
        "malformed chunked body echoing the URL": (
            request(hostile.url(f"/bad-chunk?k={TOKEN_REF}"), validation=[rule(body_contains="x")]),
            "the response is not valid HTTP",
        ),
        "redirect to a host carrying the token": (
            request(hostile.url(f"/redirect-host?v={TOKEN_REF}"), follow_redirects=True),
            "cannot connect to the host a redirect led to: the host name does not resolve",
        ),
        "redirect to a URL carrying the values": (
            request(hostile.url(f"/redirect-away?p={PASSWORD_REF}&k={TOKEN_REF}"), follow_redirects=True),
            "cannot connect to the host a redirect led to: connection refused",
        ),
        "error page echoing the headers": (echo_headers, "HTTP status 500"),
        "token in the host": (
            request(f"http://{TOKEN_REF}.invalid/"),
            "not sent: the URL has a credential placeholder in its scheme, host or port",
        ),
    }


async def test_no_form_of_a_value_reaches_results_or_logs(
    engine: Engine, hostile: HostileTarget, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cases = hostile_requests(hostile)
    engine.push(*credentials())
    texts: list[str] = []
    for n, (name, (req, reason)) in enumerate(cases.items()):
        req.description = name
        result = await engine.run(monitor(f"SYNTHETIC_TEST-00000000000000{n:02X}", req))
        assert result.status == FAILED, name
        assert result.requests[0].failure_reason.startswith(reason), (name, result.requests[0].failure_reason)
        assert result.failure_reason.startswith(f"request 1 ({name}): {reason}")
        texts += texts_of(result)
    assert len(hostile.request_lines) == len(cases) - 1  # the token's host was never asked for
    assert any(SECRET_TOKEN in line for line in hostile.request_lines)  # the values did go out: the test can fail
    assert_nowhere(*texts, caplog.text)
