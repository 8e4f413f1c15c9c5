"""Building task events, and writing them in order with group commit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

from ..store.ports import TaskStore


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
    waits until everything emitted so far is in the store.
    """

    def __init__(
        self,
        store: TaskStore,
        task_id: str,
        usage: common_pb2.Usage,
        observe: Callable[[pb.TaskEvent], None] | None = None,
        record_append: Callable[[float], None] | None = None,
    ) -> None:
        self._store = store
        self._record_append = record_append
        self._observe = observe
        self._task_id = task_id
        self.usage = usage
        self._buffer: list[pb.TaskEvent] = []
        self._writer: asyncio.Task[None] | None = None

    def emit(self, event: pb.TaskEvent) -> None:
        event.usage.CopyFrom(self.usage)
        self._buffer.append(event)
        if self._observe is not None:
            self._observe(event)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name=f"events {self._task_id}")

    async def flush(self) -> None:
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
        if self._writer is not None and self._writer.done() and not self._writer.cancelled():
            self._writer.result()  # surface a store failure to the task runner

    async def _drain(self) -> None:
        while self._buffer:
            batch: Sequence[pb.TaskEvent] = self._buffer
            self._buffer = []
            started = time.perf_counter()
            await self._store.append(self._task_id, batch)
            if self._record_append is not None:
                self._record_append(time.perf_counter() - started)
