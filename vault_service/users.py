"""User operations. Managing users needs CHANGE_ENVIRONMENT_SETTINGS (environment level)."""

from __future__ import annotations

from vault_service import policy, validation
from vault_service.errors import InvalidArgument, NotFound
from vault_service.models import ZONE_PERMISSIONS, Page, Permission, Principal, TokenScope, User
from vault_service.pagination import decode_page_token, encode_page_token, page_size
from vault_service.storage.pool import Store

MAX_ZONES = 200


def check_permissions(
    permissions: frozenset[Permission], zones: dict[str, frozenset[Permission]]
) -> dict[str, frozenset[Permission]]:
    if len(zones) > MAX_ZONES:
        raise InvalidArgument("zone_permissions", f"lists {len(zones)} zones; at most {MAX_ZONES}")
    out: dict[str, frozenset[Permission]] = {}
    for zone, perms in zones.items():
        name = validation.text("zone_permissions.management_zone", zone, max_len=validation.MAX_NAME, required=True)
        extra = perms - ZONE_PERMISSIONS
        if extra:
            raise InvalidArgument(
                "zone_permissions.permissions",
                f"{', '.join(sorted(p.value for p in extra))} cannot be granted per management zone",
            )
        if perms:
            out[name] = perms
    return out


class IdentityService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create_user(
        self,
        principal: Principal | None,
        username: str,
        permissions: frozenset[Permission],
        zones: dict[str, frozenset[Permission]],
    ) -> User:
        """``principal`` None is the bootstrap path of the CLI (local operator)."""
        if principal is not None:
            policy.require_user_admin(principal, TokenScope.USERS_WRITE)
        username = validation.username("username", username)
        zones = check_permissions(permissions, zones)
        async with self._store.transaction() as tx:
            user = await tx.insert_user(username, permissions, zones)
            await tx.insert_audit(*_actor(principal), "user.create", username, "ok")
        return user

    async def get_user(self, principal: Principal, username: str) -> User:
        policy.require_user_admin(principal, TokenScope.USERS_READ)
        async with self._store.autocommit() as tx:
            user = await tx.get_user(validation.username("username", username))
        if user is None:
            raise NotFound(f"user {username!r} not found")
        return user

    async def list_users(self, principal: Principal, size: int, page_token: str) -> Page[User]:
        policy.require_user_admin(principal, TokenScope.USERS_READ)
        limit = page_size(size)
        after = decode_page_token(page_token, ("users",), 1)[0] if page_token else ""
        async with self._store.autocommit() as tx:
            users = await tx.list_users(after, limit + 1)
            total = await tx.count_users()
        more = len(users) > limit
        users = users[:limit]
        return Page(users, encode_page_token(("users",), users[-1].username) if more else "", total)

    async def set_permissions(
        self,
        principal: Principal,
        username: str,
        permissions: frozenset[Permission],
        zones: dict[str, frozenset[Permission]],
    ) -> User:
        policy.require_user_admin(principal, TokenScope.USERS_WRITE)
        username = validation.username("username", username)
        zones = check_permissions(permissions, zones)
        async with self._store.transaction() as tx:
            user = await tx.set_user_permissions(username, permissions, zones)
            if user is None:
                raise NotFound(f"user {username!r} not found")
            await tx.insert_audit(*_actor(principal), "user.set_permissions", username, "ok")
        return user

    async def delete_user(self, principal: Principal, username: str) -> None:
        """Its tokens go with it (at once); its credentials stay and keep their owner name."""
        policy.require_user_admin(principal, TokenScope.USERS_WRITE)
        username = validation.username("username", username)
        async with self._store.transaction() as tx:
            if not await tx.delete_user(username):
                raise NotFound(f"user {username!r} not found")
            await tx.insert_audit(*_actor(principal), "user.delete", username, "ok")


def _actor(principal: Principal | None) -> tuple[str, str | None]:
    return (principal.username, principal.token_id) if principal else ("<local operator>", None)
