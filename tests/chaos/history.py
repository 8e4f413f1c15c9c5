"""What a task's history must look like after any fault: the checks every chaos test shares.

    from tests.chaos.history import assert_consistent_history, finished_history

    events, task = await finished_history(stub, task_id)   # WatchTask to the end, then GetTask
    assert_consistent_history(events, task)

`assert_consistent_history(events, task)` takes the full event log of one task (as WatchTask
replays it from seq 0) and the task as GetTask returns it, and fails with a message naming the
first broken invariant:

- the log is numbered 1, 2, 3, ... with no gap or repeat, and every event is of this task;
- exactly one `finished` event, the last one, with a terminal state; GetTask agrees with it
  (state, failure, result, usage, last_seq); a failed task says why (failure.reason);
- state changes chain (each from_state is the previous to_state, starting at PENDING) and
  none of them is terminal (only `finished` ends a task);
- every subtask event names a step of the plan and the subtask id `<task_id>:<step_id>`;
- per subtask, an attempt chain runs READY/DISPATCHED/RUNNING to exactly one terminal event;
  a later chain (a repair re-running the step) starts only after a REPAIRING transition and
  with a higher attempt, and attempts never go down: so no result is applied twice;
- progress is only reported for a subtask that is running (not after its terminal event);
- the GetTask projection holds each subtask as its last event left it; with
  `settled_subtasks=True` (the default) every subtask of a finished task is terminal, and a
  SUCCEEDED task has every step SUCCEEDED with its output in result.outputs: no result lost.

Pass `settled_subtasks=False` for a task finished by someone other than its runner (e.g. a
CancelTask on another replica after its runner died), whose subtasks keep their last state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from orchestrator_svc.store.projection import (
    TERMINAL_SUBTASK_STATES,
    TERMINAL_TASK_STATES,
    subtask_id_for,
)

__all__ = ["assert_consistent_history", "finished_history", "watch_until_finished"]


async def watch_until_finished(
    stub: pb_grpc.OrchestratorServiceStub,
    task_id: str,
    *,
    timeout_s: float = 60.0,
    view: pb.TaskView.ValueType = pb.TASK_VIEW_UNSPECIFIED,
) -> list[pb.TaskEvent]:
    """Every event of the task from seq 1 until its `finished` event (WatchTask from 0)."""
    request = pb.WatchTaskRequest(task_id=task_id, view=view)
    call = stub.WatchTask(request, timeout=timeout_s)
    events: list[pb.TaskEvent] = []
    async for response in call:
        events.append(response.event)
        if response.event.HasField("finished"):
            call.cancel()
            break
    return events


async def finished_history(
    stub: pb_grpc.OrchestratorServiceStub, task_id: str, *, timeout_s: float = 60.0
) -> tuple[list[pb.TaskEvent], pb.Task]:
    """(full event log, task from GetTask) once the task has finished."""
    events = await watch_until_finished(stub, task_id, timeout_s=timeout_s)
    task = (await stub.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=timeout_s)).task
    return events, task


def _name(state: int, enum: EnumTypeWrapper = pb.TaskState) -> str:
    """The enum value's name, or the number for a value the enum does not know."""
    try:
        return str(enum.Name(state))
    except ValueError:
        return str(state)


M = TypeVar("M", pb.TaskResult, pb.Subtask)


def _viewed(message: M, basic: bool) -> M:
    """`message` as a TASK_VIEW_BASIC read shows it (no step outputs) when `basic`."""
    if not basic:
        return message
    view = type(message)()
    view.CopyFrom(message)
    view.ClearField("outputs" if isinstance(view, pb.TaskResult) else "output")
    return view


