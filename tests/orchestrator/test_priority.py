"""Task priority: when every task slot is taken, waiting tasks are admitted highest priority
first, in submission order within one priority."""

from __future__ import annotations

import asyncio
from typing import Any

from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from arm_sdk import Arm, SubtaskInput

GOAL = "Take a turn at the gate"


def gate_arm(order: list[str], first_in: asyncio.Event, release: asyncio.Event) -> Arm:
    """Records the task of each subtask it gets; holds the first until `release` is set."""
    arm = Arm(arm_type="gate")

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        order.append(inp.task_id)
        if len(order) == 1:
            first_in.set()
            await release.wait()
        return {"turn": len(order)}

    return arm


async def submit(stub: pb_grpc.OrchestratorServiceStub, priority: pb.Priority.ValueType) -> str:
    plan = pb.Plan()
    plan.steps.add(step_id="pass", arm_type="gate")
    request = pb.SubmitTaskRequest(goal=GOAL, plan=plan, priority=priority)
    return (await stub.SubmitTask(request)).task.task_id


async def wait_finished(stub: pb_grpc.OrchestratorServiceStub, task_id: str) -> pb.Task:
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), timeout=30):
        pass
    return (await stub.GetTask(pb.GetTaskRequest(task_id=task_id))).task


async def test_high_priority_task_is_admitted_before_earlier_normal_ones(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """One task slot, busy: two NORMAL tasks, a LOW and then a HIGH one wait; the HIGH task
    runs first, then the NORMAL ones in the order they came, then the LOW one."""
    order: list[str] = []
    first_in, release = asyncio.Event(), asyncio.Event()
    server = await start_arm(gate_arm(order, first_in, release))
    orch = await start_orchestrator([server.address], wait_for=("gate",), max_concurrent_tasks=1)
    stub = connect(orch.address)
    running = await submit(stub, pb.PRIORITY_NORMAL)
    await asyncio.wait_for(first_in.wait(), 10)
    normal_1 = await submit(stub, pb.PRIORITY_NORMAL)
    normal_2 = await submit(stub, pb.PRIORITY_UNSPECIFIED)
    low = await submit(stub, pb.PRIORITY_LOW)
    high = await submit(stub, pb.PRIORITY_HIGH)
    for task_id in (normal_1, normal_2, low, high):
        task = (await stub.GetTask(pb.GetTaskRequest(task_id=task_id))).task
        assert task.state == pb.TASK_STATE_PENDING
    release.set()
    for task_id in (running, normal_1, normal_2, low, high):
        assert (await wait_finished(stub, task_id)).state == pb.TASK_STATE_SUCCEEDED
    assert order == [running, high, normal_1, normal_2, low]


async def test_a_task_cancelled_while_waiting_gives_its_turn_to_the_next(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """A HIGH task cancelled while it waits for a slot never runs; the waiting NORMAL task
    takes the slot when it frees up."""
    order: list[str] = []
    first_in, release = asyncio.Event(), asyncio.Event()
    server = await start_arm(gate_arm(order, first_in, release))
    orch = await start_orchestrator([server.address], wait_for=("gate",), max_concurrent_tasks=1)
    stub = connect(orch.address)
    running = await submit(stub, pb.PRIORITY_NORMAL)
    await asyncio.wait_for(first_in.wait(), 10)
    normal = await submit(stub, pb.PRIORITY_NORMAL)
    high = await submit(stub, pb.PRIORITY_HIGH)
    await stub.CancelTask(pb.CancelTaskRequest(task_id=high, reason="not needed"))
    release.set()
    assert (await wait_finished(stub, high)).state == pb.TASK_STATE_CANCELLED
    assert (await wait_finished(stub, normal)).state == pb.TASK_STATE_SUCCEEDED
    assert order == [running, normal]


async def wait_ready(stub: pb_grpc.OrchestratorServiceStub, task_id: str) -> None:
    """Until the task's step is READY: queued in the mesh, waiting for arm credit."""
    async for response in stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), timeout=30):
        if response.event.subtask_changed.subtask.state == pb.SUBTASK_STATE_READY:
            return
    raise AssertionError(f"task {task_id} ended without waiting for credit")


async def test_high_priority_subtask_is_dispatched_before_earlier_normal_ones(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """An arm with one credit, busy: steps of a NORMAL, a LOW and then a HIGH task wait for
    it; the HIGH task's step gets the credit first, then the NORMAL one, then the LOW one."""
    order: list[str] = []
    first_in, release = asyncio.Event(), asyncio.Event()
    arm = gate_arm(order, first_in, release)
    arm.max_concurrency = 1
    server = await start_arm(arm)
    orch = await start_orchestrator([server.address], wait_for=("gate",))
    stub = connect(orch.address)
    running = await submit(stub, pb.PRIORITY_NORMAL)
    await asyncio.wait_for(first_in.wait(), 10)
    normal = await submit(stub, pb.PRIORITY_NORMAL)
    await wait_ready(stub, normal)
    low = await submit(stub, pb.PRIORITY_LOW)
    await wait_ready(stub, low)
    high = await submit(stub, pb.PRIORITY_HIGH)
    await wait_ready(stub, high)
    release.set()
    for task_id in (running, normal, low, high):
        assert (await wait_finished(stub, task_id)).state == pb.TASK_STATE_SUCCEEDED
    assert order == [running, high, normal, low]
