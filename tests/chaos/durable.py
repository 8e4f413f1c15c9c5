"""Helpers of the durability chaos tests: DAG plans, replicas, history checks."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections import Counter
from collections.abc import Sequence

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

LEASE_TTL_S = 1.5
# NOTE: hang guards for a 2-core machine, not speed targets.
WAIT_S = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fan_plan(seconds: float) -> pb.Plan:
    """1 -> 3 parallel -> 1 sleeps: the fan-out is in flight for `seconds`."""
    plan = pb.Plan()
    for step_id, depends_on, slept in (
        ("first", (), 0.1),
        ("left", ("first",), seconds),
        ("middle", ("first",), seconds),
        ("right", ("first",), seconds),
        ("last", ("left", "middle", "right"), 0.1),
    ):
        step = plan.steps.add(step_id=step_id, arm_type="sleep", depends_on=depends_on)
        step.input.update({"seconds": slept})
    return plan


async def history(stub: pb_grpc.OrchestratorServiceStub, task_id: str) -> list[pb.TaskEvent]:
    request = pb.WatchTaskRequest(task_id=task_id)
    return [r.event async for r in stub.WatchTask(request, timeout=WAIT_S)]


def check_history(events: Sequence[pb.TaskEvent], steps: int) -> Counter[str]:
    """One consistent log: contiguous seqs, one end, each step succeeded exactly once."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    ends = [e for e in events if e.HasField("finished")]
    assert len(ends) == 1
    assert ends[0] is events[-1]
    assert events[-1].finished.state == pb.TASK_STATE_SUCCEEDED
    succeeded = Counter(
        e.subtask_changed.subtask.step_id
        for e in events
        if e.HasField("subtask_changed")
        and e.subtask_changed.subtask.state == pb.SUBTASK_STATE_SUCCEEDED
    )
    assert len(succeeded) == steps
    assert set(succeeded.values()) == {1}
    outputs = json_format.MessageToDict(events[-1].finished.result.outputs)
    assert set(outputs) == set(succeeded)
    return succeeded


def attempts_of(events: Sequence[pb.TaskEvent]) -> dict[str, int]:
    """The attempt each step succeeded with."""
    return {
        e.subtask_changed.subtask.step_id: e.subtask_changed.subtask.attempt
        for e in events
        if e.HasField("subtask_changed")
        and e.subtask_changed.subtask.state == pb.SUBTASK_STATE_SUCCEEDED
    }


async def wait_serving(address: str, proc: subprocess.Popen[bytes]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + WAIT_S
        while True:
            assert proc.poll() is None, "the replica process exited during start-up"
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            assert loop.time() < give_up, "the replica never became SERVING"
            await asyncio.sleep(0.1)


async def wait_routable(stub: pb_grpc.OrchestratorServiceStub, arm_type: str) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + WAIT_S
    while True:
        arms = (await stub.ListArms(pb.ListArmsRequest(arm_type=arm_type), timeout=5)).arms
        if any(a.health == pb.ARM_HEALTH_SERVING and a.credits > 0 for a in arms):
            return
        assert loop.time() < give_up, f"no {arm_type} arm became routable"
        await asyncio.sleep(0.05)
