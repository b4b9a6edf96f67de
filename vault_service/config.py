"""Configuration: environment variables CREDVAULT_* and command-line flags (flags win), validated at start."""

from __future__ import annotations

import pathlib
from typing import Any

import pydantic
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from credvault.settings import describe_invalid, parse_listen
from vault_service.crypto import Keyring, load_keyring_file
from vault_service.errors import ConfigurationError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CREDVAULT_", extra="forbid", frozen=True)

    database_url: SecretStr | None = Field(None, description="PostgreSQL URL (postgresql://user@host:port/db)")
    listen: str = Field("127.0.0.1:50051", description="host:port of the API (port 0 picks a free one)")
    tls_cert_file: pathlib.Path | None = Field(None, description="PEM certificate chain of the API server")
    tls_key_file: pathlib.Path | None = Field(None, description="PEM private key of the API server")
    allow_plaintext: bool = Field(False, description="serve the API without TLS (local development only)")
    keyring_file: pathlib.Path | None = Field(None, description="file with the KEK keyring (JSON) or one base64 KEK")
    keyring: SecretStr | None = Field(None, description="the keyring (JSON) or one base64 KEK, inline")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_format: str = Field("text", pattern=r"^(text|json)$", description="text, or json: one JSON object per line")
    max_message_bytes: int = Field(1024 * 1024, ge=64 * 1024, le=16 * 1024 * 1024)
    db_pool_max: int = Field(20, ge=2, le=500)
    auth_cache_seconds: float = Field(
        1.0,
        ge=0,
        le=60,
        description="how long a replica may remember a token's authentication for the credential calls (0: look"
        " it up on every call); the statement doing the call re-checks it, so changes apply at once",
    )
    shutdown_grace_seconds: float = Field(10.0, ge=0, le=600)
    event_loop: str = Field(
        "uvloop", pattern=r"^(asyncio|uvloop)$", description="credvault serve's event loop: uvloop, or asyncio's own"
    )
    require_mlock: bool = Field(
        False, description="credvault serve refuses to start if its memory cannot be locked (needs CAP_IPC_LOCK)"
    )
    data_dir: pathlib.Path = Field(pathlib.Path.home() / ".local" / "share" / "credvault")
    # The engine port (mutual TLS only); off unless engine_listen is set.
    engine_listen: str | None = Field(None, description="host:port of the engine stream (mutual TLS)")
    engine_tls_cert_file: pathlib.Path | None = Field(None, description="server certificate chain for the engine port")
    engine_tls_key_file: pathlib.Path | None = Field(None, description="its private key")
    engine_ca_file: pathlib.Path | None = Field(None, description="the engine CA: engines' client certificates")
    trust_domain: str = Field("credvault.local", pattern=r"^[a-z0-9]([a-z0-9.-]{0,253}[a-z0-9])?$")
    engine_heartbeat_seconds: float = Field(10.0, gt=0, le=300)
    engine_lease_seconds: float = Field(
        30.0,
        ge=0.3,
        le=3600,
        description="an engine shows connected while the replica holding its stream renews this lease (every"
        " third of it); a replica that died stops renewing, and its engines show disconnected when it lapses",
    )
    engine_outbox_max: int = Field(20_000, ge=100, le=10_000_000)
    results_per_monitor: int = Field(100, ge=1, le=10_000, description="execution results kept per monitor")
    replica_id: str = Field("", description="name of this replica in engine status (default: host and pid)")
    keyring_check_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="how often a replica re-reads a changed keyring file, follows the active KEK and reports the KEKs"
        " it has loaded (SIGHUP: at once); it counts as live for three of these",
    )
    external_sync: bool = Field(True, description="synchronize credentials that have an external source (OpenBao)")
    external_sync_tick_seconds: float = Field(
        1.0, gt=0, le=60, description="how often a replica looks for due synchronizations"
    )
    token_rotation: bool = Field(True, description="rotate tokens whose rotation policy is due (write-back to OpenBao)")
    token_rotation_tick_seconds: float = Field(
        5.0, gt=0, le=300, description="how often a replica looks for tokens whose scheduled rotation is due"
    )
    token_rotation_min_interval_seconds: float = Field(
        86400.0, gt=0, description="the shortest rotation interval a policy may have (tests make it short)"
    )
    token_rotation_retry_seconds: float = Field(
        300.0, gt=0, le=86400, description="after a failed scheduled rotation, how long until the next try"
    )
    # Operations: Prometheus metrics over HTTP and a plaintext gRPC health port; each off unless set.
    metrics_listen: str | None = Field(None, description="host:port of GET /metrics (Prometheus), plain HTTP")
    health_listen: str | None = Field(None, description="host:port of a plaintext gRPC server with only Health")

    @field_validator("listen", "engine_listen", "metrics_listen", "health_listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parse_listen(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        if self.tls_cert_file is None and not self.allow_plaintext:
            raise ValueError("no TLS configured: set tls_cert_file and tls_key_file, or allow_plaintext for local use")
        engine = (self.engine_tls_cert_file, self.engine_tls_key_file, self.engine_ca_file)
        if self.engine_listen is not None and any(f is None for f in engine):
            raise ValueError("the engine port needs engine_tls_cert_file, engine_tls_key_file and engine_ca_file")
        if self.keyring_file is not None and self.keyring is not None:
            raise ValueError("set keyring_file or keyring, not both")
        return self

    def load_keyring(self) -> Keyring:
        if self.keyring_file is not None:
            return load_keyring_file(self.keyring_file)
        if self.keyring is not None:
            return Keyring.parse(self.keyring.get_secret_value(), source="CREDVAULT_KEYRING")
        raise ConfigurationError(
            "no key-encryption key: set CREDVAULT_KEYRING_FILE (or --keyring-file) or CREDVAULT_KEYRING"
        )

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise ConfigurationError("no database: set CREDVAULT_DATABASE_URL (or --database-url)")
        return self.database_url.get_secret_value()


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with flags (non-None overrides) on top; errors say which setting to fix."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except pydantic.ValidationError as exc:
        raise ConfigurationError(describe_invalid(exc, "CREDVAULT_")) from None
