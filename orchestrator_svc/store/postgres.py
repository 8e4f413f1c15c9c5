"""PostgreSQL TaskStore: tasks and their append-only event logs, shared by several replicas.

    store = await PostgresTaskStore.connect("postgresql://postgres@127.0.0.1:5432/test")

Behaves like InMemoryTaskStore (the shared suite in tests/store/ runs against both), with state
that survives the process and is shared by every store on the same schema:

- create: the idempotency key is claimed with INSERT ... ON CONFLICT DO NOTHING in the same
  transaction as the task row, so one request_id makes one task across replicas.
- append: one transaction locks the task rows (SELECT ... FOR UPDATE), assigns seqs, inserts the
  events, stores the new projection and sends NOTIFY; append() returns only after COMMIT.
  Group commit: appends that arrive while a commit is in flight go into the next transaction
  together, in arrival order (so appends to one task keep their order).
- watch: replays the log from the table by seq, then follows it. One LISTEN connection per store
  wakes watchers, which re-read the table from their own cursor (a coalesced or missed
  notification loses nothing), and a poll every `poll_interval_s` covers a lost listener.
- every network await is bounded: statements by `timeout_s` (asyncpg's command_timeout), pool
  acquisition likewise, connection attempts by `connect_timeout_s`.

Errors beyond the port's: StoreUnavailable (PostgreSQL unreachable or too slow) and
CorruptRecord (a stored row that does not decode), both StoreError subclasses.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime
import hashlib
import os
import re
import socket
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import structlog
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from octollm.v1 import orchestrator_service_pb2 as pb

# NOTE: the batch rules, copies and page tokens are the in-memory store's own, so both
# adapters refuse the same batches and hand out interchangeable tokens.
from orchestrator_svc.store.ports import (
    ArmHistory,
    ArmRecord,
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
from orchestrator_svc.store.projection import apply
from orchestrator_svc.store.shared import (
    check_batch,
    copy_message,
    decode_page_token,
    encode_page_token,
    event_batches,
)

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

CHANNEL_PREFIX = "octollm_task_events"
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
_BROKEN_SESSION_ERRORS = (*TRANSIENT_ERRORS, asyncpg.InterfaceError)
_MAX_IDENTIFIER_BYTES = 63
_WATCH_PAGE = 256
_MAX_BATCH_APPENDS = 512
_MAX_BATCH_EVENTS = 4096
_RECENT_EVENTS = 256
# Projections of tasks this store writes to (the ones its replica runs), most recent last.
_MAX_HELD_PROJECTIONS = 10_000
_INT64 = range(-(2**63), 2**63)
# What str(uuid.UUID(...)) gives: task ids are exactly this (see _is_task_id).
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
# NOTE: every statement the store prepares looks rows up by key (an index always applies) or
# takes a few small arrays. PostgreSQL would plan the array-heavy appends again on every
# execution (a fifth of an append's time), so the sessions keep one generic plan per statement.
# A generic plan is made once, from what the planner believes of the tables then: on a young
# schema (a new deployment) it assumes `tasks` is ten pages and an unnest() ten rows, picks a
# hash join over a sequential scan of `tasks`, and keeps it while the table grows until
# autovacuum invalidates it: every append then reads the whole table (1.9 ms an append instead
# of 1.1 ms after a thousand tasks). Index paths are what these statements need at any size.
SESSION_SETTINGS = {
    "plan_cache_mode": "force_generic_plan",
    "enable_seqscan": "off",
    "enable_hashjoin": "off",
    "enable_mergejoin": "off",
}


class CorruptRecord(StoreError):
    """A stored task or event does not decode: a poisoned body, or an event of unknown kind."""

    def __init__(self, task_id: str, detail: str, seq: int | None = None) -> None:
        where = f"task {task_id!r}" if seq is None else f"event {seq} of task {task_id!r}"
        super().__init__(f"stored {where} cannot be read: {detail}")
        self.task_id = task_id
        self.seq = seq


# --- SQL (each is prepared once per connection by asyncpg's statement cache) -----------------

_SCHEMA_STATE = """
SELECT current_schema() AS schema,
       to_regclass('task_events') IS NOT NULL AND to_regclass('idempotency_keys') IS NOT NULL
           AND EXISTS (
               SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'tasks'
                 AND column_name = 'lease_owner'
           ) AS migrated
"""
_CLAIM_KEY = """
INSERT INTO idempotency_keys (request_id, fingerprint, task_id) VALUES ($1, $2, $3)
ON CONFLICT (request_id) DO NOTHING
RETURNING true
"""
_KNOWN_KEY = """
SELECT k.fingerprint, k.task_id::text AS task_id, t.body
FROM idempotency_keys AS k JOIN tasks AS t USING (task_id)
WHERE k.request_id = $1
"""
_INSERT_TASK = """
INSERT INTO tasks (task_id, request_id, create_time, create_ns, update_time, state, body,
                   lease_owner, lease_expires)
VALUES ($1, NULLIF($2, ''), $3, $4, $3, $5, $6, $7, now() + make_interval(secs => $8))
ON CONFLICT (task_id) DO NOTHING
RETURNING true
"""
_GET_TASK = "SELECT finished, body FROM tasks WHERE task_id = $1"
_LOCK_TASKS = """
SELECT task_id::text AS task_id, finished, body, lease_owner FROM tasks
WHERE task_id = ANY($1::uuid[])
ORDER BY task_id
FOR UPDATE
"""
# How both append statements write a task's new projection: a `finished` releases the lease, an
# owner's append ($14 the owner, $15 the TTL) renews it once less than half of it is left (so
# most appends change no indexed column, and the row update can skip the indexes).
_PROJECT = """SET state = p.state, last_seq = p.last_seq, finished = p.finished, body = p.body,
        update_time = p.update_time,
        lease_owner = CASE WHEN p.finished THEN NULL ELSE t.lease_owner END,
        lease_expires = CASE
            WHEN p.finished THEN NULL
            WHEN p.fenced AND t.lease_owner = $14
                 AND t.lease_expires < now() + make_interval(secs => $15 / 2)
                THEN now() + make_interval(secs => $15)
            ELSE t.lease_expires
        END
