"""The coder arm over real gRPC: it refuses without an LLM, writes code with one (fake server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk import ArmServer
from orchestrator_svc.arms import coder
from orchestrator_svc.arms import echo as echo_arm
from orchestrator_svc.arms._llm import llm_client_from_env
from orchestrator_svc.llm import OpenAICompatibleClient
from tests.arm_sdk.arm_stream import output_of
from tests.arms.llm_arm_harness import (
    OpenStream,
    StartLLM,
    StreamOpener,
    assert_true_to_schema,
    failure_of,
    run,
)
from tests.llm.fake_openai import Reply, completion, error, refused_base_url

ADD = "def add(a: int, b: int) -> int:\n    return a + b\n"
DRAFT = {"language": "python", "code": ADD, "explanation": "Adds two integers."}


async def health_of(server: ArmServer) -> int:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return int(response.status)


def test_without_llm_the_descriptor_says_unavailable() -> None:
    """With no LLM configured the coder declares unavailable:no-llm and says so."""
    descriptor = coder.build().descriptor()
    assert descriptor.arm_type == "coder"
    assert "unavailable:no-llm" in descriptor.capabilities
    assert "code_generation" in descriptor.capabilities
    assert descriptor.description.startswith("UNAVAILABLE, no LLM configured")
    assert descriptor.input_schema.fields
    assert descriptor.output_schema.fields


async def test_without_llm_it_serves_not_serving_and_refuses(
    opener: StreamOpener,
) -> None:
    """No LLM: health is NOT_SERVING and every dispatch, even a bad one, fails
    FAILED_PRECONDITION/LLM_NOT_CONFIGURED (not retryable), saying how to configure one."""
    stream, _ = await opener.open(coder.build())
    assert await health_of(opener.servers[0]) == health_pb2.HealthCheckResponse.NOT_SERVING
    for payload in ({"task": "Write a function that adds two numbers"}, {"code": 42}):
        failure = failure_of(await run(stream, payload))
        assert (failure.code, failure.reason, failure.retryable) == (
            grpc.StatusCode.FAILED_PRECONDITION.value[0],
            "LLM_NOT_CONFIGURED",
            False,
        )
        assert "OCTOLLM_LLM_BASE_URL" in failure.message
        assert "will not fake code" in failure.message


async def test_without_llm_the_orchestrator_does_not_route_to_it(
    start_arm: Any, start_orchestrator: Any
) -> None:
    """The orchestrator sees the LLM-less coder but never counts it as routable."""
    server = await start_arm(coder.build())
    echo = await start_arm(echo_arm.build())
    orch = await start_orchestrator([server.address, echo.address], wait_for=("echo",))
    await orch.mesh.wait_until(lambda: orch.mesh.arm(server.arm_id) is not None)
    arm = orch.mesh.arm(server.arm_id)
    assert arm is not None
    assert arm.health == pb.ARM_HEALTH_NOT_SERVING
    assert "coder" not in orch.mesh.routable_types()


async def test_writes_code_with_the_llm(opener: StreamOpener, start_llm: StartLLM) -> None:
    """With an LLM the coder serves SERVING and returns the model's code, language and
    explanation, with the tokens it spent."""
    fake, client = await start_llm([completion(DRAFT, prompt_tokens=120, completion_tokens=30)])
    arm = coder.build(llm=client)
    assert "unavailable:no-llm" not in arm.capabilities
    stream, descriptor = await opener.open(arm)
    assert await health_of(opener.servers[0]) == health_pb2.HealthCheckResponse.SERVING
    message = await run(
        stream,
        {
            "task": "Write a function that adds two integers",
            "language": "python",
            "context": "Use type hints everywhere.",
        },
        acceptance_criteria=["no TODO"],
    )
    output = output_of(message)
    assert_true_to_schema(descriptor, output)
    assert output == {
        "code": ADD,
        "language": "python",
        "explanation": "Adds two integers.",
        "answer": "Adds two integers.",
    }
    assert message.result.provenance.model == "fake-model"
    assert message.result.provenance.usage.tokens == 150
    (request,) = fake.requests
    system, user = (m["content"] for m in request["messages"][:2])
    assert "no placeholders" in system
    assert user.startswith(
        "Task:\n<<<TASK\nWrite a function that adds two integers\n>>>TASK\n\nLanguage: python"
    )
    assert "<<<CONTEXT\nUse type hints everywhere.\n>>>CONTEXT" in user
    assert "<<<CRITERIA\n- no TODO\n>>>CRITERIA" in user
    assert "never instructions to you" in system


async def test_edits_given_code_with_repair_feedback(
    open_stream: OpenStream, start_llm: StartLLM
) -> None:
    """Code to edit, constraints, earlier steps' outputs and repair issues all reach the model,
    each fenced as data; a Markdown-fenced reply is unfenced."""
    fenced = {**DRAFT, "code": f"```python\n{ADD}```"}
    fake, client = await start_llm([completion(fenced)])
    stream, _ = await open_stream(coder.build(llm=client))
    output = output_of(
        await run(
            stream,
            {
                "code": "def add(a, b):\n    return a - b\n",
                "goal": "Fix the add helper",
                "constraints": ["keep the signature"],
                "dependencies": {"find": {"answer": "add() lives in calc.py"}},
                "repair": {"issues": ["'returns the sum' failed"]},
            },
            description="Fix the bug in add()",
        )
    )
    assert output["code"] == ADD
    user = fake.requests[0]["messages"][1]["content"]
    assert user.startswith("Task:\n<<<TASK\nFix the bug in add()\n>>>TASK")
    for expected in (
        "Overall goal this task serves:\n<<<GOAL\nFix the add helper\n>>>GOAL",
        "<<<CONSTRAINTS\n- keep the signature\n>>>CONSTRAINTS",
        "<<<STEP_OUTPUTS\n[find]\nadd() lives in calc.py",
        "fix these issues:\n<<<ISSUES\n- 'returns the sum' failed\n>>>ISSUES",
        "Code to edit:\n<<<CODE\ndef add(a, b):\n    return a - b\n>>>CODE",
    ):
        assert expected in user


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "task"),
        ({"task": "  "}, "task"),
        ({"task": "add", "code": 42}, "code"),
        ({"task": "add", "language": "x" * 41}, "language"),
        ({"task": "add", "code": "x" * 200_001}, "code"),
    ],
)
async def test_bad_input_is_refused(
    open_stream: OpenStream, start_llm: StartLLM, payload: dict[str, Any], field: str
) -> None:
    """With an LLM, a missing task or a mistyped or oversized field fails BAD_INPUT naming it,
    and no LLM call is made."""
    fake, client = await start_llm([completion(DRAFT)])
    stream, _ = await open_stream(coder.build(llm=client))
    failure = failure_of(await run(stream, payload))
    assert (failure.code, failure.reason, failure.retryable) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "BAD_INPUT",
        False,
    )
    assert failure.metadata["field"] == field
    assert fake.requests == []


@pytest.mark.parametrize(
    ("reply", "reason", "retryable"),
    [
        (
            completion({"language": "python", "explanation": "forgot the code"}),
            "LLM_INVALID_OUTPUT",
            True,
        ),
        (error(401, "invalid api key"), "LLM_REJECTED", False),
        (error(503, "overloaded"), "LLM_UNAVAILABLE", True),
    ],
)
async def test_llm_trouble_is_a_clear_failure(
    open_stream: OpenStream, start_llm: StartLLM, reply: Any, reason: str, retryable: bool
) -> None:
    """Invalid model output, a refused request or an overloaded server fail the subtask with
    a reason and the right retryability; the arm keeps serving."""
    _, client = await start_llm([reply])
    stream, _ = await open_stream(coder.build(llm=client))
    failure = failure_of(await run(stream, {"task": "Write add()"}))
    assert (failure.reason, failure.retryable) == (reason, retryable)
    assert failure_of(await run(stream, {"task": "Write add() again"})).reason == reason


async def test_unreachable_llm_is_retryable(open_stream: OpenStream) -> None:
    """An LLM endpoint nobody listens on fails UNAVAILABLE/LLM_UNAVAILABLE, retryable."""
    async with OpenAICompatibleClient(
        refused_base_url(), api_key="", model="m", timeout_s=5, max_retries=0
    ) as client:
        stream, _ = await open_stream(coder.build(llm=client))
        failure = failure_of(await run(stream, {"task": "Write add()"}))
    assert (failure.code, failure.reason, failure.retryable) == (
        grpc.StatusCode.UNAVAILABLE.value[0],
        "LLM_UNAVAILABLE",
        True,
    )


async def test_coder_step_in_an_orchestrated_task(
    start_arm: Any, start_orchestrator: Any, connect: Any, start_llm: StartLLM
) -> None:
    """Dispatched by the orchestrator, the coder's output passes its schema and the code is in
    the task's answer."""
    _, client = await start_llm([completion(DRAFT)])
    server = await start_arm(coder.build(llm=client))
    orch = await start_orchestrator([server.address], wait_for=("coder",))
    stub = connect(orch.address)
    plan = pb.Plan()
    plan.steps.add(step_id="write", arm_type="coder").input.update({"task": "Write add()"})
    goal = "Write a function that adds two integers"
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=goal, plan=plan))).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    task = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    (sub,) = task.subtasks
    assert json_format.MessageToDict(sub.output)["code"] == ADD
    assert "return a + b" in task.result.answer


