"""The Prometheus endpoint, scraped over HTTP after real traffic."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from octollm.v1 import orchestrator_service_pb2 as pb
from prometheus_client.parser import text_string_to_metric_families

from arm_sdk.arms import REFERENCE_ARMS


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


async def test_metrics_count_rpcs_tasks_subtasks_and_arms(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """After one good task and one bad request the counters and arm gauges say so."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([echo.address], wait_for=("echo",))
    assert orch.metrics_port > 0
    stub = connect(orch.address)
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal="Count me in the metrics"))).task
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
    finished = {"arm_type": "echo", "outcome": "succeeded"}
    assert value(samples, "octollm_subtasks_finished_total", **finished) == steps
    assert value(samples, "octollm_subtask_duration_seconds_count", arm_type="echo") == steps
    arm = {"arm_type": "echo", "arm_id": echo.arm_id}
    assert value(samples, "octollm_arm_routable", **arm) == 1
    assert value(samples, "octollm_arm_credits", **arm) > 0
    assert value(samples, "octollm_arm_in_flight", **arm) == 0
    assert value(samples, "octollm_dispatch_queue_depth", arm_type="echo") == 0
    assert value(samples, "octollm_store_append_seconds_count") > 0
