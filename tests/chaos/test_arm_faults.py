"""Arm faults in one orchestrator process: an arm frozen without FIN, an arm killed with -9,
a dispatch no arm can read or receive. Every accepted task ends terminal with a consistent history.

The faulty arms are real `octollm arm sleep` processes, so they can be frozen (SIGSTOP: the
kernel keeps the TCP connection open and acknowledges data, the process answers nothing, not
even HTTP/2 pings) and killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk import Arm, SubtaskInput
from arm_sdk.grpc_options import MAX_MESSAGE_BYTES
from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.server import Orchestrator
from tests.chaos.history import assert_consistent_history, finished_history

GOAL = "Survive arm faults without losing work"
# NOTE: hang guards on a busy 2-core machine, not speed targets.
WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ArmProcess = tuple[subprocess.Popen[bytes], str]


@pytest.fixture
async def arm_process() -> AsyncIterator[Callable[[], Any]]:
    """Start `octollm arm sleep` processes; each is continued (if frozen) and killed after."""
    procs: list[subprocess.Popen[bytes]] = []

    async def start() -> ArmProcess:
        address = f"127.0.0.1:{free_port()}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator_svc.cli", "arm", "sleep", "--listen", address],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        async with grpc.aio.insecure_channel(address) as channel:
            await asyncio.wait_for(channel.channel_ready(), WAIT_S)
        return proc, address

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait()


async def routable_with_credit(orch: Orchestrator, n: int) -> None:
    """Wait until `n` arms are routable and hold credit (Credit follows Hello)."""
    async with asyncio.timeout(WAIT_S):
        while len([c for c in orch.mesh.arms() if c.routable and c.credits > 0]) < n:
            await asyncio.sleep(0.01)


async def running_on(orch: Orchestrator, arm_id: str, n: int = 1) -> None:
    """Wait until `n` subtasks are in flight on `arm_id` and past their Accepted."""
    async with asyncio.timeout(WAIT_S):
        while True:
            conn = orch.mesh.arm(arm_id)
            if conn is not None and len(conn.in_flight) >= n:
                return
            await asyncio.sleep(0.01)


def sleep_plan(*step_ids: str, seconds: float) -> pb.Plan:
    plan = pb.Plan()
    for step_id in step_ids:
        plan.steps.add(step_id=step_id, arm_type="sleep").input.update({"seconds": seconds})
    return plan


def counting_sleep_arm(runs: Counter[tuple[str, int]]) -> Arm:
    """A sleep arm in this process that counts the (subtask_id, attempt) pairs it runs."""
    arm = Arm(arm_type="sleep", capabilities=("sleep",))

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        runs[(inp.subtask_id, inp.attempt)] += 1
        await asyncio.sleep(float(inp.input.get("seconds", 0.1)))
        return {"slept": inp.input.get("seconds", 0.1)}

    return arm


async def test_frozen_arm_is_dropped_by_keepalive_and_its_subtask_fails_over(
    arm_process, start_arm, start_orchestrator, connect, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A SIGSTOPped arm is dropped by keepalive; its subtask reruns on the replica."""
    # NOTE: the production keepalive, five times faster (10 s + 5 s would be 15 s): only the
    # timers the production options set are scaled, so a missing one still fails the test.
    import orchestrator_svc.server as server_module

    timers = ("grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms", "grpc.http2.ping_timeout_ms")
    fast = tuple(
        (name, value // 5 if name in timers else value)
        for name, value in server_module.CHANNEL_OPTIONS
    )
    monkeypatch.setattr(server_module, "CHANNEL_OPTIONS", fast)
    proc, frozen_address = await arm_process()
    survivor = await start_arm(REFERENCE_ARMS["sleep"]())
    orch = await start_orchestrator(
        [frozen_address, survivor.address], wait_for=("sleep",), subtask_timeout_s=WAIT_S
    )
    await routable_with_credit(orch, 2)
    frozen_id = next(c.arm_id for c in orch.mesh.arms() if c.address == frozen_address)
    stub = connect(orch.address)
    plan = sleep_plan("left", "right", seconds=1.0)
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=plan))).task
    await running_on(orch, frozen_id)
    os.kill(proc.pid, signal.SIGSTOP)
    events, done = await finished_history(stub, task.task_id, timeout_s=WAIT_S)
    assert_consistent_history(events, done)
    assert done.state == pb.TASK_STATE_SUCCEEDED
    assert {s.provenance.arm_id for s in done.subtasks} == {survivor.arm_id}
    assert max(s.attempt for s in done.subtasks) == 2
    assert proc.poll() is None, "the arm was frozen, not dead"