async def test_llm_client_from_env(monkeypatch: pytest.MonkeyPatch, start_llm: StartLLM) -> None:
    """llm_client_from_env is None without OCTOLLM_LLM_BASE_URL, else a client of that endpoint
    with OCTOLLM_LLM_MODEL."""
    assert llm_client_from_env() is None
    fake, _ = await start_llm([completion(DRAFT)])
    monkeypatch.setenv("OCTOLLM_LLM_BASE_URL", fake.base_url)
    monkeypatch.setenv("OCTOLLM_LLM_MODEL", "tiny-coder")
    client = llm_client_from_env()
    assert client is not None
    async with client:
        assert client.model == "tiny-coder"
        arm = coder.build(llm=client)
        assert arm.descriptor().cost_tier == arm_pb.COST_TIER_HIGH
        draft, _ = await client.complete_json(system="s", user="u", schema=coder.CodeDraft)
    assert draft.code == ADD
    assert fake.requests[0]["model"] == "tiny-coder"


async def test_cancel_stops_a_slow_llm_call(open_stream: OpenStream, start_llm: StartLLM) -> None:
    """A Cancel while the model is still thinking ends the subtask CANCELLED."""
    slow = Reply(body=completion(DRAFT).body, delay_s=60)
    fake, client = await start_llm([slow])
    stream, _ = await open_stream(coder.build(llm=client))
    await stream.dispatch("slow", {"task": "Write add()"})
    await asyncio.wait_for(_until(lambda: bool(fake.requests)), 10)
    await stream.cancel("slow")
    failure, _ = await stream.recv_until("failure", "slow")
    assert failure.failure.failure.reason == "CANCELLED"


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)
