"""Priority on its own: task slots (TaskAdmission) and the mesh's queue for arm credit
(DispatchQueue) go highest priority first; cancelled waiters never keep a slot."""

from __future__ import annotations

import asyncio

from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.engine.admission import TaskAdmission
from orchestrator_svc.mesh.connection import Pending
from orchestrator_svc.mesh.dispatch_queue import DispatchQueue


async def take_turn(admission: TaskAdmission, priority: int, name: str, order: list[str]) -> None:
    async with admission.slot(priority):
        order.append(name)
        await asyncio.sleep(0)


async def test_waiters_go_by_priority_then_arrival() -> None:
    """Four waiters behind a held slot run HIGH, NORMAL (first come), NORMAL, LOW."""
    admission = TaskAdmission(1)
    order: list[str] = []
    held = admission.slot(pb.PRIORITY_NORMAL)
    await held.__aenter__()
    waiters = [
        asyncio.create_task(take_turn(admission, priority, name, order))
        for priority, name in (
            (pb.PRIORITY_LOW, "low"),
            (pb.PRIORITY_NORMAL, "normal-1"),
            (pb.PRIORITY_UNSPECIFIED, "normal-2"),
            (pb.PRIORITY_HIGH, "high"),
        )
    ]
    await asyncio.sleep(0)
    assert order == []
    await held.__aexit__(None, None, None)
    await asyncio.gather(*waiters)
    assert order == ["high", "normal-1", "normal-2", "low"]


async def test_a_waiter_cancelled_as_its_turn_comes_hands_the_slot_on() -> None:
    """A waiter granted the slot and cancelled in the same loop turn passes it to the next
    waiter; one cancelled before its turn is skipped. The slot is free again at the end."""
    admission = TaskAdmission(1)
    order: list[str] = []
    held = admission.slot(pb.PRIORITY_NORMAL)
    await held.__aenter__()
    skipped = asyncio.create_task(take_turn(admission, pb.PRIORITY_CRITICAL, "skipped", order))
    granted = asyncio.create_task(take_turn(admission, pb.PRIORITY_HIGH, "granted", order))
    last = asyncio.create_task(take_turn(admission, pb.PRIORITY_LOW, "last", order))
    await asyncio.sleep(0)
    skipped.cancel()
    await asyncio.sleep(0)
    await held.__aexit__(None, None, None)  # grants `granted` at once ...
    granted.cancel()  # ... which is cancelled before it runs
    results = await asyncio.wait_for(
        asyncio.gather(skipped, granted, last, return_exceptions=True), 10
    )
    assert [type(r) for r in results[:2]] == [asyncio.CancelledError] * 2
    assert order == ["last"]
    await asyncio.wait_for(take_turn(admission, pb.PRIORITY_LOW, "again", order), 5)
    assert order == ["last", "again"]


async def test_dispatch_queue_sends_the_highest_priority_first() -> None:
    """The mesh's queue: highest priority first, FIFO within one; a failover goes back to the
    head of its own priority; withdrawing the newest entry removes it at once."""
    loop = asyncio.get_running_loop()

    def pending(name: str, priority: int) -> Pending:
        dispatch = arm_pb.Dispatch(subtask_id=name)
        return Pending("echo", dispatch, loop.create_future(), 0.0, priority=priority)

    queue = DispatchQueue()
    low, normal_1, normal_2, high = (
        pending("low", pb.PRIORITY_LOW),
        pending("normal-1", pb.PRIORITY_NORMAL),
        pending("normal-2", pb.PRIORITY_NORMAL),
        pending("high", pb.PRIORITY_HIGH),
    )
    for p in (low, normal_1, normal_2, high):
        queue.append(p)
    failed_over = pending("failed-over", pb.PRIORITY_NORMAL)
    queue.appendleft(failed_over)
    assert not queue.pop_if_last(normal_1)
    assert queue.pop_if_last(normal_2)
    assert len(queue) == 4
    assert [p.dispatch.subtask_id for p in queue] == ["high", "failed-over", "normal-1", "low"]
    taken = [queue.popleft().dispatch.subtask_id for _ in range(4)]
    assert taken == ["high", "failed-over", "normal-1", "low"]
    assert not queue
