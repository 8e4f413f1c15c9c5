"""LLM-backed arms watch their endpoint: NOT_SERVING with a reason while it is down or does not
serve the model, SERVING again when it is back; a dispatch meanwhile fails with a retry-after."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import arm_service_pb2_grpc as arm_grpc
from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk import ArmServer
from orchestrator_svc.arms import coder, judge, planner
from orchestrator_svc.arms import echo as echo_arm
from orchestrator_svc.llm import OpenAICompatibleClient
from tests.arms.llm_arm_harness import StartLLM, StreamOpener, failure_of, run
from tests.llm.fake_openai import Reply, completion, error, refused_base_url

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DRAFT = {"language": "python", "code": "def add(a, b):\n    return a + b\n", "explanation": "x"}


async def health_of(server: ArmServer) -> int:
    """The arm's overall grpc.health.v1 status."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return int(response.status)


async def health_becomes(server: ArmServer, status: int) -> None:
    """Return once the arm's health Watch reports `status` (the suite's hang guard bounds it)."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        async for response in stub.Watch(health_pb2.HealthCheckRequest(service="")):
            if response.status == status:
                return


async def description_of(server: ArmServer) -> str:
    """The description DescribeArm returns now."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = arm_grpc.ArmServiceStub(channel)
        response = await stub.DescribeArm(arm_pb.DescribeArmRequest(), timeout=10)
        return response.descriptor.description


async def test_coder_with_an_unreachable_endpoint_is_not_serving_and_says_why(
    opener: StreamOpener,
) -> None:
    """Nobody listens at the LLM URL: health NOT_SERVING, the description names the reason, and
    a dispatch fails UNAVAILABLE/LLM_UNAVAILABLE, retryable, with a retry-after."""
    async with OpenAICompatibleClient(
        refused_base_url(), api_key="", model="m", timeout_s=5, max_retries=0
    ) as client:
        stream, descriptor = await opener.open(coder.build(llm=client, check_interval_s=30))
        server = opener.servers[0]
        assert await health_of(server) == NOT_SERVING
        assert descriptor.description.startswith("NOT SERVING (LLM endpoint unreachable")
        assert "unreachable" in server.not_serving_reason
        failure = failure_of(await run(stream, {"task": "Write add()"}))
    assert (failure.code, failure.reason, failure.retryable) == (
        grpc.StatusCode.UNAVAILABLE.value[0],
        "LLM_UNAVAILABLE",
        True,
    )
    assert failure.HasField("retry_after")
    assert 0 < failure.retry_after.ToNanoseconds() <= 30 * 10**9
    assert "unreachable" in failure.message


async def test_coder_whose_model_the_endpoint_does_not_list_is_misconfigured(
    opener: StreamOpener, start_llm: StartLLM
) -> None:
    """/v1/models does not list the configured model: NOT_SERVING, and a dispatch fails
    FAILED_PRECONDITION/LLM_MISCONFIGURED (not retryable) naming the model; the LLM is not asked."""
    fake, client = await start_llm([completion(DRAFT)])
    fake.model_ids = ["gemma3-270m"]
    stream, _ = await opener.open(coder.build(llm=client, check_interval_s=30))
    assert await health_of(opener.servers[0]) == NOT_SERVING
    assert "'fake-model' is not served" in await description_of(opener.servers[0])
    failure = failure_of(await run(stream, {"task": "Write add()"}))
    assert (failure.reason, failure.retryable) == ("LLM_MISCONFIGURED", False)
    assert "gemma3-270m" in failure.message
    assert fake.requests == []


async def test_coder_serves_again_when_its_endpoint_comes_back(
    opener: StreamOpener, start_llm: StartLLM
) -> None:
    """Down at start (HTTP 503 on /v1/models), NOT_SERVING; once the endpoint answers, the
    periodic check turns it SERVING, restores the description, and code is written."""
    fake, client = await start_llm([completion(DRAFT)])
    fake.models_reply = error(503, "loading model")
    stream, _ = await opener.open(coder.build(llm=client, check_interval_s=0.05))
    server = opener.servers[0]
    assert await health_of(server) == NOT_SERVING
    fake.models_reply = None
    await health_becomes(server, SERVING)
    assert not (await description_of(server)).startswith("NOT SERVING")
    message = await run(stream, {"task": "Write add()"})
    assert message.WhichOneof("kind") == "result"


async def test_coder_goes_not_serving_when_a_call_finds_the_endpoint_down(
    opener: StreamOpener, start_llm: StartLLM
) -> None:
    """Up at start; a call then gets HTTP 503 and the arm re-checks at once (not at the next
    tick): /v1/models failing too turns it NOT_SERVING."""
    fake, client = await start_llm([error(503, "overloaded")])
    stream, _ = await opener.open(coder.build(llm=client, check_interval_s=3600))
    server = opener.servers[0]
    assert await health_of(server) == SERVING
    fake.models_reply = error(503, "overloaded")
    failure = failure_of(await run(stream, {"task": "Write add()"}))
    assert failure.reason == "LLM_UNAVAILABLE"
    await health_becomes(server, NOT_SERVING)
    assert fake.model_checks >= 2


