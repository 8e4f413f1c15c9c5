"""The plan a client reads back carries the server's estimates of its time and tokens."""

from __future__ import annotations

from typing import Any

from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from arm_sdk import Arm, SubtaskInput
from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.brain.plan import estimate
from orchestrator_svc.engine import convert


async def finish(stub: pb_grpc.OrchestratorServiceStub, request: pb.SubmitTaskRequest) -> pb.Task:
    task = (await stub.SubmitTask(request)).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=60):
        pass
    return (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task


def retriever() -> Arm:
    """A stand-in retriever: returns one passage for any query."""
    arm = Arm(arm_type="retriever", capabilities=("retrieval", "search", "context"))

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        return {"passages": [{"text": "A service mesh routes calls between services."}]}

    return arm


def expected(plan: pb.Plan) -> tuple[int, int]:
    """(duration in ms, tokens) the brain estimates for the plan's steps."""
    seconds, tokens = estimate(convert.plan_from_proto(plan).steps)
    return round(seconds * 1000), tokens


async def test_a_planned_task_shows_the_planners_estimates(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """GetTask of a task the brain planned shows the plan's estimated duration and tokens."""
    server = await start_arm(retriever())
    orch = await start_orchestrator([server.address], wait_for=("retriever",))
    task = await finish(
        connect(orch.address),
        pb.SubmitTaskRequest(goal="Explain what a service mesh does for its services"),
    )
    assert task.plan.steps
    duration_ms, tokens = expected(task.plan)
    assert tokens > 0
    assert duration_ms > 0
    assert task.plan.estimated_tokens == tokens
    assert task.plan.estimated_duration.ToMilliseconds() == duration_ms


async def test_a_submitted_plan_gets_estimates_in_place_of_its_own(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """Estimates are output only: a client's own values are replaced by the server's."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    server = await start_arm(retriever())
    orch = await start_orchestrator([echo.address, server.address], wait_for=("echo", "retriever"))
    plan = pb.Plan(estimated_tokens=1)
    plan.estimated_duration.FromSeconds(7)
    plan.steps.add(step_id="find", arm_type="retriever")
    plan.steps.add(step_id="say", arm_type="echo", depends_on=["find"])
    task = await finish(
        connect(orch.address),
        pb.SubmitTaskRequest(goal="Find a passage, then echo it back", plan=plan),
    )
    assert task.state == pb.TASK_STATE_SUCCEEDED
    duration_ms, tokens = expected(task.plan)
    assert task.plan.estimated_tokens == tokens != 1
    assert task.plan.estimated_duration.ToMilliseconds() == duration_ms != 7000
