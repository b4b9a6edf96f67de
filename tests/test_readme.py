"""README.md cannot drift: every command block of its walkthrough runs, command by command, against a real
`credvault dev` (tests/dev_helpers.py: free ports, a data directory of its own) in a shell whose output is a
terminal, and the recorded session reads cleanly (issue 12). A block that cannot run here is listed below with the
reason; a block that is new or changed (its section or first line) is unclassified and fails the test."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import sys
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import pytest_asyncio

from tests.cli_helpers import base_env, run
from tests.dev_helpers import DevProcess, outside_pytest_tmp, running_dev
from tests.readme_runner import Block, Ran, Terminal, commands_of, readme_blocks

MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")  # the tests share one `credvault dev`

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SHELL_LANGS = ("sh", "console", "bash", "shell")

# The blocks the walkthrough runs, by (section, first line), in README order: shell blocks command by command,
# the Python block as a script.
EXPORT = (
    "export CREDVAULT_SERVER=127.0.0.1:50051 CREDVAULT_INSECURE=1 CREDVAULT_TOKEN=$(cat .credvault-dev/admin-token)"
)
RUN = [
    ("Using it", EXPORT),
    ("Using it", "import grpc"),
    ("Watch a config travel to an engine", EXPORT),
    (
        "Engines run the monitors",
        "credvault monitors create-http --name echo --url 'http://127.0.0.1:9464/metrics' --location local"
        " --frequency 1",
    ),
    (
        "Browser monitors",
        "printf 's3cret' | credvault credentials create --name demo-login --type username-password --username alice \\",
    ),
    ("Operations", "credvault audit list --since 24h                  # a table"),
]

# The blocks that cannot run here, and why.
NOT_RUN = {
    ("Two commands", "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/credvault dev"): (
        "the install itself; `credvault dev` is what the test starts (tests/dev_helpers.py, this checkout's venv)"
    ),
    (
        "Two commands",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && PATH=\"$PWD/.venv/bin:$PATH\" scripts/check",
    ): "the install and the whole test suite: what .ci/run runs",
    (
        "Using it",
        'grpcurl -plaintext -H "authorization: Api-Token $CREDVAULT_TOKEN" 127.0.0.1:50051 list   # credvault dev',
    ): (
        "grpcurl is not installed on the development and CI machines (a Go binary no package registry here ships), "
        "and the other lines are TLS examples against vault.internal"
    ),
    ("Running it for real", "export CREDVAULT_DATABASE_URL=postgresql://credvault@db:5432/credvault"): (
        "production: a PostgreSQL server db, a keyring and TLS files under /etc/credvault"
    ),
    (
        "Credentials synchronized from an external vault",
        "credvault credentials create --name shop-login --type username-password --external-source source.json",
    ): "needs an OpenBao with an AppRole (tests/vault_service/test_external_sync.py runs these commands)",
    ("Deploy on Kubernetes", "kubectl create namespace credvault"): "kubectl and helm against a cluster",
    ("Deploy on Kubernetes", "credvault pki init --dir pki --trust-domain synthetic.example.com"): (
        "its kubectl lines need a cluster (the pki commands: tests/vault_service/cli/test_cli_pki.py)"
    ),
    (
        "Deploy on Kubernetes",
        "POD=$(kubectl -n credvault get pod -o name -l app.kubernetes.io/instance=credvault,"
        "app.kubernetes.io/component=vault \\",
    ): "kubectl against a cluster",
}

# What the walkthrough's commands are given instead of what the README shows: the test's `credvault dev` listens on
# free ports, and an id shown as `…` is the last one of its kind that the session printed (the one just created).
_ID = {"CREDENTIALS_VAULT-…": "CREDENTIALS_VAULT", "SYNTHETIC_TEST-…": "SYNTHETIC_TEST"}

# The README's Python example is the TLS form; its text says to open the channel with the dev form against
# `credvault dev`, and leaves `token` and `password` to the reader.
PYTHON_DEV_FORM = (
    'creds = grpc.ssl_channel_credentials(root_certificates=open("ca.pem", "rb").read())\n'
    'with grpc.secure_channel("vault.internal:50051", creds) as channel:\n',
    'with grpc.insecure_channel("127.0.0.1:50051") as channel:\n',
)
PYTHON_PRELUDE = 'import os\ntoken = os.environ["CREDVAULT_TOKEN"]\npassword = "pw-from-the-readme-test"\n'

# What a clean session never shows: grpc C-core log lines, tracebacks, Python warnings.
NOISE = re.compile(
    r"^[EWIDF]\d{4} \d\d:\d\d:\d\d|ev_epoll|ev_poll|fork_posix|Traceback|\w*Warning\b|grpc_core|\bchttp2\b",
    re.MULTILINE,
)


def substitutions(dev: DevProcess, session: Callable[[], str]) -> Callable[[str], str]:
    def substitute(command: str) -> str:
        command = command.replace("127.0.0.1:50051", f"127.0.0.1:{dev.api_port}")
        command = command.replace("127.0.0.1:9464", f"127.0.0.1:{dev.status_port}")
        command = command.replace("127.0.0.1:8089", f"127.0.0.1:{dev.demo_site_port}")
        for shown, prefix in _ID.items():
            if shown in command:
                printed = re.findall(prefix + r"-[0-9A-F]{16}", session())
                assert printed, f"{shown} in {command!r}, but the session printed no such id yet"
                command = command.replace(shown, printed[-1])
        return command

    return substitute


def shell_blocks(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.lang in SHELL_LANGS or b.lang == "python"]


def test_every_readme_block_is_classified_and_parses() -> None:
    blocks = shell_blocks(readme_blocks(README))
    keys = [b.key for b in blocks]
    unclassified = [f"README.md:{b.line} {b.key}" for b in blocks if b.key not in RUN and b.key not in NOT_RUN]
    assert not unclassified, f"new or changed README blocks: add each to RUN or NOT_RUN: {unclassified}"
    assert [k for k in keys if k in RUN] == RUN, "a RUN block is gone from README.md, or moved"
    assert not [k for k in NOT_RUN if k not in keys], "a NOT_RUN block is gone from README.md"
    for block in blocks:
        if block.key in RUN and block.lang == "python":
            compile(block.text, f"README.md:{block.line}", "exec")
        elif block.key in RUN:
            assert commands_of(block), block


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dev() -> AsyncIterator[DevProcess]:
    """`credvault dev` in a directory of its own, with its data in ./.credvault-dev as the README has it."""
    with outside_pytest_tmp("credvault-readme-") as directory:
        async with running_dev(directory / ".credvault-dev") as running:
            yield running


def user_env() -> dict[str, str]:
    """A fresh shell's environment, `source .venv/bin/activate` done (the README says so for another shell)."""
    venv_bin = str(pathlib.Path(sys.executable).parent)
    return {**base_env(), "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", "TERM": "xterm"}


