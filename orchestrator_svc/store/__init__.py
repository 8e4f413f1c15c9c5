"""Task store: the TaskStore port, the event-log projection, and its adapters.

`open_store(settings)` is the one place an adapter is chosen: process memory by default, or
PostgreSQL (migrated at start-up) when `settings.postgres_dsn` is set. `open_cache(settings)` does
the same for the cache (store/cache.py): process memory by default, Redis with `redis_url`.
"""

from __future__ import annotations

from orchestrator_svc.config import Settings
from orchestrator_svc.store.cache import (
    Cache,
    InMemoryCache,
    RedisCache,
    cache_key,
    open_cache,
)
from orchestrator_svc.store.memory import InMemoryTaskStore
from orchestrator_svc.store.migrate import MigrationError, migrate
from orchestrator_svc.store.ports import (
    IdempotencyConflict,
    LeaseLost,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    TaskClosed,
    TaskLeases,
    TaskNotFound,
    TaskStore,
)
from orchestrator_svc.store.postgres import (
    CorruptRecord,
    PostgresTaskStore,
    default_owner,
)
from orchestrator_svc.store.projection import (
    TERMINAL_SUBTASK_STATES,
    TERMINAL_TASK_STATES,
    apply,
    subtask_id_for,
)

__all__ = [
    "TERMINAL_SUBTASK_STATES",
    "TERMINAL_TASK_STATES",
    "Cache",
    "CorruptRecord",
    "IdempotencyConflict",
    "InMemoryCache",
    "InMemoryTaskStore",
    "LeaseLost",
    "MigrationError",
    "PostgresTaskStore",
    "RedisCache",
    "StoreClosed",
    "StoreError",
    "StoreUnavailable",
    "TaskClosed",
    "TaskLeases",
    "TaskNotFound",
    "TaskStore",
    "apply",
    "cache_key",
    "migrate",
    "open_cache",
    "open_store",
    "subtask_id_for",
]


async def open_store(
    settings: Settings,
    *,
    startup_wait_s: float = 10.0,
    connect_timeout_s: float = 5.0,
    retry_initial_s: float = 0.2,
    retry_max_s: float = 2.0,
    server_settings: dict[str, str] | None = None,
) -> TaskStore:
    """The store `settings` choose: in process memory, or a migrated PostgreSQL store.

    With `settings.postgres_dsn` set, waits up to `startup_wait_s` for PostgreSQL (retrying with
    backoff from `retry_initial_s` to `retry_max_s`), applies pending migrations, and opens the
    pool. Raises StoreUnavailable when PostgreSQL cannot be reached in time, MigrationError when
    the schema cannot be brought up to date.
    """
    if not settings.postgres_dsn:
        return InMemoryTaskStore(retain_finished=settings.retain_finished_tasks)
    dsn = settings.postgres_dsn
    await migrate(
        dsn,
        server_settings=server_settings,
        startup_wait_s=startup_wait_s,
        connect_timeout_s=connect_timeout_s,
        retry_initial_s=retry_initial_s,
        retry_max_s=retry_max_s,
    )
    return await PostgresTaskStore.connect(
        dsn,
        server_settings=server_settings,
        startup_wait_s=startup_wait_s,
        connect_timeout_s=connect_timeout_s,
        retry_initial_s=retry_initial_s,
        retry_max_s=retry_max_s,
        owner=default_owner(settings.replica_name or None),
        lease_ttl_s=settings.lease_ttl_s,
    )
