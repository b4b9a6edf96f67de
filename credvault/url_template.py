"""Where a credential placeholder may stand in a monitor's URL: not before its path.

A value in the scheme, user info, host or port leaves the machine before any request is authenticated: in DNS
lookups, in the TLS server name, in the clear to whoever answers that host (and a value with ``@`` or ``/`` in the
user info moves the host). The vault refuses such URLs when a monitor is created or updated; the engine worker
refuses to send one that reaches it anyway (a definition older than the rule). Shared by both.
"""

from __future__ import annotations

__all__ = ["ORIGIN_PLACEHOLDER_HINT", "placeholder_before_path"]

ORIGIN_PLACEHOLDER_HINT = (
    "has a credential placeholder in its scheme, host or port (or user info), where the value would leave this"
    " machine before any request is authenticated; move the credential into a header, the path or query,"
    " or basic authentication"
)


def placeholder_before_path(url: str) -> bool:
    """Whether a URL template has a placeholder (anything with ``{{``) before its path, query or fragment."""
    scheme, separator, rest = url.partition("://")
    if not separator:  # no authority: everything up to the path counts
        scheme, rest = "", url
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return "{{" in scheme or "{{" in rest[:cut]
