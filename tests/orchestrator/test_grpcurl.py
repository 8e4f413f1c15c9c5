"""The running server driven by the real grpcurl binary, with no proto files (reflection only)."""

from __future__ import annotations

import json

from orchestrator_svc.arms import REFERENCE_ARMS
from tests.role_arms import scribe
from tests.tools import grpcurl


async def test_grpcurl_list_describe_health_submit_get(start_arm, start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """grpcurl lists and describes services, checks and lists health, submits a task and reads
    it back."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    roles = await start_arm(scribe())
    orch = await start_orchestrator([echo.address, roles.address], wait_for=("echo", "scribe"))
    address = orch.address

    services = (await grpcurl(address, "list")).split()
    assert "octollm.v1.OrchestratorService" in services
    assert "grpc.health.v1.Health" in services

    described = await grpcurl(address, "describe", "octollm.v1.OrchestratorService")
    for rpc in (
        "SubmitTask",
        "GetTask",
        "ListTasks",
        "CancelTask",
        "WatchTask",
        "ListArms",
        "GetArm",
    ):
        assert f"rpc {rpc}" in described
    message = await grpcurl(address, "describe", "octollm.v1.SubmitTaskRequest")
    assert "goal" in message

    health = json.loads(await grpcurl(address, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}
    listed = json.loads(await grpcurl(address, "grpc.health.v1.Health/List"))
    assert listed["statuses"]["octollm.v1.OrchestratorService"] == {"status": "SERVING"}

    submitted = json.loads(
        await grpcurl(
            address,
            "octollm.v1.OrchestratorService/SubmitTask",
            data={"goal": "Say hello through grpcurl", "request_id": "grpcurl-1"},
        )
    )
    task_id = submitted["task"]["task_id"]
    assert submitted["task"]["state"] == "TASK_STATE_PENDING"

    watched = await grpcurl(
        address, "octollm.v1.OrchestratorService/WatchTask", data={"task_id": task_id}
    )
    assert "TASK_STATE_SUCCEEDED" in watched

    got = json.loads(
        await grpcurl(address, "octollm.v1.OrchestratorService/GetTask", data={"task_id": task_id})
    )
    assert got["task"]["state"] == "TASK_STATE_SUCCEEDED"
    assert "Say hello through grpcurl" in got["task"]["result"]["answer"]

    arms = json.loads(await grpcurl(address, "octollm.v1.OrchestratorService/ListArms"))
    assert arms["arms"][0]["descriptor"]["arm_type"] == "echo"
