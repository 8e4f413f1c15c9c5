"""Building task events, and writing them in order with group commit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import structlog
from google.protobuf import timestamp_pb2
from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

from ..store.ports import LeaseLost, StoreError, StoreUnavailable, TaskClosed, TaskStore

log = structlog.get_logger(__name__)

# How long a task keeps retrying its appends while the store is unavailable, before it fails.
STORE_OUTAGE_S = 120.0
# How long an event may wait to share an append with the events after it: events that come
# close together (a fast subtask's dispatch and result, a wave of results) cost one commit and
# one watcher message. `finished` never waits, and flush() sends everything at once.
DEFER_S = 0.005
_RETRY_INITIAL_S = 0.05
_RETRY_MAX_S = 2.0


def stamp_now(timestamp: timestamp_pb2.Timestamp) -> None:
    """Set `timestamp` to now: Timestamp.GetCurrentTime's result without its datetime detour
    (a tenth of the cost, paid on every event)."""
    timestamp.seconds, timestamp.nanos = divmod(time.time_ns(), 1_000_000_000)


def state_changed(
    from_state: pb.TaskState.ValueType, to_state: pb.TaskState.ValueType, reason: str
) -> pb.TaskEvent:
    return pb.TaskEvent(
        state_changed=pb.TaskStateChanged(from_state=from_state, to_state=to_state, reason=reason)
    )


def subtask_changed(subtask: pb.Subtask) -> pb.TaskEvent:
    return pb.TaskEvent(subtask_changed=pb.SubtaskStateChanged(subtask=subtask))


def finished(
    state: pb.TaskState.ValueType,
    result: pb.TaskResult | None = None,
    failure: common_pb2.Failure | None = None,
) -> pb.TaskEvent:
    return pb.TaskEvent(finished=pb.TaskFinished(state=state, result=result, failure=failure))


class TaskEventLog:
    """Appends one task's events in the order they were emitted, batching whatever queued up
    while the previous append was in flight into one store call (group commit).

    `emit` never blocks, so synchronous callbacks (arm progress) can record events; `flush`
    waits until everything emitted so far is in the store: the runner flushes before it acts on
    what the events record (before it dispatches a wave of steps). Until then an event may wait
    up to DEFER_S for the events after it, to go into the store with them, in order; each is
    stamped with the time it was emitted. `finished` is written at once.

    Appends are made as the task's owner. When the store is briefly unavailable (a PostgreSQL
    restart), the batch is retried with backoff for up to `outage_s`; an append whose outcome
    is unknown is checked against the log's last seq first, so no event is written twice. When
    the store refuses the log for good (another replica took the task over, or it was ended
    elsewhere), `on_lost` is called once and every later emit is dropped: the task is no longer
    this replica's to record.
    """

    def __init__(
        self,
        store: TaskStore,
        task_id: str,
        usage: common_pb2.Usage,
        observe: Callable[[pb.TaskEvent], None] | None = None,
        record_append: Callable[[float], None] | None = None,
        *,
        last_seq: int = 0,
        on_lost: Callable[[StoreError], None] | None = None,
        outage_s: float = STORE_OUTAGE_S,
    ) -> None:
        self._store = store
        self._record_append = record_append
        self._observe = observe
        self._task_id = task_id
        self._on_lost = on_lost
        self._outage_s = outage_s
        self.usage = usage
        self.last_seq = last_seq
        self.lost: StoreError | None = None
        self.ended = False  # the `finished` event was emitted
        self._buffer: list[pb.TaskEvent] = []
        self._urgent = False  # the buffer holds an event that must not wait
        self._timer: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None

    def emit(self, event: pb.TaskEvent) -> None:
        if self.lost is not None:
            return
        event.usage.CopyFrom(self.usage)
        if not event.HasField("time"):
            stamp_now(event.time)
        self.ended = self.ended or event.HasField("finished")
        self._buffer.append(event)
        self._urgent = self._urgent or event.HasField("finished")
        if self._observe is not None:
            self._observe(event)
        self._kick()

    async def flush(self) -> None:
        """Wait until every event emitted so far is in the store (deferred ones included)."""
        while True:
            if self._buffer and self.lost is None:
                self._urgent = True
                self._kick()
            if self._writer is None or self._writer.done():
                break
            await asyncio.shield(self._writer)
        if self._writer is not None and not self._writer.cancelled():
            self._writer.result()  # surface a store failure to the task runner

    def _kick(self) -> None:
        """Start the writer when something must be written now, else arm the deferral timer."""
        if self._writer is not None and not self._writer.done():
            return  # it looks at the buffer again when its append is done
        if not self._buffer or self.lost is not None:
            return
        if self._urgent:
            self._cancel_timer()
            self._writer = asyncio.create_task(self._drain(), name=f"events {self._task_id}")
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(DEFER_S, self._due)

    def _due(self) -> None:
        self._timer = None
        self._urgent = True
        self._kick()

    async def _drain(self) -> None:
        while self._buffer and self._urgent and self.lost is None:
            batch: Sequence[pb.TaskEvent] = self._buffer
            self._buffer = []
            self._urgent = False
            started = time.perf_counter()
            await self._append(batch)
            if self._record_append is not None:
                self._record_append(time.perf_counter() - started)
        if self._buffer and self.lost is None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(DEFER_S, self._due)

    async def _append(self, batch: Sequence[pb.TaskEvent]) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._outage_s
        delay = _RETRY_INITIAL_S
        while True:
            try:
                self.last_seq = await self._store.append(self._task_id, batch, as_owner=True)
                return
            except (LeaseLost, TaskClosed) as exc:
                self._lose(exc)
                return
            except StoreUnavailable as exc:
                if loop.time() >= give_up:
                    raise
                log.warning(
                    "task_events_append_retrying",
                    task_id=self._task_id,
                    events=len(batch),
                    error=str(exc),
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)
            if await self._committed(len(batch)):
                return

    async def _committed(self, size: int) -> bool:
        """After an append of unknown outcome: True when the log shows it was committed.

        NOTE: sound because the owner is the log's only writer but for a final `finished`
        (CancelTask elsewhere), after which the retried append is refused anyway.
        """
        try:
            task = await self._store.get(self._task_id)
        except StoreUnavailable:
            return False
        if task.last_seq >= self.last_seq + size:
            self.last_seq = task.last_seq
            return True
        return False

    def stop_recording(self, why: str) -> None:
        """Drop this and every later event: the task is handed to another replica."""
        if self.lost is None:
            self._drop(StoreError(why))

    def _drop(self, why: StoreError) -> None:
        self.lost = why
        self._buffer.clear()
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _lose(self, why: StoreError) -> None:
        self._drop(why)
        log.warning("task_events_refused", task_id=self._task_id, reason=str(why))
        if self._on_lost is not None:
            self._on_lost(why)
