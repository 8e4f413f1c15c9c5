"""The task memory inside a running orchestrator: remembered after success, used to plan."""

from __future__ import annotations

import asyncio

from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.arms import REFERENCE_ARMS
from tests.role_arms import scribe

GOAL = "Summarise what the retriever found about flow control"
WAIT_S = 60.0


async def _events(stub, task_id: str) -> list[pb.TaskEvent]:  # type: ignore[no-untyped-def]
    request = pb.WatchTaskRequest(task_id=task_id, max_batch_size=100)
    return [e async for r in stub.WatchTask(request, timeout=WAIT_S) for e in r.events]


async def test_a_succeeded_task_is_remembered_and_shapes_the_next_plan(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """Task 1 succeeds and is remembered; task 2 with the same goal reuses its plan."""
    arms = [await start_arm(scribe()), await start_arm(REFERENCE_ARMS["planner"]())]
    orch = await start_orchestrator(
        [a.address for a in arms],
        wait_for=("scribe", "planner"),
        memory=True,
        memory_path=":memory:",
        cache_ttl_s=0,  # NOTE: the plan must come from the memory, not from the plan cache
    )
    stub = connect(orch.address)
    first = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL))).task
    assert (await _events(stub, first.task_id))[-1].finished.state == pb.TASK_STATE_SUCCEEDED
    loop = asyncio.get_running_loop()
    give_up = loop.time() + WAIT_S
    while not await orch.memory.recall(GOAL):
        assert loop.time() < give_up, "the succeeded task was never remembered"
        await asyncio.sleep(0.05)

    second = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL))).task
    events = await _events(stub, second.task_id)
    assert events[-1].finished.state == pb.TASK_STATE_SUCCEEDED
    reasons = " ".join(e.state_changed.reason for e in events if e.HasField("state_changed"))
    assert f"reused the plan of a similar past task {first.task_id}" in reasons
    plans = [e.plan_created.plan for e in events if e.HasField("plan_created")]
    first_plan = next(
        e.plan_created.plan
        for e in await _events(stub, first.task_id)
        if e.HasField("plan_created")
    )
    assert [s.arm_type for s in plans[0].steps] == [s.arm_type for s in first_plan.steps]