"""
# NOTE: one statement, one round trip: the events, the projections, and one notification per
# task (delivered by PostgreSQL only when the transaction commits).
_WRITE_APPENDS = f"""
WITH appended AS (
    INSERT INTO task_events (task_id, seq, kind, body)
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bytea[])
), projected AS (
    UPDATE tasks AS t
    {_PROJECT.strip()}
    FROM unnest($5::uuid[], $6::integer[], $7::bigint[], $8::boolean[], $9::bytea[],
                $10::timestamptz[], $13::boolean[])
         AS p (task_id, state, last_seq, finished, body, update_time, fenced)
    WHERE t.task_id = p.task_id
)
SELECT pg_notify($11, payload) FROM unnest($12::text[]) AS payload
"""
# NOTE: the append of a task whose projection this store holds (it runs the task): one
# statement, so one round trip and its own transaction. The row is updated only if the log
# is where the held projection says (no other writer got in) and, for an owner append, the
# lease is still this replica's; the events go in only for rows that were updated.
_WRITE_HELD_APPENDS = f"""
WITH projected AS (
    UPDATE tasks AS t
    {_PROJECT.strip()}
    FROM unnest($5::uuid[], $6::integer[], $7::bigint[], $8::boolean[], $9::bytea[],
                $10::timestamptz[], $12::bigint[], $13::boolean[])
         AS p (task_id, state, last_seq, finished, body, update_time, prior_seq, fenced)
    WHERE t.task_id = p.task_id AND t.last_seq = p.prior_seq AND NOT t.finished
      AND (NOT p.fenced OR t.lease_owner IS NULL OR t.lease_owner = $14)
    RETURNING t.task_id, t.last_seq
), appended AS (
    INSERT INTO task_events (task_id, seq, kind, body)
    SELECT e.task_id, e.seq, e.kind, e.body
    FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bytea[]) AS e (task_id, seq, kind, body)
    JOIN projected USING (task_id)
)
SELECT task_id::text AS task_id, pg_notify($11, task_id::text || ':' || last_seq) FROM projected
"""
# NOTE: rows an append holds are skipped, never waited for (so a renewal and a commit cannot
# deadlock): an owner append renews a lease with less than half its TTL left itself, and one
# with more outlasts the next renewal round (a third of the TTL away). Every lease still this
# owner's is returned, renewed now or not (the main query does not see the CTE's update, nor
# need to).
_RENEW_LEASES = """
WITH renewed AS (
    UPDATE tasks AS t SET lease_expires = now() + make_interval(secs => $2)
    FROM (
        SELECT task_id FROM tasks WHERE lease_owner = $1 AND NOT finished
        FOR UPDATE SKIP LOCKED
    ) AS free
    WHERE t.task_id = free.task_id
)
SELECT task_id::text AS task_id FROM tasks WHERE lease_owner = $1 AND NOT finished
"""
_CLAIM_EXPIRED = """
WITH expired AS (
    SELECT task_id, lease_owner AS previous FROM tasks
    WHERE NOT finished AND (lease_expires IS NULL OR lease_expires < now())
    ORDER BY lease_expires NULLS FIRST
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks AS t SET lease_owner = $1, lease_expires = now() + make_interval(secs => $2)
FROM expired
WHERE t.task_id = expired.task_id
RETURNING t.task_id::text AS task_id, t.body, expired.previous
"""
_QUARANTINE = """
UPDATE tasks SET lease_owner = 'quarantined', lease_expires = 'infinity' WHERE task_id = $1
"""
_RELEASE_LEASES = """
UPDATE tasks SET lease_expires = now()
WHERE lease_owner = $1 AND task_id = ANY($2::uuid[]) AND NOT finished
"""
_ADD_ARM_RECORDS = """
INSERT INTO arm_stats AS a (arm_id, arm_type, succeeded, failed, success_rate, mean_latency_s)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[],
                     $5::double precision[], $6::double precision[])
ON CONFLICT (arm_id) DO UPDATE
SET arm_type = EXCLUDED.arm_type,
    succeeded = a.succeeded + EXCLUDED.succeeded,
    failed = a.failed + EXCLUDED.failed,
    success_rate = EXCLUDED.success_rate,
    mean_latency_s = EXCLUDED.mean_latency_s,
    updated_at = now()
"""
_ARM_RECORDS = """
SELECT arm_id, arm_type, succeeded, failed, success_rate, mean_latency_s
FROM arm_stats WHERE arm_id = ANY($1::text[])
"""
_READ_EVENTS = """
SELECT seq, body FROM task_events
WHERE task_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3
"""
_LAST_SEQS = "SELECT task_id::text AS task_id, last_seq FROM tasks WHERE task_id = ANY($1::uuid[])"
_LIST_COLUMNS = "SELECT task_id::text AS task_id, body FROM tasks"
_LIST_ORDER = "ORDER BY create_ns DESC, task_id DESC LIMIT $1"
# Keyed by (has a page token, filters by state).
_LIST_TASKS = {
    (False, False): f"{_LIST_COLUMNS} {_LIST_ORDER}",
    (True, False): f"{_LIST_COLUMNS} WHERE (create_ns, task_id) < ($2, $3::uuid) {_LIST_ORDER}",
    (False, True): f"{_LIST_COLUMNS} WHERE state = ANY($2::integer[]) {_LIST_ORDER}",
    (True, True): (
        f"{_LIST_COLUMNS} WHERE state = ANY($2::integer[]) "
        f"AND (create_ns, task_id) < ($3, $4::uuid) {_LIST_ORDER}"
    ),
}


# --- connecting --------------------------------------------------------------------------------


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
    delay = retry_initial_s
    attempts = 0
    while True:
        attempts += 1
        attempt_timeout = max(0.05, min(connect_timeout_s, deadline - loop.time()))
        try:
            return await connect(attempt_timeout)
        except TRANSIENT_ERRORS as exc:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StoreUnavailable(
                    f"PostgreSQL at {describe_dsn(dsn)} is unreachable: {attempts} attempt(s) in "
                    f"{loop.time() - started:.1f} s, last error {type(exc).__name__}: {exc} "
                    "(check OCTOLLM_POSTGRES_DSN and that the server is up)"
                ) from exc
            log.warning(
                "postgres_unreachable_retrying",
                target=describe_dsn(dsn),
                attempt=attempts,
                error=f"{type(exc).__name__}: {exc}",
            )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, retry_max_s)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(
                f"PostgreSQL at {describe_dsn(dsn)} refused the connection: "
                f"{type(exc).__name__}: {exc}"
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


async def _keep_session(connection: Any) -> None:
    """Pool reset hook: this store never changes session state, so skip asyncpg's reset query."""


