"""What the engine's stream to the vault is set up with (its timings) and what it reports (for the status endpoint)."""

from __future__ import annotations

import dataclasses

__all__ = ["StreamSettings", "StreamState"]


@dataclasses.dataclass(frozen=True)
class StreamSettings:
    heartbeat_interval: float = 10.0
    max_disconnected: float = 4 * 3600.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    dead_after_intervals: int = 3
    certificate_check_interval: float = 30.0  # how often a session looks for a renewed client certificate

    def __post_init__(self) -> None:
        if not self.heartbeat_interval > 0:
            raise ValueError("heartbeat_interval must be positive")
        if not self.max_disconnected > 0:
            raise ValueError("max_disconnected must be positive")
        if not 0 < self.backoff_base <= self.backoff_cap:
            raise ValueError("backoff_base must be positive and at most backoff_cap")
        if self.dead_after_intervals < 1:
            raise ValueError("dead_after_intervals must be at least 1")
        if not self.certificate_check_interval > 0:
            raise ValueError("certificate_check_interval must be positive")


@dataclasses.dataclass(frozen=True)
class StreamState:
    """What the status endpoint shows: no configs, no contents."""

    connected: bool
    synced: bool
    last_applied_revision: int
    reconnects: int
    flushes: int
    results_sent: int = 0
    certificate_not_after: float | None = None  # when the certificate of the current connection expires (Unix time)
