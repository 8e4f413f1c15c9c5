"""One endpoint under trouble: calls bounded by what the task has left, streamed so a call given
up on stops the server, a concurrency cap, and a per-endpoint breaker that one slow call does
not open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from orchestrator_svc.llm import CallLimits, LLMUnavailable, LLMUsage
from orchestrator_svc.llm.client import default_max_concurrency
from tests.llm.conftest import MakeClient, StartFake
from tests.llm.fake_openai import Reply, completion, error, refused_base_url
from tests.llm.test_llm_client import GOOD, ask


async def until(condition: Callable[[], bool]) -> None:
    """Return once `condition` holds (the suite's hang guard bounds the wait)."""
    while not condition():
        await asyncio.sleep(0.01)


def stalled() -> Reply:
    """A server that accepted the request and says nothing for a minute."""
    return Reply(body=completion(GOOD).body, delay_s=60)


def runaway() -> Reply:
    """A generation that never ends: chunks keep coming until the client goes away."""
    return Reply(body=completion("blah " * 20).body, chunk_delay_s=0.005, endless=True)


async def test_calls_are_streamed_and_usage_comes_from_the_last_chunk(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """The request asks for a stream with usage; the answer is assembled from the chunks and
    the usage and model are the ones the server reported."""
    fake = await start_fake([completion(GOOD, prompt_tokens=40, completion_tokens=9, model="g3")])
    value, usage = await ask(make_client(fake.base_url))
    assert value.verdict == "pass"
    assert fake.requests[0]["stream"] is True
    assert fake.requests[0]["stream_options"] == {"include_usage": True}
    assert (usage.prompt_tokens, usage.completion_tokens, usage.model) == (40, 9, "g3")


async def test_a_runaway_generation_is_stopped_and_its_tokens_counted(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """A stream that never ends: the call times out, the client closes the stream (the server
    sees the disconnect and stops), and the failure carries the tokens spent so far."""
    fake = await start_fake([runaway()])
    client = make_client(fake.base_url, timeout_s=0.5, max_retries=0)
    with pytest.raises(LLMUnavailable, match="timeout") as raised:
        await ask(client)
    usage = raised.value.usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    await until(lambda: fake.disconnects == 1)
    assert fake.streams_open == 0


async def test_a_call_is_bounded_by_the_task_time_left_and_does_not_trip_the_breaker(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """Client timeout 60 s, the task has 0.3 s: the call ends at the task's limit, says so, is
    charged its prompt, and is not counted against the endpoint."""
    fake = await start_fake([stalled(), completion(GOOD)])
    client = make_client(fake.base_url, timeout_s=60, max_retries=0, breaker_failures=1)
    with pytest.raises(LLMUnavailable, match="task's time left") as raised:
        await ask(client, limits=CallLimits.within(seconds=0.3))
    assert raised.value.usage is not None
    assert raised.value.usage.prompt_tokens > 0
    assert client.endpoint().breaker.failures == 0
    value, _ = await ask(client)
    assert value.verdict == "pass"


async def test_max_tokens_is_cut_to_the_tokens_left_after_the_prompt(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """Asked for 1000 tokens with 150 left: max_tokens sent is 150 minus the prompt estimate."""
    fake = await start_fake([completion(GOOD)])
    await ask(make_client(fake.base_url), max_tokens=1000, limits=CallLimits(max_tokens=150))
    prompt_chars = sum(len(m["content"]) for m in fake.requests[0]["messages"])
    assert fake.requests[0]["max_tokens"] == 150 - prompt_chars // 4


async def test_no_tokens_or_time_left_means_the_model_is_not_asked(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """With too few tokens or no time left the call fails at once and nothing is sent."""
    fake = await start_fake([completion(GOOD)])
    client = make_client(fake.base_url)
    with pytest.raises(LLMUnavailable, match="no tokens left"):
        await ask(client, limits=CallLimits(max_tokens=10))
    with pytest.raises(LLMUnavailable, match="no time left"):
        await ask(client, limits=CallLimits(deadline=time.monotonic() - 1))
    assert fake.requests == []


async def test_one_slow_call_does_not_open_the_breaker(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """A single timeout is a slow call, not a dead endpoint: the next call is made."""
    fake = await start_fake([stalled(), completion(GOOD)])
    client = make_client(fake.base_url, timeout_s=0.3, max_retries=0, breaker_failures=3)
    with pytest.raises(LLMUnavailable, match="timeout"):
        await ask(client)
    value, _ = await ask(client)
    assert value.verdict == "pass"
    assert client.endpoint().breaker.opened == 0


async def test_consecutive_failures_open_the_breaker_then_a_probe_closes_it(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """Three failures in a row open it: calls fail fast with a retry-after and reach no server;
    after the cool-down one probe goes through and its success closes it."""
    fake = await start_fake([error(503, "down")] * 3 + [completion(GOOD)])
    client = make_client(fake.base_url, max_retries=0, breaker_failures=3, cooldown_s=0.2)
    for _ in range(3):
        with pytest.raises(LLMUnavailable, match=r"HTTP 503\)$"):
            await ask(client)
    with pytest.raises(LLMUnavailable, match="cooling down") as raised:
        await ask(client)
    assert raised.value.retry_after is not None
    assert len(fake.requests) == 3
    breaker = client.endpoint().breaker
    await until(lambda: breaker.open_until <= time.monotonic())
    value, _ = await ask(client)
    assert value.verdict == "pass"
    assert (breaker.opened, breaker.failures, breaker.open_until) == (1, 0, 0.0)


async def test_a_failed_probe_opens_the_breaker_again(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """Half-open: the probe fails, so the breaker opens again at once (no three more tries)."""
    fake = await start_fake([error(503, "down")])
    client = make_client(fake.base_url, max_retries=0, breaker_failures=2, cooldown_s=0.2)
    for _ in range(2):
        with pytest.raises(LLMUnavailable):
            await ask(client)
    breaker = client.endpoint().breaker
    await until(lambda: breaker.open_until <= time.monotonic())
    with pytest.raises(LLMUnavailable, match=r"HTTP 503\)$"):
        await ask(client)
    assert breaker.opened == 2
    with pytest.raises(LLMUnavailable, match="cooling down"):
        await ask(client)
    assert len(fake.requests) == 3


async def test_the_breaker_is_per_endpoint(start_fake: StartFake, make_client: MakeClient) -> None:
    """A dead endpoint's open breaker is shared by its clients and leaves other endpoints alone."""
    dead = refused_base_url()
    first = make_client(dead, max_retries=0, breaker_failures=1)
    second = make_client(dead, max_retries=0, breaker_failures=1)
    with pytest.raises(LLMUnavailable, match="connection failed"):
        await ask(first)
    with pytest.raises(LLMUnavailable, match="cooling down"):
        await ask(second)
    fake = await start_fake([completion(GOOD)])
    value, _ = await ask(make_client(fake.base_url, breaker_failures=1))
    assert value.verdict == "pass"


async def test_concurrent_calls_to_an_endpoint_are_capped(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """max_concurrency=1: five parallel calls reach the server one at a time, and all succeed."""
    slow = Reply(body=completion(GOOD).body, chunk_delay_s=0.01)
    fake = await start_fake([slow])
    client = make_client(fake.base_url, max_concurrency=1)
    results = await asyncio.gather(*(ask(client) for _ in range(5)))
    assert [v.verdict for v, _ in results] == ["pass"] * 5
    assert fake.most_streams_open == 1


@pytest.mark.parametrize(
    ("url", "cap"),
    [
        ("http://127.0.0.1:8080/v1", 1),
        ("http://localhost:11434/v1", 1),
        ("http://[::1]:8000/v1", 1),
        ("https://api.openai.com/v1", 4),
        ("http://10.0.0.5:8000/v1", 4),
    ],
)
def test_default_concurrency_is_one_for_a_local_server(url: str, cap: int) -> None:
    """A server on this machine gets one call at a time by default, a remote one four."""
    assert default_max_concurrency(url) == cap


def test_a_non_finite_timeout_is_refused(make_client: MakeClient) -> None:
    """timeout_s=inf would never time out: refused with a clear error."""
    with pytest.raises(ValueError, match="finite"):
        make_client("http://127.0.0.1:1/v1", timeout_s=float("inf"))


def test_limits_compose() -> None:
    """What a call may spend shrinks with what it spent; None means no limit."""
    limits = CallLimits.within(seconds=float("inf"), tokens=500)
    assert limits.deadline is None
    left = limits.spent(LLMUsage("m", 100, 50))
    assert left.max_tokens == 350
    assert left.completion_tokens(400, 1000) == 250
    assert CallLimits().completion_tokens(400, None) is None


async def test_a_call_that_never_got_a_slot_is_not_charged(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """One slot, held by a stalled call: a second call with 0.3 s left times out waiting for
    the slot, costs nothing and says why; the endpoint is not blamed."""
    fake = await start_fake([Reply(body=completion(GOOD).body, delay_s=60)])
    client = make_client(fake.base_url, max_concurrency=1, timeout_s=60, breaker_failures=1)
    holder = asyncio.create_task(ask(client))
    await until(lambda: client.endpoint().in_flight == 1)
    with pytest.raises(LLMUnavailable, match="no free slot") as raised:
        await ask(client, limits=CallLimits.within(seconds=0.3))
    assert raised.value.usage is not None
    assert raised.value.usage.total_tokens == 0
    assert len(fake.requests) == 1
    assert client.endpoint().breaker.failures == 0
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
