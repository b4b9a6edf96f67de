"""Fixtures shared by the external-sync test modules of tests/vault_service."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from tests.azure_key_vault_fake import AzureKeyVaultFake, Registration
from tests.cyberark_ccp_fake import CyberArkCcpFake
from tests.local_pki import LocalPki


@pytest.fixture
async def ccp(local_pki: LocalPki) -> AsyncIterator[CyberArkCcpFake]:
    """The CyberArk CCP fake, trusting client certificates of the tests' engine CA."""
    async with CyberArkCcpFake(local_pki, local_pki.engine_ca.cert_pem) as fake:
        yield fake


# The Azure app registration of the tests (the client id and secret are canaries).
AZURE_REGISTRATION = Registration(
    "7a1c2b3d-0000-4000-8000-00000000000a", "CANARY-client-id-61f0", "CANARY-client-secret-d83b"
)


@pytest.fixture
async def azure(local_pki: LocalPki) -> AsyncIterator[AzureKeyVaultFake]:
    """The Azure Key Vault and Entra ID fakes, knowing AZURE_REGISTRATION."""
    async with AzureKeyVaultFake(local_pki, dataclasses.replace(AZURE_REGISTRATION)) as fake:
        yield fake
