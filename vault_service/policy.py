"""Every access rule of the vault, in one place (seed 000 "Access to the credential vault", "Who can edit or
overwrite a credential"; seeds 002/004 for tokens).

A call is allowed when the token carries the scope the operation needs AND the token's user, as the user is at
the time of the call, holds the permission. Each function raises PermissionDenied / NotFound or returns a decision.
"""

from __future__ import annotations

from vault_service.errors import NotFound, PermissionDenied
from vault_service.models import (
    AccessLevel,
    Credential,
    CredentialScope,
    Permission,
    Principal,
    TokenScope,
    User,
    Visibility,
)

VIEW = Permission.VIEW_ENVIRONMENT
MONITORING = Permission.CHANGE_MONITORING_SETTINGS
ENVIRONMENT = Permission.CHANGE_ENVIRONMENT_SETTINGS


def require_scope(principal: Principal, scope: TokenScope) -> None:
    if scope not in principal.token_scopes:
        raise PermissionDenied(f"the token lacks the scope {scope.value}")


def has_env(user: User, permission: Permission) -> bool:
    """Environment-level permission. A higher environment permission includes viewing the environment."""
    if permission is VIEW:
        return bool(user.permissions)
    return permission in user.permissions


def has_any_zone_permission(user: User) -> bool:
    return any(user.zone_permissions.values())


# --- credentials: seeing ---------------------------------------------------------------------------------------


def credential_visibility(user: User) -> Visibility:
    """Which credentials' metadata a user sees in the vault.

    - CHANGE_MONITORING_SETTINGS or CHANGE_ENVIRONMENT_SETTINGS (environment): all, since they may overwrite or
      delete others' credentials and must be able to find them.
    - VIEW_ENVIRONMENT (environment): public ones, their own, and those shared with them.
    - management-zone permissions only: public ones only.
    """
    if has_env(user, MONITORING) or has_env(user, ENVIRONMENT):
        return Visibility.EVERYTHING
    if has_env(user, VIEW):
        return Visibility.PUBLIC_OWN_AND_SHARED
    if has_any_zone_permission(user):
        return Visibility.PUBLIC_ONLY
    return Visibility.NOTHING


def is_usable_by(cred: Credential, username: str) -> bool:
    """Whether a user has access to the credential (may use it in a monitor or an app): owner, shared, or all."""
    if cred.owner == username or cred.access.level is AccessLevel.ALL:
        return True
    return cred.access.level is AccessLevel.SHARED and username in cred.access.users


def can_see(user: User, cred: Credential) -> bool:
    visibility = credential_visibility(user)
    if visibility is Visibility.EVERYTHING:
        return True
    if visibility is Visibility.PUBLIC_OWN_AND_SHARED:
        return is_usable_by(cred, user.username)
    if visibility is Visibility.PUBLIC_ONLY:
        return cred.access.level is AccessLevel.ALL
    return False


def require_visible(principal: Principal, cred: Credential | None, credential_id: str) -> Credential:
    """The credential, or NotFound when it does not exist or the caller may not know it exists."""
    if cred is None or not can_see(principal.user, cred):
        raise NotFound(f"credential {credential_id} not found")
    return cred


def require_vault_view(principal: Principal) -> None:
    require_scope(principal, TokenScope.CREDENTIAL_VAULT_READ)
    if credential_visibility(principal.user) is Visibility.NOTHING:
        raise PermissionDenied("viewing the credential vault needs the VIEW_ENVIRONMENT permission")


# --- credentials: changing -------------------------------------------------------------------------------------


def require_create(principal: Principal) -> None:
    require_scope(principal, TokenScope.CREDENTIAL_VAULT_WRITE)
    if not has_env(principal.user, VIEW):
        raise PermissionDenied("creating credentials needs the VIEW_ENVIRONMENT permission at environment level")


def require_overwrite(principal: Principal, cred: Credential) -> None:
    """Owners (with environment VIEW_ENVIRONMENT) overwrite their own; CHANGE_MONITORING_SETTINGS anyone's."""
    require_scope(principal, TokenScope.CREDENTIAL_VAULT_WRITE)
    user = principal.user
    if has_env(user, MONITORING):
        return
    if cred.owner == user.username and has_env(user, VIEW):
        return
    raise PermissionDenied(
        f"overwriting credential {cred.id} of another user needs CHANGE_MONITORING_SETTINGS at environment level"
    )


def require_external_sync(principal: Principal) -> None:
    """External vault synchronization (configuring it, or running one): more than VIEW_ENVIRONMENT (seed 000: a
    user with VIEW_ENVIRONMENT may create credentials but not use external vault synchronization)."""
    require_scope(principal, TokenScope.CREDENTIAL_VAULT_WRITE)
    user = principal.user
    if not (has_env(user, MONITORING) or has_env(user, ENVIRONMENT)):
        raise PermissionDenied(
            "external vault synchronization needs CHANGE_MONITORING_SETTINGS or CHANGE_ENVIRONMENT_SETTINGS at"
            " environment level (VIEW_ENVIRONMENT may create credentials, but not synchronized ones)"
        )


def require_companion_access(
    principal: Principal, field: str, companion: Credential | None, credential_id: str
) -> Credential:
    """A credential that a synchronized one authenticates with: it must exist and the caller must have access to it
    (owner, shared with them, or ALL), as to any credential they would use."""
    if companion is None or not can_see(principal.user, companion):
        raise NotFound(f"{field}: credential {credential_id} not found")
    if not is_usable_by(companion, principal.username):
        raise PermissionDenied(f"{field}: user {principal.username!r} has no access to credential {credential_id}")
    return companion


