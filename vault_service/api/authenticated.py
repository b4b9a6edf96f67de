"""What every servicer of credvault.v1 starts with: authenticating the caller (and, for the hot calls, re-deciding
on a fresh lookup what was decided on a remembered authentication)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from vault_service.api import caller
from vault_service.errors import AuthenticationChanged, VaultError
from vault_service.models import Principal
from vault_service.tokens import TokenService

Context = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")


def _authorization(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


class Authenticated:
    """Base of the servicers: the caller's principal from the call's authorization metadata."""

    def __init__(self, tokens: TokenService) -> None:
        self._tokens = tokens

    async def _principal(self, context: Context) -> Principal:
        return caller.authenticated(await self._tokens.authenticate(_authorization(context)))

    async def _rechecked(self, context: Context, work: Callable[[Principal], Awaitable[R]]) -> R:
        """``work`` for the caller, who may be a remembered principal: only for work whose statements re-check it
        (``Principal.check``). Any outcome but success decided on a remembered principal (an error, or a statement
        finding that the authentication changed) is decided again on a fresh lookup."""
        authorization = _authorization(context)
        principal = caller.authenticated(await self._tokens.authenticate(authorization, remembered=True))
        if principal.check is None:
            return await work(principal)
        try:
            return await work(principal)
        except (AuthenticationChanged, VaultError):
            pass
        return await work(caller.authenticated(await self._tokens.authenticate(authorization)))
