"""Executing HTTP monitors against real HTTP(S) targets on loopback, with credentials as the vault pushes them: basic
auth, tokens substituted into headers, URLs and bodies, client certificates from memory, validation rules, timeouts,
redirects, isolation between executions, and no secret in any result or log line."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import re
import ssl
from collections.abc import AsyncIterator

import pytest

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from engine_worker.config_store import ConfigStore, HeldMonitor
from engine_worker.http_execution import NOT_EXECUTABLE_REASON, HttpExecutor
from engine_worker.looked_up_secrets import LookedUpSecrets
from engine_worker.target_tls import TargetTls
from tests.http_target import Target
from tests.local_pki import LocalPki
from vault_service import pki

LOC = "loc-a"
PAIR = "CREDENTIALS_VAULT-00000000000000B1"
TOKEN = "CREDENTIALS_VAULT-00000000000000B2"
CERT = "CREDENTIALS_VAULT-00000000000000B3"
PAIR2 = "CREDENTIALS_VAULT-00000000000000B4"
CANARY_PASSWORD = "canary-pw-7Q2xZ9"
CANARY_TOKEN = "canary-tok-4Kd81m"
SUCCESS, FAILED = mpb.EXECUTION_STATUS_SUCCESS, mpb.EXECUTION_STATUS_FAILED


def pair(version: int = 1, password: str = CANARY_PASSWORD, cid: str = PAIR) -> epb.CredentialResource:
    details = cpb.CredentialDetails(username_password=cpb.UsernamePassword(username="alice", password=password))
    return epb.CredentialResource(id=cid, version=version, details=details)


def token(version: int = 1, value: str = CANARY_TOKEN) -> epb.CredentialResource:
    return epb.CredentialResource(
        id=TOKEN, version=version, details=cpb.CredentialDetails(token=cpb.Token(token=value))
    )


def certificate(issued: pki.IssuedCertificate, version: int = 1) -> epb.CredentialResource:
    details = cpb.CredentialDetails(
        certificate=cpb.CertificateDetails(certificate_chain_pem=issued.chain_pem, private_key_pem=issued.key_pem)
    )
    return epb.CredentialResource(id=CERT, version=version, details=details)


def request(url: str, **fields: object) -> mpb.HttpRequest:
    return mpb.HttpRequest(method=str(fields.pop("method", "GET")), url=url, **fields)


def monitor(mid: str, *requests: mpb.HttpRequest, version: int = 1) -> epb.MonitorResource:
    text = str(list(requests))
    refs = sorted(set(re.findall(r"CREDENTIALS_VAULT-[0-9A-F]{16}", text)))
    m = mpb.Monitor(
        id=mid,
        name=mid,
        type=mpb.MONITOR_TYPE_HTTP,
        enabled=True,
        frequency_minutes=1,
        location_ids=[LOC],
        http=mpb.HttpScript(requests=requests),
        credential_ids=refs,
        version=version,
    )
    return epb.MonitorResource(id=mid, version=version, monitor=m)


def basic(url: str, cid: str = PAIR, **fields: object) -> mpb.HttpRequest:
    r = request(url, **fields)
    r.authentication.basic_credential_id = cid
    return r


def rule(**kind: object) -> mpb.ValidationRule:
    return mpb.ValidationRule(**kind)


M1, M2 = "SYNTHETIC_TEST-00000000000000D1", "SYNTHETIC_TEST-00000000000000D2"


class Engine:
    """A ConfigStore fed like the stream feeds it, and an executor over it."""

    def __init__(self, tls: TargetTls) -> None:
        self.store = ConfigStore(location_id=LOC)
        self.executor = HttpExecutor(self.store, tls)
        self.revision = 0

    def push(self, *resources: epb.CredentialResource | epb.MonitorResource) -> None:
        self.revision += 1
        batch = epb.ConfigBatch(revision=self.revision)
        for r in resources:
            (batch.credentials if isinstance(r, epb.CredentialResource) else batch.monitors).append(r)
        assert self.store.apply(batch) == []

    def held(self, mid: str) -> HeldMonitor:
        held = self.store.monitor(mid)
        assert held is not None
        return held

    async def run(self, resource: epb.MonitorResource, *credentials: epb.CredentialResource) -> mpb.MonitorResult:
        self.push(*credentials, resource)
        return await self.executor.execute(self.held(resource.id))


@pytest.fixture(scope="module")
def ca_file(local_pki: LocalPki) -> pathlib.Path:
    """What the engine trusts for the targets: the tests' server CA (the targets present the tests' server
    certificate, and demand client certificates of the tests' engine CA)."""
    return local_pki.server_ca_pem


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t = await Target(expected_password=CANARY_PASSWORD, expected_token=CANARY_TOKEN).start()
    yield t
    await t.stop()