def walk(dev: DevProcess, transcript: pathlib.Path) -> list[Ran]:
    terminal = Terminal(dev.data_dir.parent, user_env(), transcript)
    substitute = substitutions(dev, lambda: terminal.text)
    ran: list[Ran] = []
    try:
        blocks = {b.key: b for b in shell_blocks(readme_blocks(README))}
        for key in RUN:
            block = blocks[key]
            if block.lang == "python":
                old, new = PYTHON_DEV_FORM
                assert old in block.text, f"README.md:{block.line}: the Python example changed: update PYTHON_DEV_FORM"
                script = dev.data_dir.parent / "readme_example.py"
                script.write_text(PYTHON_PRELUDE + substitute(block.text.replace(old, new)))
                ran.append(terminal.run(f"python3 {script.name}"))
            else:
                ran += terminal.run_all(commands_of(block), substitute)
            if any(r.rc != 0 for r in ran):
                break
    finally:
        terminal.close()
    return ran


@MODULE_LOOP
async def test_the_readme_walkthrough_runs_against_dev_and_reads_cleanly(
    dev: DevProcess, tmp_path: pathlib.Path
) -> None:
    transcript = tmp_path / "readme-walkthrough.txt"
    ran = await asyncio.to_thread(walk, dev, transcript)
    failed = [r for r in ran if r.rc != 0]
    assert not failed, f"{failed[0].command!r} exited {failed[0].rc}:\n{failed[0].output}\ntranscript: {transcript}"
    session = transcript.read_text()
    assert len(ran) >= 15, session
    noise = NOISE.findall(session)
    assert not noise, f"the session shows {noise}; transcript: {transcript}"
    assert not NOISE.findall(dev.stderr), dev.stderr  # nor does the shell `credvault dev` runs in
    # what the walkthrough says it shows
    created = next(r for r in ran if "credentials create --name shop-login" in r.command)
    overwritten = next(r for r in ran if "credentials overwrite" in r.command)
    assert re.search(r"^version:\s+1$", created.output, re.MULTILINE), session
    assert re.search(r"^version:\s+2$", overwritten.output, re.MULTILINE), session
    introspections = [json.loads(r.output) for r in ran if "/introspection" in r.command]
    assert introspections, session
    assert all(set(doc) >= {"monitors", "credentials"} for doc in introspections), session
    assert (introspections[-1]["monitors"], introspections[-1]["credentials"]) == ({}, {}), session  # flushed
    # the browser example logs in to the demo site `credvault dev` serves: its first execution succeeds
    created_browser = next(r for r in ran if "monitors create-browser --name demo-login" in r.command)
    browser_id = re.findall(r"SYNTHETIC_TEST-[0-9A-F]{16}", created_browser.output)[-1]
    first = await asyncio.wait_for(_first_result(dev, browser_id), 120)  # its phase is within the minute
    assert first["status"] == "EXECUTION_STATUS_SUCCESS", first