async def test_the_orchestrator_does_not_route_to_a_coder_whose_llm_is_down(
    start_arm: Any, start_orchestrator: Any
) -> None:
    """The orchestrator sees the coder NOT_SERVING (with the reason in its description)."""
    async with OpenAICompatibleClient(
        refused_base_url(), api_key="", model="m", timeout_s=5, max_retries=0
    ) as client:
        server = await start_arm(coder.build(llm=client, check_interval_s=30))
        echo = await start_arm(echo_arm.build())
        orch = await start_orchestrator([server.address, echo.address], wait_for=("echo",))
        await orch.mesh.wait_until(lambda: orch.mesh.arm(server.arm_id) is not None)
        arm = orch.mesh.arm(server.arm_id)
        assert arm is not None
        assert arm.health == pb.ARM_HEALTH_NOT_SERVING
        assert "unreachable" in arm.descriptor.description
        assert "coder" not in orch.mesh.routable_types()


@pytest.mark.parametrize("module", [judge, planner], ids=["judge", "planner"])
async def test_arms_with_an_offline_path_keep_serving_and_skip_a_dead_llm(
    opener: StreamOpener, module: Any
) -> None:
    """Judge and planner have rules to fall back on: SERVING with an unreachable LLM, and a
    dispatch answers by rules at once, saying the LLM was skipped and why."""
    async with OpenAICompatibleClient(
        refused_base_url(), api_key="", model="m", timeout_s=5, max_retries=0
    ) as client:
        stream, _ = await opener.open(module.build(llm=client, check_interval_s=30))
        assert await health_of(opener.servers[0]) == SERVING
        payload: dict[str, Any] = (
            {"output": "Paris is the capital of France.", "criteria": ["be concise and clear"]}
            if module is judge
            else {"goal": "Summarise the release notes of the last three versions"}
        )
        message = await run(stream, payload)
    assert message.WhichOneof("kind") == "result"
    notes = list(message.result.output.fields["notes"].list_value.values)
    assert any("LLM skipped" in n.string_value and "unreachable" in n.string_value for n in notes)


async def test_the_coder_asks_for_no_more_tokens_than_the_dispatch_budget_leaves(
    opener: StreamOpener, start_llm: StartLLM
) -> None:
    """Dispatch budget 600 tokens: the coder's max_tokens is 600 less its prompt, not 4096."""
    fake, client = await start_llm([completion(DRAFT)])
    stream, _ = await opener.open(coder.build(llm=client, check_interval_s=30))
    budget = common_pb2.Budget(max_tokens=600)
    message = await run(stream, {"task": "Write add()"}, budget=budget)
    assert message.WhichOneof("kind") == "result"
    prompt_chars = sum(len(m["content"]) for m in fake.requests[0]["messages"])
    assert fake.requests[0]["max_tokens"] == 600 - prompt_chars // 4


async def test_the_coder_answers_within_the_dispatch_deadline_when_the_llm_stalls(
    opener: StreamOpener, start_llm: StartLLM
) -> None:
    """Client timeout 5 s, dispatch timeout 1 s, a stalled server: the coder gives up before
    the dispatch's deadline and fails LLM_UNAVAILABLE (retryable) saying the time ran out,
    rather than letting the subtask time out."""
    fake, client = await start_llm([Reply(body=completion(DRAFT).body, delay_s=60)])
    stream, _ = await opener.open(coder.build(llm=client, check_interval_s=30))
    failure = failure_of(await run(stream, {"task": "Write add()"}, timeout=1.0))
    assert (failure.reason, failure.retryable) == ("LLM_UNAVAILABLE", True)
    assert "task's time left" in failure.message
    assert len(fake.requests) == 1


@pytest.mark.parametrize("module", [judge, planner], ids=["judge", "planner"])
async def test_a_rules_output_is_marked_heuristic_and_still_bills_the_failed_call(
    opener: StreamOpener, start_llm: StartLLM, module: Any
) -> None:
    """The LLM answered nonsense, so rules made the output: provenance says model "heuristic"
    (not the LLM's name), and the tokens the failed calls spent are still counted."""
    _, client = await start_llm([completion("I would rather not.", prompt_tokens=30)])
    stream, _ = await opener.open(module.build(llm=client, check_interval_s=30))
    payload: dict[str, Any] = (
        {"output": "Paris is the capital of France.", "criteria": ["be concise and clear"]}
        if module is judge
        else {"goal": "Summarise the release notes of the last three versions"}
    )
    message = await run(stream, payload)
    assert message.WhichOneof("kind") == "result"
    assert message.result.provenance.model == "heuristic"
    assert message.result.provenance.usage.tokens > 0
