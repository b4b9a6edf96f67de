"""IPC_LOCK really reaches the vault's and the engine workers' processes in the chart's pods (issue 16).

A container's process of a non-root user keeps none of the container's capabilities across exec (Kubernetes sets no
ambient capabilities), so `capabilities.add: [IPC_LOCK]` alone leaves the vault and the workers unlocked. The image
gives the interpreter of its entry points the file capability of deploy/Dockerfile (`setcap cap_ipc_lock+p` on the
virtual environment's own copy of python, which the console scripts name), and credvault.memory_guard raises it into
its effective set.

Real processes on this machine, started as a container runtime starts them (tests/child_launcher.py --user: runc's
sequence with the sets containerd and CRI-O derive from the rendered securityContext: the uid and gid, the bounding,
permitted and effective sets reduced to `capabilities.add`, inheritable and ambient empty, no_new_privs from
`allowPrivilegeEscalation: false`) under a 64 KiB RLIMIT_MEMLOCK, exec a script whose interpreter carries the
Dockerfile's capability, as `engine-worker` and `credvault serve` do, and call protect_memory as both do at start.

No docker daemon is needed: the Dockerfile's setcap step is applied to a virtual environment made here the way the
Dockerfile makes it (`python -m venv --copies`)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helm_support import ROOT, Helm, Manifest, containers, pod_template, workloads
from tests.memory_probes import CAP_IPC_LOCK, ContainerUser, child_setup, kib

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("setcap") is None,
    reason="Linux, as root, with setcap (libcap2-bin): sets a file capability and runs processes as another user",
)

LOW_MEMLOCK = 64 * 1024
IPC_LOCK_MASK = 1 << CAP_IPC_LOCK
CAPABILITY_NUMBERS = {"IPC_LOCK": CAP_IPC_LOCK}
LOCKING_VALUES = {"locations": [{"id": "berlin"}]}
NOT_LOCKING_VALUES = {"memoryLock": {"enabled": False}, "locations": [{"id": "berlin"}]}

# Runs as the container's user; prints what it achieved and what the kernel says of it and of a thread started after.
PROBE = """
import json, pathlib, threading
from credvault import memory_guard

result = memory_guard.protect_memory(require_lock=False, setting="--require-mlock")
started, stop = threading.Event(), threading.Event()
thread = threading.Thread(target=lambda: (started.set(), stop.wait()))
thread.start()
started.wait()

def status(path):
    lines = pathlib.Path(path, "status").read_text().splitlines()
    return {name: value.strip() for name, _, value in (line.partition(":") for line in lines)}