def _cli_env(dev: DevProcess) -> dict[str, str]:
    token = (dev.data_dir / "admin-token").read_text().strip()
    return {
        **user_env(),
        "CREDVAULT_SERVER": f"127.0.0.1:{dev.api_port}",
        "CREDVAULT_INSECURE": "1",
        "CREDVAULT_TOKEN": token,
    }


async def _first_result(dev: DevProcess, monitor_id: str) -> dict[str, object]:
    while True:
        result = await run(_cli_env(dev), "monitors", "results", monitor_id, "--json")
        assert result.rc == 0, result.err
        results: list[dict[str, object]] = json.loads(result.out).get("results", [])
        if results:
            return results[-1]
        await asyncio.sleep(1)


async def _introspection(port: int) -> dict[str, dict[str, dict[str, int]]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/introspection") as resp:
        doc: dict[str, dict[str, dict[str, int]]] = await resp.json()
        return doc


@MODULE_LOOP
async def test_introspection_shows_each_held_objects_revision_and_the_version_the_cli_shows(dev: DevProcess) -> None:
    """One meaning of "version" (issue 12): the worker shows, for each monitor and credential it holds, the
    version `credvault ... get` shows and, as ``revision``, what it holds it at."""
    env = _cli_env(dev)

    async def cli(*args: str, stdin: bytes | None = None) -> dict[str, dict[str, str]]:
        result = await run(env, *args, "--json", stdin=stdin)
        assert result.rc == 0, result.err
        doc: dict[str, dict[str, str]] = json.loads(result.out)
        return doc

    create = ("credentials", "create", "--name", "pinned", "--type", "username-password", "--username", "alice")
    cred = (await cli(*create, "--password-file", "-", stdin=b"pw-1"))["credential"]["id"]
    url = f"http://127.0.0.1:{dev.status_port}/metrics"
    monitor = ("monitors", "create-http", "--name", "pinned", "--url", url, "--location", "local")
    mid = (await cli(*monitor, "--basic-credential", cred, "--frequency", "60"))["monitor"]["id"]
    overwrite = ("credentials", "overwrite", cred, "--username", "alice", "--password-file", "-")
    await cli(*overwrite, stdin=b"pw-2")

    async def held() -> dict[str, dict[str, dict[str, int]]]:
        while True:
            doc = await _introspection(dev.status_port)
            if doc["credentials"].get(cred, {}).get("version") == 2 and mid in doc["monitors"]:
                return doc
            await asyncio.sleep(0.1)

    doc = await asyncio.wait_for(held(), 60)
    shown_cred = (await cli("credentials", "get", cred))["credential"]
    shown_monitor = (await cli("monitors", "get", mid))["monitor"]
    assert doc["credentials"][cred]["version"] == int(shown_cred["version"]) == 2
    assert doc["monitors"][mid] == {"revision": int(shown_monitor["revision"]), "version": 1}
    assert int(shown_monitor["version"]) == 1
    assert doc["credentials"][cred]["revision"] > 0
    await cli("monitors", "delete", mid)
