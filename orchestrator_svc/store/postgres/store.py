"""PostgresTaskStore: tasks and their append-only event logs, shared by several replicas.

    store = await PostgresTaskStore.connect("postgresql://postgres@127.0.0.1:5432/test")

Behaves like InMemoryTaskStore (the shared suite in tests/store/ runs against both), with state
that survives the process and is shared by every store on the same schema:

- create: the idempotency key is claimed with INSERT ... ON CONFLICT DO NOTHING in the same
  transaction as the task row, so one request_id makes one task across replicas.
- append: committed before it returns, grouped with concurrent appends, on writer sessions of
  its own (committer.py).
- watch: replays the log from the table by seq, then follows it (follower.py).
- leases and arm history: leases.py.

The parts share the store's sessions (sessions.py), which map driver failures to the port's
errors, and the projections of the tasks this store runs (held.py).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from octollm.v1 import orchestrator_service_pb2 as pb

# NOTE: the batch rules, copies and page tokens are the in-memory store's own, so both
# adapters refuse the same batches and hand out interchangeable tokens.
from orchestrator_svc.store.ports import (
    ArmHistory,
    ArmRecord,
    IdempotencyConflict,
    StoreError,
    StoreUnavailable,
    TaskClosed,
    TaskLeases,
    TaskNotFound,
    TaskStore,
)
from orchestrator_svc.store.postgres import sql
from orchestrator_svc.store.postgres.committer import Append, Committer
from orchestrator_svc.store.postgres.follower import Follower, channel_for
from orchestrator_svc.store.postgres.held import HeldProjections, TaskRow
from orchestrator_svc.store.postgres.leases import ArmStats, Leases, default_owner
from orchestrator_svc.store.postgres.rows import as_datetime, decode_task, is_task_id
from orchestrator_svc.store.postgres.sessions import (
    TRANSIENT_ERRORS,
    Sessions,
    describe_dsn,
    keep_session,
    retry_until_reachable,
)
from orchestrator_svc.store.shared import (
    check_batch,
    copy_message,
    decode_page_token,
    encode_page_token,
)

log = structlog.get_logger(__name__)

_INT64 = range(-(2**63), 2**63)


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
        writers: Any,
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
        self._sessions = Sessions(
            pool, timeout_s=timeout_s, retry_initial_s=retry_initial_s, retry_max_s=retry_max_s
        )
        self._follower = Follower(
            self._sessions,
            connect_listener=connect_listener,
            channel=channel,
            poll_interval_s=poll_interval_s,
            connect_timeout_s=connect_timeout_s,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
        )
        self._held = HeldProjections(self._follower)
        self._committer = Committer(
            self._sessions,
            writers,
            self._held,
            self._follower,
            group_commit=group_commit,
            owner=owner,
            lease_ttl_s=lease_ttl_s,
        )
        self._leases = Leases(self._sessions, self._held, owner=owner, lease_ttl_s=lease_ttl_s)
        self._arm_stats = ArmStats(self._sessions)

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

        Appends are written on sessions of a second pool (one session with group commit, up
        to `max_size` without), which plan them with sql.WRITER_SESSION_SETTINGS.
        `server_settings` go to every session (e.g. {"search_path": "tenant_a"}); the NOTIFY
        channel defaults to one per schema (`channel_for`). `owner` names this replica in task
        leases (default: host, pid and a random suffix). Raises StoreUnavailable if the
        server cannot be reached, StoreError if the schema is not migrated.
        """
        settings = dict(server_settings or {})

        async def open_pool(attempt_timeout: float) -> Any:
            return await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                server_settings=settings,
                timeout=attempt_timeout,
                command_timeout=timeout_s,
                reset=keep_session,
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
                row = await connection.fetchrow(sql.SCHEMA_STATE)
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
        # NOTE: opened empty; the first append connects (the group committer then keeps its
        # one session, see committer.py).
        writers = await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=1 if group_commit else max_size,
            server_settings={**sql.WRITER_SESSION_SETTINGS, **settings},
            timeout=connect_timeout_s,
            command_timeout=timeout_s,
            reset=keep_session,
        )
        log.info("postgres_store_opened", target=describe_dsn(dsn), schema=schema)
        return cls(
            pool,
            writers=writers,
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
        return self._follower.channel

    # --- TaskStore -----------------------------------------------------------------------------

    async def create(self, task: pb.Task, fingerprint: str) -> tuple[pb.Task, bool]:
        self._sessions.check_open()
        stored = copy_message(task)
        if not stored.task_id:
            stored.task_id = str(uuid.uuid4())
        elif not is_task_id(stored.task_id):
            raise ValueError(f"task_id {stored.task_id!r} is not a lowercase canonical UUID")
        if not stored.HasField("create_time"):
            stored.create_time.FromNanoseconds(time.time_ns())
        stored.update_time.CopyFrom(stored.create_time)
        stored.state = pb.TASK_STATE_PENDING
        stored.last_seq = 0
        create_time = as_datetime(stored.create_time)

        row = (
            stored.task_id,
            stored.request_id,
            create_time,
            stored.create_time.ToNanoseconds(),
            stored.state,
            stored.SerializeToString(),
            self._leases.owner,
            self._leases.lease_ttl_s,
        )
        with self._sessions.reported("create"):
            async with self._sessions.session() as conn:
                if not stored.request_id:
                    # NOTE: one statement, its own transaction: one round trip.
                    inserted = await conn.fetchval(sql.INSERT_TASK, *row)
                else:
                    async with conn.transaction():
                        claimed = await conn.fetchval(
                            sql.CLAIM_KEY, stored.request_id, fingerprint, stored.task_id
                        )
                        if not claimed:
                            return await self._created_before(conn, stored.request_id, fingerprint)
                        inserted = await conn.fetchval(sql.INSERT_TASK, *row)
                        if not inserted:
                            # NOTE: raising rolls back the idempotency key claimed above too.
                            raise ValueError(f"task {stored.task_id!r} already exists")
                if not inserted:
                    raise ValueError(f"task {stored.task_id!r} already exists")
        log.debug("task_created", task_id=stored.task_id, request_id=stored.request_id)
        self._held.hold(TaskRow(copy_message(stored), False, self._leases.owner))
        return stored, True

    async def append(
        self, task_id: str, events: Sequence[pb.TaskEvent], *, as_owner: bool = False
    ) -> int:
        self._sessions.check_open()
        if not is_task_id(task_id):
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
        request = Append(
            task_id, stamped, asyncio.get_running_loop().create_future(), as_owner=as_owner
        )
        return await self._committer.commit(request)

    async def get(self, task_id: str) -> pb.Task:
        self._sessions.check_open()
        task, _ = await self._read_task(task_id)
        return task

    async def list(
        self, page_size: int, page_token: str, states: Collection[int]
    ) -> tuple[builtins.list[pb.Task], str]:
        self._sessions.check_open()
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1 (got {page_size})")
        args: builtins.list[Any] = [page_size + 1]
        wanted = sorted({int(state) for state in states})
        if wanted:
            args.append(wanted)
        if page_token:
            create_ns, last_id = decode_page_token(page_token)
            if create_ns not in _INT64 or not is_task_id(last_id):
                raise ValueError("malformed page token")
            args += [create_ns, last_id]
        statement = sql.LIST_TASKS[bool(page_token), bool(wanted)]
        with self._sessions.reported("list"):
            rows = await self._sessions.fetch(statement, *args)
        page = [decode_task(row["task_id"], row["body"]) for row in rows[:page_size]]
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
        self._sessions.check_open()
        if after_seq < 0:
            raise ValueError(f"after_seq must be at least 0 (got {after_seq})")
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1 (got {max_events})")
        if not is_task_id(task_id):
            raise TaskNotFound(task_id)
        # NOTE: closing this stream closes the follower's at once (its watcher count drops).
        async with contextlib.aclosing(
            self._follower.watch(task_id, after_seq, max_events)
        ) as batches:
            async for batch in batches:
                yield batch

    async def close(self) -> None:
        if self._sessions.closed:
            return
        self._sessions.closed = True
        self._follower.wake_all()
        await self._committer.close()
        await self._follower.stop()
        await self._sessions.close()
        log.info("postgres_store_closed", channel=self._follower.channel)

    # --- TaskLeases ----------------------------------------------------------------------------

    @property
    def owner(self) -> str:
        return self._leases.owner

    @property
    def lease_ttl_s(self) -> float:
        return self._leases.lease_ttl_s

    async def renew(self) -> set[str]:
        return await self._leases.renew()

    async def claim_expired(self, limit: int) -> builtins.list[pb.Task]:
        return await self._leases.claim_expired(limit)

    async def release(self, task_ids: Collection[str]) -> None:
        await self._leases.release(task_ids)

    # --- ArmHistory ----------------------------------------------------------------------------

    async def add_arm_records(self, records: Sequence[ArmRecord]) -> None:
        await self._arm_stats.add_arm_records(records)

    async def arm_records(self, arm_ids: Collection[str]) -> dict[str, ArmRecord]:
        return await self._arm_stats.arm_records(arm_ids)

    # --- reading -------------------------------------------------------------------------------

    async def _read_task(self, task_id: str) -> tuple[pb.Task, bool]:
        if not is_task_id(task_id):
            raise TaskNotFound(task_id)
        with self._sessions.reported("get"):
            row = await self._sessions.fetchrow(sql.GET_TASK, task_id)
        if row is None:
            raise TaskNotFound(task_id)
        return decode_task(task_id, row["body"]), bool(row["finished"])

    async def _created_before(
        self, conn: Any, request_id: str, fingerprint: str
    ) -> tuple[pb.Task, bool]:
        row = await conn.fetchrow(sql.KNOWN_KEY, request_id)
        if row is None:
            raise StoreError(f"request_id {request_id!r} is claimed but names no task")
        task_id: str = row["task_id"]
        if row["fingerprint"] != fingerprint:
            log.info("idempotency_conflict", request_id=request_id, task_id=task_id)
            raise IdempotencyConflict(request_id, task_id)
        return decode_task(task_id, row["body"]), False
