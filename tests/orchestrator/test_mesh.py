"""The mesh against real arms: credits, deadlines, cancellation, failover, health, discovery."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import arm_service_pb2_grpc as arm_grpc
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk import Arm, SubtaskInput
from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.server import Orchestrator
from tests.chaos.history import assert_consistent_history

GOAL = "Exercise the mesh under test conditions"


def dispatch(subtask_id: str, **inputs: Any) -> arm_pb.Dispatch:
    d = arm_pb.Dispatch(subtask_id=subtask_id, attempt=1, task_id="t", step_id=subtask_id)
    d.input.update(inputs)
    return d


async def test_never_more_in_flight_than_credited(start_arm, start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """With max_concurrency 2, an arm never runs more than 2 of 30 queued subtasks at once."""
    arm = Arm(arm_type="narrow", max_concurrency=2)
    running = peak = 0

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return {"n": inp.input["n"]}

    server = await start_arm(arm)
    orch = await start_orchestrator([server.address], wait_for=("narrow",))
    outcomes = await asyncio.gather(
        *(orch.mesh.execute("narrow", dispatch(f"s{i}", n=i), timeout_s=30) for i in range(30))
    )
    assert [o.result.output["n"] for o in outcomes if o.result] == list(range(30))
    assert peak == 2
    (conn,) = orch.mesh.arms()
    assert not conn.in_flight
    async with asyncio.timeout(10):  # the last Credit follows the last Result on the wire
        while conn.credits < 2:
            await asyncio.sleep(0.01)
    assert conn.credits == 2


async def test_cancelled_queued_subtasks_are_never_dispatched(
    start_arm, start_orchestrator
) -> None:  # type: ignore[no-untyped-def]
    """40 subtasks wait for one credit; cancelling 25 of them drops them from the queue (its
    depth says so) and only the other 15 ever reach the arm."""
    arm = Arm(arm_type="narrow", max_concurrency=1)
    release = asyncio.Event()
    seen: list[int] = []

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        seen.append(int(inp.input["n"]))
        await release.wait()
        return {"n": inp.input["n"]}

    server = await start_arm(arm)
    orch = await start_orchestrator([server.address], wait_for=("narrow",))
    calls = [
        asyncio.create_task(orch.mesh.execute("narrow", dispatch(f"s{i}", n=i), timeout_s=60))
        for i in range(40)
    ]
    async with asyncio.timeout(10):
        while orch.mesh.queue_depths().get("narrow") != 39:
            await asyncio.sleep(0.01)
    doomed = [calls[i] for i in range(1, 40) if i % 3 != 0][:25]
    for call in doomed:
        call.cancel()
    await asyncio.wait(doomed)
    assert orch.mesh.queue_depths()["narrow"] == 39 - 25
    release.set()
    kept = [c for c in calls if c not in doomed]
    outcomes = await asyncio.gather(*kept)
    assert all(o.result is not None for o in outcomes)
    assert sorted(seen) == sorted(int(o.result.output["n"]) for o in outcomes if o.result)
    assert len(seen) == 15
    assert orch.mesh.queue_depths()["narrow"] == 0


async def test_deadline_is_sent_and_enforced(start_arm, start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """A subtask past its deadline fails DEADLINE_EXCEEDED and the arm's handler is cancelled."""
    seen_timeout: list[float | None] = []
    cancelled = asyncio.Event()
    arm = Arm(arm_type="stuck")

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        seen_timeout.append(inp.timeout)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    server = await start_arm(arm)
    orch = await start_orchestrator([server.address], wait_for=("stuck",))
    outcome = await orch.mesh.execute("stuck", dispatch("late"), timeout_s=0.3)
    assert outcome.failure is not None
    assert outcome.failure.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert outcome.failure.retryable
    assert seen_timeout
    assert seen_timeout[0] is not None
    assert 0 < seen_timeout[0] <= 0.3
    await asyncio.wait_for(cancelled.wait(), 10)


