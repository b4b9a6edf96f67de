"""The engine worker's settings: flags or ENGINE_* environment variables (flags win), validated at start."""

from __future__ import annotations

import pathlib
from typing import Any

import pydantic
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from credvault.settings import describe_invalid, parse_duration, parse_listen
from engine_worker.browser_execution import default_max_concurrent

__all__ = ["DEFAULT_STATUS_LISTEN", "Settings", "load_settings"]

DEFAULT_STATUS_LISTEN = "127.0.0.1:9464"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENGINE_", extra="forbid", frozen=True)

    vault: str = Field(description="host:port of the vault's engine port")
    cert: pathlib.Path = Field(description="PEM certificate chain of this engine (leaf first)")
    key: pathlib.Path = Field(description="path of the PEM private key file of this engine's certificate")
    ca: pathlib.Path = Field(description="PEM certificate of the CA that issued the vault's server certificate")
    max_disconnected: float = Field(4 * 3600.0, gt=0, description="flush everything after this long without contact")
    heartbeat_interval: float = Field(10.0, gt=0, le=3600)
    certificate_check_interval: float = Field(
        30.0, gt=0, le=3600, description="how often to look for a renewed certificate (then reconnect with it)"
    )
    status_listen: str = Field(DEFAULT_STATUS_LISTEN, description="host:port of the status endpoint (port 0: any)")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    target_ca: pathlib.Path | None = Field(
        None, description="PEM CA certificates trusted for monitored HTTPS targets, besides the system's"
    )
    max_concurrent_executions: int = Field(100, ge=1, le=10_000)
    chromium_path: str = Field(
        "chromium", min_length=1, description="the Chromium executable for browser monitors (a name on PATH or a path)"
    )
    max_concurrent_browser_executions: int = Field(
        default_factory=default_max_concurrent, ge=1, le=1000, description="browser executions at a time"
    )
    interval_scale: float = Field(
        1.0, gt=0, le=1, description="multiplies every monitor's interval (1 in production; smaller for demos, tests)"
    )
    log_format: str = Field("text", pattern=r"^(text|json)$", description="text, or json: one JSON object per line")
    event_loop: str = Field("uvloop", pattern=r"^(uvloop|asyncio)$", description="uvloop, or asyncio's own loop")
    require_mlock: bool = Field(False, description="refuse to start if the memory cannot be locked (CAP_IPC_LOCK)")

    @field_validator("max_disconnected", "heartbeat_interval", "certificate_check_interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("vault")
    @classmethod
    def _vault(cls, value: str) -> str:
        if parse_listen(value)[1] == 0:
            raise ValueError("the vault's port must not be 0")
        return value

    @field_validator("target_ca")
    @classmethod
    def _target_ca(cls, value: pathlib.Path | None) -> pathlib.Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("status_listen")
    @classmethod
    def _status_listen(cls, value: str) -> str:
        parse_listen(value)
        return value


def load_settings(**flags: Any) -> Settings:
    """Settings from the environment with the (non-None) flags on top; a ValueError lists what to fix."""
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except pydantic.ValidationError as exc:
        raise ValueError(describe_invalid(exc, "ENGINE_")) from None
