"""Committing appends: events numbered, projected, inserted and announced in one transaction.

An append returns only after COMMIT. Group commit: appends that arrive while a commit is in
flight go into the next transaction together, in arrival order (so appends to one task keep
their order). Without it, one append per task at a time, in call order.

Two ways to write: an append to a held task (one this store runs, see held.py) is one
statement checking that the row is where the held projection says; any other append, and one
whose row another writer moved on, locks the rows (SELECT ... FOR UPDATE) in a transaction.
Both store the new projection and NOTIFY the task's new last seq.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import structlog
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.store.ports import (
    LeaseLost,
    StoreClosed,
    StoreError,
    TaskClosed,
    TaskNotFound,
)
from orchestrator_svc.store.postgres import sql
from orchestrator_svc.store.postgres.follower import Follower
from orchestrator_svc.store.postgres.held import HeldProjections, TaskRow
from orchestrator_svc.store.postgres.rows import CorruptRecord, as_datetime, decode_task
from orchestrator_svc.store.postgres.sessions import (
    BROKEN_SESSION_ERRORS,
    TRANSIENT_ERRORS,
    Sessions,
    close_pool,
    lost,
    pooled_session,
)

log = structlog.get_logger(__name__)

_MAX_BATCH_APPENDS = 512
_MAX_BATCH_EVENTS = 4096


@dataclass(eq=False)
class Append:
    """One append() call waiting for its transaction: stamped copies of its events."""

    task_id: str
    events: list[pb.TaskEvent]
    done: asyncio.Future[int]
    as_owner: bool = False


class Committer:
    """Commits appends on the writer sessions (`writers`, a pool of sessions that have
    PostgreSQL plan the append statements with sql.WRITER_SESSION_SETTINGS), grouped or one
    by one; close() closes the pool."""

    def __init__(
        self,
        sessions: Sessions,
        writers: Any,
        held: HeldProjections,
        follower: Follower,
        *,
        group_commit: bool,
        owner: str,
        lease_ttl_s: float,
    ) -> None:
        self._sessions = sessions
        self._writers = writers
        self._held = held
        self._follower = follower
        self._group_commit = group_commit
        self._owner = owner
        self._lease_ttl_s = lease_ttl_s
        # group commit
        self._queue: deque[Append] = deque()
        self._queued = asyncio.Event()
        self._group_task: asyncio.Task[None] | None = None
        self._writer_conn: Any = None  # the group committer's own writer session
        # without group commit: one append per task at a time, in call order
        self._task_locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def commit(self, request: Append) -> int:
        """The new last seq of the task once `request` is committed (or its StoreError)."""
        if self._group_commit:
            self._queue.append(request)
            self._queued.set()
            if self._group_task is None or self._group_task.done():
                self._group_task = asyncio.create_task(
                    self._commit_forever(), name="octollm-postgres-group-commit"
                )
        else:
            async with self._one_append_per_task(request.task_id):
                await self._commit([request])
        return await request.done

    async def close(self) -> None:
        """Commit (or fail) the appends accepted so far, then fail what is left StoreClosed;
        call once the sessions are marked closed."""
        self._queued.set()
        if self._group_task is not None:
            # NOTE: accepted appends are committed (or fail) before the pool goes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._group_task), self._sessions.timeout_s)
            self._group_task.cancel()
            await asyncio.gather(self._group_task, return_exceptions=True)
        await self._give_back_writer_conn()
        while self._queue:
            _settle(self._queue.popleft(), StoreClosed())
        await close_pool(self._writers, timeout_s=self._sessions.timeout_s)

    async def _commit_forever(self) -> None:
        """Commit queued appends, each transaction taking all that queued up meanwhile."""
        while self._queue or not self._sessions.closed:
            if not self._queue:
                await self._queued.wait()
                self._queued.clear()
                continue
            batch: list[Append] = []
            events = 0
            while self._queue and len(batch) < _MAX_BATCH_APPENDS:
                if batch and events + len(self._queue[0].events) > _MAX_BATCH_EVENTS:
                    break
                request = self._queue.popleft()
                batch.append(request)
                events += len(request.events)
            await self._commit(batch)

    async def _commit(self, batch: list[Append]) -> None:
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
                and not self._sessions.closed
            ):
                # NOTE: one bad append must not fail its neighbours: retry them one by one.
                log.warning("group_commit_split", size=len(batch), error=str(exc))
                for request in batch:
                    await self._commit([request])
                return
            error = self._sessions.store_error(exc, "append")
            for request in batch:
                _settle(request, error)
            return
        # NOTE: callers first, then watchers: the runner's next dispatch waits on this commit,
        # so it runs before the watch streams send what was committed (as with the in-process
        # store, whose append returns before any watcher runs).
        for request, result in zip(batch, results, strict=True):
            _settle(request, result)
        for request, result in zip(batch, results, strict=True):
            if isinstance(result, int):
                self._follower.committed(request.task_id, request.events)
        for task_id, last_seq in changed.items():
            self._follower.advance(task_id, last_seq)

    async def _write_all(
        self, batch: list[Append]
    ) -> tuple[list[int | StoreError], dict[str, int]]:
        """Write a batch: held tasks in one statement, the rest (and any held task that
        another writer changed meanwhile) through the locking transaction."""
        done: dict[Append, int | StoreError] = {}
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
        self, batch: list[Append]
    ) -> tuple[dict[Append, int | StoreError], dict[str, int]]:
        """The appends of `batch` to held tasks, in one statement; (their results, the new
        last_seq of each task written). Requests left out of the results (a task not held,
        or one whose row moved on without this store) go through _write."""
        pending: dict[str, list[tuple[Append, int | StoreError]]] = {}
        fenced: dict[str, bool] = {}
        prior: dict[str, int] = {}
        appended: list[pb.TaskEvent] = []
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
                    sql.WRITE_HELD_APPENDS,
                    *_append_args(appended, written),
                    self._follower.channel,
                    [prior[task_id] for task_id in written],
                    [fenced[task_id] for task_id in written],
                    self._owner,
                    self._lease_ttl_s,
                )
        except BaseException:
            # NOTE: the held projections already took these events: forget them (the row is
            # re-read by the next append), whatever the outcome in the database was.
            for task_id in written:
                self._held.unhold(task_id)
            raise
        updated = {row["task_id"] for row in rows}
        done: dict[Append, int | StoreError] = {}
        changed: dict[str, int] = {}
        for task_id, held in written.items():
            if task_id not in updated:
                # Another writer got in (a cancel through another replica, a takeover):
                # the locking path decides what these appends get.
                self._held.unhold(task_id)
                continue
            done.update(pending[task_id])
            changed[task_id] = held.task.last_seq
            self._held.hold(held)
        return done, changed

    async def _write(self, batch: list[Append]) -> tuple[list[int | StoreError], dict[str, int]]:
        """One transaction: lock the rows, project, insert events, update rows, notify."""
        task_ids = list(dict.fromkeys(request.task_id for request in batch))
        results: list[int | StoreError] = []
        async with self._writer_session() as conn, conn.transaction():
            locked: dict[str, TaskRow | CorruptRecord] = {}
            for row in await conn.fetch(sql.LOCK_TASKS, task_ids):
                try:
                    locked[row["task_id"]] = TaskRow(
                        decode_task(row["task_id"], row["body"]),
                        row["finished"],
                        row["lease_owner"],
                    )
                except CorruptRecord as exc:
                    log.error("corrupt_task_row", task_id=row["task_id"], error=str(exc))
                    locked[row["task_id"]] = exc

            appended: list[pb.TaskEvent] = []
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
                if isinstance(held, TaskRow) and held.changed
            }
            if changed:
                await conn.execute(
                    sql.WRITE_APPENDS,
                    *_append_args(appended, changed),
                    self._follower.channel,
                    [f"{held.task.task_id}:{held.task.last_seq}" for held in changed.values()],
                    [owned.get(task_id, False) for task_id in changed],
                    self._owner,
                    self._lease_ttl_s,
                )
        for held in changed.values():
            if held.lease_owner == self._owner:
                self._held.hold(held)
            else:
                self._held.unhold(held.task.task_id)
        return results, {task_id: held.task.last_seq for task_id, held in changed.items()}

    @contextlib.asynccontextmanager
    async def _writer_session(self) -> AsyncIterator[Any]:
        """The connection an append commits on. The group committer keeps one pooled
        connection for as long as it works (a commit pays no pool acquire and release); one
        that fails or is interrupted goes back to the pool, which drops or resets it, and the
        next commit takes another."""
        if not self._group_commit:
            async with pooled_session(self._writers, self._sessions.timeout_s) as conn:
                yield conn
            return
        if self._writer_conn is not None and lost(self._writer_conn):
            # NOTE: the server ended the session while it sat idle (asyncpg has already given
            # it back to the pool): nothing was sent on it, so take another.
            self._writer_conn = None
        if self._writer_conn is None:
            self._writer_conn = await self._writers.acquire(timeout=self._sessions.timeout_s)
        conn = self._writer_conn
        try:
            yield conn
        except BaseException as exc:
            broken = isinstance(exc, BROKEN_SESSION_ERRORS)
            # NOTE: a statement the server refused leaves the connection fine: keep it.
            if broken or not isinstance(exc, asyncpg.PostgresError):
                await self._give_back_writer_conn(terminate=broken)
            raise

    async def _give_back_writer_conn(self, *, terminate: bool = False) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is None:
            return
        if terminate:
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
        with contextlib.suppress(Exception):
            await self._writers.release(conn, timeout=self._sessions.timeout_s)

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


def _append_args(events: Sequence[pb.TaskEvent], projections: dict[str, TaskRow]) -> list[Any]:
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
        [as_datetime(task.update_time) for task in tasks],
    ]


def _settle(request: Append, outcome: int | BaseException) -> None:
    if request.done.done():
        return  # the caller gave up (cancelled); the outcome stands in the database regardless
    if isinstance(outcome, BaseException):
        request.done.set_exception(outcome)
    else:
        request.done.set_result(outcome)
