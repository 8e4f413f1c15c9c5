"""PostgreSQL restarted under running tasks: they continue after reconnecting, nothing lost.

The test restarts a private PostgreSQL of its own (tests/store/private_postgres.py: initdb in a
temporary folder, its own port), never the machine's shared server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from orchestrator_svc.arms import REFERENCE_ARMS
from tests.chaos.durable import WAIT_S, check_history, fan_plan
from tests.store.private_postgres import PrivatePostgres, private_postgres


@pytest.fixture
async def private_pg() -> AsyncIterator[PrivatePostgres]:
    """A private PostgreSQL the test may restart."""
    async with private_postgres() as server:
        yield server


async def _watch_through_outages(
    stub: pb_grpc.OrchestratorServiceStub, task_id: str
) -> list[pb.TaskEvent]:
    """WatchTask as a careful client does it: on UNAVAILABLE, resume after the last seq."""
    events: list[pb.TaskEvent] = []
    loop = asyncio.get_running_loop()
    give_up = loop.time() + WAIT_S
    while True:
        after = events[-1].seq if events else 0
        request = pb.WatchTaskRequest(task_id=task_id, after_seq=after)
        try:
            async for reply in stub.WatchTask(request, timeout=WAIT_S):
                events.append(reply.event)
            return events
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or loop.time() > give_up:
                raise
        await asyncio.sleep(0.5)


async def test_tasks_survive_a_postgres_restart_mid_run(
    private_pg: PrivatePostgres, start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """Restart PostgreSQL while 4 DAGs run: all succeed, each step's result recorded once."""
    sleeper = await start_arm(REFERENCE_ARMS["sleep"]())
    orch = await start_orchestrator(
        [sleeper.address], wait_for=("sleep",), postgres_dsn=private_pg.dsn
    )
    stub = connect(orch.address)
    ids = []
    for i in range(4):
        request = pb.SubmitTaskRequest(goal=f"outlive the database restart {i}", plan=fan_plan(2.0))
        ids.append((await stub.SubmitTask(request, timeout=10)).task.task_id)
    for task_id in ids:
        async for reply in stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), timeout=WAIT_S):
            if reply.event.subtask_changed.subtask.state == pb.SUBTASK_STATE_DISPATCHED:
                break

    await private_pg.restart()

    histories = await asyncio.gather(*(_watch_through_outages(stub, i) for i in ids))
    for events in histories:
        check_history(events, steps=5)
