"""Task state as a projection of its event log: `apply` folds one event into a Task."""

from __future__ import annotations

from octollm.v1 import orchestrator_service_pb2 as pb

TERMINAL_TASK_STATES: frozenset[pb.TaskState.ValueType] = frozenset(
    {
        pb.TASK_STATE_SUCCEEDED,
        pb.TASK_STATE_FAILED,
        pb.TASK_STATE_CANCELLED,
        pb.TASK_STATE_BUDGET_EXCEEDED,
        pb.TASK_STATE_DEADLINE_EXCEEDED,
    }
)

TERMINAL_SUBTASK_STATES: frozenset[pb.SubtaskState.ValueType] = frozenset(
    {
        pb.SUBTASK_STATE_SUCCEEDED,
        pb.SUBTASK_STATE_FAILED,
        pb.SUBTASK_STATE_CANCELLED,
        pb.SUBTASK_STATE_SKIPPED,
    }
)


def subtask_id_for(task_id: str, step_id: str) -> str:
    """The id of the subtask that runs `step_id` of `task_id` (stable across attempts)."""
    return f"{task_id}:{step_id}"


def apply(task: pb.Task, event: pb.TaskEvent, subtask_index: dict[str, int] | None = None) -> None:
    """Fold `event` into `task` in place. Pure: no I/O, no clock.

    `subtask_index` (subtask_id -> position in task.subtasks), when a caller keeps one across
    events of the same task, makes a subtask update O(1) instead of a scan of every subtask.
    """
    kind = event.WhichOneof("kind")
    if kind == "state_changed":
        task.state = event.state_changed.to_state
    elif kind == "plan_created":
        _apply_plan(task, event.plan_created.plan)
        if subtask_index is not None:
            subtask_index.clear()
            subtask_index.update((s.subtask_id, i) for i, s in enumerate(task.subtasks))
    elif kind == "subtask_changed":
        _apply_subtask(task, event.subtask_changed.subtask, subtask_index)
    elif kind == "finished":
        finished = event.finished
        task.state = finished.state
        task.ClearField("result")
        if finished.HasField("result"):
            task.result.CopyFrom(finished.result)
        task.ClearField("failure")
        if finished.HasField("failure"):
            task.failure.CopyFrom(finished.failure)
    # NOTE: subtask_progress only lives in the log; the projection keeps states, not ticks.

    if event.HasField("usage"):
        task.usage.CopyFrom(event.usage)
    task.last_seq = event.seq
    if event.HasField("time"):
        task.update_time.CopyFrom(event.time)


def _apply_plan(task: pb.Task, plan: pb.Plan) -> None:
    task.plan.CopyFrom(plan)
    del task.subtasks[:]
    task.subtasks.extend(
        pb.Subtask(
            subtask_id=subtask_id_for(task.task_id, step.step_id),
            step_id=step.step_id,
            arm_type=step.arm_type,
            state=pb.SUBTASK_STATE_PENDING,
        )
        for step in plan.steps
    )


def _apply_subtask(task: pb.Task, subtask: pb.Subtask, index: dict[str, int] | None) -> None:
    if index is not None:
        position = index.get(subtask.subtask_id)
        if position is None:
            index[subtask.subtask_id] = len(task.subtasks)
            task.subtasks.append(subtask)
        else:
            task.subtasks[position].CopyFrom(subtask)
        return
    for existing in task.subtasks:
        if existing.subtask_id == subtask.subtask_id:
            existing.CopyFrom(subtask)
            return
    task.subtasks.append(subtask)
