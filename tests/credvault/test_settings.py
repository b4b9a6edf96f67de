"""The settings helpers both processes use (credvault.settings): one grammar for host:port, one for durations, one
message format for invalid settings."""

from __future__ import annotations

import pydantic
import pytest

from credvault.settings import describe_invalid, parse_duration, parse_listen


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("4h", 14400.0),
        ("30m", 1800.0),
        ("1h30m", 5400.0),
        ("0.5s", 0.5),
        ("250ms", 0.25),
        ("12", 12.0),
        # what the credvault client accepts: weeks, days, upper case
        ("2w", 1209600.0),
        ("30d", 2592000.0),
        ("12H", 43200.0),
        ("1d12h", 129600.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "4x", "h", "1h 30m", "-5s", "1.s", "-5", "nan", "inf", "1e400"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::]:50051", ("::", 50051)),
        ("[::ffff:127.0.0.1]:0", ("::ffff:127.0.0.1", 0)),
        ("vault.internal:65535", ("vault.internal", 65535)),
    ],
)
def test_listen_addresses(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


@pytest.mark.parametrize("text", ["nowhere", "9090", "x:99999", "[zz]:1", "[:::::]:1", "a b:1", "host:"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="must be host:port"):
        parse_listen(text)


def test_invalid_settings_name_their_variable_and_flag() -> None:
    class Example(pydantic.BaseModel):
        status_listen: int

    with pytest.raises(pydantic.ValidationError) as exc:
        Example(status_listen="x")
    text = describe_invalid(exc.value, "ENGINE_")
    assert text.startswith("invalid configuration:\n  status_listen (ENGINE_STATUS_LISTEN / --status-listen): ")
