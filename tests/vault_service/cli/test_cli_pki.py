"""`credvault pki ...`: the CAs and certificates for mutual TLS, written to files by the commands."""

from __future__ import annotations

import argparse
import datetime
import pathlib

import pytest

from credvault.identity import EngineIdentity, identity_from_certificate
from tests.cli_helpers import mode
from vault_service import pki
from vault_service.cli import pki as pki_cli
from vault_service.errors import ConfigurationError

UTC = datetime.UTC


def run_cli(*argv: str) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    pki_cli.register(sub)
    ns = parser.parse_args(argv)
    ns.func(ns)


def test_cli_init_issue_server_issue_engine(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    run_cli("pki", "init", "--dir", str(d), "--trust-domain", "example.org")
    out = capsys.readouterr().out
    for name in ("engine-ca.pem", "engine-ca.key", "server-ca.pem", "server-ca.key"):
        assert f"wrote {d / name}" in out
    run_cli("pki", "issue-server", "--dir", str(d), "--hostname", "localhost", "--hostname", "10.0.0.1")
    out += capsys.readouterr().out
    assert f"wrote {d / 'server.pem'}" in out
    assert f"wrote {d / 'server.key'}" in out
    run_cli("pki", "issue-engine", "--dir", str(d), "--location", "l1", "--engine", "e1", "--days", "7")
    out += capsys.readouterr().out
    assert f"wrote {d / 'engine-l1-e1.pem'}" in out
    assert "spiffe://example.org/location/l1/engine/e1" in out
    assert "PRIVATE KEY" not in out
    for p in d.iterdir():
        if p.suffix == ".key":
            assert mode(p) == 0o600
            assert p.read_bytes().decode().splitlines()[1] not in out

    engine = pki.read_files(d, "engine-l1-e1")
    assert identity_from_certificate(engine.cert_pem, "example.org") == EngineIdentity("example.org", "l1", "e1")
    lifetime = engine.certificate.not_valid_after_utc - datetime.datetime.now(UTC)
    assert datetime.timedelta(days=6) < lifetime <= datetime.timedelta(days=7)
    engine.certificate.verify_directly_issued_by(pki.load_ca(d, "engine-ca").certificate)
    server = pki.read_files(d, "server")
    server.certificate.verify_directly_issued_by(pki.load_ca(d, "server-ca").certificate)
    with pytest.raises(ValueError, match="subject does not match"):
        engine.certificate.verify_directly_issued_by(pki.load_ca(d, "server-ca").certificate)


def test_cli_refuses_to_overwrite_without_force(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    run_cli("pki", "init", "--dir", str(d))
    before = (d / "engine-ca.key").read_bytes()
    with pytest.raises(ConfigurationError, match="--force"):
        run_cli("pki", "init", "--dir", str(d))
    assert (d / "engine-ca.key").read_bytes() == before
    run_cli("pki", "init", "--dir", str(d), "--force")
    assert (d / "engine-ca.key").read_bytes() != before

    run_cli("pki", "issue-server", "--dir", str(d), "--hostname", "localhost")
    with pytest.raises(ConfigurationError, match="refusing to overwrite"):
        run_cli("pki", "issue-server", "--dir", str(d), "--hostname", "localhost")
    run_cli("pki", "issue-server", "--dir", str(d), "--hostname", "localhost", "--force")

    run_cli("pki", "issue-engine", "--dir", str(d), "--location", "a", "--engine", "b-c")
    first = (d / "engine-a-b-c.key").read_bytes()
    with pytest.raises(ConfigurationError, match="refusing to overwrite"):
        run_cli("pki", "issue-engine", "--dir", str(d), "--location", "a", "--engine", "b-c")
    # engine-a-b-c also names (location a-b, engine c): --force never replaces another engine's certificate
    with pytest.raises(ConfigurationError, match="another engine"):
        run_cli("pki", "issue-engine", "--dir", str(d), "--location", "a-b", "--engine", "c", "--force")
    assert (d / "engine-a-b-c.key").read_bytes() == first
    run_cli("pki", "issue-engine", "--dir", str(d), "--location", "a", "--engine", "b-c", "--force")
    assert (d / "engine-a-b-c.key").read_bytes() != first
    capsys.readouterr()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["issue-engine", "--location", "l1", "--engine", "e1"], "pki init"),
        (["issue-server", "--hostname", "localhost"], "pki init"),
    ],
)
def test_cli_needs_init(tmp_path: pathlib.Path, args: list[str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        run_cli("pki", args[0], "--dir", str(tmp_path), *args[1:])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["issue-engine", "--location", "L1", "--engine", "e1"], "location_id"),
        (["issue-engine", "--location", "l1", "--engine", "e1-"], "engine_id"),
        (["issue-engine", "--location", "l1", "--engine", "e1", "--trust-domain", "other.org"], "trust domain"),
        (["issue-engine", "--location", "l1", "--engine", "e1", "--days", "4000"], "outlive"),
        (["issue-server", "--hostname", "bad host"], "hostname"),
    ],
)
def test_cli_errors(tmp_path: pathlib.Path, args: list[str], message: str) -> None:
    run_cli("pki", "init", "--dir", str(tmp_path))
    with pytest.raises(ConfigurationError, match=message):
        run_cli("pki", args[0], "--dir", str(tmp_path), *args[1:])
    assert not any(p.name.startswith(("engine-l1", "server.")) for p in tmp_path.iterdir())


def test_cli_rejects_bad_trust_domain_and_days(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigurationError, match="trust domain"):
        run_cli("pki", "init", "--dir", str(tmp_path), "--trust-domain", "Bad:Domain")
    assert not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        run_cli("pki", "init", "--dir", str(tmp_path), "--days", "0")
    capsys.readouterr()


def test_cli_refuses_a_world_readable_ca_key(tmp_path: pathlib.Path) -> None:
    run_cli("pki", "init", "--dir", str(tmp_path))
    (tmp_path / "engine-ca.key").chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        run_cli("pki", "issue-engine", "--dir", str(tmp_path), "--location", "l1", "--engine", "e1")
