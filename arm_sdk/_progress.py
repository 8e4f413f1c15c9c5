"""Progress reporting from inside a handler, without threading a stream object through it."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol


class ProgressSink(Protocol):
    """Where a running subtask's progress goes (its Execute stream)."""

    def progress(self, subtask_id: str, fraction: float, message: str) -> None: ...


# NOTE: set at the start of each handler's own asyncio task, so concurrent subtasks on one
# stream never see each other's value.
current_subtask: ContextVar[tuple[ProgressSink, str] | None] = ContextVar(
    "arm_sdk_current_subtask", default=None
)


async def report_progress(fraction: float, message: str = "") -> None:
    """Send ``Progress{fraction, message}`` for the subtask whose handler is running.

    ``fraction`` is clamped to 0.0-1.0. Outside a handler (e.g. when a handler is unit-tested by
    calling it directly) this is a no-op, so handlers stay plain async functions.
    """
    current = current_subtask.get()
    if current is None:
        return
    sink, subtask_id = current
    clamped = 0.0 if not fraction > 0.0 else min(float(fraction), 1.0)
    sink.progress(subtask_id, clamped, message)
