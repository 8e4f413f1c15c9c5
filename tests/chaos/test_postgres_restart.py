"""PostgreSQL restarted under running tasks: they continue after reconnecting, nothing lost.

Restarts the machine's PostgreSQL cluster (`pg_ctlcluster ... restart`, as root), so it needs
that tool; without it the test skips, or fails under CI. The cluster is started again even if
the test fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from arm_sdk.arms import REFERENCE_ARMS
from tests.chaos.durable import WAIT_S, check_history, fan_plan
from tests.tools import tool_unavailable

CLUSTERS = Path("/etc/postgresql")


def _cluster() -> list[str]:
    """The pg_ctlcluster arguments naming the local cluster, or a skip (a failure under CI)."""
    tool = shutil.which("pg_ctlcluster")
    versions = sorted(p.name for p in CLUSTERS.iterdir()) if CLUSTERS.is_dir() else []
    if tool is None or not versions or os.geteuid() != 0:
        tool_unavailable("restarting PostgreSQL needs pg_ctlcluster, a local cluster and root")
    return [tool, "--skip-systemctl-redirect", versions[-1], "main"]


async def _pg_ctl(cluster: list[str], action: str, *, check: bool = True) -> int:
    proc = await asyncio.create_subprocess_exec(
        *cluster, action, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    if check:
        assert proc.returncode == 0, f"pg_ctlcluster {action} failed: {err.decode()[-500:]}"
    return proc.returncode


@pytest.fixture
async def cluster() -> AsyncIterator[list[str]]:
    """The local cluster; whatever the test does, it is running again afterwards."""
    args = _cluster()
    yield args
    if await _pg_ctl(args, "status", check=False) != 0:  # 0: running, 3: stopped
        await _pg_ctl(args, "start")


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
    cluster, pg_dsn: str, start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """Restart PostgreSQL while 4 DAGs run: all succeed, each step's result recorded once."""
    sleeper = await start_arm(REFERENCE_ARMS["sleep"]())
    orch = await start_orchestrator([sleeper.address], wait_for=("sleep",), postgres_dsn=pg_dsn)
    stub = connect(orch.address)
    ids = []
    for i in range(4):
        request = pb.SubmitTaskRequest(goal=f"outlive the database restart {i}", plan=fan_plan(2.0))
        ids.append((await stub.SubmitTask(request, timeout=10)).task.task_id)
    for task_id in ids:
        async for reply in stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), timeout=WAIT_S):
            if reply.event.subtask_changed.subtask.state == pb.SUBTASK_STATE_DISPATCHED:
                break

    await _pg_ctl(cluster, "restart")

    histories = await asyncio.gather(*(_watch_through_outages(stub, i) for i in ids))
    for events in histories:
        check_history(events, steps=5)
