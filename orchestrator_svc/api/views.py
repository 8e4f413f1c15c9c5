"""Task views (AIP-157): BASIC leaves the step outputs out; FULL must fit in one response.

Step outputs are most of a large task, and a wide DAG whose steps pass their inputs on can
outgrow the 16 MiB a response may carry. A FULL read of such a task fails RESOURCE_EXHAUSTED
(TASK_TOO_LARGE, EVENT_TOO_LARGE) with its size, the limit and what to do instead, rather than
a bare transport error the client cannot act on; a BASIC read always fits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk.grpc_options import MAX_MESSAGE_BYTES

from ..store.shared import copy_message
from .errors import ApiError

# NOTE: room for the response's own framing around the task (a GetTaskResponse adds a few
# bytes, a ListTasksResponse a few per task and the page token).
RESPONSE_BUDGET_BYTES = MAX_MESSAGE_BYTES - 64 * 1024
BASIC = pb.TASK_VIEW_BASIC
FULL = pb.TASK_VIEW_FULL


def basic_task(task: pb.Task) -> pb.Task:
    """`task` without step outputs, cleared in place: it is the caller's own copy, as the
    store's get() and list() return them."""
    for sub in task.subtasks:
        sub.ClearField("output")
    if task.HasField("result"):
        task.result.ClearField("outputs")
    return task


def basic_event(event: pb.TaskEvent) -> pb.TaskEvent:
    """`event` without the step outputs it carries, if any."""
    kind = event.WhichOneof("kind")
    if kind == "subtask_changed" and event.subtask_changed.subtask.HasField("output"):
        view = copy_message(event)
        view.subtask_changed.subtask.ClearField("output")
        return view
    if kind == "finished" and event.finished.result.HasField("outputs"):
        view = copy_message(event)
        view.finished.result.ClearField("outputs")
        return view
    return event


def task_too_large(task: pb.Task, size: int) -> ApiError:
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"task {task.task_id} is {size} bytes with its step outputs, more than the "
        f"{RESPONSE_BUDGET_BYTES} one response may carry: read it with view TASK_VIEW_BASIC, "
        "and the step outputs one event at a time with WatchTask",
        reason="TASK_TOO_LARGE",
        metadata={
            "task_id": task.task_id,
            "size_bytes": str(size),
            "limit_bytes": str(RESPONSE_BUDGET_BYTES),
        },
    )


def full_task(task: pb.Task) -> pb.Task:
    """`task` as it is; ApiError TASK_TOO_LARGE when it does not fit in one response."""
    size = task.ByteSize()
    if size > RESPONSE_BUDGET_BYTES:
        raise task_too_large(task, size)
    return task


def task_view(task: pb.Task, view: pb.TaskView.ValueType) -> pb.Task:
    return basic_task(task) if view == BASIC else full_task(task)


def page_that_fits(tasks: Sequence[pb.Task]) -> int:
    """How many of `tasks` (FULL) fit in one ListTasksResponse; ApiError TASK_TOO_LARGE when
    not even the first does."""
    total = 0
    for count, task in enumerate(tasks):
        size = task.ByteSize()
        total += size + 8  # the field's tag and length
        if total > RESPONSE_BUDGET_BYTES:
            if count == 0:
                raise task_too_large(task, size)
            return count
    return len(tasks)


def events_in_view(
    events: Sequence[pb.TaskEvent], view: pb.TaskView.ValueType
) -> Iterator[pb.TaskEvent]:
    """`events` in `view`; in FULL, ApiError EVENT_TOO_LARGE at one that would not fit."""
    for event in events:
        if view == BASIC:
            yield basic_event(event)
            continue
        size = event.ByteSize()
        if size > RESPONSE_BUDGET_BYTES:
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"event {event.seq} of task {event.task_id} is {size} bytes with the step "
                f"outputs it carries, more than the {RESPONSE_BUDGET_BYTES} one response may "
                f"carry: watch on from after_seq {event.seq - 1} with view TASK_VIEW_BASIC",
                reason="EVENT_TOO_LARGE",
                metadata={
                    "task_id": event.task_id,
                    "seq": str(event.seq),
                    "size_bytes": str(size),
                    "limit_bytes": str(RESPONSE_BUDGET_BYTES),
                },
            )
        yield event
