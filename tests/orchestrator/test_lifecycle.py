"""Orchestrator process edges: health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.arms import REFERENCE_ARMS

SERVICE = "octollm.v1.OrchestratorService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_check_overall_and_per_service(start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """grpc.health.v1 answers SERVING for "" and for OrchestratorService; unknown is NOT_FOUND."""
    orch = await start_orchestrator([])
    async with grpc.aio.insecure_channel(orch.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_services(start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """Server reflection lists the orchestrator, health and reflection services."""
    orch = await start_orchestrator([])
    async with grpc.aio.insecure_channel(orch.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


async def test_graceful_shutdown_flips_health_then_drains(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """On stop: health NOT_SERVING first, the running task still finishes, new work refused."""
    sleep = await start_arm(REFERENCE_ARMS["sleep"]())
    orch = await start_orchestrator([sleep.address], wait_for=("sleep",))
    stub = connect(orch.address)
    plan = pb.Plan()
    plan.steps.add(step_id="nap", arm_type="sleep").input.update({"seconds": 0.5})
    task = (
        await stub.SubmitTask(pb.SubmitTaskRequest(goal="Sleep through a shutdown", plan=plan))
    ).task

    async with grpc.aio.insecure_channel(orch.address) as channel:
        statuses: list[int] = []

        async def watch_health() -> None:
            call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            async for reply in call:
                statuses.append(reply.status)

        watcher = asyncio.create_task(watch_health())
        events = []
        stopping: asyncio.Task[None] | None = None
        async for response in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=20):
            events.append(response.event)
            if response.event.subtask_changed.subtask.state == pb.SUBTASK_STATE_RUNNING:
                stopping = asyncio.create_task(orch.stop(grace_s=10))
                while NOT_SERVING not in statuses:
                    await asyncio.sleep(0.01)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.SubmitTask(pb.SubmitTaskRequest(goal="Too late for this one"))
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert stopping is not None
        await asyncio.wait_for(stopping, 20)
        watcher.cancel()
    assert events[-1].finished.state == pb.TASK_STATE_SUCCEEDED
    assert statuses[:2] == [SERVING, NOT_SERVING]


async def test_a_close_that_hangs_does_not_hang_the_shutdown(
    start_arm, start_orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A shutdown step that never finishes is abandoned with a warning; the rest still runs."""
    import structlog

    from orchestrator_svc import server as server_module

    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([echo.address], wait_for=("echo",))
    monkeypatch.setattr(server_module, "STOP_STEP_TIMEOUT_S", 0.2)
    never = asyncio.Event()

    async def stuck_close() -> None:
        await never.wait()

    monkeypatch.setattr(orch.store, "close", stuck_close)
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(orch.stop(grace_s=0), 30)  # hang guard only
    abandoned = [e for e in logs if e["event"] == "shutdown_step_abandoned"]
    assert [e["step"] for e in abandoned] == ["store"]
    assert logs[-1]["event"] == "orchestrator_stopped"
    assert orch.mesh.arms() == []  # the steps around it ran: the arm channels are closed
