"""Orchestrators on the real PostgreSQL: durable tasks, and replicas sharing one database."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.arms import REFERENCE_ARMS
from tests.role_arms import scribe

GOAL = "Summarise how replicas share the task log"


def summary_plan() -> pb.Plan:
    """One scribe step carrying the summary (a copy of a planned goal is no answer)."""
    plan = pb.Plan()
    plan.steps.add(step_id="summary", arm_type="scribe").input.update(
        {"text": "Every replica appends to one PostgreSQL log; leases decide who runs a task."}
    )
    return plan


async def test_task_runs_on_postgres_and_its_log_is_in_the_database(
    pg_dsn: str, start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """With OCTOLLM_POSTGRES_DSN the task and every one of its events are rows in PostgreSQL."""
    roles = await start_arm(scribe())
    orch = await start_orchestrator([roles.address], wait_for=("scribe",), postgres_dsn=pg_dsn)
    stub = connect(orch.address)
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=summary_plan()))).task
    events = [
        r.event async for r in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30)
    ]
    assert events[-1].finished.state == pb.TASK_STATE_SUCCEEDED
    db = await asyncpg.connect(pg_dsn, timeout=5)
    try:
        stored = await db.fetchval(
            "SELECT count(*) FROM task_events WHERE task_id = $1", uuid.UUID(task.task_id)
        )
    finally:
        await db.close()
    assert stored == len(events) == events[-1].seq


async def test_replicas_share_tasks_watches_and_idempotency(
    pg_dsn: str, start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """Submit on one replica, watch and read it on the other; one request_id, one task."""
    roles = await start_arm(scribe())
    a = await start_orchestrator([roles.address], wait_for=("scribe",), postgres_dsn=pg_dsn)
    b = await start_orchestrator([roles.address], wait_for=("scribe",), postgres_dsn=pg_dsn)
    stub_a, stub_b = connect(a.address), connect(b.address)

    task = (await stub_a.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=summary_plan()))).task
    seen_on_b = [
        r.event
        async for r in stub_b.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30)
    ]
    assert [e.seq for e in seen_on_b] == list(range(1, len(seen_on_b) + 1))
    assert seen_on_b[-1].finished.state == pb.TASK_STATE_SUCCEEDED
    on_b = (await stub_b.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert on_b.state == pb.TASK_STATE_SUCCEEDED
    listed = (await stub_b.ListTasks(pb.ListTasksRequest())).tasks
    assert task.task_id in [t.task_id for t in listed]

    request = pb.SubmitTaskRequest(goal=GOAL, request_id="same-key-both-replicas")
    first, second = await asyncio.gather(stub_a.SubmitTask(request), stub_b.SubmitTask(request))
    assert first.task.task_id == second.task.task_id


async def test_unreachable_postgres_fails_start_with_a_clear_error(start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """A DSN nobody answers: start-up fails with StoreUnavailable naming the server, no hang."""
    from orchestrator_svc.store import StoreUnavailable

    with pytest.raises(StoreUnavailable) as err:
        await start_orchestrator(
            [],
            postgres_dsn="postgresql://postgres@127.0.0.1:1/test",
            postgres_startup_wait_s=0.5,
        )
    assert "127.0.0.1:1" in str(err.value)


async def test_replicas_share_what_they_saw_of_each_arm(
    pg_dsn: str, start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """arm_stats: A's outcomes are in the database; B starts the same arm from them."""
    sleeper = await start_arm(REFERENCE_ARMS["sleep"]())
    a = await start_orchestrator([sleeper.address], wait_for=("sleep",), postgres_dsn=pg_dsn)
    stub = connect(a.address)
    for fail in ("", "", "fatal"):
        plan = pb.Plan()
        step = plan.steps.add(step_id="nap", arm_type="sleep")
        step.input.update({"seconds": 0.01, **({"fail": fail} if fail else {})})
        task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=plan))).task
        async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
            pass
    assert a.arm_history is not None
    await a.arm_history.tick()
    (arm,) = (await stub.ListArms(pb.ListArmsRequest())).arms
    db = await asyncpg.connect(pg_dsn, timeout=5)
    try:
        row = await db.fetchrow("SELECT * FROM arm_stats WHERE arm_id = $1", arm.descriptor.arm_id)
    finally:
        await db.close()
    assert (row["arm_type"], row["succeeded"], row["failed"]) == ("sleep", 2, 1)
    assert row["success_rate"] == pytest.approx(arm.success_rate)

    b = await start_orchestrator([sleeper.address], wait_for=("sleep",), postgres_dsn=pg_dsn)
    assert b.arm_history is not None
    await b.arm_history.tick()
    (seen_on_b,) = (await connect(b.address).ListArms(pb.ListArmsRequest())).arms
    assert seen_on_b.success_rate == pytest.approx(arm.success_rate)
    assert seen_on_b.success_rate < 1.0
    assert (seen_on_b.succeeded, seen_on_b.failed) == (0, 0)  # "since it connected" here
    (conn,) = b.mesh.arms()
    assert conn.stats.samples == 3
