"""The type of a database connection every query module takes: a leaf, so that they and the pool need not import
each other for it."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg

Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