tasks = [status(t) for t in sorted(pathlib.Path("/proc/self/task").iterdir())]
stop.set()
thread.join()
print(json.dumps({
    "locked": result.locked, "reason": result.unlocked_reason, "metric": memory_guard.memory_locked(),
    "status": status("/proc/self"), "thread_effective": [t["CapEff"] for t in tasks],
}))
"""


@dataclasses.dataclass(frozen=True)
class DockerfileCapability:
    environment: str  # the virtual environment the build stage makes, e.g. /opt/credvault
    capability: str  # what setcap gives, e.g. cap_ipc_lock+p
    target: str  # the file it is given to


def dockerfile_capability() -> DockerfileCapability:
    text = re.sub(r"\\\n", " ", (ROOT / "deploy" / "Dockerfile").read_text())
    (venv,) = re.findall(r"python -m venv --copies (\S+)", text)
    (setcap,) = re.findall(r"\bsetcap (\S+) (\S+)", text)
    return DockerfileCapability(venv, *setcap)


def test_dockerfile_gives_the_entry_points_interpreter_a_permitted_only_capability() -> None:
    """The capability sits on the interpreter the console scripts run (pip writes the environment's python into
    their shebang), in the permitted set only: with the effective bit the kernel refuses the exec wherever the
    container lacks IPC_LOCK (memoryLock off, the migration Job, helm test; the last test below runs them)."""
    image = dockerfile_capability()
    assert image.target == f"{image.environment}/bin/python"
    assert image.capability == "cap_ipc_lock+p"
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "find / -xdev -type f -perm /6000 -exec chmod a-s {} +" in dockerfile, "no setuid file in the image"


def container_user(sc: dict[str, Any], *, bounding_only: bool = False) -> ContainerUser:
    """How the runtime starts a container with securityContext ``sc``."""
    assert sc["capabilities"]["drop"] == ["ALL"]
    return ContainerUser(
        uid=sc["runAsUser"],
        gid=sc["runAsGroup"],
        capabilities=tuple(CAPABILITY_NUMBERS[c] for c in sc["capabilities"].get("add", [])),
        no_new_privs=not sc.get("allowPrivilegeEscalation", True),
        bounding_only=bounding_only,
    )


@dataclasses.dataclass(frozen=True)
class Image:
    directory: pathlib.Path
    probe: pathlib.Path  # names the interpreter with the Dockerfile's file capability in its shebang
    plain_probe: pathlib.Path  # the same with a copy of that interpreter without it (the image before)

    def run(self, user: ContainerUser, probe: pathlib.Path | None = None) -> dict[str, Any]:
        command = [*child_setup(memlock_bytes=LOW_MEMLOCK, user=user), str(probe or self.probe)]
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(self.directory / "lib")}
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        return report


def _interpreter_for(user: ContainerUser) -> str:
    """A Python the container's user can run (this test's own may live under a directory only root can enter)."""
    system = [f"{d}/{n}" for d in ("/usr/local/bin", "/usr/bin") for n in ("python3.11", "python3")]
    base: str = getattr(sys, "_base_executable", sys.executable)
    candidates = [os.path.realpath(base), *(os.path.realpath(c) for c in system if os.path.exists(c))]
    for candidate in dict.fromkeys(candidates):
        check = [*child_setup(user=user), candidate, "-c", "import venv"]
        if subprocess.run(check, capture_output=True, timeout=60, check=False).returncode == 0:
            return candidate
    pytest.skip(f"no Python interpreter here that uid {user.uid} may run: {candidates}")


def render(helm: Helm, values: dict[str, Any], tmp: pathlib.Path) -> list[Manifest]:
    tmp.mkdir()
    return helm.render(values, tmp)


def locking_security_context(helm: Helm, tmp: pathlib.Path) -> dict[str, Any]:
    """The securityContext of the vault's and the worker's containers with memoryLock on (one and the same)."""
    found: list[dict[str, Any]] = [
        c["securityContext"]
        for d in workloads(render(helm, LOCKING_VALUES, tmp))
        for c in containers(pod_template(d)[1])
        if c["command"] in (["credvault", "serve"], ["engine-worker"])
    ]
    assert len(found) == 2, found
    assert found[0] == found[1]
    return found[0]


@pytest.fixture(scope="module")
def image(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    # Not under pytest's temporary root: only root may enter that.
    directory = pathlib.Path(tempfile.mkdtemp(prefix="credvault-image-"))
    try:
        directory.chmod(0o755)
        if os.statvfs(directory).f_flag & os.ST_NOSUID:
            pytest.skip(f"{directory} is on a nosuid mount: the kernel ignores file capabilities there")
        base = _interpreter_for(container_user(locking_security_context(helm, tmp_path_factory.mktemp("v") / "on")))
        spec = dockerfile_capability()
        venv = directory / spec.environment.lstrip("/")
        subprocess.run([base, "-m", "venv", "--copies", "--without-pip", str(venv)], check=True, timeout=120)
        interpreter = venv / spec.target.removeprefix(spec.environment).lstrip("/")
        plain = interpreter.with_name("python-without-capability")
        shutil.copy(interpreter, plain)
        package = directory / "lib" / "credvault"
        package.mkdir(parents=True)
        for module in ("__init__.py", "memory_guard.py"):  # memory_guard needs nothing else
            shutil.copy(ROOT / "credvault" / module, package / module)
        probes = {}
        for name, python in (("probe", interpreter), ("plain-probe", plain)):
            probes[name] = directory / name
            probes[name].write_text(f"#!{python}\n{PROBE}")
            probes[name].chmod(0o755)
        for path in (directory, *directory.rglob("*")):  # readable by the container's user whatever the umask
            path.chmod((path.stat().st_mode | 0o555) if path.is_dir() or os.access(path, os.X_OK) else 0o644)
        subprocess.run(["setcap", spec.capability, str(interpreter)], check=True, timeout=60)  # last, as the image
        yield Image(directory, probes["probe"], probes["plain-probe"])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def assert_locked(report: dict[str, Any]) -> None:
    """IPC_LOCK permitted and effective, in every thread (one started after protect_memory too), and nothing else;
    resident memory locked although RLIMIT_MEMLOCK is 64 KiB."""
    status = report["status"]
    assert int(status["CapBnd"], 16) == IPC_LOCK_MASK
    assert int(status["CapPrm"], 16) == int(status["CapEff"], 16) == IPC_LOCK_MASK, status
    assert int(status["CapInh"], 16) == int(status["CapAmb"], 16) == 0
    assert [int(e, 16) for e in report["thread_effective"]] == [IPC_LOCK_MASK] * 2
    assert report["locked"] is report["metric"] is True, report
    assert kib(status["VmLck"]) >= kib(status["VmRSS"]) > 0, status


def assert_unlocked(report: dict[str, Any]) -> None:
    status = report["status"]
    assert int(status["CapPrm"], 16) == int(status["CapEff"], 16) == 0, status
    assert report["locked"] is report["metric"] is False, report
    assert report["reason"] == "ENOMEM", report  # over RLIMIT_MEMLOCK without the capability
    assert kib(status["VmLck"]) == 0


def test_the_chart_and_the_image_lock_the_memory(helm: Helm, image: Image, tmp_path: pathlib.Path) -> None:
    """memoryLock (the default) with the image's interpreter: locked, as uid 10001 and with no_new_privs on."""
    user = container_user(locking_security_context(helm, tmp_path / "on"))
    assert (user.uid, user.capabilities, user.no_new_privs) == (10001, (CAP_IPC_LOCK,), True)
    report = image.run(user)
    assert report["status"]["Uid"].split() == ["10001"] * 4
    assert report["status"]["NoNewPrivs"] == "1"
    assert_locked(report)


