"""Deadlines that are already past, or pass mid-flight: the task ends DEADLINE_EXCEEDED at once,
no hang, nothing left running at the arm, a consistent history."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk import Arm, SubtaskInput
from orchestrator_svc.arms import REFERENCE_ARMS
from tests.chaos.history import assert_consistent_history, finished_history
from tests.role_arms import scribe

GOAL = "Finish before a deadline that cannot be met"
# NOTE: hang guards on a busy 2-core machine, not speed targets.
WAIT_S = 30.0


def sleep_plan(seconds: float, *step_ids: str) -> pb.Plan:
    plan = pb.Plan()
    previous: list[str] = []
    for step_id in step_ids:
        step = plan.steps.add(step_id=step_id, arm_type="sleep", depends_on=previous)
        step.input.update({"seconds": seconds})
        previous = [step_id]
    return plan


@pytest.mark.parametrize(
    "plan",
    [None, sleep_plan(5, "only"), sleep_plan(5, "first", "second")],
    ids=["brain-planned", "one step", "two steps"],
)
async def test_budget_of_one_nanosecond_ends_deadline_exceeded(
    plan: pb.Plan | None, start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """budget.max_time = 1 ns: DEADLINE_EXCEEDED at once, every subtask settled."""
    sleep = await start_arm(REFERENCE_ARMS["sleep"]())
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    roles = await start_arm(scribe())  # the roles of the brain-planned (general) goal
    orch = await start_orchestrator(
        [sleep.address, echo.address, roles.address], wait_for=("sleep", "echo", "scribe")
    )
    stub = connect(orch.address)
    request = pb.SubmitTaskRequest(goal=GOAL, budget={"max_time": {"nanos": 1}})
    if plan is not None:
        request.plan.CopyFrom(plan)
    task = (await stub.SubmitTask(request)).task
    events, done = await finished_history(stub, task.task_id, timeout_s=WAIT_S)
    assert_consistent_history(events, done)
    assert done.state == pb.TASK_STATE_DEADLINE_EXCEEDED
    assert done.failure.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert done.failure.reason == "TASK_DEADLINE_EXCEEDED"
    assert all(s.state != pb.SUBTASK_STATE_SUCCEEDED for s in done.subtasks)


async def test_deadline_passing_mid_subtask_cancels_it_at_the_arm(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """A deadline passing mid-subtask cancels it at the arm; the task DEADLINE_EXCEEDED."""
    started, cancelled = asyncio.Event(), asyncio.Event()
    arm = Arm(arm_type="slow")

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        started.set()
        try:
            await asyncio.sleep(WAIT_S)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    server = await start_arm(arm)
    orch = await start_orchestrator([server.address], wait_for=("slow",))
    stub = connect(orch.address)
    plan = pb.Plan()
    plan.steps.add(step_id="wait", arm_type="slow")
    plan.steps.add(step_id="after", arm_type="slow", depends_on=["wait"])
    request = pb.SubmitTaskRequest(
        goal=GOAL, plan=plan, budget={"max_time": {"nanos": 300_000_000}}
    )
    task = (await stub.SubmitTask(request)).task
    events, done = await finished_history(stub, task.task_id, timeout_s=WAIT_S)
    assert_consistent_history(events, done)
    assert done.state == pb.TASK_STATE_DEADLINE_EXCEEDED
    assert started.is_set()
    await asyncio.wait_for(cancelled.wait(), WAIT_S)
    states = {s.step_id: s.state for s in done.subtasks}
    assert states == {"wait": pb.SUBTASK_STATE_CANCELLED, "after": pb.SUBTASK_STATE_SKIPPED}
    (conn,) = orch.mesh.arms()
    assert not conn.in_flight