def channel_for(schema: str) -> str:
    """The NOTIFY channel of a schema: replicas on one schema share it, other schemas do not."""
    if schema == "public":
        return CHANNEL_PREFIX
    channel = f"{CHANNEL_PREFIX}.{schema}"
    if len(channel.encode()) > _MAX_IDENTIFIER_BYTES:
        # NOTE: PostgreSQL refuses longer channel names; a digest keeps them distinct.
        channel = f"{CHANNEL_PREFIX}.{hashlib.sha256(schema.encode()).hexdigest()[:32]}"
    return channel


# --- the store ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _Append:
    """One append() call waiting for its transaction: stamped copies of its events."""

    task_id: str
    events: list[pb.TaskEvent]
    done: asyncio.Future[int]
    as_owner: bool = False


@dataclass(eq=False)
class _Locked:
    """A task row held FOR UPDATE during a commit, with its projection as the batch changes it."""

    task: pb.Task
    finished: bool
    lease_owner: str | None = None
    changed: bool = False
    subtask_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.subtask_index.update(
            (subtask.subtask_id, position) for position, subtask in enumerate(self.task.subtasks)
        )

    def apply(self, task_id: str, events: Sequence[pb.TaskEvent], into: list[pb.TaskEvent]) -> int:
        """Number `events` after the projection's last seq, project them, add them to `into`
        (the rows to insert); the new last seq."""
        for event in events:
            event.seq = self.task.last_seq + 1
            event.task_id = task_id
            apply(self.task, event, self.subtask_index)
            into.append(event)
        self.finished = events[-1].HasField("finished")
        return self.task.last_seq


@dataclass(eq=False)
class _Followed:
    """What this store knows of the log of a task it runs or one being watched (kept while
    either lasts), and a wake-up for its watchers."""

    latest: int = 0
    watchers: int = 0
    _grown: asyncio.Event = field(default_factory=asyncio.Event)
    # The latest events this store committed itself, contiguous: local watchers read them here
    # instead of from the table.
    recent: deque[pb.TaskEvent] = field(default_factory=lambda: deque(maxlen=_RECENT_EVENTS))

    def grown(self) -> asyncio.Event:
        """The event set when `latest` next grows (take it BEFORE reading the table)."""
        return self._grown

    def committed(self, events: Sequence[pb.TaskEvent]) -> None:
        """Keep events this store just committed (their seqs follow what is kept, or restart)."""
        if self.recent and events and events[0].seq != self.recent[-1].seq + 1:
            self.recent.clear()
        self.recent.extend(events)

    def after(self, cursor: int) -> builtins.list[pb.TaskEvent] | None:
        """Copies of every event from cursor+1 to `latest`, if all of them are kept, else None."""
        recent = self.recent
        if not recent or recent[0].seq > cursor + 1 or recent[-1].seq < self.latest:
            return None
        start = cursor + 1 - recent[0].seq
        return [copy_message(recent[i]) for i in range(start, len(recent))]

    def advance(self, seq: int) -> None:
        if seq > self.latest:
            self.latest = seq
            self.publish()

    def publish(self) -> None:
        grown, self._grown = self._grown, asyncio.Event()
        grown.set()


