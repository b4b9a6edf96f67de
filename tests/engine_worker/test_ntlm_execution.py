"""HTTP monitors with NTLM authentication against a real NTLM acceptor (tests/ntlm_target.py, pyspnego's server
side): `DOMAIN\\user` and `user` log in, a wrong password fails cleanly, the handshake runs on one connection and
again from the start in every execution, over HTTP and HTTPS, and no secret reaches a result or a log line."""

from __future__ import annotations

import base64
import logging
import ssl
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from engine_worker.target_tls import TargetTls
from tests.engine_worker.test_http_execution import (
    FAILED,
    PAIR,
    SUCCESS,
    TOKEN,
    Engine,
    assert_no_canary,
    monitor,
    request,
    rule,
    token,
)
from tests.http_target import Target
from tests.local_pki import LocalPki
from tests.ntlm_target import NtlmTarget, ntlm_target

M1 = "SYNTHETIC_TEST-00000000000000E1"
PASSWORD = "canary-ntlm-pw-R8v3Lq"


def ntlm_pair(username: str, password: str = PASSWORD, version: int = 1) -> epb.CredentialResource:
    details = cpb.CredentialDetails(username_password=cpb.UsernamePassword(username=username, password=password))
    return epb.CredentialResource(id=PAIR, version=version, details=details)


def ntlm(url: str, cid: str = PAIR, **fields: object) -> mpb.HttpRequest:
    r = request(url, **fields)
    r.authentication.ntlm_credential_id = cid
    return r


@pytest.fixture
def engine(local_pki: LocalPki) -> Engine:
    return Engine(TargetTls(local_pki.server_ca_pem))


@pytest.fixture
async def corp_target() -> AsyncIterator[NtlmTarget]:
    async with ntlm_target("CORP\\alice", PASSWORD) as target:
        yield target


async def test_a_domain_user_logs_in_on_one_connection_and_again_in_every_execution(
    engine: Engine, corp_target: NtlmTarget
) -> None:
    m = monitor(M1, ntlm(corp_target.url("/app"), validation=[rule(body_contains="NTLM welcome CORP\\alice")]))
    first = await engine.run(m, ntlm_pair("CORP\\alice"))
    assert first.status == SUCCESS, first.failure_reason
    assert [(r.status_code, r.success) for r in first.requests] == [(200, True)]
    second = await engine.executor.execute(engine.held(M1))
    assert second.status == SUCCESS, second.failure_reason
    # each execution: negotiate then authenticate, both on the same connection; nothing carried to the next one
    stages = [(s.stage, s.client_port, s.domain, s.user, s.accepted) for s in corp_target.seen]
    assert [s[0] for s in stages] == ["negotiate", "authenticate"] * 2
    assert stages[0][1] == stages[1][1] != stages[2][1] == stages[3][1]
    assert [s[2:] for s in stages if s[0] == "authenticate"] == [("CORP", "alice", True)] * 2
    assert_no_canary(first, second)
    assert PASSWORD not in str(first) + str(second)


async def test_a_user_without_a_domain_logs_in(engine: Engine) -> None:
    async with ntlm_target("bob", PASSWORD) as target:
        result = await engine.run(monitor(M1, ntlm(target.url("/"))), ntlm_pair("bob"))
        assert result.status == SUCCESS, result.failure_reason
        assert [(s.domain, s.user, s.accepted) for s in target.accepted] == [("", "bob", True)]


