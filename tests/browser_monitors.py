"""Browser monitor definitions for tests, and an in-process engine (a ConfigStore fed as the stream feeds it, the
worker's BrowserExecutor over the distribution's Chromium)."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import engine_pb2 as epb
from credvault.v1 import monitors_pb2 as mpb
from engine_worker.browser_execution import BrowserExecutor, BrowserSettings
from engine_worker.browser_runtime import BrowserRuntime
from engine_worker.config_store import ConfigStore
from engine_worker.execution_metrics import BrowserMetrics

LOC = "loc-a"
PAIR = "CREDENTIALS_VAULT-00000000000000C1"
TOKEN = "CREDENTIALS_VAULT-00000000000000C2"


def chromium() -> str:
    """The distribution's Chromium (.ci/run installs it; the browser tests are not optional)."""
    path = shutil.which("chromium")
    assert path is not None, "the browser tests need the chromium package (apt-get install chromium)"
    return path


def pair(password: str, username: str = "alice", version: int = 1, cid: str = PAIR) -> epb.CredentialResource:
    details = cpb.CredentialDetails(username_password=cpb.UsernamePassword(username=username, password=password))
    return epb.CredentialResource(id=cid, version=version, details=details)


def token(value: str, version: int = 1, cid: str = TOKEN) -> epb.CredentialResource:
    return epb.CredentialResource(id=cid, version=version, details=cpb.CredentialDetails(token=cpb.Token(token=value)))


def typed(selector: str, credential_id: str, field: str = "", description: str = "") -> mpb.BrowserEvent:
    keystroke = mpb.Keystroke(
        selector=selector, credential=mpb.CredentialField(credential_id=credential_id, field=field)
    )
    return mpb.BrowserEvent(description=description, keystroke=keystroke)


def literal(selector: str, text: str) -> mpb.BrowserEvent:
    return mpb.BrowserEvent(keystroke=mpb.Keystroke(selector=selector, literal=text))


def click(selector: str, **fields: object) -> mpb.BrowserEvent:
    return mpb.BrowserEvent(click_selector=selector, **fields)


def shows(text: str) -> mpb.BrowserValidation:
    return mpb.BrowserValidation(text_present=text)


def browser_monitor(
    mid: str, url: str, *events: mpb.BrowserEvent, version: int = 1, **script: object
) -> epb.MonitorResource:
    browser = mpb.BrowserScript(url=url, events=events, **script)
    refs = sorted(set(re.findall(r"CREDENTIALS_VAULT-[0-9A-F]{16}", str(browser))))
    m = mpb.Monitor(
        id=mid,
        name=mid,
        type=mpb.MONITOR_TYPE_BROWSER,
        enabled=True,
        frequency_minutes=1,
        location_ids=[LOC],
        browser=browser,
        credential_ids=refs,
        version=version,
    )
    return epb.MonitorResource(id=mid, version=version, monitor=m)


class BrowserEngine:
    """A ConfigStore and the worker's browser executor over one Chromium (close it with :meth:`close`)."""

    def __init__(self, metrics: BrowserMetrics | None = None, max_screenshot_bytes: int = 512 * 1024) -> None:
        self.store = ConfigStore(location_id=LOC)
        self.runtime = BrowserRuntime(chromium(), metrics)
        settings = BrowserSettings(max_concurrent=4, max_screenshot_bytes=max_screenshot_bytes)
        self.executor = BrowserExecutor(self.store, self.runtime, settings, metrics)
        self.revision = 0

    def push(self, *resources: epb.CredentialResource | epb.MonitorResource) -> None:
        self.revision += 1
        batch = epb.ConfigBatch(revision=self.revision)
        for r in resources:
            (batch.credentials if isinstance(r, epb.CredentialResource) else batch.monitors).append(r)
        assert self.store.apply(batch) == []

    async def run(self, resource: epb.MonitorResource, *credentials: epb.CredentialResource) -> mpb.MonitorResult:
        self.push(*credentials, resource)
        held = self.store.monitor(resource.id)
        assert held is not None
        return await self.executor.execute(held)

    async def close(self) -> None:
        await self.runtime.close()


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def browser_processes(root: int | None = None) -> list[int]:
    """The Chromium main processes (not its renderers and helpers) under process ``root`` (default: this one)."""
    out = []
    for pid in _descendants(os.getpid() if root is None else root):
        try:
            # Chromium's helpers rewrite their command line into one string: split on spaces too
            args = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
        except OSError:
            continue
        if args and args[0].endswith(b"/chromium") and not any(a.startswith(b"--type=") for a in args):
            out.append(pid)
    return out


def kill_driver() -> int:
    """SIGKILLs Playwright's driver (node, run-driver) under this process; returns how many."""
    pids = []
    for pid in _descendants(os.getpid()):
        try:
            if b"run-driver" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return len(pids)


def kill_browsers(root: int | None = None) -> int:
    """SIGKILLs the Chromium main processes under ``root``; returns how many."""
    pids = browser_processes(root)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return len(pids)
