"""The fast Timestamp conversion gives what protobuf's own FromDatetime gives."""

from __future__ import annotations

import datetime

import pytest
from google.protobuf import timestamp_pb2

from vault_service.api import convert

UTC = datetime.UTC


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime(2026, 12, 2, 3, 4, 5, 678901, tzinfo=UTC),
        datetime.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime.datetime(1, 1, 1, tzinfo=UTC),
        datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime.datetime(2030, 6, 1, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=-7, minutes=-30))),
        datetime.datetime(2030, 6, 1, 12, 0, 0, 1),  # naive: protobuf's own conversion
    ],
)
def test_ts_matches_from_datetime(value: datetime.datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value)
    assert convert.ts(value) == expected


def test_ts_of_none() -> None:
    assert convert.ts(None) is None