async def test_a_wrong_password_or_domain_fails_cleanly(
    engine: Engine, corp_target: NtlmTarget, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = corp_target.url("/app")
    m = monitor(M1, ntlm(url))
    wrong = await engine.run(m, ntlm_pair("CORP\\alice", password="canary-wrong-pw-Zt41"))
    assert wrong.status == FAILED
    assert wrong.requests[0].status_code == 401
    assert wrong.failure_reason == f"request 1 (GET {url}): HTTP status 401"
    other_domain = await engine.run(m, ntlm_pair("OTHER\\alice", version=2))
    assert other_domain.failure_reason == f"request 1 (GET {url}): HTTP status 401"
    assert [(s.domain, s.accepted) for s in corp_target.seen if s.stage == "authenticate"] == [
        ("CORP", False),
        ("OTHER", False),
    ]
    for text in (str(wrong), str(other_domain), wrong.SerializeToString(), caplog.text):
        assert "canary-wrong-pw-Zt41" not in str(text)
        assert PASSWORD not in str(text)
    right = await engine.run(m, ntlm_pair("CORP\\alice", version=3))  # the overwritten credential, no restart
    assert right.status == SUCCESS, right.failure_reason


async def test_ntlm_over_https_is_bound_to_the_tls_channel(engine: Engine, local_pki: LocalPki) -> None:
    """The target requires channel binding to its certificate (Extended Protection): the engine's authenticate
    message carries the certificate's hash, so the target accepts it."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(local_pki.server_pem, local_pki.server_key)
    certificate = local_pki.server_pem.read_bytes()
    async with ntlm_target("CORP\\alice", PASSWORD, tls=tls, bind_certificate=certificate) as target:
        url = target.url("/secure", host="localhost")
        m = monitor(M1, ntlm(url, validation=[rule(body_contains="welcome")]))
        result = await engine.run(m, ntlm_pair("CORP\\alice"))
        assert result.status == SUCCESS, result.failure_reason
        assert [(s.domain, s.user, s.bound) for s in target.accepted] == [("CORP", "alice", True)]


async def test_a_target_that_does_not_offer_ntlm_and_a_credential_of_the_wrong_kind(engine: Engine) -> None:
    plain = await Target(expected_password=PASSWORD).start()
    try:
        basic_only = await engine.run(monitor(M1, ntlm(plain.url("/basic"))), ntlm_pair("alice"))
        assert basic_only.failure_reason == f"request 1 (GET {plain.url('/basic')}): HTTP status 401"
        assert [s.authorization.split(" ")[0] for s in plain.requests_to("/basic")] == ["NTLM"]  # negotiate only
        # a token pushed for NTLM: the engine refuses the monitor (as for basic auth), it never runs with it
        engine.revision += 1
        batch = epb.ConfigBatch(revision=engine.revision, credentials=[token()])
        batch.monitors.append(monitor(M1, ntlm(plain.url("/final"), cid=TOKEN), version=2))
        [rejected] = engine.store.apply(batch)
        assert rejected.reason.endswith(f"{TOKEN} is of kind token, but the monitor uses it as username_password")
    finally:
        await plain.stop()


@pytest.fixture
async def bad_challenges() -> AsyncIterator[str]:
    """A target whose NTLM challenges are broken: not base64, base64 of no NTLM message, the client's own negotiate
    message sent back."""

    async def answer(request: web.Request) -> web.Response:
        sent = request.headers.get("Authorization", "").partition(" ")[2]
        challenge = {
            "/not-base64": "!!!",
            "/garbage": base64.b64encode(b"NTLMSSP\x00\x02 not really").decode(),
            "/echo": sent,
        }[request.path]
        return web.Response(status=401, headers={"WWW-Authenticate": f"NTLM {challenge}"})

    app = web.Application()
    app.router.add_get("/{name}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_a_broken_challenge_fails_with_a_fixed_reason(engine: Engine, bad_challenges: str) -> None:
    expected = {
        "/not-base64": "the target's NTLM challenge is not base64",
        "/garbage": "the target's NTLM challenge could not be answered",
        "/echo": "the target's NTLM challenge could not be answered",
    }
    for version, (path, reason) in enumerate(expected.items(), start=1):
        url = bad_challenges + path
        result = await engine.run(monitor(M1, ntlm(url), version=version), ntlm_pair("CORP\\alice", version=version))
        assert result.status == FAILED
        assert result.failure_reason == f"request 1 (GET {url}): {reason}", result.failure_reason
        assert PASSWORD not in str(result)
