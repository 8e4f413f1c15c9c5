"""Reaching PostgreSQL: connecting with retries, pooled sessions, driver failures as StoreErrors.

Every network await is bounded: statements by `timeout_s` (asyncpg's command_timeout), pool
acquisition likewise, connection attempts by `connect_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import structlog
import tenacity

from orchestrator_svc.store.ports import StoreClosed, StoreError, StoreUnavailable

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

# Failures that say "PostgreSQL is (momentarily) not there", worth a retry, never a bug.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # NOTE: what asyncpg raises on a session the server ended while it sat idle in the pool
    # (MagicStack/asyncpg#784): the connection is broken, not the caller's request.
    asyncpg.InternalClientError,
)
# What leaves a session unusable: a transient failure, or asyncpg's own report of a connection
# it already dropped.
BROKEN_SESSION_ERRORS = (*TRANSIENT_ERRORS, asyncpg.InterfaceError)


def describe_dsn(dsn: str) -> str:
    """user@host:port/database of a URL DSN, never its password (for error messages and logs)."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "the configured DSN"
    if not parts.scheme.startswith("postgres"):
        return "the configured DSN"
    user = f"{parts.username}@" if parts.username else ""
    return f"{user}{host}:{port}{parts.path}"


async def retry_until_reachable(
    connect: Callable[[float], Awaitable[_T]],
    *,
    dsn: str,
    startup_wait_s: float,
    connect_timeout_s: float,
    retry_initial_s: float,
    retry_max_s: float,
) -> _T:
    """Call `connect(attempt_timeout)` until it succeeds, backing off, for up to `startup_wait_s`.

    Raises StoreUnavailable when the time is up, at once for a failure no retry can fix (bad
    credentials, unknown database, malformed DSN).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + startup_wait_s
    attempts = 0
    backoff = tenacity.wait_exponential(multiplier=retry_initial_s, max=retry_max_s)

    def remaining() -> float:
        return deadline - loop.time()

    async def attempt() -> _T:
        nonlocal attempts
        attempts += 1
        return await connect(max(0.05, min(connect_timeout_s, remaining())))

    def warn(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "postgres_unreachable_retrying",
            target=describe_dsn(dsn),
            attempt=state.attempt_number,
            error=f"{type(error).__name__}: {error}",
        )

    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type(TRANSIENT_ERRORS),
        stop=lambda _state: remaining() <= 0,
        wait=lambda state: max(0.0, min(backoff(state), remaining())),
        before_sleep=warn,
        reraise=True,
    )
    try:
        return await retrying(attempt)
    except TRANSIENT_ERRORS as exc:
        raise StoreUnavailable(
            f"PostgreSQL at {describe_dsn(dsn)} is unreachable: {attempts} attempt(s) in "
            f"{loop.time() - started:.1f} s, last error {type(exc).__name__}: {exc} "
            "(check OCTOLLM_POSTGRES_DSN and that the server is up)"
        ) from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StoreUnavailable(
            f"PostgreSQL at {describe_dsn(dsn)} refused the connection: {type(exc).__name__}: {exc}"
        ) from exc


async def close_quietly(connection: Any, *, timeout_s: float) -> None:
    """Close an asyncpg connection, terminating it if a graceful close fails or takes too long."""
    try:
        await asyncio.wait_for(connection.close(), timeout_s)
    except asyncio.CancelledError:
        connection.terminate()
        raise
    except Exception as exc:
        log.warning("postgres_close_failed", error=f"{type(exc).__name__}: {exc}")
        connection.terminate()


async def close_pool(pool: Any, *, timeout_s: float) -> None:
    """Close an asyncpg pool, terminating it if a graceful close fails or takes too long."""
    try:
        await asyncio.wait_for(pool.close(), timeout_s)
    except asyncio.CancelledError:
        pool.terminate()
        raise
    except Exception as exc:
        log.warning("postgres_pool_close_failed", error=f"{type(exc).__name__}: {exc}")
        pool.terminate()


async def keep_session(connection: Any) -> None:
    """Pool reset hook: this store never changes session state, so skip asyncpg's reset query."""


def lost(connection: Any) -> bool:
    """True when a pooled connection is closed, or was detached from its proxy when it closed."""
    try:
        return bool(connection.is_closed())
    except asyncpg.InterfaceError:
        return True


@contextlib.asynccontextmanager
async def pooled_session(pool: Any, timeout_s: float) -> AsyncIterator[Any]:
    """A connection of `pool`; one that failed mid-use is terminated, never handed out again."""
    async with pool.acquire(timeout=timeout_s) as conn:
        try:
            yield conn
        except BROKEN_SESSION_ERRORS:
            # NOTE: InterfaceError here means asyncpg already dropped the connection.
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
            raise


class Sessions:
    """The store's pool of sessions, whether the store is still open, and what a driver
    failure means to the store's callers."""

    def __init__(
        self, pool: Any, *, timeout_s: float, retry_initial_s: float, retry_max_s: float
    ) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise StoreClosed()

    def session(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A pooled connection; one that failed mid-use is terminated, never handed out again."""
        return pooled_session(self.pool, self.timeout_s)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self.session() as conn:
            rows: list[Any] = await conn.fetch(sql, *args)
            return rows

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        async with self.session() as conn:
            return await conn.fetchrow(sql, *args)

    async def fetch_patiently(self, sql: str, *args: Any) -> list[Any]:
        """fetch for long-lived watchers: rides out a dropped session or a server restart.

        Retries StoreUnavailable with backoff for up to timeout_s, then lets it through (the
        client resumes with after_seq). Reads only, so a retry never duplicates anything.
        """
        loop = asyncio.get_running_loop()
        delay = self._retry_initial_s
        give_up: float | None = None
        while True:
            try:
                with self.reported("watch"):
                    return await self.fetch(sql, *args)
            except StoreUnavailable as exc:
                give_up = give_up or loop.time() + self.timeout_s
                if loop.time() >= give_up:
                    raise
                log.warning("watch_read_retrying", error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_s)
            self.check_open()

    @contextlib.contextmanager
    def reported(self, operation: str) -> Iterator[None]:
        """Map driver failures to StoreClosed / StoreUnavailable; let everything else through."""
        try:
            yield
        except BROKEN_SESSION_ERRORS as exc:
            mapped = self.store_error(exc, operation)
            if mapped is exc:
                raise
            raise mapped from exc

    def store_error(self, exc: Exception, operation: str) -> Exception:
        if isinstance(exc, StoreError):
            return exc
        if self.closed:
            return StoreClosed()
        if isinstance(exc, TRANSIENT_ERRORS):
            return StoreUnavailable(
                f"PostgreSQL failed during {operation}: {type(exc).__name__}: {exc}"
            )
        return exc

    async def close(self) -> None:
        """Close the pool, terminating it if a graceful close fails or takes too long."""
        await close_pool(self.pool, timeout_s=self.timeout_s)
