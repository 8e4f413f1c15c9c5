"""Per-client limits: request rate (RESOURCE_EXHAUSTED + RetryInfo) and unfinished tasks."""

from __future__ import annotations

import grpc
import pytest
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.security import RateLimit, TaskQuota
from tests.security.rpc import error_info, retry_info


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def test_rate_limit_returns_resource_exhausted_with_retry_info(
    start_orchestrator,  # type: ignore[no-untyped-def]
    connect,
) -> None:
    """Past the burst a client gets RESOURCE_EXHAUSTED with RetryInfo; other clients go on."""
    orch = await start_orchestrator([], auth_tokens="a:tok-a,b:tok-b", rate_limit_rps=0.01)
    stub = connect(orch.address)
    await stub.ListArms(pb.ListArmsRequest(), metadata=bearer("tok-a"), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListArms(pb.ListArmsRequest(), metadata=bearer("tok-a"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "RATE_LIMITED"
    assert info.metadata["identity"] == "a"
    delay = retry_info(caught.value).retry_delay
    assert delay.seconds + delay.nanos / 1e9 > 1
    await stub.ListArms(pb.ListArmsRequest(), metadata=bearer("tok-b"), timeout=10)


async def test_rate_limit_without_auth_keys_on_the_peer(
    start_orchestrator,  # type: ignore[no-untyped-def]
    connect,
) -> None:
    """With no tokens configured the limit applies per peer host."""
    orch = await start_orchestrator([], rate_limit_rps=0.01)
    stub = connect(orch.address)
    await stub.ListArms(pb.ListArmsRequest(), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListArms(pb.ListArmsRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).metadata["identity"] == "peer:127.0.0.1"


def test_token_bucket_refills_at_the_rate() -> None:
    """A bucket of 2 rps admits a burst of 2, then one request per half second."""
    now = [100.0]
    limit = RateLimit(2.0, clock=lambda: now[0])
    assert limit.wait_s("x") == 0
    assert limit.wait_s("x") == 0
    assert limit.wait_s("x") == pytest.approx(0.5)
    now[0] += 0.5
    assert limit.wait_s("x") == 0
    assert RateLimit(0).wait_s("x") == 0


def test_task_quota_prunes_finished_tasks() -> None:
    """Finished tasks free their slot; reservations in flight count against the limit."""
    running = {"t1"}
    quota = TaskQuota(2, running.__contains__)
    assert quota.reserve("c")
    quota.release("c", "t1")
    assert quota.reserve("c")
    assert not quota.reserve("c")  # t1 running + one submit in flight
    quota.release("c", None)
    running.clear()
    assert quota.reserve("c")
    assert quota.count("c") == 0


async def test_max_tasks_per_client(start_arm, start_orchestrator, connect) -> None:  # type: ignore[no-untyped-def]
    """A client at OCTOLLM_MAX_TASKS_PER_CLIENT unfinished tasks is refused until one ends."""
    sleep = await start_arm(REFERENCE_ARMS["sleep"]())
    orch = await start_orchestrator(
        [sleep.address], wait_for=("sleep",), auth_tokens="a:tok-a,b:tok-b", max_tasks_per_client=1
    )
    stub = connect(orch.address)
    plan = pb.Plan()
    step = plan.steps.add(step_id="s", arm_type="sleep", description="sleep")
    step.input.update({"seconds": 600})
    first = (
        await stub.SubmitTask(
            pb.SubmitTaskRequest(goal="sleep long", plan=plan), metadata=bearer("tok-a"), timeout=10
        )
    ).task
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitTask(
            pb.SubmitTaskRequest(goal="sleep again", plan=plan),
            metadata=bearer("tok-a"),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "TOO_MANY_TASKS"
    other = await stub.SubmitTask(
        pb.SubmitTaskRequest(goal="sleep for b", plan=plan), metadata=bearer("tok-b"), timeout=10
    )
    await stub.CancelTask(
        pb.CancelTaskRequest(task_id=first.task_id), metadata=bearer("tok-a"), timeout=10
    )
    await stub.CancelTask(
        pb.CancelTaskRequest(task_id=other.task.task_id), metadata=bearer("tok-b"), timeout=10
    )
    plan.steps[0].input.update({"seconds": 0})
    again = await stub.SubmitTask(
        pb.SubmitTaskRequest(goal="short sleep", plan=plan), metadata=bearer("tok-a"), timeout=10
    )
    assert again.task.task_id != first.task_id