def assert_consistent_history(
    events: Sequence[pb.TaskEvent],
    task: pb.Task,
    *,
    settled_subtasks: bool = True,
    basic: bool = False,
) -> None:
    """Fail unless `events` (the whole log) and `task` (GetTask) obey the invariants above.
    `basic`: `task` was read with TASK_VIEW_BASIC, so it is compared without step outputs."""
    task_id = task.task_id
    assert events, f"task {task_id} has no events"
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1)), f"seq not 1..n without gaps: {seqs}"
    strangers = [e.seq for e in events if e.task_id and e.task_id != task_id]
    assert not strangers, f"events {strangers} belong to another task"

    finished = [e.seq for e in events if e.HasField("finished")]
    assert finished == [events[-1].seq], f"finished events at seq {finished}, want only the last"
    end = events[-1].finished
    assert end.state in TERMINAL_TASK_STATES, f"finished with non-terminal {_name(end.state)}"
    assert task.state == end.state, f"GetTask {_name(task.state)} != log {_name(end.state)}"
    assert task.last_seq == events[-1].seq, f"last_seq {task.last_seq} != {events[-1].seq}"
    if end.state == pb.TASK_STATE_SUCCEEDED:
        assert not end.HasField("failure"), f"a SUCCEEDED task carries a failure: {end.failure}"
    else:
        assert end.failure.reason, f"{_name(end.state)} without a failure reason"
    assert task.failure == end.failure, "GetTask failure differs from the finished event"
    assert task.result == _viewed(end.result, basic), "GetTask result differs from the log"
    assert task.usage == events[-1].usage, "GetTask usage differs from the last event"

    state: int = pb.TASK_STATE_PENDING
    tokens, cost = 0, 0.0
    for e in events:
        assert e.usage.tokens >= tokens, f"seq {e.seq}: usage.tokens went down"
        assert e.usage.cost_usd >= cost - 1e-12, f"seq {e.seq}: usage.cost_usd went down"
        tokens, cost = e.usage.tokens, e.usage.cost_usd
        if e.HasField("state_changed"):
            change = e.state_changed
            assert change.from_state == state, (
                f"seq {e.seq}: from {_name(change.from_state)}, but the task was {_name(state)}"
            )
            assert change.to_state not in TERMINAL_TASK_STATES, (
                f"seq {e.seq}: terminal {_name(change.to_state)} by state_changed, not finished"
            )
            state = change.to_state

    plans = [e.plan_created.plan for e in events if e.HasField("plan_created")]
    step_ids = {s.step_id for plan in plans for s in plan.steps}
    last: dict[str, pb.Subtask] = {}
    may_restart: set[str] = set()  # terminal subtasks a repair round may run again
    for e in events:
        if e.state_changed.to_state == pb.TASK_STATE_REPAIRING:
            may_restart = {i for i, s in last.items() if s.state in TERMINAL_SUBTASK_STATES}
        if e.HasField("subtask_progress"):
            progress = e.subtask_progress
            assert progress.subtask_id == subtask_id_for(task_id, progress.step_id), (
                f"seq {e.seq}: progress for {progress.subtask_id!r} of step {progress.step_id!r}"
            )
            before = last.get(progress.subtask_id)
            assert before is not None, f"seq {e.seq}: progress for {progress.step_id} before it ran"
            assert before.state not in TERMINAL_SUBTASK_STATES, (
                f"seq {e.seq}: progress for {progress.step_id} after it ended"
            )
        if not e.HasField("subtask_changed"):
            continue
        sub = e.subtask_changed.subtask
        where = f"seq {e.seq} (step {sub.step_id!r}, {_name(sub.state, pb.SubtaskState)})"
        assert sub.step_id in step_ids, f"{where}: not a step of any plan"
        assert sub.subtask_id == subtask_id_for(task_id, sub.step_id), f"{where}: bad subtask_id"
        before = last.get(sub.subtask_id)
        if before is not None and before.state in TERMINAL_SUBTASK_STATES:
            assert sub.subtask_id in may_restart, (
                f"{where}: an event after its terminal "
                f"{_name(before.state, pb.SubtaskState)} with no repair in between"
            )
            may_restart.discard(sub.subtask_id)
            assert sub.attempt > before.attempt, (
                f"{where}: a repair must use a new attempt (was {before.attempt}, "
                f"now {sub.attempt})"
            )
        elif before is not None:
            assert sub.attempt >= before.attempt, (
                f"{where}: attempt went down from {before.attempt} to {sub.attempt}"
            )
        last[sub.subtask_id] = sub

    projected = {s.subtask_id: s for s in task.subtasks}
    for subtask_id, sub in last.items():
        assert projected.get(subtask_id) == _viewed(sub, basic), (
            f"GetTask holds {projected.get(subtask_id)} for {subtask_id}, the log ends with {sub}"
        )
    if plans:
        assert {s.step_id for s in task.subtasks} == {s.step_id for s in plans[-1].steps}, (
            "GetTask subtasks are not the steps of the last plan"
        )
    if not settled_subtasks:
        return
    unsettled = [
        f"{s.step_id}={_name(s.state, pb.SubtaskState)}"
        for s in task.subtasks
        if s.state not in TERMINAL_SUBTASK_STATES
    ]
    assert not unsettled, f"{_name(end.state)} task with unfinished subtasks: {unsettled}"
    if end.state == pb.TASK_STATE_SUCCEEDED:
        failed = [s.step_id for s in task.subtasks if s.state != pb.SUBTASK_STATE_SUCCEEDED]
        assert not failed, f"SUCCEEDED task with steps that did not succeed: {failed}"
        missing = {s.step_id for s in task.subtasks} - set(end.result.outputs.fields)
        assert not missing, f"SUCCEEDED task lost the outputs of {sorted(missing)}"
