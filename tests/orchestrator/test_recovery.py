"""The recovery table, as a pure policy and through real arms."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk import Arm, ArmError, SubtaskInput
from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.engine.recovery import RecoveryBudget


def failure(code: grpc.StatusCode, reason: str, retryable: bool = True) -> common_pb2.Failure:
    return common_pb2.Failure(code=code.value[0], reason=reason, retryable=retryable)


def test_timeouts_retry_twice_with_longer_deadlines() -> None:
    """DEADLINE_EXCEEDED: two retries, deadlines x1.5 then x2.25, away from the arm that timed
    out (when the type has another), then give up."""
    budget = RecoveryBudget()
    timeout = failure(grpc.StatusCode.DEADLINE_EXCEEDED, "SUBTASK_TIMEOUT")
    first, second = budget.next(timeout, "a"), budget.next(timeout, "a")
    assert first is not None
    assert second is not None
    assert (first.kind, first.timeout_factor, first.avoid_arm) == ("timeout", 1.5, "a")
    assert second.timeout_factor == 2.25
    assert budget.next(timeout, "a") is None


def test_timeout_factors_are_relative_to_the_base_timeout() -> None:
    """Each retry's factor applies to the base subtask timeout and counts the timeouts so far:
    a transient retry after one timeout keeps the 1.5x deadline, a reroute too."""
    budget = RecoveryBudget()
    timeout = failure(grpc.StatusCode.DEADLINE_EXCEEDED, "SUBTASK_TIMEOUT")
    after_timeout = budget.next(timeout, "a")
    transient = budget.next(failure(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_BUSY"), "a")
    reroute = budget.next(failure(grpc.StatusCode.UNAVAILABLE, "ARM_LOST"), "a")
    second_timeout = budget.next(timeout, "a")
    assert [r.timeout_factor if r else None for r in (after_timeout, transient, reroute)] == [
        1.5
    ] * 3
    assert second_timeout is not None
    assert second_timeout.timeout_factor == 2.25


async def test_each_retry_deadline_grows_from_the_base_timeout(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """Two timeouts, then success: the attempts get 1x, 1.5x and 2.25x the base subtask
    timeout (not 1.5 x 2.25 = 3.375x, as when the factors compounded)."""
    base = 0.4
    timeouts: list[float] = []
    arm = Arm(arm_type="slowstart")

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        assert inp.timeout is not None
        timeouts.append(inp.timeout)
        if inp.attempt < 3:
            await asyncio.sleep(60)
        return {"attempt": inp.attempt}

    server = await start_arm(arm)
    orch = await start_orchestrator(
        [server.address], wait_for=("slowstart",), subtask_timeout_s=base
    )
    stub = connect(orch.address)
    plan = pb.Plan()
    plan.steps.add(step_id="s", arm_type="slowstart")
    task = (
        await stub.SubmitTask(pb.SubmitTaskRequest(goal="Recover from two timeouts", plan=plan))
    ).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    done = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert done.state == pb.TASK_STATE_SUCCEEDED
    assert done.subtasks[0].attempt == 3
    # NOTE: an arm is told the time left when the dispatch was sent: at most what was granted.
    assert len(timeouts) == 3
    assert timeouts[0] < timeouts[1] < timeouts[2] <= base * 2.25 + 1e-3


def test_lost_arm_is_rerouted_once_avoiding_it() -> None:
    """An arm lost mid-subtask: one reroute that avoids that arm."""
    budget = RecoveryBudget()
    lost = failure(grpc.StatusCode.UNAVAILABLE, "ARM_LOST")
    retry = budget.next(lost, "arm-1")
    assert retry is not None
    assert (retry.kind, retry.avoid_arm, retry.delay_s) == ("reroute", "arm-1", 0.0)
    assert budget.next(lost, "arm-2") is None


def test_transient_failures_retry_with_bounded_jitter() -> None:
    """Other retryable failures: max_retries retries, each after a jittered, growing delay."""
    budget = RecoveryBudget(transient_retries=3)
    flaky = failure(grpc.StatusCode.UNAVAILABLE, "UPSTREAM_BUSY")
    delays = [budget.next(flaky, "a") for _ in range(3)]
    assert all(r is not None and r.kind == "transient" for r in delays)
    assert [0 <= r.delay_s <= 0.1 * 2**i for i, r in enumerate(delays) if r is not None] == [
        True
    ] * 3
    assert budget.next(flaky, "a") is None


def test_kinds_have_separate_budgets_and_fatal_gives_up() -> None:
    """Budgets are per kind; a non-retryable failure is never retried."""
    budget = RecoveryBudget(transient_retries=1)
    assert budget.next(failure(grpc.StatusCode.INTERNAL, "BUG", retryable=False), "a") is None
    assert budget.next(failure(grpc.StatusCode.ABORTED, "X"), "a") is not None
    assert budget.next(failure(grpc.StatusCode.ABORTED, "X"), "a") is None
    assert budget.next(failure(grpc.StatusCode.DEADLINE_EXCEEDED, "T"), "a") is not None
    assert budget.next(failure(grpc.StatusCode.UNAVAILABLE, "ARM_LOST"), "a") is not None


async def test_timed_out_step_is_retried_with_a_longer_deadline(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """A step that hangs on its first attempt succeeds on the second, with a longer timeout."""
    timeouts: list[float | None] = []
    arm = Arm(arm_type="slowstart")

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        timeouts.append(inp.timeout)
        if inp.attempt == 1:
            await asyncio.sleep(60)
        return {"attempt": inp.attempt}

    server = await start_arm(arm)
    orch = await start_orchestrator(
        [server.address], wait_for=("slowstart",), subtask_timeout_s=0.4
    )
    stub = connect(orch.address)
    plan = pb.Plan()
    plan.steps.add(step_id="s", arm_type="slowstart")
    task = (
        await stub.SubmitTask(pb.SubmitTaskRequest(goal="Recover from a timeout", plan=plan))
    ).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    done = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert done.state == pb.TASK_STATE_SUCCEEDED
    assert done.subtasks[0].attempt == 2
    assert len(timeouts) == 2
    assert timeouts[0] is not None
    assert timeouts[1] is not None
    assert timeouts[1] > timeouts[0]


async def test_reroute_prefers_another_arm(start_arm, start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """avoid_arm sends the subtask to another arm of the type when there is one."""
    first = await start_arm(REFERENCE_ARMS["echo"]())
    second = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([first.address, second.address], wait_for=("echo",))
    await ready_with_credit(orch, 2)
    for i in range(6):
        d = arm_pb.Dispatch(subtask_id=f"r{i}", attempt=1)
        outcome = await orch.mesh.execute("echo", d, timeout_s=10, avoid_arm=first.arm_id)
        assert outcome.arm_id == second.arm_id


async def test_router_moves_traffic_away_from_a_failing_replica(
    start_arm, start_orchestrator
) -> None:  # type: ignore[no-untyped-def]
    """Of two replicas of a type, the one whose results fail loses the traffic."""

    def replica(fails: bool) -> Arm:
        arm = Arm(arm_type="mixed")

        @arm.handler
        async def run(inp: SubtaskInput) -> dict[str, Any]:
            if fails:
                raise ArmError("broken replica", reason="BROKEN")
            return {"ok": True}

        return arm

    bad = await start_arm(replica(fails=True))
    good = await start_arm(replica(fails=False))
    orch = await start_orchestrator([bad.address, good.address], wait_for=("mixed",))
    await ready_with_credit(orch, 2)
    for i in range(3):  # give the broken replica a history
        d = arm_pb.Dispatch(subtask_id=f"forced{i}", attempt=1)
        outcome = await orch.mesh.execute("mixed", d, timeout_s=10, avoid_arm=good.arm_id)
        assert outcome.arm_id == bad.arm_id
        assert outcome.failure is not None
    chosen = set()
    for i in range(10):
        d = arm_pb.Dispatch(subtask_id=f"m{i}", attempt=1)
        chosen.add((await orch.mesh.execute("mixed", d, timeout_s=10)).arm_id)
    assert chosen == {good.arm_id}


async def ready_with_credit(orch: Any, n: int) -> None:
    """Wait until `n` arms are routable and hold credit (Credit follows Hello on the stream)."""
    async with asyncio.timeout(10):
        while len([c for c in orch.mesh.arms() if c.routable and c.credits > 0]) < n:
            await asyncio.sleep(0.01)
