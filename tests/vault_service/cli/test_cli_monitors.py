"""`credvault locations|engines|monitors`, run in a subprocess against the real TLS server of the test's loop."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from credvault.v1 import monitors_pb2 as mpb
from tests.cli_helpers import Result, assert_contains, basic_auth_monitor, cli_env, run
from tests.conftest import Client
from tests.helpers import create_req, token, up
from tests.local_pki import LocalPki
from vault_service.server import RunningVault

PASSWORD, TOKEN_VALUE = "pw-Qm42-never-shown", "tok-Vb77-never-shown"


async def ok(env: dict[str, str], *args: str) -> Result:
    result = await run(env, *args)
    assert result.rc == 0, result.err
    for secret in (PASSWORD, TOKEN_VALUE):
        assert secret not in result.out + result.err
    return result


def columns(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


@pytest.fixture
def env(vault: RunningVault, local_pki: LocalPki, admin: Client, tmp_path: pathlib.Path) -> dict[str, str]:
    return cli_env(vault, local_pki, admin, tmp_path)


async def add_location(admin: Client, loc: str = "loc-a") -> None:
    await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id=loc, name=loc)))


async def test_locations_and_engines(env: dict[str, str]) -> None:
    created = await ok(env, "locations", "create", "loc-a", "--name", "Lab A")
    assert_contains(created.out, "loc-a", "Lab A")
    listed = await ok(env, "locations", "list", "--json")
    assert [(x["id"], x["name"]) for x in json.loads(listed.out)["locations"]] == [("loc-a", "Lab A")]

    await ok(env, "engines", "add", "--location", "loc-a", "--engine", "e-1")
    engines = (await ok(env, "engines", "list")).out.splitlines()
    assert columns(engines[0]) == [
        "LOCATION",
        "ENGINE",
        "CONNECTED",
        "SINCE",
        "APPLIED REV",
        "LAG",
        "REJECTED",
        "REVOKED",
    ]
    assert engines[1].split() == ["loc-a", "e-1", "no", "-", "0", "0", "0", "no"]

    revoked = await ok(env, "engines", "revoke", "--location", "loc-a", "--engine", "e-1", "--json")
    assert json.loads(revoked.out)["engine"]["revoked"] is True
    after = await ok(env, "engines", "list", "--location", "loc-a", "--json")
    assert [(e["engine_id"], e["revoked"]) for e in json.loads(after.out)["engines"]] == [("e-1", True)]


async def test_http_monitor_with_ntlm(env: dict[str, str], admin: Client) -> None:
    await add_location(admin)
    cid = (await admin.CreateCredential(create_req("intranet", up("CORP\\svc", PASSWORD)))).credential.id
    created = await ok(
        env,
        *("monitors", "create-http", "--json", "--name", "intranet", "--url", "https://intranet.example/"),
        *("--location", "loc-a", "--ntlm-credential", cid),
    )
    monitor = json.loads(created.out)["monitor"]
    assert monitor["http"]["requests"][0]["authentication"] == {"ntlm_credential_id": cid}
    assert_contains((await ok(env, "monitors", "get", monitor["id"])).out, f"NTLM {cid}")


async def test_http_monitor_lifecycle(env: dict[str, str], admin: Client) -> None:
    await add_location(admin)
    basic = (await admin.CreateCredential(create_req("basic", up("svc", PASSWORD)))).credential.id
    tok = (await admin.CreateCredential(create_req("tok", token(TOKEN_VALUE)))).credential.id
    created = await ok(
        env,
        *("monitors", "create-http", "--json", "--name", "shop login", "--url", "https://shop.example/login"),
        *("--location", "loc-a", "--basic-credential", basic, "--header", f"Authorization: Bearer {{{{{tok}}}}}"),
        *("--expect-status", "200", "--expect-status", "204", "--body-contains", "Welcome", "--frequency", "10"),
    )
    assert "warning" not in created.err  # the Authorization header holds a placeholder
    monitor = json.loads(created.out)["monitor"]
    mid = monitor["id"]
    assert (monitor["enabled"], monitor["frequency_minutes"], monitor["type"]) == (True, 10, "MONITOR_TYPE_HTTP")
    request = monitor["http"]["requests"][0]
    assert request["headers"] == [{"name": "Authorization", "value": f"Bearer {{{{{tok}}}}}"}]
    assert request["authentication"] == {"basic_credential_id": basic}

    listed = json.loads((await ok(env, "monitors", "list", "--json", "--credential", tok)).out)["monitors"]
    assert [(m["id"], sorted(m["credential_ids"])) for m in listed] == [(mid, sorted([basic, tok]))]

    disabled = (await ok(env, "monitors", "disable", mid)).out.splitlines()
    header = columns(disabled[0])
    assert header == ["ID", "NAME", "TYPE", "ENABLED", "FREQ", "LOCATIONS", "CREDENTIALS", "VERSION"]
    row = dict(zip(header, columns(disabled[1]), strict=True))
    assert (row["ID"], row["ENABLED"], row["FREQ"], row["LOCATIONS"]) == (mid, "no (by-user)", "10m", "loc-a")

    shown = await ok(env, "monitors", "get", mid)
    assert_contains(shown.out, mid, "no (by-user)", f"basic {basic}", "status in 200,204", "GET https://shop.")

    assert (await ok(env, "monitors", "delete", mid)).out.strip() == f"deleted {mid}"
    gone = await run(env, "monitors", "get", mid)
    assert gone.rc == 1
    assert gone.err.startswith("credvault: NOT_FOUND: ")


async def test_invalid_monitors_are_refused(env: dict[str, str], admin: Client) -> None:
    await add_location(admin)
    common = ["monitors", "create-http", "--name", "n", "--url", "https://x.example", "--location", "loc-a"]
    bad = await run(env, *common, "--frequency", "3", "--header", "X-Api-Key: literal-Zr9")
    assert bad.rc == 1
    assert bad.err.startswith("credvault: warning: header X-Api-Key holds no"), bad.err
    assert_contains(bad.err, "credvault: INVALID_ARGUMENT: monitor.frequency_minutes")
    assert "literal-Zr9" not in bad.err

    malformed = await run(env, *common, "--header", "Authorization Bearer literal-Zr9")
    assert malformed.rc == 2
    assert_contains(malformed.err, "--header", "'Name: value'")
    assert "literal-Zr9" not in malformed.err


async def test_monitor_results(env: dict[str, str], admin: Client, vault: RunningVault) -> None:
    await add_location(admin)
    basic = (await admin.CreateCredential(create_req("basic", up("svc", PASSWORD)))).credential.id
    m = (await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=basic_auth_monitor(basic)))).monitor
    reported = []
    for n, status in enumerate([mpb.EXECUTION_STATUS_SUCCESS, mpb.EXECUTION_STATUS_FAILED]):
        r = mpb.MonitorResult(monitor_id=m.id, monitor_version=m.version, status=status, duration_ms=41.6 + n)
        r.start_time.GetCurrentTime()
        r.start_time.seconds -= 60 - n
        r.requests.add(url="https://shop.example/", method="GET", status_code=200 + 300 * n)
        if n:
            r.failure_reason = "request 1 (GET https://shop.example/): HTTP status 500"
        reported.append(r)
    async with vault.store.transaction() as tx:  # as the engine stream records them
        assert await tx.insert_results([("loc-a", "e-1", r) for r in reported], 100) == 2

    lines = (await ok(env, "monitors", "results", m.id)).out.splitlines()
    header = columns(lines[0])
    assert header == ["STARTED", "LOCATION", "ENGINE", "VERSION", "STATUS", "MS", "CODES", "FAILURE"]
    newest = dict(zip(header, columns(lines[1]), strict=True))
    assert (newest["LOCATION"], newest["ENGINE"], newest["STATUS"], newest["MS"], newest["CODES"]) == (
        "loc-a",
        "e-1",
        "failed",
        "43",
        "500",
    )
    assert newest["FAILURE"].endswith("HTTP status 500")
    assert columns(lines[2])[4:7] == ["success", "42", "200"]

    one = json.loads((await ok(env, "monitors", "results", m.id, "--limit", "1", "--json")).out)["results"]
    assert [r["status"] for r in one] == ["EXECUTION_STATUS_FAILED"]
    bad = await run(env, "monitors", "results", m.id, "--limit", "9999")
    assert bad.rc == 1
    assert bad.err.startswith("credvault: INVALID_ARGUMENT: limit")


BROWSER_EVENTS = """
events:
  - description: type the username
    keystroke: {selector: "#user", credential: {credential_id: PAIR, field: username}}
  - description: type the password
    keystroke: {selector: "#pass", credential: {credentialId: PAIR, field: password}}
  - description: log in
    click_selector: "#go"
    wait: {element_selector: "#account", timeout_ms: 5000}
