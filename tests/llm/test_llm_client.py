"""OpenAICompatibleClient against a real local HTTP server speaking chat completions."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field
from structlog.testing import capture_logs

from orchestrator_svc.llm import (
    LLMInvalidOutput,
    LLMRateLimited,
    LLMRejected,
    LLMUnavailable,
    LLMUsage,
)
from tests.llm.conftest import MakeClient, StartFake
from tests.llm.fake_openai import Reply, completion, error, refused_base_url

HANG_GUARD_S = 20


class Verdict(BaseModel):
    """A small schema the tests ask for."""

    verdict: Literal["pass", "fail"]
    score: float = Field(ge=0, le=1)
    reasons: list[str] = []


GOOD = {"verdict": "pass", "score": 0.9, "reasons": ["fine"]}


async def ask(client: Any, **kwargs: Any) -> tuple[Verdict, LLMUsage]:
    result: tuple[Verdict, LLMUsage] = await asyncio.wait_for(
        client.complete_json(
            system="You judge answers.", user="Is 2+2=4?", schema=Verdict, **kwargs
        ),
        HANG_GUARD_S,
    )
    return result


def format_of(request: dict[str, Any]) -> Any:
    return request.get("response_format")


async def test_good_json_is_validated_and_usage_priced(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """A valid reply comes back as the model; tokens come from `usage`, cost from the prices."""
    fake = await start_fake([completion(GOOD, prompt_tokens=1000, completion_tokens=500)])
    client = make_client(fake.base_url, price_per_1k_prompt=0.002, price_per_1k_completion=0.01)
    verdict, usage = await ask(client, max_tokens=64)
    assert verdict == Verdict(**GOOD)
    assert usage.model == "fake-model"
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1000, 500, 1500)
    assert usage.cost_usd == pytest.approx(0.002 + 0.005)
    request = fake.requests[0]
    assert request["model"] == "fake-model"
    assert request["max_tokens"] == 64
    assert [m["role"] for m in request["messages"]] == ["system", "user"]
    rf = format_of(request)
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["name"] == "Verdict"
    assert rf["json_schema"]["strict"] is False
    assert rf["json_schema"]["schema"]["properties"]["verdict"]["enum"] == ["pass", "fail"]
    assert client.response_format_mode == "json_schema"


async def test_code_fenced_json_is_accepted(start_fake: StartFake, make_client: MakeClient) -> None:
    """JSON wrapped in a ```json fence with chatter around it is still read."""
    fake = await start_fake([completion("Sure!\n```json\n" + json.dumps(GOOD) + "\n```")])
    verdict, _ = await ask(make_client(fake.base_url))
    assert verdict.verdict == "pass"


async def test_malformed_then_good_retries_with_the_validation_error(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """Invalid output is retried with the validation error fed back; usage sums both calls."""
    fake = await start_fake(
        [
            completion({"verdict": "maybe", "score": 3}, prompt_tokens=10, completion_tokens=5),
            completion(GOOD, prompt_tokens=20, completion_tokens=6),
        ]
    )
    verdict, usage = await ask(make_client(fake.base_url))
    assert verdict.verdict == "pass"
    assert (usage.prompt_tokens, usage.completion_tokens) == (30, 11)
    second = fake.requests[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert "maybe" in second[2]["content"]
    feedback = second[3]["content"]
    assert "verdict" in feedback
    assert "score" in feedback
    assert "not valid" in feedback


async def test_non_json_then_good(start_fake: StartFake, make_client: MakeClient) -> None:
    """Prose instead of JSON counts as invalid output and is retried."""
    fake = await start_fake([completion("I think it passes."), completion(GOOD)])
    verdict, _ = await ask(make_client(fake.base_url))
    assert verdict.verdict == "pass"
    assert "json" in fake.requests[1]["messages"][3]["content"].lower()


async def test_always_malformed_raises_invalid_output(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """After 1 + output_retries invalid replies the client raises LLMInvalidOutput with usage."""
    fake = await start_fake([completion("{not json", prompt_tokens=3, completion_tokens=2)])
    with pytest.raises(LLMInvalidOutput) as caught:
        await ask(make_client(fake.base_url, output_retries=2))
    assert len(fake.requests) == 3
    assert caught.value.last_output == "{not json"
    assert caught.value.usage is not None
    assert caught.value.usage.total_tokens == 15


async def test_truncated_output_feedback_asks_for_brevity(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """A reply cut off at max_tokens is retried with a request to answer more briefly."""
    fake = await start_fake(
        [completion('{"verdict": "pa', finish_reason="length"), completion(GOOD)]
    )
    await ask(make_client(fake.base_url))
    assert "cut off" in fake.requests[1]["messages"][3]["content"]


async def test_429_then_good_is_retried(start_fake: StartFake, make_client: MakeClient) -> None:
    """HTTP 429 with Retry-After is retried by the client and the answer's usage is recorded."""
    fake = await start_fake(
        [
            error(429, "slow down", headers={"retry-after": "0.01"}),
            completion(GOOD, prompt_tokens=42, completion_tokens=8),
        ]
    )
    verdict, usage = await ask(make_client(fake.base_url))
    assert verdict.verdict == "pass"
    assert (usage.prompt_tokens, usage.completion_tokens) == (42, 8)
    assert len(fake.requests) == 2


async def test_429_forever_raises_rate_limited(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """HTTP 429 on every try raises LLMRateLimited carrying the server's Retry-After."""
    fake = await start_fake([error(429, "slow down", headers={"retry-after-ms": "20"})])
    with pytest.raises(LLMRateLimited) as caught:
        await ask(make_client(fake.base_url, max_retries=2))
    assert caught.value.retry_after == pytest.approx(0.02)
    assert len(fake.requests) == 3


async def test_long_retry_after_gives_up_at_once(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """A Retry-After longer than max_backoff_s is not slept through: it raises immediately."""
    fake = await start_fake([error(429, "quota", headers={"retry-after": "3600"})])
    with pytest.raises(LLMRateLimited) as caught:
        await ask(make_client(fake.base_url, max_retries=5))
    assert caught.value.retry_after == pytest.approx(3600)
    assert len(fake.requests) == 1


async def test_slow_server_beyond_timeout_is_unavailable(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """A reply slower than timeout_s raises LLMUnavailable naming the timeout (not retried)."""
    fake = await start_fake([Reply(body=completion(GOOD).body, delay_s=30)])
    with pytest.raises(LLMUnavailable, match="timeout"):
        await ask(make_client(fake.base_url, timeout_s=0.3))
    assert len(fake.requests) == 1


async def test_connection_refused_is_unavailable(make_client: MakeClient) -> None:
    """Nothing listening on the port raises LLMUnavailable after the transport retries."""
    with pytest.raises(LLMUnavailable, match="connection"):
        await ask(make_client(refused_base_url(), max_retries=1))


async def test_5xx_is_retried_then_unavailable(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """HTTP 503 is retried max_retries times, then raises LLMUnavailable with the status."""
    fake = await start_fake([error(503, "overloaded")])
    with pytest.raises(LLMUnavailable, match="503"):
        await ask(make_client(fake.base_url, max_retries=2))
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    "body",
    [
        "<html>502 Bad Gateway</html>",
        '{"id": "chatcmpl-1", "choices": [{"mess',
        {"choices": "none", "usage": -1},
        {"choices": [{"message": {"content": 7}}]},
    ],
    ids=["html", "truncated", "wrong-shape", "non-text-content"],
)
async def test_a_200_that_is_no_chat_completion_is_unavailable(
    body: Any, start_fake: StartFake, make_client: MakeClient
) -> None:
    """HTTP 200 whose body is not JSON, or not a chat completion, raises LLMUnavailable (the
    brain falls back), never the SDK's JSONDecodeError or an AttributeError."""
    fake = await start_fake([Reply(body=body)])
    with pytest.raises(LLMUnavailable, match="bad response"):
        await ask(make_client(fake.base_url))


async def test_5xx_then_good(start_fake: StartFake, make_client: MakeClient) -> None:
    """A transient HTTP 502 followed by an answer succeeds."""
    fake = await start_fake([error(502, "bad gateway"), completion(GOOD)])
    verdict, _ = await ask(make_client(fake.base_url))
    assert verdict.verdict == "pass"


async def test_bad_api_key_is_rejected_without_retry(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """HTTP 401 raises LLMRejected at once: retrying the same request cannot help."""
    fake = await start_fake([error(401, "invalid api key")])
    with pytest.raises(LLMRejected) as caught:
        await ask(make_client(fake.base_url))
    assert caught.value.status == 401
    assert len(fake.requests) == 1


def llama_cpp_like(body: dict[str, Any], index: int) -> Reply:
    """Rejects OpenAI's json_schema like llama.cpp's server; takes json_object + schema."""
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        return error(
            500,
            "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
            "'msg': \"Input should be 'text' or 'json_object'\"}]",
        )
    return completion(GOOD)


async def test_negotiates_json_object_with_schema_and_remembers(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """A 500 about response_format falls back to json_object+schema, remembered for later calls."""
    fake = await start_fake(llama_cpp_like)
    client = make_client(fake.base_url)
    verdict, _ = await ask(client)
    assert verdict.verdict == "pass"
    assert format_of(fake.requests[0])["type"] == "json_schema"
    second = format_of(fake.requests[1])
    assert second["type"] == "json_object"
    assert second["schema"]["properties"]["verdict"]["enum"] == ["pass", "fail"]
    assert client.response_format_mode == "json_object_schema"
    await ask(client)
    assert len(fake.requests) == 3
    assert format_of(fake.requests[2])["type"] == "json_object"
    assert "schema" in format_of(fake.requests[2])


async def test_negotiation_falls_back_to_no_response_format(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """A server that takes no response_format at all gets the schema in the system prompt."""

    def plain_only(body: dict[str, Any], index: int) -> Reply:
        if "response_format" in body:
            return error(400, "Unsupported parameter: response_format")
        return completion(GOOD)

    fake = await start_fake(plain_only)
    client = make_client(fake.base_url)
    verdict, _ = await ask(client)
    assert verdict.verdict == "pass"
    assert [format_of(r) and format_of(r)["type"] for r in fake.requests] == [
        "json_schema",
        "json_object",
        "json_object",
        None,
    ]
    assert "JSON Schema" in fake.requests[-1]["messages"][0]["content"]
    assert client.response_format_mode == "none"


async def test_schema_override_is_sent_and_refs_are_inlined(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """`json_schema=` replaces the wire schema; `$ref`s are inlined so grammar servers cope."""

    class Item(BaseModel):
        name: str

    class Basket(BaseModel):
        items: list[Item]

    fake = await start_fake([completion({"items": [{"name": "a"}]})])
    client = make_client(fake.base_url)
    basket, _ = await asyncio.wait_for(
        client.complete_json(system="s", user="u", schema=Basket), HANG_GUARD_S
    )
    assert basket.items[0].name == "a"
    sent = format_of(fake.requests[0])["json_schema"]["schema"]
    assert "$defs" not in sent
    assert sent["properties"]["items"]["items"]["properties"]["name"]["type"] == "string"

    override = {"type": "object", "properties": {"verdict": {"enum": ["pass"]}}}
    fake2 = await start_fake([completion(GOOD)])
    client2 = make_client(fake2.base_url)
    await asyncio.wait_for(
        client2.complete_json(system="s", user="u", schema=Verdict, json_schema=override),
        HANG_GUARD_S,
    )
    assert format_of(fake2.requests[0])["json_schema"]["schema"] == override


async def test_unavailable_server_opens_a_cooldown(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """With breaker_failures=1, once the server proved unavailable calls fail fast, without
    touching it, until the cool-down is over."""
    fake = await start_fake([error(503, "down"), completion(GOOD)])
    client = make_client(fake.base_url, max_retries=0, cooldown_s=60, breaker_failures=1)
    with pytest.raises(LLMUnavailable):
        await ask(client)
    with pytest.raises(LLMUnavailable, match="cooling down"):
        await ask(client)
    assert len(fake.requests) == 1


async def test_logs_calls_without_secrets_or_prompts(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """Each call logs model, tokens, latency and outcome; never the API key or the prompt."""
    fake = await start_fake([completion(GOOD, prompt_tokens=5, completion_tokens=4)])
    client = make_client(fake.base_url)
    with capture_logs() as logs:
        await ask(client)
    calls = [e for e in logs if e["event"] == "llm_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call["log_level"] == "info"
    assert call["outcome"] == "ok"
    assert (call["model"], call["prompt_tokens"], call["completion_tokens"]) == ("fake-model", 5, 4)
    assert call["latency_s"] >= 0
    dumped = json.dumps(logs, default=str)
    assert "sk-test-secret" not in dumped
    assert "Is 2+2=4?" not in dumped


def test_usage_adds_up() -> None:
    """LLMUsage sums tokens and cost and keeps every model name once."""
    total = LLMUsage("a", 1, 2, 0.5) + LLMUsage("b", 3, 4, 0.25) + LLMUsage("a", 0, 0, 0)
    assert total == LLMUsage("a,b", 4, 6, 0.75)
    assert LLMUsage() + LLMUsage("m", 1, 1, 0) == LLMUsage("m", 1, 1, 0)