@pytest.fixture
async def mtls_target(local_pki: LocalPki) -> AsyncIterator[Target]:
    """HTTPS that demands a client certificate issued by the tests' engine CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(local_pki.server_pem, local_pki.server_key)
    ctx.load_verify_locations(cadata=local_pki.engine_ca.cert_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    t = await Target().start(tls=ctx)
    yield t
    await t.stop()


@pytest.fixture
def engine(ca_file: pathlib.Path) -> Engine:
    return Engine(TargetTls(ca_file))


def assert_no_canary(*texts: object) -> None:
    for text in texts:
        for canary in (CANARY_PASSWORD, CANARY_TOKEN):
            assert canary not in str(text)


# --- authentication ------------------------------------------------------------------------------------------------


async def test_basic_auth_success_and_failure(engine: Engine, target: Target) -> None:
    m = monitor(M1, basic(target.url("/basic"), validation=[rule(body_contains="welcome alice")]))
    ok = await engine.run(m, pair())
    assert ok.status == SUCCESS, ok.failure_reason
    assert ok.monitor_id == M1
    assert ok.monitor_version == 1
    assert [(r.status_code, r.success) for r in ok.requests] == [(200, True)]
    assert ok.start_time.seconds > 0
    assert ok.duration_ms > 0

    wrong = await engine.run(m, pair(version=2, password="not-it"))
    assert wrong.status == FAILED
    assert wrong.requests[0].status_code == 401
    assert wrong.failure_reason == f"request 1 (GET {target.url('/basic')}): HTTP status 401"
    assert_no_canary(ok, wrong)


async def test_bearer_token_in_a_header_token_in_the_url_and_the_body(engine: Engine, target: Target) -> None:
    placeholder = f"{{{{{TOKEN}}}}}"
    pw = f"{{{{{PAIR}.password}}}}"
    m = monitor(
        M1,
        request(target.url("/bearer"), headers=[mpb.Header(name="Authorization", value=f"Bearer {placeholder}")]),
        request(target.url(f"/query?key={placeholder}")),
        request(target.url("/login"), method="POST", body=f'{{"user": "alice", "password": "{pw}"}}'),
    )
    result = await engine.run(m, pair(), token())
    assert result.status == SUCCESS, result.failure_reason
    assert [r.status_code for r in result.requests] == [200, 200, 200]
    # the target saw the values; the result shows the placeholders
    assert target.requests_to("/bearer")[0].authorization == f"Bearer {CANARY_TOKEN}"
    assert target.requests_to("/query")[0].query == f"key={CANARY_TOKEN}"
    assert CANARY_PASSWORD in target.requests_to("/login")[0].body
    assert result.requests[1].url == target.url(f"/query?key={placeholder}")
    assert_no_canary(result)


async def test_a_wrong_token_fails_and_the_reason_holds_no_secret(engine: Engine, target: Target) -> None:
    target.expected_token = "something-else"
    m = monitor(M1, request(target.url(f"/query?key={{{{{TOKEN}}}}}")))
    result = await engine.run(m, token())
    assert result.status == FAILED
    assert result.requests[0].status_code == 403
    assert "{{" + TOKEN + "}}" in result.failure_reason
    assert_no_canary(result)


async def test_client_certificate_login_from_memory(engine: Engine, mtls_target: Target, local_pki: LocalPki) -> None:
    issued = local_pki.engine("monitors", "monitor-client")  # a client certificate whose CN is "monitor-client"
    r = request(mtls_target.url("/whoami", "https", "localhost"), validation=[rule(body_contains="monitor-client")])
    r.authentication.client_certificate_credential_id = CERT
    result = await engine.run(monitor(M1, r), certificate(issued))
    assert result.status == SUCCESS, result.failure_reason
    assert mtls_target.seen[-1].peer_common_name == "monitor-client"

    without = await engine.run(monitor(M2, request(mtls_target.url("/whoami", "https", "localhost"))))
    assert without.status == FAILED
    assert without.requests[0].status_code == 0
    assert without.requests[0].failure_reason  # the handshake (or the connection) failed, and says so


async def test_an_untrusted_server_certificate_fails(mtls_target: Target) -> None:
    engine = Engine(TargetTls())  # the system's roots only: the test CA is not among them
    result = await engine.run(monitor(M1, request(mtls_target.url("/whoami", "https", "localhost"))))
    assert result.status == FAILED
    assert "not trusted" in result.failure_reason or "TLS" in result.failure_reason


async def test_rotation_is_used_by_the_next_execution(engine: Engine, target: Target) -> None:
    m = monitor(M1, basic(target.url("/basic")))
    assert (await engine.run(m, pair())).status == SUCCESS
    target.expected_password = "rotated-pw"
    assert (await engine.executor.execute(engine.held(M1))).status == FAILED  # still the old value
    engine.push(pair(version=2, password="rotated-pw"))  # the vault pushes the overwritten credential
    assert (await engine.executor.execute(engine.held(M1))).status == SUCCESS
    assert target.requests_to("/basic")[-1].authorization.startswith("Basic ")


# --- validation, timeouts, redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "rules", "reason"),
    [
        ("/status/500", [], "HTTP status 500"),
        ("/status/204", [rule(status_code_in=mpb.StatusCodes(codes=[200, 201]))], "HTTP status 204, expected one of"),
        ("/final", [rule(body_contains="missing words")], "does not contain 'missing words'"),
        ("/final", [rule(body_not_contains="final")], "contains 'final'"),
        ("/final", [rule(body_matches_regex=r"^\d+$")], "does not match"),
        ("/final", [rule(body_matches_regex="(")], "regex is invalid"),
    ],
)
async def test_validation_failures(
    engine: Engine, target: Target, path: str, rules: list[mpb.ValidationRule], reason: str
) -> None:
    result = await engine.run(monitor(M1, request(target.url(path), validation=rules)))
    assert result.status == FAILED
    assert reason in result.failure_reason
    assert reason in result.requests[0].failure_reason


async def test_validation_successes(engine: Engine, target: Target) -> None:
    rules = [
        rule(status_code_in=mpb.StatusCodes(codes=[200])),
        rule(body_contains="final"),
        rule(body_not_contains="error"),
        rule(body_matches_regex=r"the \w+ page"),
    ]
    result = await engine.run(monitor(M1, request(target.url("/final"), validation=rules)))
    assert result.status == SUCCESS, result.failure_reason


async def test_a_timeout_fails_the_request(engine: Engine, target: Target) -> None:
    m = monitor(M1, request(target.url("/slow?seconds=5"), timeout_ms=200), request(target.url("/final")))
    result = await engine.run(m)
    assert result.status == FAILED
    assert "timed out after 0.2 s" in result.failure_reason
    assert len(result.requests) == 1  # a failing step ends the execution


async def test_redirects_followed_or_not(engine: Engine, target: Target) -> None:
    followed = await engine.run(
        monitor(M1, request(target.url("/redirect"), follow_redirects=True, validation=[rule(body_contains="final")]))
    )
    assert followed.status == SUCCESS, followed.failure_reason
    assert followed.requests[0].status_code == 200
    not_followed = await engine.run(
        monitor(M2, request(target.url("/redirect"), validation=[rule(status_code_in=mpb.StatusCodes(codes=[200]))]))
    )
    assert not_followed.status == FAILED
    assert not_followed.requests[0].status_code == 302


async def test_an_unreachable_target(engine: Engine, target: Target) -> None:
    url = target.url("/final")
    await target.stop()
    result = await engine.run(monitor(M1, request(url)))
    assert result.status == FAILED
    assert f"cannot connect to 127.0.0.1:{target.port}" in result.failure_reason


async def test_browser_monitors_are_reported_as_not_executable(engine: Engine) -> None:
    m = mpb.Monitor(
        id=M1,
        name="b",
        type=mpb.MONITOR_TYPE_BROWSER,
        enabled=True,
        frequency_minutes=1,
        location_ids=[LOC],
        browser=mpb.BrowserScript(url="https://shop.example/"),
        version=1,
    )
    result = await engine.run(epb.MonitorResource(id=M1, version=1, monitor=m))
    assert result.status == mpb.EXECUTION_STATUS_NOT_EXECUTABLE
    assert result.failure_reason == NOT_EXECUTABLE_REASON


# --- isolation -----------------------------------------------------------------------------------------------------


async def test_executions_share_no_cookies_or_connections(engine: Engine, target: Target) -> None:
    """Two monitors with different credentials against one host at the same time, then one of them again: every
    execution starts without a cookie, sees only its own, and uses connections no other execution used."""

    def script(mid: str, name: str, cid: str) -> epb.MonitorResource:
        show = target.url("/cookie/show")
        return monitor(
            mid,
            basic(show, cid, validation=[rule(body_contains="cookie=none")]),
            basic(target.url(f"/cookie/set/{name}"), cid),
            basic(show, cid, validation=[rule(body_contains=f"cookie={name}")]),
        )

    engine.push(pair(), pair(password="another-pw", cid=PAIR2), script(M1, "first", PAIR), script(M2, "second", PAIR2))
    together = await asyncio.gather(engine.executor.execute(engine.held(M1)), engine.executor.execute(engine.held(M2)))
    assert [r.status for r in together] == [SUCCESS, SUCCESS], [r.failure_reason for r in together]
    by_cookie: dict[str, set[int]] = {}
    for seen in target.seen:
        if seen.cookie:
            by_cookie.setdefault(seen.cookie, set()).add(seen.client_port)
    assert set(by_cookie) == {"session=first", "session=second"}
    assert not by_cookie["session=first"] & by_cookie["session=second"]
    assert {s.authorization for s in target.seen if s.cookie == "session=second"} != {
        s.authorization for s in target.seen if s.cookie == "session=first"
    }

    earlier_ports = {s.client_port for s in target.seen}
    before = len(target.seen)
    again = await engine.executor.execute(engine.held(M1))  # its previous run's cookie and connection are gone
    assert again.status == SUCCESS, again.failure_reason
    assert {s.client_port for s in target.seen[before:]}.isdisjoint(earlier_ports)


# --- no secret anywhere --------------------------------------------------------------------------------------------


def test_substitutions_scrub_every_value_of_the_credentials_looked_up_and_hold_them_redacted() -> None:
    subs = LookedUpSecrets()
    subs.add(PAIR, pair().details)
    subs.add(TOKEN, token().details)
    text = f"error at https://x/?k={CANARY_TOKEN.upper()}&p={CANARY_PASSWORD}&u=alice"
    assert (
        subs.scrub(text) == f"error at https://x/?k={{{{{TOKEN}}}}}&p={{{{{PAIR}.password}}}}&u={{{{{PAIR}.username}}}}"
    )
    assert subs.scrub("x" * 600) == "x" * 499 + "…"  # clipped after the scrub
    assert CANARY_PASSWORD not in repr(subs)
    assert CANARY_TOKEN not in repr(subs)
    subs.clear()
    assert subs.scrub(text) == text


async def test_no_secret_in_results_or_logs(engine: Engine, target: Target, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    target.expected_password = "other"
    m = monitor(
        M1,
        basic(target.url("/basic"), headers=[mpb.Header(name="X-Api-Key", value=f"{{{{{TOKEN}}}}}")]),
    )
    failed = await engine.run(m, pair(), token())
    broken = await engine.run(monitor(M2, request(f"http://127.0.0.1:1/{{{{{TOKEN}}}}}", timeout_ms=500)))
    assert failed.status == FAILED
    assert broken.status == FAILED
    assert_no_canary(failed, broken, failed.SerializeToString(), broken.SerializeToString(), caplog.text)
