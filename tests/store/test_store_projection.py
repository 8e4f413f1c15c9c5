"""projection.apply: how each event kind changes a Task."""

from __future__ import annotations

from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.store import TERMINAL_TASK_STATES, apply, subtask_id_for


def _event(seq: int, **kind: object) -> pb.TaskEvent:
    event = pb.TaskEvent(seq=seq, **kind)  # type: ignore[arg-type]
    event.time.FromSeconds(1_700_000_000 + seq)
    return event


def _plan(*step_ids: str) -> pb.Plan:
    return pb.Plan(steps=[pb.PlanStep(step_id=step, arm_type=f"{step}-arm") for step in step_ids])


def test_terminal_states() -> None:
    """Exactly the five end states of the lifecycle are terminal."""
    assert {pb.TaskState.Name(state) for state in TERMINAL_TASK_STATES} == {
        "TASK_STATE_SUCCEEDED",
        "TASK_STATE_FAILED",
        "TASK_STATE_CANCELLED",
        "TASK_STATE_BUDGET_EXCEEDED",
        "TASK_STATE_DEADLINE_EXCEEDED",
    }


def test_state_changed_sets_state_seq_and_time() -> None:
    """state_changed moves the task to to_state and records seq and update_time."""
    task = pb.Task(task_id="t", state=pb.TASK_STATE_PENDING)
    event = _event(
        1,
        state_changed=pb.TaskStateChanged(
            from_state=pb.TASK_STATE_PENDING, to_state=pb.TASK_STATE_PARSING
        ),
    )
    apply(task, event)
    assert task.state == pb.TASK_STATE_PARSING
    assert task.last_seq == 1
    assert task.update_time == event.time


def test_plan_created_replaces_plan_and_subtasks() -> None:
    """plan_created stores the plan and one PENDING subtask per step, dropping older ones."""
    task = pb.Task(task_id="t")
    apply(task, _event(1, plan_created=pb.PlanCreated(plan=_plan("a", "b"))))
    apply(task, _event(2, plan_created=pb.PlanCreated(plan=_plan("c"))))
    assert task.plan == _plan("c")
    assert list(task.subtasks) == [
        pb.Subtask(
            subtask_id=subtask_id_for("t", "c"),
            step_id="c",
            arm_type="c-arm",
            state=pb.SUBTASK_STATE_PENDING,
        )
    ]


def test_subtask_changed_replaces_or_adds() -> None:
    """subtask_changed replaces the subtask with the same id, or adds it when new."""
    task = pb.Task(task_id="t")
    apply(task, _event(1, plan_created=pb.PlanCreated(plan=_plan("a", "b"))))
    done = pb.Subtask(
        subtask_id=subtask_id_for("t", "b"),
        step_id="b",
        state=pb.SUBTASK_STATE_SUCCEEDED,
        confidence=0.8,
    )
    apply(task, _event(2, subtask_changed=pb.SubtaskStateChanged(subtask=done)))
    extra = pb.Subtask(subtask_id="t:repair", step_id="repair", state=pb.SUBTASK_STATE_READY)
    apply(task, _event(3, subtask_changed=pb.SubtaskStateChanged(subtask=extra)))
    assert [subtask.subtask_id for subtask in task.subtasks] == ["t:a", "t:b", "t:repair"]
    assert task.subtasks[0].state == pb.SUBTASK_STATE_PENDING
    assert task.subtasks[1] == done
    assert task.subtasks[2] == extra


def test_subtask_progress_only_moves_seq() -> None:
    """subtask_progress leaves the projection alone apart from last_seq and update_time."""
    task = pb.Task(task_id="t", state=pb.TASK_STATE_EXECUTING)
    apply(task, _event(1, plan_created=pb.PlanCreated(plan=_plan("a"))))
    before = pb.Task()
    before.CopyFrom(task)
    apply(task, _event(2, subtask_progress=pb.SubtaskProgress(subtask_id="t:a", fraction=0.5)))
    assert task.last_seq == 2
    task.last_seq = before.last_seq
    task.update_time.CopyFrom(before.update_time)
    assert task == before


def test_finished_sets_state_result_and_failure() -> None:
    """finished sets the terminal state, the result and the failure (clearing stale ones)."""
    task = pb.Task(task_id="t", failure=common_pb2.Failure(reason="STALE"))
    result = pb.TaskResult(answer="partial", confidence=0.2)
    failure = common_pb2.Failure(code=8, message="out of tokens", reason="BUDGET_EXCEEDED")
    apply(
        task,
        _event(
            1,
            finished=pb.TaskFinished(
                state=pb.TASK_STATE_BUDGET_EXCEEDED, result=result, failure=failure
            ),
        ),
    )
    assert task.state == pb.TASK_STATE_BUDGET_EXCEEDED
    assert task.result == result
    assert task.failure == failure

    succeeded = pb.Task(task_id="u", failure=common_pb2.Failure(reason="STALE"))
    apply(succeeded, _event(1, finished=pb.TaskFinished(state=pb.TASK_STATE_SUCCEEDED)))
    assert not succeeded.HasField("failure")
    assert not succeeded.HasField("result")


def test_usage_is_taken_only_when_set() -> None:
    """An event's usage replaces the task's; an event without usage keeps it."""
    task = pb.Task(task_id="t")
    with_usage = _event(1, subtask_progress=pb.SubtaskProgress())
    with_usage.usage.CopyFrom(common_pb2.Usage(tokens=100, cost_usd=0.01))
    apply(task, with_usage)
    apply(task, _event(2, subtask_progress=pb.SubtaskProgress()))
    assert task.usage == common_pb2.Usage(tokens=100, cost_usd=0.01)


def test_subtask_index_gives_the_same_projection() -> None:
    """Folding with a kept subtask index yields exactly what the index-free fold yields."""
    plan = pb.Plan(plan_id="p")
    for step_id in ("a", "b", "c"):
        plan.steps.add(step_id=step_id, arm_type="echo")
    events = [pb.TaskEvent(seq=1, plan_created=pb.PlanCreated(plan=plan))]
    for seq, (step_id, state) in enumerate(
        [("b", pb.SUBTASK_STATE_RUNNING), ("a", pb.SUBTASK_STATE_SUCCEEDED), ("x", 5)], start=2
    ):
        sub = pb.Subtask(subtask_id=f"t:{step_id}", step_id=step_id, state=state)
        events.append(pb.TaskEvent(seq=seq, subtask_changed=pb.SubtaskStateChanged(subtask=sub)))
    plain, indexed, index = pb.Task(task_id="t"), pb.Task(task_id="t"), {}
    for event in events:
        apply(plain, event)
        apply(indexed, event, index)
    assert plain == indexed
    assert index == {"t:a": 0, "t:b": 1, "t:c": 2, "t:x": 3}
