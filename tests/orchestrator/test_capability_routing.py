"""A plan step's required_capabilities reach the router: among replicas of one arm type, the
step goes to the one that declares what it needs, and the arm sees what was asked of it."""

from __future__ import annotations

import asyncio
from typing import Any

from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk import Arm, SubtaskInput

GOAL = "Route a statistics step to the replica that can do it"


def analyst(arm_id: str, capabilities: tuple[str, ...], seen: list[tuple[str, ...]]) -> Arm:
    """An `analyst` replica that records the capabilities each dispatch asked for."""
    arm = Arm(arm_type="analyst", arm_id=arm_id, capabilities=capabilities)

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        seen.append(inp.required_capabilities)
        return {"arm": arm_id}

    return arm


async def test_step_needing_a_capability_goes_to_the_replica_that_declares_it(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """Two analyst replicas, only one declaring "statistics": every step requiring it runs
    there, though the other replica wins every tie (its arm id sorts first)."""
    seen: list[tuple[str, ...]] = []
    plain = await start_arm(analyst("analyst-a", ("general",), seen))
    capable = await start_arm(analyst("analyst-b", ("general", "statistics"), seen))
    orch = await start_orchestrator([plain.address, capable.address], wait_for=("analyst",))
    async with asyncio.timeout(10):
        while len([c for c in orch.mesh.arms() if c.routable and c.credits > 0]) < 2:
            await asyncio.sleep(0.01)
    stub = connect(orch.address)
    plan = pb.Plan()
    for i in range(4):
        plan.steps.add(step_id=f"s{i}", arm_type="analyst", required_capabilities=["Statistics"])
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=plan))).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    done = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert done.state == pb.TASK_STATE_SUCCEEDED
    assert {s.arm_id for s in done.subtasks} == {"analyst-b"}
    assert seen == [("Statistics",)] * 4
    assert list(done.plan.steps[0].required_capabilities) == ["Statistics"]


async def test_step_without_requirements_may_use_any_replica(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """With nothing required, the capability term is equal for both replicas: the tie goes to
    the arm with fewer in flight, then the smaller arm id."""
    seen: list[tuple[str, ...]] = []
    plain = await start_arm(analyst("analyst-a", ("general",), seen))
    capable = await start_arm(analyst("analyst-b", ("general", "statistics"), seen))
    orch = await start_orchestrator([plain.address, capable.address], wait_for=("analyst",))
    async with asyncio.timeout(10):
        while len([c for c in orch.mesh.arms() if c.routable and c.credits > 0]) < 2:
            await asyncio.sleep(0.01)
    stub = connect(orch.address)
    plan = pb.Plan()
    plan.steps.add(step_id="s", arm_type="analyst")
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=plan))).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    done = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert done.state == pb.TASK_STATE_SUCCEEDED
    assert done.subtasks[0].arm_id == "analyst-a"
    assert seen == [()]
