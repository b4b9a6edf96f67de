"""Settings helpers both processes use, one grammar each: ``host:port`` addresses, durations, and the message that
lists what to fix in invalid settings (every entry names its environment variable and its flag)."""

from __future__ import annotations

import ipaddress
import math
import re

import pydantic

__all__ = ["describe_invalid", "parse_duration", "parse_listen"]

_LISTEN = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.\-]+)):(\d{1,5})$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6-address]:port`` (port 0 to 65535) as (host, port); else a ValueError."""
    match = _LISTEN.match(value)
    if match is None or int(match.group(3)) > 65535:
        raise ValueError("must be host:port, for example 127.0.0.1:9464 or [::1]:9464")
    if match.group(1) is not None:
        try:
            ipaddress.IPv6Address(match.group(1))
        except ValueError:
            raise ValueError("must be host:port with an IPv6 address in brackets, for example [::1]:9464") from None
    return match.group(1) or match.group(2), int(match.group(3))


def parse_duration(value: str | float) -> float:
    """Seconds from a number of seconds or a duration like ``4h``, ``30m``, ``1h30m``, ``0.5s``, ``250ms``, ``2w``."""
    problem = f"{value!r} is not a duration: seconds, or for example 4h, 30m, 1h30m, 0.5s, 250ms, 2w"
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            if not _DURATION.fullmatch(text):
                raise ValueError(problem) from None
            seconds = sum(float(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(text))
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(problem)
    return seconds


def describe_invalid(exc: pydantic.ValidationError, env_prefix: str) -> str:
    """``invalid configuration:`` and one line per error: the setting, its environment variable and flag, the rule."""
    lines = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "settings"
        where = f" ({env_prefix}{name.upper()} / --{name.replace('_', '-')})" if err["loc"] else ""
        lines.append(f"  {name}{where}: {err['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)