def require_update_metadata(principal: Principal, cred: Credential) -> None:
    """Only the owner changes name, description or access (others overwrite, which makes them the owner)."""
    require_scope(principal, TokenScope.CREDENTIAL_VAULT_WRITE)
    if cred.owner != principal.username or not has_env(principal.user, VIEW):
        raise PermissionDenied(
            f"only the owner may change the metadata of credential {cred.id}; overwrite it to become the owner"
        )


def require_delete(principal: Principal, cred: Credential) -> None:
    """Owners delete their own; CHANGE_MONITORING_SETTINGS or CHANGE_ENVIRONMENT_SETTINGS delete anyone's."""
    require_scope(principal, TokenScope.CREDENTIAL_VAULT_WRITE)
    user = principal.user
    if has_env(user, MONITORING) or has_env(user, ENVIRONMENT):
        return
    if cred.owner == user.username and has_env(user, VIEW):
        return
    raise PermissionDenied(
        f"deleting credential {cred.id} of another user needs CHANGE_MONITORING_SETTINGS or "
        f"CHANGE_ENVIRONMENT_SETTINGS at environment level"
    )


def require_details_read(principal: Principal, cred: Credential, app_id: str) -> None:
    """The AppEngine exception: contents go to an app only if the credential has the APP_ENGINE scope, the user has
    access to it, and the app is allowed (or, without app context, contextless access is on)."""
    require_scope(principal, TokenScope.CREDENTIAL_VAULT_READ)
    if CredentialScope.APP_ENGINE not in cred.scopes or cred.app_engine is None:
        raise PermissionDenied(
            f"credential {cred.id} does not have the APP_ENGINE scope; its contents are not readable"
        )
    if not is_usable_by(cred, principal.username):
        raise PermissionDenied(f"user {principal.username!r} has no access to credential {cred.id}")
    if app_id:
        allowed = cred.app_engine.allowed_apps
        if allowed and app_id not in allowed:
            raise PermissionDenied(f"app {app_id!r} is not allowed to read credential {cred.id}")
    elif not cred.app_engine.allow_contextless_access:
        raise PermissionDenied(f"credential {cred.id} does not allow access without app context; pass app_id")


# --- users and tokens ------------------------------------------------------------------------------------------


def require_user_admin(principal: Principal, scope: TokenScope) -> None:
    require_scope(principal, scope)
    if not has_env(principal.user, ENVIRONMENT):
        raise PermissionDenied("managing users needs CHANGE_ENVIRONMENT_SETTINGS at environment level")


def require_token_access(principal: Principal, scope: TokenScope, owner: str) -> None:
    """Users manage their own tokens; others' tokens need CHANGE_ENVIRONMENT_SETTINGS."""
    require_scope(principal, scope)
    if owner != principal.username and not has_env(principal.user, ENVIRONMENT):
        raise PermissionDenied("managing another user's tokens needs CHANGE_ENVIRONMENT_SETTINGS")


def require_api_token_issue(principal: Principal) -> None:
    require_scope(principal, TokenScope.API_TOKENS_WRITE)
    if not has_env(principal.user, ENVIRONMENT):
        raise PermissionDenied("issuing API tokens needs CHANGE_ENVIRONMENT_SETTINGS; create a personal token instead")


def require_audit_read(principal: Principal) -> None:
    """The audit log: CHANGE_ENVIRONMENT_SETTINGS at environment level, with a token scoped auditLogs.read."""
    require_scope(principal, TokenScope.AUDIT_LOGS_READ)
    if not has_env(principal.user, ENVIRONMENT):
        raise PermissionDenied("reading the audit log needs CHANGE_ENVIRONMENT_SETTINGS at environment level")


def grantable_scopes(principal: Principal) -> frozenset[TokenScope]:
    """A token may carry any scope; its effective rights are always cut down to the user's permissions at call
    time. A new token is limited to the scopes of the token that creates it, so no token mints a stronger one."""
    return principal.token_scopes


# --- monitors (seed 000 "Who can use a credential in a monitor", "Who can edit a monitor ...") -------------------


def monitor_zones_visible(user: User) -> frozenset[str] | None:
    """None: every monitor; else the management zones whose monitors the user may see."""
    if has_env(user, VIEW):
        return None
    return frozenset(z for z, perms in user.zone_permissions.items() if perms)


def can_edit_monitors_in(user: User, zone: str) -> bool:
    if has_env(user, MONITORING):
        return True
    return bool(zone) and MONITORING in user.zone_permissions.get(zone, frozenset())


def require_monitor_edit(principal: Principal, *zones: str) -> None:
    """CHANGE_MONITORING_SETTINGS at environment level, or in the monitor's management zone (before and after)."""
    require_scope(principal, TokenScope.SYNTHETIC_MONITORS_WRITE)
    for zone in zones:
        if not can_edit_monitors_in(principal.user, zone):
            where = f"in management zone {zone!r}" if zone else "at environment level"
            raise PermissionDenied(f"editing this monitor needs CHANGE_MONITORING_SETTINGS {where}")


def require_locations_admin(principal: Principal) -> None:
    require_scope(principal, TokenScope.SYNTHETIC_MONITORS_WRITE)
    if not has_env(principal.user, MONITORING):
        raise PermissionDenied("managing locations and engines needs CHANGE_MONITORING_SETTINGS at environment level")