async def test_unknown_arm_type_fails_fast(start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """Dispatching to a type no arm serves is an UNAVAILABLE outcome, not a hang."""
    orch = await start_orchestrator([])
    outcome = await orch.mesh.execute("nobody", dispatch("x"), timeout_s=5)
    assert outcome.failure is not None
    assert outcome.failure.reason == "NO_ARM_FOR_TYPE"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def arm_process() -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """A sleep arm in its own process (`octollm arm sleep`), so it can be killed with -9."""
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator_svc.cli", "arm", "sleep", "--listen", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
    yield proc, address
    if proc.poll() is None:
        proc.kill()
    proc.wait()


async def test_arm_killed_mid_subtask_fails_over_to_a_replica(
    arm_process, start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of an arm running a subtask re-dispatches it (attempt 2) to the other replica."""
    proc, doomed_address = arm_process
    survivor = await start_arm(REFERENCE_ARMS["sleep"]())
    orch: Orchestrator = await start_orchestrator(
        [doomed_address, survivor.address], wait_for=("sleep",)
    )
    async with asyncio.timeout(10):  # routable and holding credit (Credit follows Hello)
        while len([c for c in orch.mesh.arms() if c.routable and c.credits > 0]) < 2:
            await asyncio.sleep(0.01)
    doomed_id = next(c.arm_id for c in orch.mesh.arms() if c.address == doomed_address)
    plan = pb.Plan()
    for step_id in ("left", "right"):
        step = plan.steps.add(step_id=step_id, arm_type="sleep", description=step_id)
        step.input.update({"seconds": 1.5})
    stub = connect(orch.address)
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=plan))).task
    events = []
    async for response in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        events.append(response.event)
        sub = response.event.subtask_changed.subtask
        if sub.state == pb.SUBTASK_STATE_RUNNING and sub.arm_id == doomed_id:
            os.kill(proc.pid, signal.SIGKILL)
        if response.event.HasField("finished"):
            break
    done = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert_consistent_history(events, done)
    assert done.state == pb.TASK_STATE_SUCCEEDED
    assert proc.wait(5) == -signal.SIGKILL
    assert {s.provenance.arm_id for s in done.subtasks} == {survivor.arm_id}
    assert sorted(s.attempt for s in done.subtasks) == [1, 2]


async def test_dns_target_discovers_every_address(start_arm, start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """`dns:///localhost:PORT` dials what localhost resolves to and routes to the arm there."""
    server = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([f"dns:///localhost:{server.port}"], wait_for=("echo",))
    assert [c.address for c in orch.mesh.arms() if c.routable] == [f"127.0.0.1:{server.port}"]
    outcome = await orch.mesh.execute("echo", dispatch("via-dns", word="hi"), timeout_s=10)
    assert outcome.result is not None
    assert outcome.result.output["echo"]["word"] == "hi"


class UnrulyArm(arm_grpc.ArmServiceServicer):
    """A hand-written arm that breaks the protocol in every way short of not answering."""

    def __init__(self, hello: bool = True) -> None:
        self.hello = hello

    async def DescribeArm(self, request: Any, context: Any) -> arm_pb.DescribeArmResponse:
        return arm_pb.DescribeArmResponse()

    async def Execute(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[arm_pb.ExecuteResponse]:
        if not self.hello:
            yield arm_pb.ExecuteResponse(credit=arm_pb.Credit(n=5))
            await asyncio.sleep(60)
        descriptor = arm_pb.ArmDescriptor(arm_id="unruly-1", arm_type="unruly")
        yield arm_pb.ExecuteResponse(hello=arm_pb.Hello(descriptor=descriptor))
        yield arm_pb.ExecuteResponse(credit=arm_pb.Credit(n=-5))
        yield arm_pb.ExecuteResponse(credit=arm_pb.Credit(n=10))
        async for req in request_iterator:
            if not req.HasField("dispatch"):
                continue
            d = req.dispatch
            yield arm_pb.ExecuteResponse(result=arm_pb.Result(subtask_id="nobody-asked"))
            yield arm_pb.ExecuteResponse()
            yield arm_pb.ExecuteResponse(hello=arm_pb.Hello(descriptor=descriptor))
            yield arm_pb.ExecuteResponse(
                progress=arm_pb.Progress(subtask_id=d.subtask_id, fraction=7)
            )
            yield arm_pb.ExecuteResponse(
                result=arm_pb.Result(subtask_id=d.subtask_id, attempt=d.attempt + 5)
            )
            for _ in range(2):  # the second one is a duplicate
                result = arm_pb.Result(subtask_id=d.subtask_id, attempt=d.attempt, confidence=0.5)
                result.output.update({"ok": True})
                yield arm_pb.ExecuteResponse(result=result)


async def start_raw_arm(servicer: arm_grpc.ArmServiceServicer) -> tuple[grpc.aio.Server, str]:
    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.aio.server()
    arm_grpc.add_ArmServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, f"127.0.0.1:{port}"


async def test_misbehaving_arm_is_ignored_not_fatal(start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """Garbage, unknown ids, stale attempts and duplicates are ignored; the real result counts."""
    server, address = await start_raw_arm(UnrulyArm())
    try:
        orch = await start_orchestrator([address], wait_for=("unruly",))
        outcomes = await asyncio.gather(
            *(orch.mesh.execute("unruly", dispatch(f"u{i}"), timeout_s=10) for i in range(5))
        )
        assert all(o.result is not None and o.result.output["ok"] for o in outcomes)
        (conn,) = orch.mesh.arms()
        assert conn.routable
        assert not conn.in_flight
    finally:
        await server.stop(0)


async def test_arm_without_hello_never_gets_traffic(start_arm, start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """An arm whose stream does not start with Hello is dropped; other arms keep serving."""
    server, address = await start_raw_arm(UnrulyArm(hello=False))
    try:
        echo = await start_arm(REFERENCE_ARMS["echo"]())
        orch = await start_orchestrator([address, echo.address], wait_for=("echo",))
        assert [c.arm_type for c in orch.mesh.arms()] == ["echo"]
        outcome = await orch.mesh.execute("echo", dispatch("fine"), timeout_s=10)
        assert outcome.result is not None
    finally:
        await server.stop(0)


async def test_arm_id_cannot_be_taken_over_by_another_address(
    start_arm, start_orchestrator
) -> None:  # type: ignore[no-untyped-def]
    """A second endpoint claiming an existing arm id is refused; the first keeps it."""
    first = await start_arm(REFERENCE_ARMS["echo"](arm_id="echo-fixed"))
    orch = await start_orchestrator([first.address], wait_for=("echo",))
    impostor = await start_arm(REFERENCE_ARMS["echo"](arm_id="echo-fixed"))
    orch.mesh.add(impostor.address)
    await asyncio.sleep(0.5)
    arm = orch.mesh.arm("echo-fixed")
    assert arm is not None
    assert arm.address == first.address
    assert [c.address for c in orch.mesh.arms() if c.routable] == [first.address]


async def test_health_watch_removes_and_restores_an_arm(start_arm, start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """NOT_SERVING takes an arm out of routing (work goes to its replica); SERVING restores it."""
    first = await start_arm(REFERENCE_ARMS["echo"]())
    second = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([first.address, second.address], wait_for=("echo",))

    def routable() -> set[str]:
        return {c.address for c in orch.mesh.arms() if c.routable}

    await asyncio.wait_for(orch.mesh.wait_until(lambda: len(routable()) == 2), 10)
    await first.set_serving(False)
    # Health Watch is pushed by the arm, so this is prompt; the guard only catches a hang.
    await asyncio.wait_for(orch.mesh.wait_until(lambda: routable() == {second.address}), 10)
    arm = orch.mesh.arm(first.arm_id)
    assert arm is not None
    assert arm.health == pb.ARM_HEALTH_NOT_SERVING
    outcomes = await asyncio.gather(
        *(orch.mesh.execute("echo", dispatch(f"h{i}"), timeout_s=10) for i in range(10))
    )
    assert {o.arm_id for o in outcomes} == {second.arm_id}

    await first.set_serving(True)
    await asyncio.wait_for(orch.mesh.wait_until(lambda: len(routable()) == 2), 10)
    assert arm.health == pb.ARM_HEALTH_SERVING


async def test_broken_stream_removes_arm_and_reconnect_restores_it(start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """An arm that goes away is unroutable at once, and is used again when it comes back."""
    port = free_port()
    arm = REFERENCE_ARMS["echo"](arm_id="echo-phoenix")
    server = await arm.start(f"127.0.0.1:{port}")
    orch = await start_orchestrator([f"127.0.0.1:{port}"], wait_for=("echo",))
    await server.drain(grace=0)
    await asyncio.wait_for(
        orch.mesh.wait_until(lambda: "echo" not in orch.mesh.routable_types()), 10
    )
    reborn = await REFERENCE_ARMS["echo"](arm_id="echo-phoenix").start(f"127.0.0.1:{port}")
    try:
        await asyncio.wait_for(
            orch.mesh.wait_until(lambda: "echo" in orch.mesh.routable_types()), 20
        )
        outcome = await orch.mesh.execute("echo", dispatch("again"), timeout_s=10)
        assert outcome.result is not None
        assert outcome.arm_id == "echo-phoenix"
    finally:
        await reborn.drain(grace=0)


async def test_deadline_already_past_is_not_dispatched(start_arm, start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """A subtask whose deadline has passed fails DEADLINE_EXCEEDED without reaching the arm."""
    server = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([server.address], wait_for=("echo",))
    outcome = await orch.mesh.execute("echo", dispatch("stale"), timeout_s=-0.5)
    assert outcome.failure is not None
    assert outcome.failure.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    (conn,) = orch.mesh.arms()
    assert conn.stats.succeeded == 0


async def test_unavailable_arm_is_known_but_never_routed(start_arm, start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """An arm whose `available` check fails serves NOT_SERVING: listed, never routed to, and a
    subtask for its type fails at once with ARM_NOT_SERVING (not at its deadline)."""
    lame = Arm(arm_type="lame", available=lambda: False)

    @lame.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        raise AssertionError("an unavailable arm got work")

    server = await start_arm(lame)
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([server.address, echo.address], wait_for=("echo",))
    await asyncio.wait_for(
        orch.mesh.wait_until(lambda: orch.mesh.arm(server.arm_id) is not None), 10
    )
    arm = orch.mesh.arm(server.arm_id)
    assert arm is not None
    assert arm.health == pb.ARM_HEALTH_NOT_SERVING
    assert "lame" not in orch.mesh.routable_types()
    outcome = await orch.mesh.execute("lame", dispatch("nope"), timeout_s=60)
    assert outcome.failure is not None
    assert outcome.failure.reason == "ARM_NOT_SERVING"
    assert outcome.failure.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert not outcome.failure.retryable
    assert outcome.failure.metadata["arm_type"] == "lame"
    assert "not serving" in outcome.failure.metadata["arm_reason"]