class PostgresTaskStore(TaskStore, TaskLeases, ArmHistory):
    """TaskStore on PostgreSQL via an asyncpg pool; build it with `PostgresTaskStore.connect`.

    The schema must already be migrated (`store.migrate` or `open_store`). Use it from one
    event loop. An append whose caller is cancelled while it waits for its commit may still be
    committed (as with any database write); watchers and get() tell the truth either way.
    """

    def __init__(
        self,
        pool: Any,
        *,
        connect_listener: Callable[[float], Awaitable[Any]],
        channel: str,
        group_commit: bool,
        poll_interval_s: float,
        timeout_s: float,
        connect_timeout_s: float,
        retry_initial_s: float,
        retry_max_s: float,
        owner: str,
        lease_ttl_s: float,
    ) -> None:
        self._pool = pool
        self._owner = owner
        self._lease_ttl_s = lease_ttl_s
        self._connect_listener = connect_listener
        self._channel = channel
        self._group_commit = group_commit
        self._poll_interval_s = poll_interval_s
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._closed = False
        # group commit
        self._queue: deque[_Append] = deque()
        self._queued = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._committer_conn: Any = None  # the group committer's own pooled connection
        # without group commit: one append per task at a time, in call order
        self._task_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # watching
        self._followed: dict[str, _Followed] = {}
        # task_id -> its projection as this store last committed it (see _write_held)
        self._held: OrderedDict[str, _Locked] = OrderedDict()
        self._listener: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._listener_settled = asyncio.Event()
        self._poll_now = asyncio.Event()

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        server_settings: dict[str, str] | None = None,
        min_size: int = 1,
        max_size: int = 10,
        group_commit: bool = True,
        poll_interval_s: float = 1.0,
        timeout_s: float = 15.0,
        startup_wait_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 2.0,
        channel: str | None = None,
        owner: str | None = None,
        lease_ttl_s: float = 10.0,
    ) -> PostgresTaskStore:
        """Open a pool to `dsn` (waiting up to `startup_wait_s` for the server) and return a store.

        `server_settings` go to every session (e.g. {"search_path": "tenant_a"}); the NOTIFY
        channel defaults to one per schema (`channel_for`). `owner` names this replica in task
        leases (default: host, pid and a random suffix). Raises StoreUnavailable if the
        server cannot be reached, StoreError if the schema is not migrated.
        """
        settings = {**SESSION_SETTINGS, **(server_settings or {})}

        async def open_pool(attempt_timeout: float) -> Any:
            return await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                server_settings=settings,
                timeout=attempt_timeout,
                command_timeout=timeout_s,
                reset=_keep_session,
            )

        async def connect_listener(attempt_timeout: float) -> Any:
            return await asyncpg.connect(
                dsn, server_settings=settings, timeout=attempt_timeout, command_timeout=timeout_s
            )

        pool = await retry_until_reachable(
            open_pool,
            dsn=dsn,
            startup_wait_s=startup_wait_s,
            connect_timeout_s=connect_timeout_s,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
        )
        try:
            async with pool.acquire(timeout=timeout_s) as connection:
                row = await connection.fetchrow(_SCHEMA_STATE)
        except TRANSIENT_ERRORS as exc:
            pool.terminate()
            raise StoreUnavailable(
                f"PostgreSQL at {describe_dsn(dsn)} failed while opening the store: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        except BaseException:
            pool.terminate()
            raise
        schema: str | None = row["schema"]
        if schema is None or not row["migrated"]:
            await pool.close()
            where = f"schema {schema!r}" if schema else "the search_path (no such schema)"
            raise StoreError(
                f"{where} at {describe_dsn(dsn)} has no task tables: run `octollm migrate` "
                "(or start through open_store, which migrates)"
            )
        log.info("postgres_store_opened", target=describe_dsn(dsn), schema=schema)
        return cls(
            pool,
            connect_listener=connect_listener,
            channel=channel or channel_for(schema),
            group_commit=group_commit,
            poll_interval_s=poll_interval_s,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
            owner=owner or default_owner(),
            lease_ttl_s=lease_ttl_s,
        )

    @property
    def channel(self) -> str:
        """The NOTIFY channel this store announces appends on and listens to."""
        return self._channel

    # --- TaskStore -----------------------------------------------------------------------------

    async def create(self, task: pb.Task, fingerprint: str) -> tuple[pb.Task, bool]:
        self._check_open()
        stored = copy_message(task)
        if not stored.task_id:
            stored.task_id = str(uuid.uuid4())
        elif not _is_task_id(stored.task_id):
            raise ValueError(f"task_id {stored.task_id!r} is not a lowercase canonical UUID")
        if not stored.HasField("create_time"):
            stored.create_time.FromNanoseconds(time.time_ns())
        stored.update_time.CopyFrom(stored.create_time)
        stored.state = pb.TASK_STATE_PENDING
        stored.last_seq = 0
        create_time = _as_datetime(stored.create_time)

        row = (
            stored.task_id,
            stored.request_id,
            create_time,
            stored.create_time.ToNanoseconds(),
            stored.state,
            stored.SerializeToString(),
            self._owner,
            self._lease_ttl_s,
        )
        with self._reported("create"):
            async with self._session() as conn:
                if not stored.request_id:
                    # NOTE: one statement, its own transaction: one round trip.
                    inserted = await conn.fetchval(_INSERT_TASK, *row)
                else:
                    async with conn.transaction():
                        claimed = await conn.fetchval(
                            _CLAIM_KEY, stored.request_id, fingerprint, stored.task_id
                        )
                        if not claimed:
                            return await self._created_before(conn, stored.request_id, fingerprint)
                        inserted = await conn.fetchval(_INSERT_TASK, *row)
                        if not inserted:
                            # NOTE: raising rolls back the idempotency key claimed above too.
                            raise ValueError(f"task {stored.task_id!r} already exists")
                if not inserted:
                    raise ValueError(f"task {stored.task_id!r} already exists")
        log.debug("task_created", task_id=stored.task_id, request_id=stored.request_id)
        self._hold(_Locked(copy_message(stored), False, self._owner))
        return stored, True

    async def append(
        self, task_id: str, events: Sequence[pb.TaskEvent], *, as_owner: bool = False
    ) -> int:
        self._check_open()
        if not _is_task_id(task_id):
            raise TaskNotFound(task_id)
        check_batch(task_id, events)
        if not events:
            task, finished = await self._read_task(task_id)
            if finished:
                raise TaskClosed(task_id)
            return task.last_seq

        now = Timestamp()
        now.FromNanoseconds(time.time_ns())
        stamped: list[pb.TaskEvent] = []
        for event in events:
            stored = copy_message(event)
            if not stored.HasField("time"):
                stored.time.CopyFrom(now)
            stamped.append(stored)
        request = _Append(
            task_id, stamped, asyncio.get_running_loop().create_future(), as_owner=as_owner
        )

        if self._group_commit:
            self._queue.append(request)
            self._queued.set()
            if self._committer is None or self._committer.done():
                self._committer = asyncio.create_task(
                    self._commit_forever(), name="octollm-postgres-group-commit"
                )
        else:
            async with self._one_append_per_task(task_id):
                await self._commit([request])
        return await request.done

    async def get(self, task_id: str) -> pb.Task:
        self._check_open()
        task, _ = await self._read_task(task_id)
        return task

    async def list(
        self, page_size: int, page_token: str, states: Collection[int]
    ) -> tuple[builtins.list[pb.Task], str]:
        self._check_open()
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1 (got {page_size})")
        args: builtins.list[Any] = [page_size + 1]
        wanted = sorted({int(state) for state in states})
        if wanted:
            args.append(wanted)
        if page_token:
            create_ns, last_id = decode_page_token(page_token)
            if create_ns not in _INT64 or not _is_task_id(last_id):
                raise ValueError("malformed page token")
            args += [create_ns, last_id]
        sql = _LIST_TASKS[bool(page_token), bool(wanted)]
        with self._reported("list"):
            rows = await self._fetch(sql, *args)
        page = [_decode_task(row["task_id"], row["body"]) for row in rows[:page_size]]
        if len(rows) > page_size:
            last = page[-1]
            return page, encode_page_token((last.create_time.ToNanoseconds(), last.task_id))
        return page, ""

    async def watch(self, task_id: str, after_seq: int) -> AsyncIterator[pb.TaskEvent]:
        async for batch in self.watch_batches(task_id, after_seq, 1):
            yield batch[0]

    async def watch_batches(
        self, task_id: str, after_seq: int, max_events: int
    ) -> AsyncIterator[builtins.list[pb.TaskEvent]]:
        self._check_open()
        if after_seq < 0:
            raise ValueError(f"after_seq must be at least 0 (got {after_seq})")
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1 (got {max_events})")
        if not _is_task_id(task_id):
            raise TaskNotFound(task_id)
        # NOTE: follow BEFORE the first read, so an append committed in between wakes us.
        followed = self._follow(task_id)
        try:
            await self._await_listener()
            if task_id not in self._held:
                found = await self._fetch_patiently(
                    "SELECT last_seq, finished FROM tasks WHERE task_id = $1", task_id
                )
                if not found:
                    raise TaskNotFound(task_id)
                row = found[0]
                if row["finished"] and row["last_seq"] <= after_seq:
                    return
                followed.advance(row["last_seq"])
            cursor = after_seq
            while True:
                self._check_open()
                grown = followed.grown()
                if followed.latest > cursor:
                    kept = followed.after(cursor)
                    rows = []
                    if kept is None:
                        rows = await self._fetch_patiently(
                            _READ_EVENTS, task_id, cursor, _WATCH_PAGE
                        )
                    events = kept if kept is not None else _decoded(task_id, rows)
                    for batch in event_batches(events, max_events):
                        cursor = batch[-1].seq
                        yield batch
                        if batch[-1].HasField("finished"):
                            return
                    if kept is not None or rows:
                        continue
                await grown.wait()
        finally:
            self._unfollow(task_id, followed)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for followed in self._followed.values():
            followed.publish()
        self._listener_settled.set()
        self._queued.set()
        if self._committer is not None:
            # NOTE: accepted appends are committed (or fail) before the pool goes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._committer), self._timeout_s)
            self._committer.cancel()
            await asyncio.gather(self._committer, return_exceptions=True)
        await self._give_back_committer_conn()
        while self._queue:
            _settle(self._queue.popleft(), StoreClosed())
        for background in (self._listener, self._poller):
            if background is not None:
                background.cancel()
                await asyncio.gather(background, return_exceptions=True)
        try:
            await asyncio.wait_for(self._pool.close(), self._timeout_s)
        except asyncio.CancelledError:
            self._pool.terminate()
            raise
        except Exception as exc:
            log.warning("postgres_pool_close_failed", error=f"{type(exc).__name__}: {exc}")
            self._pool.terminate()
        log.info("postgres_store_closed", channel=self._channel)

    # --- TaskLeases ----------------------------------------------------------------------------

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def lease_ttl_s(self) -> float:
        return self._lease_ttl_s

    async def renew(self) -> set[str]:
        self._check_open()
        with self._reported("renew"):
            rows = await self._fetch(_RENEW_LEASES, self._owner, self._lease_ttl_s)
        return {row["task_id"] for row in rows}

    async def claim_expired(self, limit: int) -> builtins.list[pb.Task]:
        self._check_open()
        if limit < 1:
            return []
        with self._reported("claim"):
            rows = await self._fetch(_CLAIM_EXPIRED, self._owner, self._lease_ttl_s, limit)
        claimed = []
        for row in rows:
            try:
                task = _decode_task(row["task_id"], row["body"])
            except CorruptRecord as exc:
                # NOTE: reported once and set aside (no replica claims it again), so a poisoned
                # row cannot become a claim-crash loop; the task stays readable for an operator.
                log.error("corrupt_task_quarantined", task_id=row["task_id"], error=str(exc))
                with self._reported("claim"):
                    async with self._session() as conn:
                        await conn.execute(_QUARANTINE, row["task_id"])
                continue
            log.info("task_lease_claimed", task_id=task.task_id, previous_owner=row["previous"])
            self._hold(_Locked(copy_message(task), False, self._owner))
            claimed.append(task)
        return claimed

    async def release(self, task_ids: Collection[str]) -> None:
        self._check_open()
        ids = [task_id for task_id in task_ids if _is_task_id(task_id)]
        if not ids:
            return
        with self._reported("release"):
            async with self._session() as conn:
                await conn.execute(_RELEASE_LEASES, self._owner, ids)

    # --- ArmHistory ----------------------------------------------------------------------------

    async def add_arm_records(self, records: Sequence[ArmRecord]) -> None:
        self._check_open()
        if not records:
            return
        with self._reported("arm_stats"):
            async with self._session() as conn:
                await conn.execute(
                    _ADD_ARM_RECORDS,
                    [r.arm_id for r in records],
                    [r.arm_type for r in records],
                    [r.succeeded for r in records],
                    [r.failed for r in records],
                    [min(1.0, max(0.0, r.success_rate)) for r in records],
                    [max(0.0, r.mean_latency_s) for r in records],
                )

    async def arm_records(self, arm_ids: Collection[str]) -> dict[str, ArmRecord]:
        self._check_open()
        if not arm_ids:
            return {}
        with self._reported("arm_stats"):
            rows = await self._fetch(_ARM_RECORDS, list(arm_ids))
        return {
            row["arm_id"]: ArmRecord(
                row["arm_id"],
                row["arm_type"],
                row["succeeded"],
                row["failed"],
                row["success_rate"],
                row["mean_latency_s"],
            )
            for row in rows
        }

    # --- reading -------------------------------------------------------------------------------

    async def _read_task(self, task_id: str) -> tuple[pb.Task, bool]:
        if not _is_task_id(task_id):
            raise TaskNotFound(task_id)
        with self._reported("get"):
            row = await self._fetchrow(_GET_TASK, task_id)
        if row is None:
            raise TaskNotFound(task_id)
        return _decode_task(task_id, row["body"]), bool(row["finished"])

    async def _created_before(
        self, conn: Any, request_id: str, fingerprint: str
    ) -> tuple[pb.Task, bool]:
        row = await conn.fetchrow(_KNOWN_KEY, request_id)
        if row is None:
            raise StoreError(f"request_id {request_id!r} is claimed but names no task")
        task_id: str = row["task_id"]
        if row["fingerprint"] != fingerprint:
            log.info("idempotency_conflict", request_id=request_id, task_id=task_id)
            raise IdempotencyConflict(request_id, task_id)
        return _decode_task(task_id, row["body"]), False

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Any]:
        """A pooled connection; one that failed mid-use is terminated, never handed out again."""
        async with self._pool.acquire(timeout=self._timeout_s) as conn:
            try:
                yield conn
            except _BROKEN_SESSION_ERRORS:
                # NOTE: InterfaceError here means asyncpg already dropped the connection.
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
                raise

    @contextlib.asynccontextmanager
    async def _writer_session(self) -> AsyncIterator[Any]:
        """The connection an append commits on. The group committer keeps one pooled
        connection for as long as it works (a commit pays no pool acquire and release); one
        that fails or is interrupted goes back to the pool, which drops or resets it, and the
        next commit takes another."""
        if not self._group_commit:
            async with self._session() as conn:
                yield conn
            return
        if self._committer_conn is not None and _lost(self._committer_conn):
            # NOTE: the server ended the session while it sat idle (asyncpg has already given
            # it back to the pool): nothing was sent on it, so take another.
            self._committer_conn = None
        if self._committer_conn is None:
            self._committer_conn = await self._pool.acquire(timeout=self._timeout_s)
        conn = self._committer_conn
        try:
            yield conn
        except BaseException as exc:
            broken = isinstance(exc, _BROKEN_SESSION_ERRORS)
            # NOTE: a statement the server refused leaves the connection fine: keep it.
            if broken or not isinstance(exc, asyncpg.PostgresError):
                await self._give_back_committer_conn(terminate=broken)
            raise

    async def _give_back_committer_conn(self, *, terminate: bool = False) -> None:
        conn, self._committer_conn = self._committer_conn, None
        if conn is None:
            return
        if terminate:
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
        with contextlib.suppress(Exception):
            await self._pool.release(conn, timeout=self._timeout_s)

    async def _fetch(self, sql: str, *args: Any) -> builtins.list[Any]:
        async with self._session() as conn:
            rows: builtins.list[Any] = await conn.fetch(sql, *args)
            return rows

    async def _fetch_patiently(self, sql: str, *args: Any) -> builtins.list[Any]:
        """_fetch for long-lived watchers: rides out a dropped session or a server restart.

        Retries StoreUnavailable with backoff for up to timeout_s, then lets it through (the
        client resumes with after_seq). Reads only, so a retry never duplicates anything.
        """
        loop = asyncio.get_running_loop()
        delay = self._retry_initial_s
        give_up: float | None = None
        while True:
            try:
                with self._reported("watch"):
                    return await self._fetch(sql, *args)
            except StoreUnavailable as exc:
                give_up = give_up or loop.time() + self._timeout_s
                if loop.time() >= give_up:
                    raise
                log.warning("watch_read_retrying", error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_s)
            self._check_open()

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        async with self._session() as conn:
            return await conn.fetchrow(sql, *args)

    # --- appending -----------------------------------------------------------------------------

    async def _commit_forever(self) -> None:
        """Commit queued appends, each transaction taking all that queued up meanwhile."""
        while self._queue or not self._closed:
            if not self._queue:
                await self._queued.wait()
                self._queued.clear()
                continue
            batch: builtins.list[_Append] = []
            events = 0
            while self._queue and len(batch) < _MAX_BATCH_APPENDS:
                if batch and events + len(self._queue[0].events) > _MAX_BATCH_EVENTS:
                    break
                request = self._queue.popleft()
                batch.append(request)
                events += len(request.events)
            await self._commit(batch)

    async def _commit(self, batch: builtins.list[_Append]) -> None:
        """Commit `batch` in one transaction and settle each caller's future; never raises."""
        try:
            results, changed = await self._write_all(batch)
        except asyncio.CancelledError:
            for request in batch:
                _settle(request, StoreClosed())
            raise
        except Exception as exc:
            if (
                len(batch) > 1
                and isinstance(exc, asyncpg.PostgresError)
                and not isinstance(exc, TRANSIENT_ERRORS)
                and not self._closed
            ):
                # NOTE: one bad append must not fail its neighbours: retry them one by one.
                log.warning("group_commit_split", size=len(batch), error=str(exc))
                for request in batch:
                    await self._commit([request])
                return
            error = self._store_error(exc, "append")
            for request in batch:
                _settle(request, error)
            return
        # NOTE: callers first, then watchers: the runner's next dispatch waits on this commit,
        # so it runs before the watch streams send what was committed (as with the in-process
        # store, whose append returns before any watcher runs).
        for request, result in zip(batch, results, strict=True):
            _settle(request, result)
        for request, result in zip(batch, results, strict=True):
            followed = self._followed.get(request.task_id)
            if followed is not None and isinstance(result, int):
                followed.committed(request.events)
        for task_id, last_seq in changed.items():
            followed = self._followed.get(task_id)
            if followed is not None:
                followed.advance(last_seq)

    def _hold(self, held: _Locked) -> None:
        """Keep a task's projection for the one-statement append path (see _write_held), and
        follow its log from here on: a watcher of a task this store runs starts from what the
        store committed, without reading the table."""
        task_id = held.task.task_id
        if held.finished:
            self._unhold(task_id)
            return
        self._held[task_id] = held
        self._held.move_to_end(task_id)
        if task_id not in self._followed:
            self._followed[task_id] = _Followed(latest=held.task.last_seq)
        if len(self._held) > _MAX_HELD_PROJECTIONS:
            self._unhold(next(iter(self._held)))

    def _unhold(self, task_id: str) -> None:
        self._held.pop(task_id, None)
        followed = self._followed.get(task_id)
        if followed is not None and followed.watchers == 0:
            del self._followed[task_id]

    async def _write_all(
        self, batch: builtins.list[_Append]
    ) -> tuple[builtins.list[int | StoreError], dict[str, int]]:
        """Write a batch: held tasks in one statement, the rest (and any held task that
        another writer changed meanwhile) through the locking transaction."""
        done: dict[_Append, int | StoreError] = {}
        changed: dict[str, int] = {}
        if any(request.task_id in self._held for request in batch):
            done, changed = await self._write_held(batch)
        rest = [request for request in batch if request not in done]
        if rest:
            results, locked_changed = await self._write(rest)
            done.update(zip(rest, results, strict=True))
            changed.update(locked_changed)
        return [done[request] for request in batch], changed

    async def _write_held(
        self, batch: builtins.list[_Append]
    ) -> tuple[dict[_Append, int | StoreError], dict[str, int]]:
        """The appends of `batch` to held tasks, in one statement; (their results, the new
        last_seq of each task written). Requests left out of the results (a task not held,
        or one whose row moved on without this store) go through _write."""
        pending: dict[str, builtins.list[tuple[_Append, int | StoreError]]] = {}
        fenced: dict[str, bool] = {}
        prior: dict[str, int] = {}
        appended: builtins.list[pb.TaskEvent] = []
        for request in batch:
            held = self._held.get(request.task_id)
            if held is None:
                continue
            prior.setdefault(request.task_id, held.task.last_seq)
            fenced[request.task_id] = fenced.get(request.task_id, False) or request.as_owner
            outcomes = pending.setdefault(request.task_id, [])
            if held.finished:
                outcomes.append((request, TaskClosed(request.task_id)))
                continue
            outcomes.append((request, held.apply(request.task_id, request.events, appended)))
        written = {task_id: self._held[task_id] for task_id in pending}
        try:
            async with self._writer_session() as conn:
                rows = await conn.fetch(
                    _WRITE_HELD_APPENDS,
                    *_append_args(appended, written),
                    self._channel,
                    [prior[task_id] for task_id in written],
                    [fenced[task_id] for task_id in written],
                    self._owner,
                    self._lease_ttl_s,
                )
        except BaseException:
            # NOTE: the held projections already took these events: forget them (the row is
            # re-read by the next append), whatever the outcome in the database was.
            for task_id in written:
                self._unhold(task_id)
            raise
        updated = {row["task_id"] for row in rows}
        done: dict[_Append, int | StoreError] = {}
        changed: dict[str, int] = {}
        for task_id, held in written.items():
            if task_id not in updated:
                # Another writer got in (a cancel through another replica, a takeover):
                # the locking path decides what these appends get.
                self._unhold(task_id)
                continue
            done.update(pending[task_id])
            changed[task_id] = held.task.last_seq
            self._hold(held)
        return done, changed

    async def _write(
        self, batch: builtins.list[_Append]
    ) -> tuple[builtins.list[int | StoreError], dict[str, int]]:
        """One transaction: lock the rows, project, insert events, update rows, notify."""
        task_ids = list(dict.fromkeys(request.task_id for request in batch))
        results: builtins.list[int | StoreError] = []
        async with self._writer_session() as conn, conn.transaction():
            locked: dict[str, _Locked | CorruptRecord] = {}
            for row in await conn.fetch(_LOCK_TASKS, task_ids):
                try:
                    locked[row["task_id"]] = _Locked(
                        _decode_task(row["task_id"], row["body"]),
                        row["finished"],
                        row["lease_owner"],
                    )
                except CorruptRecord as exc:
                    log.error("corrupt_task_row", task_id=row["task_id"], error=str(exc))
                    locked[row["task_id"]] = exc

            appended: builtins.list[pb.TaskEvent] = []
            owned: dict[str, bool] = {}
            for request in batch:
                held = locked.get(request.task_id)
                if held is None:
                    results.append(TaskNotFound(request.task_id))
                    continue
                if isinstance(held, CorruptRecord):
                    results.append(held)
                    continue
                if held.finished:
                    results.append(TaskClosed(request.task_id))
                    continue
                if request.as_owner and held.lease_owner not in (None, self._owner):
                    log.warning("task_lease_lost", task_id=request.task_id, owner=held.lease_owner)
                    results.append(LeaseLost(request.task_id, held.lease_owner))
                    continue
                last_seq = held.apply(request.task_id, request.events, appended)
                held.changed = True
                owned[request.task_id] = owned.get(request.task_id, False) or request.as_owner
                results.append(last_seq)

            changed = {
                task_id: held
                for task_id, held in locked.items()
                if isinstance(held, _Locked) and held.changed
            }
            if changed:
                await conn.execute(
                    _WRITE_APPENDS,
                    *_append_args(appended, changed),
                    self._channel,
                    [f"{held.task.task_id}:{held.task.last_seq}" for held in changed.values()],
                    [owned.get(task_id, False) for task_id in changed],
                    self._owner,
                    self._lease_ttl_s,
                )
        for held in changed.values():
            if held.lease_owner == self._owner:
                self._hold(held)
            else:
                self._unhold(held.task.task_id)
        return results, {task_id: held.task.last_seq for task_id, held in changed.items()}

    @contextlib.asynccontextmanager
    async def _one_append_per_task(self, task_id: str) -> AsyncIterator[None]:
        lock, users = self._task_locks.get(task_id, (asyncio.Lock(), 0))
        self._task_locks[task_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._task_locks[task_id]
            if users == 1:
                del self._task_locks[task_id]
            else:
                self._task_locks[task_id] = (lock, users - 1)

    # --- following the log ---------------------------------------------------------------------

    def _follow(self, task_id: str) -> _Followed:
        followed = self._followed.get(task_id)
        if followed is None:
            followed = self._followed[task_id] = _Followed()
        followed.watchers += 1
        return followed

    def _unfollow(self, task_id: str, followed: _Followed) -> None:
        followed.watchers -= 1
        if (
            followed.watchers == 0
            and task_id not in self._held
            and self._followed.get(task_id) is followed
        ):
            del self._followed[task_id]

    async def _await_listener(self) -> None:
        """Start the listener and poller once; give the LISTEN a moment to take effect."""
        if self._listener is None:
            self._listener = asyncio.create_task(
                self._listen_forever(), name="octollm-postgres-listener"
            )
            self._poller = asyncio.create_task(self._poll_forever(), name="octollm-postgres-poll")
        if not self._listener_settled.is_set():
            # NOTE: not fatal if it takes longer: the poll finds new events meanwhile.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listener_settled.wait(), self._connect_timeout_s)

    async def _listen_forever(self) -> None:
        """Hold one LISTEN connection, reconnecting with backoff whenever it is lost."""
        delay = self._retry_initial_s
        while True:
            try:
                connection = await self._connect_listener(self._connect_timeout_s)
            except (*TRANSIENT_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("task_event_listener_connect_failed", error=f"{type(exc).__name__}")
                self._listener_settled.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            lost = asyncio.Event()
            connection.add_termination_listener(_setter(lost))
            try:
                await connection.add_listener(self._channel, self._on_notification)
                delay = self._retry_initial_s
                self._listener_settled.set()
                # NOTE: appends committed before LISTEN took effect sent no wake-up we heard.
                self._poll_now.set()
                await lost.wait()
                log.warning("task_event_listener_lost", channel=self._channel)
            except (*TRANSIENT_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("task_event_listener_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
            finally:
                await close_quietly(connection, timeout_s=self._connect_timeout_s)

    def _on_notification(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        task_id, _, seq = payload.rpartition(":")
        followed = self._followed.get(task_id)
        if followed is None:
            return
        try:
            followed.advance(int(seq))
        except ValueError:
            log.warning("task_event_notification_malformed", payload=payload[:200])

    async def _poll_forever(self) -> None:
        """Every poll_interval_s, wake watchers whose task grew without a notification."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), self._poll_interval_s)
            self._poll_now.clear()
            if not self._followed:
                continue
            try:
                rows = await self._fetch(_LAST_SEQS, list(self._followed))
            except (*TRANSIENT_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("task_event_poll_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            for row in rows:
                followed = self._followed.get(row["task_id"])
                if followed is not None:
                    followed.advance(row["last_seq"])

    # --- errors --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()

    @contextlib.contextmanager
    def _reported(self, operation: str) -> Iterator[None]:
        """Map driver failures to StoreClosed / StoreUnavailable; let everything else through."""
        try:
            yield
        except _BROKEN_SESSION_ERRORS as exc:
            mapped = self._store_error(exc, operation)
            if mapped is exc:
                raise
            raise mapped from exc

    def _store_error(self, exc: Exception, operation: str) -> Exception:
        if isinstance(exc, StoreError):
            return exc
        if self._closed:
            return StoreClosed()
        if isinstance(exc, TRANSIENT_ERRORS):
            return StoreUnavailable(
                f"PostgreSQL failed during {operation}: {type(exc).__name__}: {exc}"
            )
        return exc


def _decoded(task_id: str, rows: builtins.list[Any]) -> Iterator[pb.TaskEvent]:
    for row in rows:
        yield _decode_event(task_id, row["seq"], row["body"])


def _append_args(
    events: Sequence[pb.TaskEvent], projections: dict[str, _Locked]
) -> builtins.list[Any]:
    """$1..$10 of both append statements: the new events, then each task's new projection."""
    tasks = [held.task for held in projections.values()]
    return [
        [event.task_id for event in events],
        [event.seq for event in events],
        [event.WhichOneof("kind") for event in events],
        [event.SerializeToString() for event in events],
        list(projections),
        [task.state for task in tasks],
        [task.last_seq for task in tasks],
        [held.finished for held in projections.values()],
        [task.SerializeToString() for task in tasks],
        [_as_datetime(task.update_time) for task in tasks],
    ]


def _lost(connection: Any) -> bool:
    """True when a pooled connection is closed, or was detached from its proxy when it closed."""
    try:
        return bool(connection.is_closed())
    except asyncpg.InterfaceError:
        return True


def default_owner(name: str | None = None) -> str:
    """A lease owner id unique to this process: `name` (or the host name), pid, a random part."""
    return f"{name or socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    """A termination-listener callback that sets `event`."""
    return lambda _connection: event.set()


def _settle(request: _Append, outcome: int | BaseException) -> None:
    if request.done.done():
        return  # the caller gave up (cancelled); the outcome stands in the database regardless
    if isinstance(outcome, BaseException):
        request.done.set_exception(outcome)
    else:
        request.done.set_result(outcome)


def _is_task_id(task_id: str) -> bool:
    """Task ids are canonical UUID strings (lowercase, hyphenated, what str(uuid.UUID) gives),
    so the uuid column and the string agree."""
    return _CANONICAL_UUID.fullmatch(task_id) is not None


def _as_datetime(timestamp: Timestamp) -> datetime.datetime:
    """`timestamp` as an aware UTC datetime, to the microsecond (what timestamptz keeps); the
    arithmetic Timestamp.ToDatetime does in Python, without its per-call overhead."""
    return _EPOCH + datetime.timedelta(
        seconds=timestamp.seconds, microseconds=timestamp.nanos // 1000
    )


def _decode_task(task_id: str, body: bytes) -> pb.Task:
    task = pb.Task()
    try:
        task.ParseFromString(body)
    except DecodeError as exc:
        raise CorruptRecord(task_id, f"undecodable body ({exc})") from None
    if task.task_id != task_id:
        raise CorruptRecord(task_id, f"body names task {task.task_id!r}")
    return task


def _decode_event(task_id: str, seq: int, body: bytes) -> pb.TaskEvent:
    event = pb.TaskEvent()
    try:
        event.ParseFromString(body)
    except DecodeError as exc:
        raise CorruptRecord(task_id, f"undecodable body ({exc})", seq) from None
    if event.seq != seq or event.task_id != task_id:
        raise CorruptRecord(task_id, f"body is event {event.seq} of {event.task_id!r}", seq)
    if event.WhichOneof("kind") is None:
        raise CorruptRecord(task_id, "unknown event kind (written by a newer version?)", seq)
    return event
