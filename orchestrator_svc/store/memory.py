"""In-process TaskStore: the embedded default, and the reference the Postgres adapter matches."""

from __future__ import annotations

import asyncio
import bisect
import builtins
import collections
import time
import uuid
from collections.abc import AsyncIterator, Collection, Sequence

import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.store.ports import (
    IdempotencyConflict,
    StoreClosed,
    TaskClosed,
    TaskNotFound,
    TaskStore,
)
from orchestrator_svc.store.projection import apply
from orchestrator_svc.store.shared import (
    OrderKey,
    check_batch,
    copy_message,
    decode_page_token,
    encode_page_token,
    event_batches,
    order_key,
)

log = structlog.get_logger(__name__)

# (create_time in ns, task_id): the list order key, compared as a tuple.


class _TaskLog:
    """One task: its projection, its append-only events, and a wake-up for watchers."""

    __slots__ = ("_grown", "events", "subtask_index", "task")

    def __init__(self, task: pb.Task) -> None:
        self.task = task
        self.events: list[pb.TaskEvent] = []
        self.subtask_index: dict[str, int] = {}
        self._grown = asyncio.Event()

    @property
    def finished(self) -> bool:
        return bool(self.events) and self.events[-1].HasField("finished")

    def grown(self) -> asyncio.Event:
        """The event set on the next append (take it BEFORE checking for new entries)."""
        return self._grown

    def publish(self) -> None:
        # NOTE: swap-then-set instead of Condition.notify_all: append never awaits a lock
        # that a watcher might hold, so no watcher can slow a writer down.
        grown, self._grown = self._grown, asyncio.Event()
        grown.set()


DEFAULT_RETAIN_FINISHED = 10_000


class InMemoryTaskStore(TaskStore):
    """TaskStore kept in this process's memory; lost on exit.

    Memory stays bounded: past `retain_finished` finished tasks, the one that finished first
    is forgotten (its events, its projection and its idempotency key). Unfinished tasks are
    never forgotten, and a watcher already following a forgotten task still reads it to the end.

    Every method mutates state without awaiting in between, so each call is atomic on the
    event loop. Not thread-safe: use it from one event loop.
    """

    def __init__(self, retain_finished: int = DEFAULT_RETAIN_FINISHED) -> None:
        if retain_finished < 1:
            raise ValueError(f"retain_finished must be at least 1 (got {retain_finished})")
        self._logs: dict[str, _TaskLog] = {}
        self._order: list[OrderKey] = []
        self._idempotency: dict[str, tuple[str, str]] = {}  # request_id -> (fingerprint, task_id)
        self._retain_finished = retain_finished
        self._finished: collections.deque[str] = collections.deque()  # task ids, oldest first
        self._closed = False

    async def create(self, task: pb.Task, fingerprint: str) -> tuple[pb.Task, bool]:
        self._check_open()
        if task.request_id and task.request_id in self._idempotency:
            known_fingerprint, task_id = self._idempotency[task.request_id]
            if known_fingerprint != fingerprint:
                log.info("idempotency_conflict", request_id=task.request_id, task_id=task_id)
                raise IdempotencyConflict(task.request_id, task_id)
            return copy_message(self._logs[task_id].task), False

        stored = copy_message(task)
        if not stored.task_id:
            stored.task_id = str(uuid.uuid4())
        if stored.task_id in self._logs:
            raise ValueError(f"task {stored.task_id!r} already exists")
        if not stored.HasField("create_time"):
            stored.create_time.FromNanoseconds(time.time_ns())
        stored.update_time.CopyFrom(stored.create_time)
        stored.state = pb.TASK_STATE_PENDING
        stored.last_seq = 0

        self._logs[stored.task_id] = _TaskLog(stored)
        bisect.insort(self._order, order_key(stored))
        if stored.request_id:
            self._idempotency[stored.request_id] = (fingerprint, stored.task_id)
        log.debug("task_created", task_id=stored.task_id, request_id=stored.request_id)
        return copy_message(stored), True

    async def append(
        self, task_id: str, events: Sequence[pb.TaskEvent], *, as_owner: bool = False
    ) -> int:
        # NOTE: one process, one owner: there is no other replica to fence off.
        self._check_open()
        task_log = self._log(task_id)
        if task_log.finished:
            raise TaskClosed(task_id)
        check_batch(task_id, events)

        now = Timestamp()
        now.FromNanoseconds(time.time_ns())
        for event in events:
            stored = copy_message(event)
            stored.seq = task_log.task.last_seq + 1
            stored.task_id = task_id
            if not stored.HasField("time"):
                stored.time.CopyFrom(now)
            apply(task_log.task, stored, task_log.subtask_index)
            task_log.events.append(stored)

        if events:
            task_log.publish()
            if task_log.finished:
                log.debug("task_log_closed", task_id=task_id, last_seq=task_log.task.last_seq)
                self._finished.append(task_id)
                while len(self._finished) > self._retain_finished:
                    self._forget(self._finished.popleft())
        return task_log.task.last_seq

    def _forget(self, task_id: str) -> None:
        task = self._logs.pop(task_id).task
        key = order_key(task)
        index = bisect.bisect_left(self._order, key)
        if index < len(self._order) and self._order[index] == key:
            del self._order[index]
        if task.request_id and self._idempotency.get(task.request_id, ("", ""))[1] == task_id:
            del self._idempotency[task.request_id]
        log.debug("task_forgotten", task_id=task_id, retained=self._retain_finished)

    async def get(self, task_id: str) -> pb.Task:
        self._check_open()
        return copy_message(self._log(task_id).task)

    async def list(
        self, page_size: int, page_token: str, states: Collection[int]
    ) -> tuple[builtins.list[pb.Task], str]:
        self._check_open()
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1 (got {page_size})")
        wanted = frozenset(states)
        if page_token:
            end = bisect.bisect_left(self._order, decode_page_token(page_token))
        else:
            end = len(self._order)

        page: builtins.list[pb.Task] = []
        for index in range(end - 1, -1, -1):
            task = self._logs[self._order[index][1]].task
            if wanted and task.state not in wanted:
                continue
            if len(page) == page_size:
                # NOTE: one more match exists, so there is a next page; the token points
                # at the last task returned, not at this one.
                return page, encode_page_token(order_key(page[-1]))
            page.append(copy_message(task))
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
        task_log = self._log(task_id)
        # seq n is stored at events[n - 1], so the next event to yield is events[after_seq].
        index = after_seq
        while True:
            grown = task_log.grown()
            if index < len(task_log.events):
                available = task_log.events[index:]
                for batch in event_batches(map(copy_message, available), max_events):
                    index += len(batch)
                    yield batch
                    if batch[-1].HasField("finished"):
                        return
            elif task_log.finished:
                return
            else:
                await grown.wait()
                self._check_open()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task_log in self._logs.values():
            task_log.publish()

    def _log(self, task_id: str) -> _TaskLog:
        try:
            return self._logs[task_id]
        except KeyError:
            raise TaskNotFound(task_id) from None

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()
