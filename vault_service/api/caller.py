"""Who the current call authenticated as: the servicers set it when they authenticate, the interceptor reads it when
the call is denied (to audit who was denied). Each RPC runs in its own task, so each call has its own."""

from __future__ import annotations

from contextvars import ContextVar

from vault_service.models import Principal

_principal: ContextVar[Principal | None] = ContextVar("credvault_caller", default=None)


def authenticated(principal: Principal) -> Principal:
    """Remembers ``principal`` as the current call's, and returns it."""
    _principal.set(principal)
    return principal


def current() -> Principal | None:
    return _principal.get()
