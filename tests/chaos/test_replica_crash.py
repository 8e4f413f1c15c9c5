"""Replicas on one PostgreSQL: a replica killed with -9 or stopped mid-DAG loses no task.

The doomed replica is a real `octollm serve` process; the survivor runs in the test process.
Leases are short (OCTOLLM_LEASE_TTL_S=1.5) so the takeover happens within a couple of seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.arms import REFERENCE_ARMS
from tests.chaos.durable import (
    LEASE_TTL_S,
    WAIT_S,
    attempts_of,
    check_history,
    fan_plan,
    free_port,
    history,
    wait_routable,
    wait_serving,
)


@pytest.fixture
async def doomed_replica(
    pg_dsn: str, start_arm
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str, str, str]]:  # type: ignore[no-untyped-def]
    """An `octollm serve` process on the shared schema, with a sleep arm it can reach."""
    sleeper = await start_arm(REFERENCE_ARMS["sleep"]())
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "OCTOLLM_LISTEN": address,
        "OCTOLLM_ARM_ENDPOINTS": sleeper.address,
        "OCTOLLM_POSTGRES_DSN": pg_dsn,
        "OCTOLLM_LEASE_TTL_S": str(LEASE_TTL_S),
        "OCTOLLM_METRICS_PORT": "-1",
        "OCTOLLM_LOG_LEVEL": "warning",
        "OCTOLLM_REPLICA_NAME": "doomed",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator_svc.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_serving(address, proc)
        yield proc, address, sleeper.address, pg_dsn
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_replica_killed_mid_dag_another_finishes_every_task_exactly_once(
    doomed_replica, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """kill -9 a replica with 6 tasks mid fan-out: the survivor resumes them from the log."""
    proc, doomed_address, arm_address, pg_dsn = doomed_replica
    doomed = connect(doomed_address)
    await wait_routable(doomed, "sleep")
    survivor = await start_orchestrator(
        [arm_address],
        wait_for=("sleep",),
        postgres_dsn=pg_dsn,
        lease_ttl_s=LEASE_TTL_S,
        replica_name="survivor",
    )
    watcher = connect(survivor.address)

    ids = []
    for i in range(6):
        request = pb.SubmitTaskRequest(goal=f"fan out and in, number {i}", plan=fan_plan(1.5))
        ids.append((await doomed.SubmitTask(request, timeout=10)).task.task_id)
    # Kill once every task has its fan-out in flight on the doomed replica.
    for task_id in ids:
        request = pb.WatchTaskRequest(task_id=task_id)
        async for reply in watcher.WatchTask(request, timeout=WAIT_S):
            sub = reply.event.subtask_changed.subtask
            if sub.step_id == "first" and sub.state == pb.SUBTASK_STATE_SUCCEEDED:
                break
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL

    histories = await asyncio.gather(*(history(watcher, task_id) for task_id in ids))
    retried = 0
    for events in histories:
        check_history(events, steps=5)
        reasons = [e.state_changed.reason for e in events if e.HasField("state_changed")]
        assert any(r.startswith("resumed by survivor") for r in reasons), reasons
        attempts = attempts_of(events)
        assert attempts["first"] == 1
        retried += sum(attempts[s] >= 2 for s in ("left", "middle", "right"))
    # The fan-out steps were in flight at the kill: they ran again with the next attempt.
    assert retried >= 1


async def test_replica_stopped_mid_dag_hands_its_tasks_over(
    pg_dsn: str, start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """A replica stopping with work left releases it: another resumes it, nothing is CANCELLED."""
    sleeper = await start_arm(REFERENCE_ARMS["sleep"]())
    knobs = {"postgres_dsn": pg_dsn, "lease_ttl_s": LEASE_TTL_S}
    leaving = await start_orchestrator(
        [sleeper.address], wait_for=("sleep",), replica_name="leaving", **knobs
    )
    staying = await start_orchestrator(
        [sleeper.address], wait_for=("sleep",), replica_name="staying", **knobs
    )
    stub = connect(staying.address)
    task = (
        await connect(leaving.address).SubmitTask(
            pb.SubmitTaskRequest(goal="hand me over when you stop", plan=fan_plan(1.0)), timeout=10
        )
    ).task
    async for reply in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=WAIT_S):
        if reply.event.subtask_changed.subtask.state == pb.SUBTASK_STATE_DISPATCHED:
            break
    await leaving.stop(grace_s=0)

    events = await history(stub, task.task_id)
    check_history(events, steps=5)
    assert not any(
        e.subtask_changed.subtask.state == pb.SUBTASK_STATE_CANCELLED
        for e in events
        if e.HasField("subtask_changed")
    )
    reasons = [e.state_changed.reason for e in events if e.HasField("state_changed")]
    assert any(r.startswith("resumed by staying") for r in reasons), reasons