def test_without_the_file_capability_the_chart_left_memory_unlocked(
    helm: Helm, image: Image, tmp_path: pathlib.Path
) -> None:
    """The same container with the interpreter as the image had it (no file capability): IPC_LOCK in the container's
    sets is dropped at exec, and the process runs unlocked (memory_locked 0). This was the gap."""
    user = container_user(locking_security_context(helm, tmp_path / "on"))
    report = image.run(user, image.plain_probe)
    assert int(report["status"]["CapBnd"], 16) == IPC_LOCK_MASK
    assert_unlocked(report)


@pytest.mark.parametrize("no_new_privs", [True, False], ids=["no-new-privs", "privilege-escalation-allowed"])
def test_no_new_privs_matters_only_if_the_runtime_withheld_the_permitted_set(
    helm: Helm, image: Image, tmp_path: pathlib.Path, no_new_privs: bool
) -> None:
    """no_new_privs lets exec grant no capability the process did not hold before. containerd and CRI-O put an added
    capability in the permitted set too, so it does not stand in the way (above); a runtime that set only the bounding
    set would need allowPrivilegeEscalation: true."""
    sc = locking_security_context(helm, tmp_path / "on")
    report = image.run(dataclasses.replace(container_user(sc, bounding_only=True), no_new_privs=no_new_privs))
    if no_new_privs:
        assert_unlocked(report)
    else:
        assert_locked(report)


@pytest.mark.parametrize("values", [NOT_LOCKING_VALUES, LOCKING_VALUES], ids=["memoryLock-off", "memoryLock-on"])
def test_every_container_of_the_chart_runs_the_interpreter(
    helm: Helm, image: Image, tmp_path: pathlib.Path, values: dict[str, Any]
) -> None:
    """Every container the chart renders (vault, workers, migration Job, helm test) can exec the image's interpreter
    under its securityContext, and exactly those with IPC_LOCK end up locked: where the container lacks it nothing
    is granted and nothing fails (a file capability with the effective bit would make these execs fail: EPERM)."""
    seen: dict[ContainerUser, str] = {}
    for doc in workloads(render(helm, values, tmp_path / "values")):
        for c in containers(pod_template(doc)[1]):
            seen.setdefault(container_user(c["securityContext"]), f"{doc['kind']} {doc['metadata']['name']}")
    assert any(not user.capabilities for user in seen), seen
    for user, what in seen.items():
        check = assert_locked if user.capabilities else assert_unlocked
        try:
            check(image.run(user))
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from exc
