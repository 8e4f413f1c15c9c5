"""An arm that fails with a retry-after (cooling down after its LLM failed, rate-limited) is
waited for, or rerouted around, instead of having every retry spent on it at once."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk import Arm, ArmError, SubtaskInput
from orchestrator_svc.engine.recovery import COOLDOWN_WAITS, RecoveryBudget


def cooling(wait_s: float) -> common_pb2.Failure:
    """A retryable LLM_UNAVAILABLE failure asking to wait `wait_s` seconds."""
    failure = common_pb2.Failure(
        code=grpc.StatusCode.UNAVAILABLE.value[0], reason="LLM_UNAVAILABLE", retryable=True
    )
    failure.retry_after.FromNanoseconds(round(wait_s * 1e9))
    return failure


def test_a_cool_down_that_fits_the_time_left_is_waited_out() -> None:
    """With no other arm, the retry waits retry_after, on the same arm, at most COOLDOWN_WAITS."""
    budget = RecoveryBudget()
    retries = [budget.next(cooling(2.5), "a", remaining_s=60) for _ in range(COOLDOWN_WAITS)]
    assert [(r.kind, r.delay_s, r.avoid_arm) for r in retries if r] == [
        ("cooldown", 2.5, "")
    ] * COOLDOWN_WAITS
    assert budget.next(cooling(2.5), "a", remaining_s=60) is None


def test_a_cool_down_longer_than_the_time_left_gives_up_at_once_saying_why() -> None:
    """A wait that does not fit the task's remaining time is not attempted: give up now."""
    budget = RecoveryBudget()
    assert budget.next(cooling(14.8), "a", remaining_s=5) is None
    assert budget.gave_up_because == "the arm asks to wait 14.8s and the task has 5.0s left"


def test_a_cooling_arm_is_rerouted_around_when_another_can_take_the_step() -> None:
    """Another routable arm of the type: reroute at once (no wait), avoiding the cooling one."""
    budget = RecoveryBudget()
    retry = budget.next(cooling(14.8), "a", remaining_s=5, other_arm=True)
    assert retry is not None
    assert (retry.kind, retry.delay_s, retry.avoid_arm) == ("reroute", 0.0, "a")


def cooling_arm(failures: int, wait_s: float, calls: list[int]) -> Arm:
    """An arm whose first `failures` dispatches fail LLM_UNAVAILABLE with a retry-after."""
    arm = Arm(arm_type="llmish")

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        calls.append(inp.attempt)
        if len(calls) <= failures:
            raise ArmError(
                f"the LLM is unavailable (cooling down, {wait_s:.1f}s left)",
                code=grpc.StatusCode.UNAVAILABLE,
                reason="LLM_UNAVAILABLE",
                retryable=True,
                retry_after=wait_s,
            )
        return {"answer": f"done on attempt {inp.attempt}"}

    return arm


async def run_task(orch: Any, connect: Any, max_time_s: int) -> pb.Task:
    """Submit a one-step llmish plan with `max_time_s` and return the finished task."""
    stub = connect(orch.address)
    plan = pb.Plan()
    plan.steps.add(step_id="s", arm_type="llmish")
    request = pb.SubmitTaskRequest(goal="Ride out an LLM cool-down", plan=plan)
    request.budget.max_time.FromSeconds(max_time_s)
    task = (await stub.SubmitTask(request)).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=60):
        pass
    done: pb.Task = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    return done


async def test_the_orchestrator_waits_out_a_cool_down_and_succeeds(
    start_arm: Any, start_orchestrator: Any, connect: Any
) -> None:
    """The arm fails once asking for 0.2 s: the task waits, retries once and SUCCEEDS; the retry
    counts as kind=cooldown, not as transient retries burnt at once."""
    calls: list[int] = []
    server = await start_arm(cooling_arm(1, 0.2, calls))
    orch = await start_orchestrator([server.address], wait_for=("llmish",))
    done = await run_task(orch, connect, 30)
    assert done.state == pb.TASK_STATE_SUCCEEDED, done.failure
    assert calls == [1, 2]
    sample = orch.metrics.registry.get_sample_value
    assert sample("octollm_subtask_retries_total", {"kind": "cooldown"}) == 1
    assert sample("octollm_subtask_retries_total", {"kind": "transient"}) is None


async def test_a_cool_down_past_the_deadline_fails_the_step_with_its_reason_at_once(
    start_arm: Any, start_orchestrator: Any, connect: Any
) -> None:
    """The arm asks for 60 s and the task has 20: one attempt, then FAILED with the arm's reason
    and the wait named, well before the deadline (not DEADLINE_EXCEEDED)."""
    calls: list[int] = []
    server = await start_arm(cooling_arm(99, 60.0, calls))
    orch = await start_orchestrator([server.address], wait_for=("llmish",))
    done = await run_task(orch, connect, 20)
    assert done.state == pb.TASK_STATE_FAILED
    assert done.failure.reason == "LLM_UNAVAILABLE"
    assert "asks to wait 60.0s" in done.failure.message
    assert calls == [1]


async def test_a_cooling_replica_is_rerouted_to_a_healthy_one(
    start_arm: Any, start_orchestrator: Any, connect: Any
) -> None:
    """Two replicas, one cooling down for 60 s: the step moves to the other and SUCCEEDS."""
    cooling_calls: list[int] = []
    healthy_calls: list[int] = []
    cool = await start_arm(cooling_arm(99, 60.0, cooling_calls))
    good = await start_arm(cooling_arm(0, 0.0, healthy_calls))
    orch = await start_orchestrator([cool.address, good.address], wait_for=("llmish",))
    async with asyncio.timeout(10):
        while len([c for c in orch.mesh.arms() if c.routable and c.credits > 0]) < 2:
            await asyncio.sleep(0.01)
    for _ in range(3):
        done = await run_task(orch, connect, 20)
        assert done.state == pb.TASK_STATE_SUCCEEDED, done.failure
        assert done.subtasks[0].arm_id == good.arm_id
    assert len(healthy_calls) == 3
