"""Bad input is INVALID_ARGUMENT naming the field, never INTERNAL, and never echoes a secret."""

from __future__ import annotations

import grpc
import pytest

from credvault.v1 import credentials_pb2 as cpb
from credvault.v1 import identity_pb2 as ipb
from credvault.v1 import monitors_pb2 as mpb
from tests.conftest import Client
from tests.helpers import SYN, create_req, expect_code, shared, up

SECRET = "s3cret-value-xyz"
PUBLIC_CERT_PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _bad_creates() -> list[tuple[str, cpb.CreateCredentialRequest, str]]:
    cases: list[tuple[str, cpb.CreateCredentialRequest, str]] = [
        ("empty name", create_req(""), "name"),
        ("blank name", create_req("   "), "name"),
        ("over-long name", create_req("n" * 201), "name"),
        ("control chars in name", create_req("a\x00b"), "name"),
        ("no scopes", cpb.CreateCredentialRequest(name="x", contents=up()), "scopes"),
        ("unknown scope", create_req(scopes=[99]), "scopes"),
        ("type/scope mismatch", create_req(scopes=[cpb.CREDENTIAL_SCOPE_EXTENSION_VALIDATION]), "scopes"),
        (
            "token with extension authentication",
            create_req(
                contents=cpb.CredentialContents(token=cpb.Token(token=SECRET)),
                scopes=[cpb.CREDENTIAL_SCOPE_EXTENSION_AUTHENTICATION],
            ),
            "scopes",
        ),
        (
            "public certificate with synthetic",
            create_req(
                contents=cpb.CredentialContents(public_certificate=cpb.PublicCertificate(pem=PUBLIC_CERT_PEM)),
                scopes=[SYN],
            ),
            "scopes",
        ),
        ("no contents", cpb.CreateCredentialRequest(name="x", scopes=[SYN]), "contents"),
        ("empty username", create_req(contents=up("", SECRET)), "username_password.username"),
        ("empty token", create_req(contents=cpb.CredentialContents(token=cpb.Token())), "token.token"),
        ("oversized password", create_req(contents=up("u", SECRET * 2000)), "username_password.password"),
        ("unknown access level", create_req(access=cpb.Access(level=7)), "access.level"),
        ("shared without users", create_req(access=cpb.Access(level=cpb.ACCESS_LEVEL_SHARED)), "access.users"),
        ("bad shared username", create_req(access=shared("has space")), "access.users"),
        (
            "users with owner-only",
            create_req(access=cpb.Access(level=cpb.ACCESS_LEVEL_OWNER_ONLY, users=["bob"])),
            "access.users",
        ),
        (
            "app settings without APP_ENGINE",
            create_req(app_engine=cpb.AppEngineAccess(allowed_apps=["a"])),
            "app_engine",
        ),
        (
            "certificate without format",
            create_req(contents=cpb.CredentialContents(certificate=cpb.Certificate(data=b"x", password=SECRET))),
            "certificate.format",
        ),
        (
            "malformed PEM",
            create_req(
                contents=cpb.CredentialContents(
                    certificate=cpb.Certificate(data=b"garbage", format=cpb.CERTIFICATE_FORMAT_PEM)
                )
            ),
            "certificate.data",
        ),
        (
            "malformed PKCS12",
            create_req(
                contents=cpb.CredentialContents(
                    certificate=cpb.Certificate(data=b"garbage", password=SECRET, format=cpb.CERTIFICATE_FORMAT_PKCS12)
                )
            ),
            "certificate.data",
        ),
        (
            "malformed public certificate",
            create_req(
                contents=cpb.CredentialContents(public_certificate=cpb.PublicCertificate(pem=PUBLIC_CERT_PEM)),
                scopes=[cpb.CREDENTIAL_SCOPE_EXTENSION_VALIDATION],
            ),
            "public_certificate.pem",
        ),
    ]
    return cases


@pytest.mark.parametrize(("case", "request_", "field"), _bad_creates(), ids=[c[0] for c in _bad_creates()])
async def test_bad_create_is_invalid_argument_naming_the_field(
    admin: Client, case: str, request_: cpb.CreateCredentialRequest, field: str
) -> None:
    err = await expect_code(admin.CreateCredential(request_), grpc.StatusCode.INVALID_ARGUMENT)
    details = err.details() or ""
    assert details.startswith(f"{field}:"), details
    assert SECRET not in details


async def test_bad_ids_and_pages(admin: Client) -> None:
    for bad_id in ["", "CREDENTIALS_VAULT-123", "credentials_vault-0123456789ABCDEF", "x" * 5000]:
        err = await expect_code(
            admin.GetCredential(cpb.GetCredentialRequest(id=bad_id)), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (err.details() or "").startswith("id:")
    await expect_code(
        admin.ListCredentials(cpb.ListCredentialsRequest(page_size=501)), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect_code(admin.ListCredentials(cpb.ListCredentialsRequest(page_size=-1)), grpc.StatusCode.INVALID_ARGUMENT)
    err = await expect_code(
        admin.ListCredentials(cpb.ListCredentialsRequest(page_token="not-a-token")), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (err.details() or "").startswith("page_token:")
    await expect_code(admin.ListCredentials(cpb.ListCredentialsRequest(type=42)), grpc.StatusCode.INVALID_ARGUMENT)


@pytest.mark.parametrize("field", ["location_id", "credential_id"])
@pytest.mark.parametrize("value", ["x" * 1_000_000, "Not A Valid Id"])
async def test_list_monitors_filters_are_bounded(admin: Client, field: str, value: str) -> None:
    """A filter is checked like the id it stands for: a megabyte of it is refused, not sent to the database."""
    request_ = mpb.ListMonitorsRequest(**{field: value})
    err = await expect_code(admin.ListMonitors(request_), grpc.StatusCode.INVALID_ARGUMENT)
    assert (err.details() or "").startswith(f"{field}:"), err.details()


async def test_overwrite_with_another_type_is_invalid(admin: Client) -> None:
    cred = (await admin.CreateCredential(create_req())).credential
    err = await expect_code(
        admin.OverwriteCredential(
            cpb.OverwriteCredentialRequest(id=cred.id, contents=cpb.CredentialContents(token=cpb.Token(token=SECRET)))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert (err.details() or "").startswith("contents:")
    assert SECRET not in (err.details() or "")


async def test_bad_identity_input(admin: Client) -> None:
    await expect_code(admin.CreateUser(ipb.CreateUserRequest(username="")), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_code(admin.CreateUser(ipb.CreateUserRequest(username="a b")), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_code(
        admin.CreateUser(ipb.CreateUserRequest(username="ok", permissions=[12])), grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_oversized_message_is_rejected_not_internal(admin: Client) -> None:
    big = create_req(contents=up("u", "p" * (2 * 1024 * 1024)))  # over the 1 MiB gRPC limit
    await expect_code(admin.CreateCredential(big), grpc.StatusCode.RESOURCE_EXHAUSTED)


async def test_blank_password_overwrite_is_refused_and_the_old_one_stays(admin: Client) -> None:
    req = create_req(contents=up("u", SECRET), scopes=[SYN, cpb.CREDENTIAL_SCOPE_APP_ENGINE])
    req.app_engine.allow_contextless_access = True
    cred = (await admin.CreateCredential(req)).credential
    err = await expect_code(
        admin.OverwriteCredential(cpb.OverwriteCredentialRequest(id=cred.id, contents=up("u", ""))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert (err.details() or "").startswith("username_password.password: must not be empty")
    details = await admin.GetCredentialDetails(cpb.GetCredentialDetailsRequest(id=cred.id))
    assert details.details.username_password.password == SECRET
