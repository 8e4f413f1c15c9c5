"""A throwaway schema on the test PostgreSQL, for tests of the PostgreSQL store.

The server is OCTOLLM_TEST_POSTGRES_DSN (default postgres@127.0.0.1:5432/test, the one running
on this machine and in CI). Without a reachable server a test using it skips, or fails under CI.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from orchestrator_svc.store import PostgresTaskStore, migrate
from tests.tools import tool_unavailable

POSTGRES_DSN = os.environ.get(
    "OCTOLLM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
_probe: dict[str, str | None] = {}  # DSN -> why it is unreachable (None: reachable)


async def require_postgres() -> None:
    """Skip (or fail under CI) when the test PostgreSQL cannot be reached; probes once."""
    if POSTGRES_DSN not in _probe:
        try:
            connection = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            _probe[POSTGRES_DSN] = f"PostgreSQL at {POSTGRES_DSN} is unreachable: {exc!r}"
        else:
            await connection.close(timeout=5)
            _probe[POSTGRES_DSN] = None
    reason = _probe[POSTGRES_DSN]
    if reason is not None:
        tool_unavailable(reason)


@dataclass
class PgSchema:
    """A fresh schema; stores and connections opened through it are closed with it."""

    dsn: str
    name: str
    _stores: list[PostgresTaskStore] = field(default_factory=list)
    _connections: list[Any] = field(default_factory=list)

    @property
    def search_path_dsn(self) -> str:
        """The DSN with this schema as its search_path, for an orchestrator's postgres_dsn."""
        separator = "&" if "?" in self.dsn else "?"
        return f"{self.dsn}{separator}search_path={self.name}"

    @property
    def server_settings(self) -> dict[str, str]:
        """Session settings that put a connection in this schema (and name it after it)."""
        return {"search_path": self.name, "application_name": self.name}

    async def migrate(self) -> list[str]:
        return await migrate(self.dsn, server_settings=self.server_settings)

    async def open_store(self, **knobs: Any) -> PostgresTaskStore:
        """A PostgresTaskStore on this schema (migrate() first)."""
        store = await PostgresTaskStore.connect(
            self.dsn, server_settings=self.server_settings, **knobs
        )
        self._stores.append(store)
        return store

    async def connect(self, settings: dict[str, str] | None = None) -> Any:
        """A plain asyncpg connection in this schema, to look at or tamper with the tables;
        `settings` are more session settings."""
        connection = await asyncpg.connect(
            self.dsn,
            server_settings={**(settings or {}), **self.server_settings},
            timeout=5,
            command_timeout=30,
        )
        self._connections.append(connection)
        return connection

    async def aclose(self) -> None:
        for store in self._stores:
            await store.close()
        for connection in self._connections:
            await connection.close(timeout=5)


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[PgSchema]:
    """Create a uniquely named schema, yield it, then drop it with everything in it."""
    await require_postgres()
    name = f"octollm_test_{uuid.uuid4().hex[:16]}"
    await _admin(f'CREATE SCHEMA "{name}"', connect_timeout_s=5)
    schema = PgSchema(POSTGRES_DSN, name)
    try:
        yield schema
    finally:
        await schema.aclose()
        # NOTE: a fresh session: a chaos test may have restarted the server meanwhile.
        await _admin(f'DROP SCHEMA "{name}" CASCADE', connect_timeout_s=30)


async def _admin(sql: str, *, connect_timeout_s: float) -> None:
    """Run one statement in its own session of the test server."""
    admin = await asyncpg.connect(POSTGRES_DSN, timeout=connect_timeout_s, command_timeout=30)
    try:
        await admin.execute(sql)
    finally:
        await admin.close(timeout=5)
