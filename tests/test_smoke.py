from credvault.v1 import credentials_pb2 as cpb
from tests.conftest import Client
from tests.helpers import create_req


async def test_create_then_get(admin: Client) -> None:
    created = (await admin.CreateCredential(create_req("first"))).credential
    assert created.id.startswith("CREDENTIALS_VAULT-")
    assert created.access.level == cpb.ACCESS_LEVEL_OWNER_ONLY
    got = (await admin.GetCredential(cpb.GetCredentialRequest(id=created.id))).credential
    assert got == created
