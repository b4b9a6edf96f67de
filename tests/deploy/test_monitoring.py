"""The chart's Grafana dashboard and PrometheusRule alerts (issue 15, "See and be alerted").

The rules are rendered by a real helm and checked by a real promtool (Debian's `prometheus` package; .ci/run installs
it): `promtool check rules`, and `promtool test rules` with synthetic series for every alert, each shown to fire when
it should and not when it should not (and each case shown able to fail: a rule that always or never fires fails it).
Every metric a panel or an alert names is checked against live scrapes of a real vault and a real engine worker."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from credvault.v1 import monitors_pb2 as mpb
from tests.helm_support import CHART, Helm, Manifest, by_kind, one, validate_manifest
from tests.helpers import create_req, up
from tests.processes import System, eventually, free_port, introspect, vault_admin
from tests.vault_service.push.test_push_processes import http_monitor

NAMESPACE, FULLNAME = "vault", "rel-credvault"
V = f'namespace="{NAMESPACE}",job="{FULLNAME}"'
W = f'namespace="{NAMESPACE}",job="{FULLNAME}-engine-workers"'
VALUES: dict[str, Any] = {
    "metrics": {"serviceMonitor": {"enabled": True}},
    # kekRetireWithin shortened from its 7d default: promtool steps through every minute up to the last eval_time
    "prometheusRule": {"enabled": True, "alertLabels": {"team": "synthetics"}, "kekRetireWithin": "2h"},
    "grafana": {"dashboard": {"enabled": True}},
    "locations": [{"id": "berlin"}],
}
DEFAULT_PROMETHEUS_RULE = yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"]


@pytest.fixture(scope="module")
def docs(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    return helm.render(VALUES, tmp_path_factory.mktemp("monitoring"), namespace=NAMESPACE)


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return found


def alert_rules(docs: list[Manifest]) -> list[dict[str, Any]]:
    rule = one(docs, "PrometheusRule", FULLNAME)
    return [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]


def dashboard(docs: list[Manifest]) -> dict[str, Any]:
    configmap = one(docs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (body,) = configmap["data"].values()
    loaded: dict[str, Any] = json.loads(body)
    return loaded


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    """Every panel's queries, with the dashboard's constants and Grafana's interval put in."""
    constants = {v["name"]: v["query"] for v in board["templating"]["list"] if v["type"] == "constant"}
    queries = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "5m")
            for name, value in constants.items():
                expr = expr.replace(f"${name}", value)
            assert "$" not in expr, expr
            queries.append(expr)
    return queries


def check_rules(tmp_path: pathlib.Path, rules: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "credvault", "rules": rules}]}))
    return subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


# --- rendering --------------------------------------------------------------------------------------------------------


