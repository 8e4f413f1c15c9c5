"""Budgets the server cannot honour are refused at SubmitTask, through a real client."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.arms import REFERENCE_ARMS
from tests.llm.fake_openai import FakeOpenAI, completion

GOAL = "Echo a greeting within a small budget"


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    raw = dict(exc.trailing_metadata() or ())["grpc-status-details-bin"]
    info = error_details_pb2.ErrorInfo()
    assert status_pb2.Status.FromString(raw).details[0].Unpack(info)
    return info


def echo_plan() -> pb.Plan:
    plan = pb.Plan()
    plan.steps.add(step_id="say", arm_type="echo").input.update({"text": "hello"})
    return plan


async def test_cost_budget_without_prices_is_refused_at_submit(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """With no LLM prices configured, max_cost_usd is FAILED_PRECONDITION
    COST_BUDGET_UNENFORCEABLE on field budget.max_cost_usd, and no task is created."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([echo.address], wait_for=("echo",))
    stub = connect(orch.address)
    request = pb.SubmitTaskRequest(
        goal=GOAL, plan=echo_plan(), budget=common_pb2.Budget(max_cost_usd=0.05)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitTask(request)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == (
        "COST_BUDGET_UNENFORCEABLE",
        "budget.max_cost_usd",
    )
    assert not (await stub.ListTasks(pb.ListTasksRequest())).tasks


async def test_cost_budget_with_an_llm_and_prices_is_accepted(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """With an LLM endpoint and its prices configured, the same request is accepted."""
    fake = await FakeOpenAI(lambda body, n: completion({"answer": "hello"})).start()
    try:
        echo = await start_arm(REFERENCE_ARMS["echo"]())
        orch = await start_orchestrator(
            [echo.address],
            wait_for=("echo",),
            llm_base_url=fake.base_url,
            llm_model="fake-model",
            llm_price_per_1k_prompt=0.01,
            llm_price_per_1k_completion=0.03,
        )
        stub = connect(orch.address)
        request = pb.SubmitTaskRequest(
            goal=GOAL, plan=echo_plan(), budget=common_pb2.Budget(max_cost_usd=0.05)
        )
        task = (await stub.SubmitTask(request)).task
        assert task.budget.max_cost_usd == 0.05
        await stub.CancelTask(pb.CancelTaskRequest(task_id=task.task_id))
    finally:
        await fake.close()


async def test_absurd_max_time_is_refused(start_arm, start_orchestrator, connect) -> None:  # type: ignore[no-untyped-def]
    """budget.max_time past the server's limit (OCTOLLM_MAX_TASK_TIME_S) is INVALID_ARGUMENT
    MAX_TIME_TOO_LONG on field budget.max_time; the limit itself is accepted."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([echo.address], wait_for=("echo",), max_task_time_s=60)
    stub = connect(orch.address)
    for seconds in (61, 315_576_000_000):
        request = pb.SubmitTaskRequest(goal=GOAL, plan=echo_plan())
        request.budget.max_time.seconds = seconds
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitTask(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(caught.value)
        assert (info.reason, info.metadata["field"], info.metadata["limit_s"]) == (
            "MAX_TIME_TOO_LONG",
            "budget.max_time",
            "60",
        )
    request = pb.SubmitTaskRequest(goal=GOAL, plan=echo_plan())
    request.budget.max_time.seconds = 60
    assert (await stub.SubmitTask(request)).task.task_id
