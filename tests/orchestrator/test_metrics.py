"""The Prometheus endpoint, scraped over HTTP after real traffic."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import arm_service_pb2_grpc as arm_grpc
from octollm.v1 import orchestrator_service_pb2 as pb
from prometheus_client.parser import text_string_to_metric_families

from orchestrator_svc.arms import REFERENCE_ARMS
from tests.role_arms import scribe


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on /metrics, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)  # type: ignore[no-any-return]


def total(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    """The sum of `name` over every sample carrying `labels` (and any others, e.g. grpc_code)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= set(have))


EXECUTE = {
    "grpc_type": "bidi_stream",
    "grpc_service": "octollm.v1.ArmService",
    "grpc_method": "Execute",
}
WATCH = {
    "grpc_type": "server_stream",
    "grpc_service": "grpc.health.v1.Health",
    "grpc_method": "Watch",
}


async def test_metrics_count_rpcs_tasks_subtasks_and_arms(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """After one good task and one bad request the counters and arm gauges say so."""
    arm_server = await start_arm(scribe())
    orch = await start_orchestrator([arm_server.address], wait_for=("scribe",))
    assert orch.metrics_port > 0
    stub = connect(orch.address)
    plan = pb.Plan()
    plan.steps.add(step_id="count", arm_type="scribe").input.update(
        {"text": "Counted: one task, one step, one echo arm."}
    )
    request = pb.SubmitTaskRequest(goal="Count me in the metrics", plan=plan)
    task = (await stub.SubmitTask(request)).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.SubmitTask(pb.SubmitTaskRequest(goal="short"))

    samples = await asyncio.to_thread(scrape, orch.metrics_port)
    rpc = {"grpc_service": "octollm.v1.OrchestratorService", "grpc_type": "unary"}
    assert value(samples, "grpc_server_started_total", grpc_method="SubmitTask", **rpc) == 2
    assert (
        value(samples, "grpc_server_handled_total", grpc_method="SubmitTask", grpc_code="OK", **rpc)
        == 1
    )
    assert (
        value(
            samples,
            "grpc_server_handled_total",
            grpc_method="SubmitTask",
            grpc_code="INVALID_ARGUMENT",
            **rpc,
        )
        == 1
    )
    watch = {**rpc, "grpc_type": "server_stream", "grpc_method": "WatchTask"}
    assert value(samples, "grpc_server_handled_total", grpc_code="OK", **watch) == 1
    assert value(samples, "octollm_tasks_accepted_total") == 1
    assert value(samples, "octollm_tasks_finished_total", state="succeeded") == 1
    steps = len((await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task.subtasks)
    assert steps >= 1
    finished = {"arm_type": "scribe", "outcome": "succeeded"}
    assert value(samples, "octollm_subtasks_finished_total", **finished) == steps
    assert value(samples, "octollm_subtask_duration_seconds_count", arm_type="scribe") == steps
    arm = {"arm_type": "scribe", "arm_id": arm_server.arm_id}
    assert value(samples, "octollm_arm_routable", **arm) == 1
    assert value(samples, "octollm_arm_credits", **arm) > 0
    assert value(samples, "octollm_arm_in_flight", **arm) == 0
    assert value(samples, "octollm_dispatch_queue_depth", arm_type="scribe") == 0
    assert value(samples, "octollm_store_append_seconds_count") > 0


async def test_client_metrics_count_the_calls_to_arms(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """After a task, the Execute stream and the health Watch to the arm are counted as started,
    with every message; once the arm stops, as handled with their code and duration."""
    echo = await start_arm(scribe())
    orch = await start_orchestrator([echo.address], wait_for=("scribe",))
    stub = connect(orch.address)
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal="Count my calls to the arm"))).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    steps = len((await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task.subtasks)
    assert steps >= 1

    samples = await asyncio.to_thread(scrape, orch.metrics_port)
    assert value(samples, "grpc_client_started_total", **EXECUTE) >= 1
    assert value(samples, "grpc_client_started_total", **WATCH) >= 1
    assert value(samples, "grpc_client_msg_sent_total", **EXECUTE) >= steps  # the dispatches
    # Hello, then a Result for every step (and Accepted and Credit messages).
    assert value(samples, "grpc_client_msg_received_total", **EXECUTE) >= steps + 1
    assert value(samples, "grpc_client_msg_sent_total", **WATCH) >= 1
    assert value(samples, "grpc_client_msg_received_total", **WATCH) >= 1  # SERVING
    assert total(samples, "grpc_client_handled_total", **EXECUTE) == 0  # still open

    await echo.drain(grace=0)
    async with asyncio.timeout(30):  # hang guard
        while True:
            samples = await asyncio.to_thread(scrape, orch.metrics_port)
            if total(samples, "grpc_client_handled_total", **WATCH) >= 1 and value(
                samples, "grpc_client_handled_total", grpc_code="OK", **EXECUTE
            ):
                break
            await asyncio.sleep(0.05)
    # NOTE: the drained arm ends its Execute streams with OK; later reconnects fail UNAVAILABLE.
    assert value(samples, "grpc_client_handled_total", grpc_code="OK", **EXECUTE) == 1
    assert value(samples, "grpc_client_handling_seconds_count", **EXECUTE) >= 1
    assert value(samples, "grpc_client_handling_seconds_count", **WATCH) >= 1


async def test_client_interceptors_count_unary_calls_by_code(start_arm, start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """The interceptors the orchestrator puts on its arm channels count unary calls (here
    DescribeArm and a health Check of an unknown service) with their status codes."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([echo.address], wait_for=("echo",))
    interceptors = orch.metrics.client.interceptors()
    async with grpc.aio.insecure_channel(echo.address, interceptors=interceptors) as channel:
        described = await arm_grpc.ArmServiceStub(channel).DescribeArm(
            arm_pb.DescribeArmRequest(), timeout=10
        )
        assert described.descriptor.arm_id == echo.arm_id
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    samples = await asyncio.to_thread(scrape, orch.metrics_port)
    describe = {
        "grpc_type": "unary",
        "grpc_service": "octollm.v1.ArmService",
        "grpc_method": "DescribeArm",
    }
    assert value(samples, "grpc_client_started_total", **describe) == 1
    assert value(samples, "grpc_client_handled_total", grpc_code="OK", **describe) == 1
    assert value(samples, "grpc_client_handling_seconds_count", **describe) == 1
    assert value(samples, "grpc_client_msg_sent_total", **describe) == 1
    assert value(samples, "grpc_client_msg_received_total", **describe) == 1
    check = {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
    assert value(samples, "grpc_client_handled_total", grpc_code="NOT_FOUND", **check) == 1
    assert value(samples, "grpc_client_msg_received_total", **check) == 0