def test_off_by_default_and_valid_when_on(helm: Helm, docs: list[Manifest], tmp_path: pathlib.Path) -> None:
    defaults = helm.render({}, tmp_path, namespace=NAMESPACE)
    assert not by_kind(defaults, "PrometheusRule")
    assert not [d for d in by_kind(defaults, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]
    for doc in (one(docs, "PrometheusRule", FULLNAME), one(docs, "ConfigMap", f"{FULLNAME}-dashboard")):
        validate_manifest(doc)
    (tmp_path / "unlocked").mkdir()
    unlocked = helm.render({**VALUES, "memoryLock": {"enabled": False}}, tmp_path / "unlocked", namespace=NAMESPACE)
    assert "CredvaultMemoryNotLocked" not in {r["alert"] for r in alert_rules(unlocked)}, "locking is not asked for"


def test_dashboard_loads_and_its_queries_parse(docs: list[Manifest], tmp_path: pathlib.Path) -> None:
    board = dashboard(docs)
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    titles = " ".join(p["title"] for p in panels)
    for topic in ("RPC rate", "RPC errors", "RPC latency", "Engines connected", "lag", "Push latency", "Divergence",
                  "Executions by status", "Results", "KEK", "Memory locked"):  # fmt: skip
        assert topic in titles, topic
    queries = dashboard_queries(board)
    records = [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)]
    result = check_rules(tmp_path, records)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_promtool_check(docs: list[Manifest], tmp_path: pathlib.Path) -> None:
    rules = alert_rules(docs)
    assert len(rules) == 13
    result = check_rules(tmp_path, rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 13 rules found" in result.stdout


# --- every alert with synthetic series --------------------------------------------------------------------------------

Series = str  # one series a line: "name{labels} values", values in promtool's expanding notation
Expected = list[tuple[str, list[dict[str, str]]]]  # (eval time, the labels of each firing alert)


def input_series(series: Series) -> list[dict[str, str]]:
    out = []
    for line in filter(None, map(str.strip, series.splitlines())):
        selector, values = line.rsplit("} ", 1)
        out.append({"series": selector + "}", "values": values})
    return out


def _counter_case(
    metric: str, label: str = "location", values: tuple[str, str, str] = ("berlin", "tokyo", "lima"), extra: Series = ""
) -> tuple[Series, Expected]:
    """A counter that rises once (berlin, at 11m), and one that appears already raised (tokyo, at 21m: the first
    increment of a labelled counter creates its series): each fires within counterWindow (15m), then stops; a series
    that stays at 0 does not."""
    first, second, third = values
    series = (
        f"""
        {metric}{{{V},{label}="{first}",pod="v1"}} 0x10 1x40
        {metric}{{{V},{label}="{second}",pod="v1"}} _x20 1x30
        {metric}{{{V},{label}="{third}",pod="v1"}} 0x50
    """
        + extra
    )
    both = [{label: first}, {label: second}]
    return series, [("5m", []), ("15m", [{label: first}]), ("25m", both), ("45m", [])]


failing = [{"provider": "hashicorp", "outcome": "unreachable"}]
CASES: dict[str, tuple[Series, Expected]] = {
    # berlin out of contact from 6m on; tokyo for 3 minutes only
    "CredvaultEngineDisconnected": (
        f"""
        connected{{{W},location="berlin",pod="w1"}} 1x5 0x25
        connected{{{W},location="tokyo",pod="w2"}} 1x5 0x3 1x22
        """,
        [("10m", []), ("20m", [{"location": "berlin"}])],
    ),
    # berlin 150 revisions behind from 6m on; tokyo 150 behind for 6 minutes only; lima 100, not above
    "CredvaultEngineLagging": (
        f"""
        credvault_engine_lag{{{V},location="berlin",pod="v1"}} 0x5 150x25
        credvault_engine_lag{{{V},location="tokyo",pod="v2"}} 150x5 0x25
        credvault_engine_lag{{{V},location="lima",pod="v1"}} 100x30
        """,
        [("8m", []), ("20m", [{"location": "berlin"}])],
    ),
    # 10 pushes a minute, all within 1s for 20 minutes, then all between 1s and 60s (p99 about 59s)
    "CredvaultPushLatencyHigh": (
        f"""
        credvault_push_latency_seconds_bucket{{{V},le="1",pod="v1"}} 0+10x20 200x40
        credvault_push_latency_seconds_bucket{{{V},le="60",pod="v1"}} 0+10x60
        credvault_push_latency_seconds_bucket{{{V},le="+Inf",pod="v1"}} 0+10x60
        """,
        [("18m", []), ("30m", []), ("45m", [{}])],
    ),
    "CredvaultAntiEntropyRepairs": _counter_case("credvault_engine_divergence_total"),
    "CredvaultResultsRedacted": _counter_case("credvault_results_redacted_total"),
    # v1's follower 5000 behind from 6m on; v2's for 4 minutes only
    "CredvaultChangeFollowerLagging": (
        f"""
        credvault_change_log_lag{{{V},pod="v1"}} 0x5 5000x15
        credvault_change_log_lag{{{V},pod="v2"}} 5000x3 0x17
        """,
        [("8m", []), ("15m", [{"pod": "v1"}])],
    ),
    # time() starts at 0 in promtool: v1's API certificate expires at day 10 (within 14 days from the start), its
    # engine port's and tokyo's worker certificate at day 40 (not); berlin's worker certificate at day 13
    "CredvaultCertificateExpiringSoon": (
        f"""
        credvault_certificate_expiry_seconds{{{V},pod="v1",port="api",role="server"}} 864000x20
        credvault_certificate_expiry_seconds{{{V},pod="v1",port="engine",role="server"}} 3456000x20
        engine_certificate_expiry_seconds{{{W},location="berlin",pod="w1"}} 1123200x20
        engine_certificate_expiry_seconds{{{W},location="tokyo",pod="w2"}} 3456000x20
        """,
        [("5m", [{"pod": "v1", "port": "api", "role": "server"}, {"location": "berlin"}])],
    ),
    # v2 wraps with kek-1 while v1 moved to kek-2 at 5m; v2 follows only at 30m
    "CredvaultKekReplicasDisagree": (
        f"""
        credvault_kek_info{{{V},pod="v1",kek_id="kek-1"}} 1x4 _x56
        credvault_kek_info{{{V},pod="v1",kek_id="kek-2"}} _x4 1x56
        credvault_kek_info{{{V},pod="v2",kek_id="kek-1"}} 1x29 _x31
        credvault_kek_info{{{V},pod="v2",kek_id="kek-2"}} _x29 1x31
        """,
        [("3m", []), ("12m", []), ("20m", [{}]), ("40m", [])],
    ),
    # (kekRetireWithin 2h here) v1 holds kek-1 and kek-2 for 3 hours (kek-1 never retired); v2 for 1 hour only
    "CredvaultKekRotationUnfinished": (
        f"""
        credvault_kek_loaded{{{V},pod="v1",kek_id="kek-1"}} 1x200
        credvault_kek_loaded{{{V},pod="v1",kek_id="kek-2"}} 1x200
        credvault_kek_loaded{{{V},pod="v2",kek_id="kek-1"}} 1x60 _x140
        credvault_kek_loaded{{{V},pod="v2",kek_id="kek-2"}} 1x200
        """,
        [("90m", []), ("150m", [{"pod": "v1"}])],
    ),
    # (syncFailingFor 15m, failures counted over 5m) hashicorp unreachable from 6m on at every sync; openbao sealed
    # for 7 minutes only (over counterWindow's 15m it would count for 20); successes ("changed", "unchanged") never
    # fire
    "CredvaultSyncFailing": (
        f"""
        credvault_sync_total{{{V},provider="hashicorp",outcome="unreachable",pod="v1"}} _x5 1+1x45
        credvault_sync_total{{{V},provider="openbao",outcome="sealed",pod="v2"}} _x5 1+1x6 7x39
        credvault_sync_total{{{V},provider="hashicorp",outcome="changed",pod="v1"}} 0+1x50
        credvault_sync_total{{{V},provider="openbao",outcome="unchanged",pod="v2"}} 0+5x50
        """,
        [("15m", []), ("24m", failing), ("35m", failing)],
    ),
    # (syncStaleSeconds 3600, syncStaleFor 10m) hashicorp's oldest synchronization ages from the start (above 3600s
    # from 61m on); openbao's stays 30s old
    "CredvaultSyncStale": (
        f"""
        credvault_sync_age_seconds{{{V},provider="hashicorp",pod="v1"}} 0+60x90
        credvault_sync_age_seconds{{{V},provider="openbao",pod="v2"}} 30x90
        """,
        [("65m", []), ("80m", [{"provider": "hashicorp"}])],
    ),
    # failed rotations as the counter cases; successful ones ("rotated") never fire
    "CredvaultTokenRotationFailing": _counter_case(
        "credvault_token_rotation_total",
        "outcome",
        ("write_failed", "sealed", "conflict"),
        f"""
        credvault_token_rotation_total{{{V},outcome="rotated",pod="v1"}} 0+1x50
        """,
    ),
    # vault v2 and the berlin worker unlocked throughout; v1 and tokyo locked
    "CredvaultMemoryNotLocked": (
        f"""
        credvault_memory_locked{{{V},pod="v1"}} 1x20
        credvault_memory_locked{{{V},pod="v2"}} 0x20
        memory_locked{{{W},location="berlin",pod="w1"}} 0x20
        memory_locked{{{W},location="tokyo",pod="w2"}} 1x20
        """,
        [("3m", []), ("10m", [{"pod": "v2"}, {"location": "berlin"}])],
    ),
}


def run_promtool_tests(tmp_path: pathlib.Path, rules: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """Writes the rules and a promtool test file of CASES (one test group per alert) and runs `promtool test rules`."""
    by_name = {r["alert"]: r for r in rules}
    tests = []
    for name, (series, expectations) in CASES.items():
        rule = by_name[name]
        cases = [
            {
                "eval_time": at,
                "alertname": name,
                "exp_alerts": [
                    {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": rule["annotations"]}
                    for labels in firing
                ],
            }
            for at, firing in expectations
        ]
        tests.append({"name": name, "interval": "1m", "input_series": input_series(series), "alert_rule_test": cases})
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "credvault", "rules": rules}]}))
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}))
    return subprocess.run(
        [promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


def test_every_alert_fires_when_it_should_and_not_otherwise(docs: list[Manifest], tmp_path: pathlib.Path) -> None:
    rules = alert_rules(docs)
    assert set(CASES) == {r["alert"] for r in rules}, "each alert has its synthetic series"
    for rule in rules:
        assert rule["labels"]["team"] == "synthetics", "prometheusRule.alertLabels"
        assert rule["labels"]["severity"] in ("warning", "critical")
    result = run_promtool_tests(tmp_path, rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("broken", ["vector(1)", "vector(1) > 1"], ids=["always-fires", "never-fires"])
def test_each_alert_case_can_fail(docs: list[Manifest], tmp_path: pathlib.Path, name: str, broken: str) -> None:
    """The cases of an alert check both ways: with its expression replaced by one that always (never) fires, they
    fail."""
    rules = [{**r, "expr": broken} if r["alert"] == name else r for r in alert_rules(docs)]
    result = run_promtool_tests(tmp_path, rules)
    assert result.returncode != 0, result.stdout
    assert name in result.stdout + result.stderr


def test_thresholds_come_from_values(helm: Helm, tmp_path: pathlib.Path) -> None:
    custom = {
        "engineLagRevisions": 7,
        "engineLagFor": "3m",
        "pushLatencyP99Seconds": 2.5,
        "counterWindow": "1h",
        "syncStaleSeconds": 600,
        "syncFailingFor": "4m",
    }
    values = {**VALUES, "prometheusRule": {"enabled": True, **custom}}
    rules = {r["alert"]: r for r in alert_rules(helm.render(values, tmp_path, namespace=NAMESPACE))}
    assert rules["CredvaultEngineLagging"]["expr"].endswith("> 7")
    assert rules["CredvaultEngineLagging"]["for"] == "3m"
    assert rules["CredvaultPushLatencyHigh"]["expr"].endswith("> 2.5")
    assert "[1h]" in rules["CredvaultAntiEntropyRepairs"]["expr"]
    assert "[1h]" in rules["CredvaultTokenRotationFailing"]["expr"]
    assert rules["CredvaultSyncStale"]["expr"].endswith("> 600")
    assert rules["CredvaultSyncFailing"]["for"] == "4m"
    assert rules["CredvaultSyncStale"]["for"] == DEFAULT_PROMETHEUS_RULE["syncStaleFor"]
    assert rules["CredvaultEngineDisconnected"]["for"] == DEFAULT_PROMETHEUS_RULE["engineDisconnectedFor"]


# --- against what the processes export --------------------------------------------------------------------------------

# Alerted on before the vault exports them (issue 13); both have landed (sync age, token rotation). Add one here
# only while its alert waits for the code.
NOT_YET_EXPORTED: set[str] = set()
SELECTED = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}")


def selected_metrics(queries: list[str]) -> dict[str, set[str]]:
    """The metric names of ``queries`` by the job they select. Every metric carries a selector with its job."""
    found: dict[str, set[str]] = {}
    for query in queries:
        names = SELECTED.findall(query)
        assert names, query
        assert query.count("{") == len(names), f"a selector without a metric name: {query}"
        for name, matchers in names:
            (job,) = re.findall(r'job="([^"]+)"', matchers)
            found.setdefault(job, set()).add(name)
    return found


def exported(exposition: str) -> set[str]:
    """The series names an exposition offers: a counter's _total, a histogram's _bucket, _sum and _count, an
    info's _info (families are listed even before their first sample)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def test_panels_and_alerts_name_only_exported_metrics(
    system: System, database_url: str, docs: list[Manifest]
) -> None:
    metrics_port = free_port()
    async with vault_admin(system, database_url, CREDVAULT_METRICS_LISTEN=f"127.0.0.1:{metrics_port}") as admin:
        await admin.CreateLocation(mpb.CreateLocationRequest(location=mpb.Location(id="loc-a")))
        await admin.AddEngine(mpb.AddEngineRequest(location_id="loc-a", engine_id="e1"))
        cred = (await admin.CreateCredential(create_req("pair", up("alice", "pw-dashboard")))).credential.id
        await admin.CreateMonitor(mpb.CreateMonitorRequest(monitor=http_monitor(cred)))
        _, status_port = await system.start_worker("loc-a", "e1")

        async def holds() -> bool:
            return cred in (await introspect(status_port))["credentials"]

        await eventually(holds)
        vault_names: set[str] = set()

        async def vault_reports_the_push() -> bool:  # the change-log lag needs a read of the head first
            nonlocal vault_names
            vault_names = exported(await scrape(metrics_port))
            return "credvault_change_log_lag" in vault_names

        await eventually(vault_reports_the_push)
        worker_names = exported(await scrape(status_port))

    used = selected_metrics([r["expr"] for r in alert_rules(docs)] + dashboard_queries(dashboard(docs)))
    assert set(used) == {FULLNAME, f"{FULLNAME}-engine-workers"}
    vault_names |= NOT_YET_EXPORTED
    assert not used[FULLNAME] - vault_names, f"not exported by the vault: {used[FULLNAME] - vault_names}"
    workers = used[f"{FULLNAME}-engine-workers"]
    assert not workers - worker_names, f"not exported by the engine worker: {workers - worker_names}"