validation:
  - text_absent: wrong password
"""


async def test_create_browser_and_the_results_screenshot(
    env: dict[str, str], admin: Client, vault: RunningVault, tmp_path: pathlib.Path
) -> None:
    await add_location(admin)
    pair = (await admin.CreateCredential(create_req("pair", up("alice", PASSWORD)))).credential.id
    events = tmp_path / "events.yaml"
    events.write_text(BROWSER_EVENTS.replace("PAIR", pair))
    args = ["monitors", "create-browser", "--name", "shop", "--location", "loc-a", "--url", "https://shop.example/"]
    created = await ok(env, *args, "--events-file", str(events), "--text-present", "Welcome", "--json")
    monitor = json.loads(created.out)["monitor"]
    script = monitor["browser"]
    assert monitor["credential_ids"] == [pair]
    assert [e["description"] for e in script["events"]] == ["type the username", "type the password", "log in"]
    assert script["events"][1]["keystroke"]["credential"] == {"credential_id": pair, "field": "password"}
    assert script["validation"] == [{"text_absent": "wrong password"}, {"text_present": "Welcome"}]

    events.write_text("events:\n  - click_selector: 3\n    nonsense: true\n")
    bad = await run(env, *args, "--events-file", str(events))
    assert bad.rc != 0
    assert "--events-file: an event or rule does not fit" in bad.err

    png = b"\x89PNG\r\n\x1a\n" + b"pixels" * 10
    result = mpb.MonitorResult(
        monitor_id=monitor["id"],
        monitor_version=1,
        status=mpb.EXECUTION_STATUS_FAILED,
        failure_reason="event 3 (log in): timed out after 5000 ms waiting for element #account",
        main_document_status=200,
        screenshot_png=png,
    )
    result.start_time.GetCurrentTime()
    async with vault.store.transaction() as tx:
        assert await tx.insert_results([("loc-a", "e1", result)], 100) == 1
    shot = tmp_path / "shot.png"
    listed = await ok(env, "monitors", "results", monitor["id"], "--screenshot", str(shot))
    assert shot.read_bytes() == png
    assert "wrote the screenshot" in listed.err
    assert columns(listed.out.splitlines()[1])[6:8] == [
        "200",
        "event 3 (log in): timed out after 5000 ms waiting for element #account",
    ]