async def test_frozen_arm_without_a_replica_fails_its_step_on_the_deadline(
    arm_process, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """With the only arm frozen, deadlines end 3 attempts; the task FAILS DEADLINE_EXCEEDED."""
    proc, frozen_address = await arm_process()
    orch = await start_orchestrator([frozen_address], wait_for=("sleep",), subtask_timeout_s=0.8)
    await routable_with_credit(orch, 1)
    frozen_id = orch.mesh.arms()[0].arm_id
    stub = connect(orch.address)
    task = (
        await stub.SubmitTask(
            pb.SubmitTaskRequest(goal=GOAL, plan=sleep_plan("stuck", seconds=0.7))
        )
    ).task
    await running_on(orch, frozen_id)
    os.kill(proc.pid, signal.SIGSTOP)
    events, done = await finished_history(stub, task.task_id, timeout_s=WAIT_S)
    assert_consistent_history(events, done)
    assert done.state == pb.TASK_STATE_FAILED
    deadline = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert (done.failure.code, done.failure.reason) == (deadline, "SUBTASK_TIMEOUT")
    (step,) = done.subtasks
    assert step.state == pb.SUBTASK_STATE_FAILED
    assert step.attempt == 3  # the first try and two retries
    assert step.failure.code == deadline


async def test_arm_killed_under_load_loses_and_repeats_nothing(
    arm_process, start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """kill -9 under load: all tasks succeed, each lost subtask reruns exactly once."""
    proc, doomed_address = await arm_process()
    runs: Counter[tuple[str, int]] = Counter()
    survivor = await start_arm(counting_sleep_arm(runs))
    orch = await start_orchestrator([doomed_address, survivor.address], wait_for=("sleep",))
    await routable_with_credit(orch, 2)
    doomed_id = next(c.arm_id for c in orch.mesh.arms() if c.address == doomed_address)
    stub = connect(orch.address)
    tasks = [
        (
            await stub.SubmitTask(
                pb.SubmitTaskRequest(
                    goal=f"{GOAL} {i}", plan=sleep_plan("a", "b", "c", seconds=1.0)
                )
            )
        ).task
        for i in range(4)
    ]
    await running_on(orch, doomed_id, n=3)
    # NOTE: every one of the 12 subtasks dispatched before the kill, so the lost ones are
    # exactly those in flight on the doomed arm (none is sent to it after).
    async with asyncio.timeout(WAIT_S):
        while sum(len(c.in_flight) for c in orch.mesh.arms()) < 12:
            await asyncio.sleep(0.01)
    lost = set(orch.mesh.arm(doomed_id).in_flight)  # type: ignore[union-attr]
    os.kill(proc.pid, signal.SIGKILL)
    histories = await asyncio.gather(
        *(finished_history(stub, t.task_id, timeout_s=WAIT_S) for t in tasks)
    )
    assert proc.wait(5) == -signal.SIGKILL
    for events, done in histories:
        assert_consistent_history(events, done)
        assert done.state == pb.TASK_STATE_SUCCEEDED
        for sub in done.subtasks:
            assert sub.provenance.arm_id == survivor.arm_id
            assert sub.attempt == (2 if sub.subtask_id in lost else 1)
    assert all(n == 1 for n in runs.values()), runs
    assert {s for s, attempt in runs if attempt == 2} == lost


async def test_dispatch_no_arm_can_read_fails_its_step_not_the_arm(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """An echo chain whose outputs nest deeper each step fails once, precisely, before its
    dispatches could break a stream: OUTPUT_TOO_DEEP (no reader could parse it), not ARM_LOST."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([echo.address], wait_for=("echo",))
    stub = connect(orch.address)
    plan = pb.Plan()
    for i in range(15):
        plan.steps.add(step_id=f"s{i}", arm_type="echo", depends_on=[f"s{i - 1}"] if i else [])
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=plan))).task
    events, done = await finished_history(stub, task.task_id, timeout_s=WAIT_S)
    assert_consistent_history(events, done)
    assert done.state == pb.TASK_STATE_FAILED
    assert done.failure.reason == "OUTPUT_TOO_DEEP"
    assert done.failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    failed = [s for s in done.subtasks if s.state == pb.SUBTASK_STATE_FAILED]
    assert len(failed) == 1
    assert failed[0].attempt == 1
    short = pb.Plan()
    short.steps.add(step_id="one", arm_type="echo")
    again = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=short))).task
    _, fine = await finished_history(stub, again.task_id, timeout_s=WAIT_S)
    assert fine.state == pb.TASK_STATE_SUCCEEDED


async def test_dispatch_larger_than_the_stream_carries_fails_once(
    start_arm, start_orchestrator
) -> None:  # type: ignore[no-untyped-def]
    """A dispatch over 16 MiB breaks one stream, then fails DISPATCH_TOO_LARGE."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([echo.address], wait_for=("echo",))
    await routable_with_credit(orch, 1)
    huge = arm_pb.Dispatch(subtask_id="huge", attempt=1)
    huge.input.update({"blob": "x" * (MAX_MESSAGE_BYTES + 1)})
    outcome = await orch.mesh.execute("echo", huge, timeout_s=WAIT_S)
    assert outcome.failure is not None
    assert (outcome.failure.reason, outcome.failure.retryable) == ("DISPATCH_TOO_LARGE", False)
    assert outcome.attempt == 1
    await routable_with_credit(orch, 1)
    fine = await orch.mesh.execute("echo", arm_pb.Dispatch(subtask_id="fine"), timeout_s=WAIT_S)
    assert fine.result is not None
