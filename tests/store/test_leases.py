"""Task leases on the PostgreSQL store: renew, expire, claim once, fence, release, quarantine."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from octollm.v1 import orchestrator_service_pb2 as pb
from structlog.testing import capture_logs

from orchestrator_svc.engine import events
from orchestrator_svc.store import LeaseLost, PostgresTaskStore, TaskLeases
from tests.store.postgres_schema import PgSchema

NewTask = Callable[..., pb.Task]


async def _replicas(schema: PgSchema, count: int, ttl_s: float = 30.0) -> list[PostgresTaskStore]:
    await schema.migrate()
    return [await schema.open_store(owner=f"replica-{i}", lease_ttl_s=ttl_s) for i in range(count)]


async def _expire(schema: PgSchema, task_id: str) -> None:
    """Make a lease look as if its owner stopped renewing it long ago."""
    db = await schema.connect()
    await db.execute(
        "UPDATE tasks SET lease_expires = now() - interval '1 minute' WHERE task_id = $1",
        uuid.UUID(task_id),
    )


def _step_started(step_id: str) -> pb.TaskEvent:
    return events.state_changed(pb.TASK_STATE_PENDING, pb.TASK_STATE_EXECUTING, step_id)


async def test_the_creating_replica_holds_the_lease_until_the_task_finishes(
    pg_schema: PgSchema, new_task: NewTask
) -> None:
    """create() leases the task to its replica; renew() keeps it; `finished` releases it."""
    (a,) = await _replicas(pg_schema, 1)
    assert isinstance(a, TaskLeases)
    task, _ = await a.create(new_task(), "fp")
    assert await a.renew() == {task.task_id}
    await a.append(task.task_id, [events.finished(pb.TASK_STATE_SUCCEEDED)], as_owner=True)
    assert await a.renew() == set()
    db = await pg_schema.connect()
    row = await db.fetchrow(
        "SELECT lease_owner, lease_expires FROM tasks WHERE task_id = $1", uuid.UUID(task.task_id)
    )
    assert (row["lease_owner"], row["lease_expires"]) == (None, None)


async def test_a_live_lease_is_not_claimed_and_an_expired_one_is_claimed_with_its_log(
    pg_schema: PgSchema, new_task: NewTask
) -> None:
    """Only an expired lease moves; the claimant gets the task as its log left it."""
    a, b = await _replicas(pg_schema, 2)
    task, _ = await a.create(new_task(), "fp")
    await a.append(task.task_id, [_step_started("one")], as_owner=True)
    assert await b.claim_expired(10) == []
    await _expire(pg_schema, task.task_id)
    (claimed,) = await b.claim_expired(10)
    assert claimed.task_id == task.task_id
    assert claimed.last_seq == 1
    assert claimed.state == pb.TASK_STATE_EXECUTING
    assert await b.renew() == {task.task_id}
    assert await a.renew() == set()


async def test_concurrent_claimers_never_take_the_same_task(
    pg_schema: PgSchema, new_task: NewTask
) -> None:
    """Three replicas claim 30 expired tasks at once: each task goes to exactly one of them."""
    creator, *claimers = await _replicas(pg_schema, 4)
    ids = set()
    for _ in range(30):
        task, _ = await creator.create(new_task(), "fp")
        ids.add(task.task_id)
    db = await pg_schema.connect()
    await db.execute("UPDATE tasks SET lease_expires = now() - interval '1 minute'")
    rounds = await asyncio.gather(*(c.claim_expired(12) for c in claimers))
    taken = [t.task_id for claimed in rounds for t in claimed]
    assert len(taken) == len(set(taken)) == 30
    assert set(taken) == ids
    held = await asyncio.gather(*(c.renew() for c in claimers))
    assert sum(len(h) for h in held) == 30
    assert set().union(*held) == ids


async def test_the_old_owner_is_fenced_off_but_a_cancel_from_anywhere_is_not(
    pg_schema: PgSchema, new_task: NewTask
) -> None:
    """After a takeover the old owner's appends fail LeaseLost; unfenced appends still land."""
    a, b = await _replicas(pg_schema, 2)
    task, _ = await a.create(new_task(), "fp")
    await _expire(pg_schema, task.task_id)
    await b.claim_expired(1)
    with pytest.raises(LeaseLost) as lost:
        await a.append(task.task_id, [_step_started("late")], as_owner=True)
    assert lost.value.owner == "replica-1"
    assert (await b.get(task.task_id)).last_seq == 0
    assert await b.append(task.task_id, [_step_started("new owner")], as_owner=True) == 1
    cancel = events.finished(pb.TASK_STATE_CANCELLED)
    assert await a.append(task.task_id, [cancel]) == 2
    assert await b.renew() == set()


async def test_released_leases_are_claimable_at_once(
    pg_schema: PgSchema, new_task: NewTask
) -> None:
    """release() hands a task over without waiting for its lease to run out."""
    a, b = await _replicas(pg_schema, 2)
    kept, _ = await a.create(new_task(), "fp")
    handed, _ = await a.create(new_task(), "fp")
    await a.release([handed.task_id])
    claimed = await b.claim_expired(10)
    assert [t.task_id for t in claimed] == [handed.task_id]
    assert await a.renew() == {kept.task_id}


async def test_a_poisoned_task_row_is_reported_once_and_never_claimed_again(
    pg_schema: PgSchema, new_task: NewTask
) -> None:
    """An expired lease on an undecodable row is quarantined: logged, not a claim loop."""
    a, b = await _replicas(pg_schema, 2)
    bad, _ = await a.create(new_task(), "fp")
    good, _ = await a.create(new_task(), "fp")
    db = await pg_schema.connect()
    await db.execute(
        "UPDATE tasks SET body = '\\xff'::bytea WHERE task_id = $1", uuid.UUID(bad.task_id)
    )
    await db.execute("UPDATE tasks SET lease_expires = now() - interval '1 minute'")
    with capture_logs() as logs:
        claimed = await b.claim_expired(10)
        again = await b.claim_expired(10)
    assert [t.task_id for t in claimed] == [good.task_id]
    assert again == []
    quarantined = [e for e in logs if e["event"] == "corrupt_task_quarantined"]
    assert [e["task_id"] for e in quarantined] == [bad.task_id]


async def test_an_owner_append_extends_only_a_lease_that_is_running_out(
    pg_schema: PgSchema, new_task: NewTask
) -> None:
    """More than half the TTL left: the append leaves the lease alone (the row update stays
    cheap); less than half left: the append renews it for a whole TTL."""
    (a,) = await _replicas(pg_schema, 1, ttl_s=30.0)
    task, _ = await a.create(new_task(), "fp")
    db = await pg_schema.connect()
    lease_sql = "SELECT lease_expires - now() FROM tasks WHERE task_id = $1"
    task_uuid = uuid.UUID(task.task_id)
    before = await db.fetchval("SELECT lease_expires FROM tasks WHERE task_id = $1", task_uuid)
    await a.append(task.task_id, [_step_started("one")], as_owner=True)
    after = await db.fetchval("SELECT lease_expires FROM tasks WHERE task_id = $1", task_uuid)
    assert after == before

    await db.execute(
        "UPDATE tasks SET lease_expires = now() + interval '5 seconds' WHERE task_id = $1",
        task_uuid,
    )
    await a.append(task.task_id, [_step_started("two")], as_owner=True)
    left = await db.fetchval(lease_sql, task_uuid)
    assert left.total_seconds() > 25
    assert await a.renew() == {task.task_id}
