"""Schema migrations: the versioned `migrations/NNNN_name.sql` files, each applied once, in order.

    applied = await migrate("postgresql://postgres@127.0.0.1:5432/test")  # e.g. ["0001"]

A run holds a transaction-scoped advisory lock while it reads `octollm_schema_migrations` and
applies what is missing, all in one transaction: replicas starting together apply each migration
exactly once (the others wait for the lock, then find nothing to do), and a failed migration
leaves the schema as it was.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import structlog

from orchestrator_svc.store.ports import StoreError, StoreUnavailable
from orchestrator_svc.store.postgres.sessions import (
    TRANSIENT_ERRORS,
    close_quietly,
    describe_dsn,
    retry_until_reachable,
)

log = structlog.get_logger(__name__)

# NOTE: one key for every schema in the database: "octollm" in ASCII. Runs for different schemas
# merely take turns, and a constant cannot drift between versions of the code.
MIGRATION_LOCK_KEY = 0x6F63746F6C6C6D
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_VERSIONS = """
CREATE TABLE IF NOT EXISTS octollm_schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(StoreError):
    """A migration file is misnamed, or a migration failed to apply (nothing was changed)."""


@dataclass(frozen=True)
class Migration:
    """One `NNNN_name.sql` file."""

    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        """The version as written in the file name, e.g. "0001"."""
        return f"{self.version:04d}"


def bundled_migrations() -> list[Migration]:
    """The migrations shipped in `orchestrator_svc/store/migrations/`, in version order."""
    found: dict[int, Migration] = {}
    folder = importlib.resources.files("orchestrator_svc.store.migrations")
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        version = int(match[1])
        if version in found:
            raise MigrationError(f"two migration files have version {match[1]}")
        found[version] = Migration(version, match[2], entry.read_text(encoding="utf-8"))
    return [found[version] for version in sorted(found)]


async def apply_migrations(connection: Any, *, timeout_s: float = 60.0) -> list[str]:
    """Apply the bundled migrations missing from the connection's schema; return their versions.

    `connection` is an asyncpg connection outside any transaction; its search_path chooses the
    schema. `timeout_s` bounds each statement, including the wait for another replica's run.
    """
    migrations = bundled_migrations()
    applied: list[str] = []
    async with connection.transaction():
        await connection.execute(
            "SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY, timeout=timeout_s
        )
        await connection.execute(_CREATE_VERSIONS, timeout=timeout_s)
        rows = await connection.fetch(
            "SELECT version FROM octollm_schema_migrations", timeout=timeout_s
        )
        done: set[int] = {row["version"] for row in rows}
        for migration in migrations:
            if migration.version in done:
                continue
            try:
                await connection.execute(migration.sql, timeout=timeout_s)
            except TRANSIENT_ERRORS:
                raise
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"migration {migration.label}_{migration.name} failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            await connection.execute(
                "INSERT INTO octollm_schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
                timeout=timeout_s,
            )
            applied.append(migration.label)
    newer = sorted(done - {migration.version for migration in migrations})
    if newer:
        log.warning("schema_newer_than_code", unknown_versions=newer)
    if applied:
        log.info("schema_migrated", versions=applied)
    return applied


async def migrate(
    dsn: str,
    *,
    server_settings: Mapping[str, str] | None = None,
    startup_wait_s: float = 10.0,
    connect_timeout_s: float = 5.0,
    retry_initial_s: float = 0.2,
    retry_max_s: float = 2.0,
    timeout_s: float = 60.0,
) -> list[str]:
    """Bring the schema at `dsn` up to date and return the versions applied ("0001", ...).

    Idempotent. Waits up to `startup_wait_s` (retrying with backoff) for PostgreSQL to accept
    connections, then raises StoreUnavailable; raises MigrationError if a migration fails.
    """
    settings = dict(server_settings or {})

    async def connect(attempt_timeout: float) -> Any:
        return await asyncpg.connect(dsn, server_settings=settings, timeout=attempt_timeout)

    connection = await retry_until_reachable(
        connect,
        dsn=dsn,
        startup_wait_s=startup_wait_s,
        connect_timeout_s=connect_timeout_s,
        retry_initial_s=retry_initial_s,
        retry_max_s=retry_max_s,
    )
    try:
        return await apply_migrations(connection, timeout_s=timeout_s)
    except TRANSIENT_ERRORS as exc:
        raise StoreUnavailable(
            f"PostgreSQL at {describe_dsn(dsn)} failed while migrating: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        await close_quietly(connection, timeout_s=connect_timeout_s)
