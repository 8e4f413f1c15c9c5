"""The DAG runner through the public API: retries, failures, skips, deadlines."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from arm_sdk import Arm, SubtaskInput, SubtaskOutput
from orchestrator_svc.arms import REFERENCE_ARMS

GOAL = "Exercise the runner's recovery rules"


@pytest.fixture
async def stub(start_arm, start_orchestrator, connect) -> pb_grpc.OrchestratorServiceStub:  # type: ignore[no-untyped-def]
    """A client of an orchestrator with echo and sleep arms."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    sleep = await start_arm(REFERENCE_ARMS["sleep"]())
    orch = await start_orchestrator([echo.address, sleep.address], wait_for=("echo", "sleep"))
    return connect(orch.address)  # type: ignore[no-any-return]


def plan(*steps: tuple[str, str, dict[str, Any], tuple[str, ...]]) -> pb.Plan:
    p = pb.Plan()
    for step_id, arm_type, inputs, deps in steps:
        p.steps.add(step_id=step_id, arm_type=arm_type, depends_on=deps).input.update(inputs)
    return p


async def run_task(stub: pb_grpc.OrchestratorServiceStub, request: pb.SubmitTaskRequest) -> pb.Task:
    task = (await stub.SubmitTask(request)).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    return (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task


async def test_transient_failures_are_retried_then_fail(stub: Any) -> None:
    """A transient failure is retried max_retries (3) times, then the task FAILS with its reason."""
    task = await run_task(
        stub,
        pb.SubmitTaskRequest(
            goal=GOAL, plan=plan(("flaky", "sleep", {"seconds": 0, "fail": "transient"}, ()))
        ),
    )
    assert task.state == pb.TASK_STATE_FAILED
    (sub,) = task.subtasks
    assert sub.state == pb.SUBTASK_STATE_FAILED
    assert sub.attempt == 4
    assert sub.failure.reason == "SIMULATED_TRANSIENT"
    assert task.failure.reason == "SIMULATED_TRANSIENT"


async def test_fatal_failure_skips_dependants(stub: Any) -> None:
    """A non-retryable failure is not retried; steps depending on it are SKIPPED."""
    task = await run_task(
        stub,
        pb.SubmitTaskRequest(
            goal=GOAL,
            plan=plan(
                ("bad", "sleep", {"seconds": 0, "fail": "fatal"}, ()),
                ("after", "echo", {}, ("bad",)),
            ),
        ),
    )
    assert task.state == pb.TASK_STATE_FAILED
    states = {s.step_id: (s.state, s.attempt) for s in task.subtasks}
    assert states["bad"] == (pb.SUBTASK_STATE_FAILED, 1)
    assert states["after"][0] == pb.SUBTASK_STATE_SKIPPED
    assert task.failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_task_deadline_stops_running_steps_and_keeps_partial_results(stub: Any) -> None:
    """budget.max_time ends the task DEADLINE_EXCEEDED; finished steps' outputs are kept."""
    request = pb.SubmitTaskRequest(
        goal=GOAL,
        plan=plan(("quick", "echo", {"n": 1}, ()), ("slow", "sleep", {"seconds": 30}, ("quick",))),
    )
    request.budget.max_time.FromMilliseconds(700)
    task = await run_task(stub, request)
    assert task.state == pb.TASK_STATE_DEADLINE_EXCEEDED
    assert task.failure.reason == "TASK_DEADLINE_EXCEEDED"
    states = {s.step_id: s.state for s in task.subtasks}
    assert states == {"quick": pb.SUBTASK_STATE_SUCCEEDED, "slow": pb.SUBTASK_STATE_CANCELLED}
    assert "quick" in task.result.outputs.fields


async def test_parallel_steps_run_concurrently(stub: Any) -> None:
    """Independent steps are dispatched before any of them finishes."""
    task = (
        await stub.SubmitTask(
            pb.SubmitTaskRequest(
                goal=GOAL,
                plan=plan(*((f"p{i}", "sleep", {"seconds": 0.3}, ()) for i in range(4))),
            )
        )
    ).task
    order = []
    async for r in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        sub = r.event.subtask_changed.subtask
        if sub.state in (pb.SUBTASK_STATE_RUNNING, pb.SUBTASK_STATE_SUCCEEDED):
            order.append(sub.state)
    first_done = order.index(pb.SUBTASK_STATE_SUCCEEDED)
    assert order[:first_done].count(pb.SUBTASK_STATE_RUNNING) == 4


async def test_ready_is_recorded_only_while_waiting_for_credit(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """With one credit, the second of two parallel steps is READY until the first finishes."""
    arm = Arm(arm_type="single", max_concurrency=1)

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"step": inp.step_id}

    server = await start_arm(arm)
    orch = await start_orchestrator([server.address], wait_for=("single",))
    stub = connect(orch.address)
    task = (
        await stub.SubmitTask(
            pb.SubmitTaskRequest(
                goal=GOAL, plan=plan(("one", "single", {}, ()), ("two", "single", {}, ()))
            )
        )
    ).task
    states: dict[str, list[int]] = {"one": [], "two": []}
    async for r in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        sub = r.event.subtask_changed.subtask
        if sub.step_id:
            states[sub.step_id].append(sub.state)
    waited = [s for s, seen in states.items() if seen[0] == pb.SUBTASK_STATE_READY]
    assert len(waited) == 1
    assert states[waited[0]][:2] == [pb.SUBTASK_STATE_READY, pb.SUBTASK_STATE_DISPATCHED]
    (went_first,) = set(states) - set(waited)
    assert states[went_first][0] == pb.SUBTASK_STATE_DISPATCHED
    assert all(seen[-1] == pb.SUBTASK_STATE_SUCCEEDED for seen in states.values())


async def test_budget_exhaustion_stops_with_partial_results(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """Once reported tokens pass max_tokens the task ends BUDGET_EXCEEDED; later steps skip."""
    arm = Arm(arm_type="costly")

    @arm.handler
    async def run(inp: SubtaskInput) -> SubtaskOutput:
        return SubtaskOutput(output={"step": inp.step_id}, tokens=600, cost_usd=0.01)

    server = await start_arm(arm)
    orch = await start_orchestrator([server.address], wait_for=("costly",))
    stub = connect(orch.address)
    request = pb.SubmitTaskRequest(
        goal=GOAL,
        plan=plan(
            ("a", "costly", {}, ()), ("b", "costly", {}, ("a",)), ("c", "costly", {}, ("b",))
        ),
    )
    request.budget.max_tokens = 1000
    task = await run_task(stub, request)
    assert task.state == pb.TASK_STATE_BUDGET_EXCEEDED
    assert task.failure.reason == "BUDGET_EXCEEDED"
    states = {s.step_id: s.state for s in task.subtasks}
    assert states == {
        "a": pb.SUBTASK_STATE_SUCCEEDED,
        "b": pb.SUBTASK_STATE_SUCCEEDED,
        "c": pb.SUBTASK_STATE_SKIPPED,
    }
    assert task.usage.tokens == 1200
    assert set(task.result.outputs.fields) == {"a", "b"}


async def test_tasks_beyond_the_concurrency_limit_wait_then_run(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """With max_concurrent_tasks=1 the second task stays PENDING until the first ends."""
    sleep = await start_arm(REFERENCE_ARMS["sleep"]())
    orch = await start_orchestrator([sleep.address], wait_for=("sleep",), max_concurrent_tasks=1)
    stub = connect(orch.address)
    request = pb.SubmitTaskRequest(goal=GOAL, plan=plan(("nap", "sleep", {"seconds": 0.3}, ())))
    first = (await stub.SubmitTask(request)).task
    second = (await stub.SubmitTask(request)).task
    third = (await stub.SubmitTask(request)).task
    await asyncio.sleep(0.1)
    waiting = (await stub.GetTask(pb.GetTaskRequest(task_id=second.task_id))).task
    assert waiting.state == pb.TASK_STATE_PENDING
    cancelled = await stub.CancelTask(pb.CancelTaskRequest(task_id=third.task_id, reason="no"))
    assert cancelled.task.state == pb.TASK_STATE_CANCELLED
    for task in (first, second):
        async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
            pass
        done = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
        assert done.state == pb.TASK_STATE_SUCCEEDED


async def test_output_breaking_the_declared_schema_is_retried_then_fails(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """A Result that breaks the arm's output_schema counts as a retryable INVALID_OUTPUT."""
    calls = 0
    arm = Arm(
        arm_type="sloppy",
        output_schema={
            "type": "object",
            "required": ["count"],
            "properties": {"count": {"type": "integer"}},
        },
    )

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"count": "many"} if calls < 3 else {"count": 3}

    server = await start_arm(arm)
    orch = await start_orchestrator([server.address], wait_for=("sloppy",))
    task = await run_task(
        connect(orch.address),
        pb.SubmitTaskRequest(goal=GOAL, plan=plan(("count", "sloppy", {}, ()))),
    )
    assert task.state == pb.TASK_STATE_SUCCEEDED
    assert task.subtasks[0].attempt == 3
    assert task.subtasks[0].output["count"] == 3


async def test_output_nested_too_deep_fails_its_step_once_and_the_task_stays_readable(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """An output 30 objects deep fails OUTPUT_TOO_DEEP, not retried; the task reads back."""
    from orchestrator_svc.engine.output_check import MAX_OUTPUT_DEPTH, struct_depth

    calls = 0
    arm = Arm(arm_type="burrow")

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        nested: dict[str, Any] = {"bottom": True}
        for _ in range(29):
            nested = {"down": nested}
        return nested

    server = await start_arm(arm)
    orch = await start_orchestrator([server.address], wait_for=("burrow",))
    stub = connect(orch.address)
    task = await run_task(
        stub, pb.SubmitTaskRequest(goal=GOAL, plan=plan(("dig", "burrow", {}, ())))
    )
    assert task.state == pb.TASK_STATE_FAILED
    assert task.failure.reason == "OUTPUT_TOO_DEEP"
    assert (task.subtasks[0].attempt, calls) == (1, 1)
    replay = [r async for r in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id))]
    assert replay[-1].event.finished.state == pb.TASK_STATE_FAILED
    shallow = pb.Task().result.outputs
    shallow.update({"a": {"b": [1, {"c": 2}]}})
    assert struct_depth(shallow) == 4 < MAX_OUTPUT_DEPTH


async def test_fan_out_of_a_hundred_steps(stub: Any) -> None:
    """root -> 100 parallel steps -> sink: every step runs once and the sink sees all 100."""
    steps = [("root", "echo", {}, ())]
    steps += [(f"m{i}", "echo", {"i": i}, ("root",)) for i in range(100)]
    steps.append(("sink", "echo", {}, tuple(f"m{i}" for i in range(100))))
    task = await run_task(stub, pb.SubmitTaskRequest(goal=GOAL, plan=plan(*steps)))
    assert task.state == pb.TASK_STATE_SUCCEEDED
    assert len(task.subtasks) == 102
    assert {s.attempt for s in task.subtasks} == {1}
    sink = next(s for s in task.subtasks if s.step_id == "sink")
    assert len(sink.output["echo"]["dependencies"]) == 100
