"""Fixtures of the deployment tests: a real helm 3 (tests/helm_support.py)."""

from __future__ import annotations

import subprocess

import pytest

from tests.helm_support import Helm, HelmUnavailable, fetch_helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    try:
        return Helm(fetch_helm())
    except HelmUnavailable as exc:
        pytest.skip(str(exc))
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"fetching helm failed: {exc}\n{exc.stderr!r}")
