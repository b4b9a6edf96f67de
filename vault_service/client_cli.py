"""Client commands of `credvault` for people: credentials and tokens over gRPC (placeholder, being written)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    _ = argparse
    del sub
