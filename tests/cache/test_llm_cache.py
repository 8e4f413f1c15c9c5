"""LLM replies from the cache: a repeated prompt never reaches the endpoint and costs nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator_svc.llm import CachedCompleter, LLMInvalidOutput, OpenAICompatibleClient
from orchestrator_svc.store import InMemoryCache
from orchestrator_svc.telemetry.metrics import Metrics
from tests.cache.conftest import MakeCache, lookups
from tests.llm.fake_openai import FakeOpenAI, Script, completion

StartFake = Callable[[Script], Awaitable[FakeOpenAI]]
MakeClient = Callable[..., OpenAICompatibleClient]


class Answer(BaseModel):
    answer: str


async def ask(completer: CachedCompleter, user: str = "What is a credit?") -> tuple[Answer, Any]:
    return await completer.complete_json(system="Answer briefly.", user=user, schema=Answer)


async def test_a_repeated_prompt_is_answered_without_the_endpoint(
    make_cache: MakeCache, start_fake: StartFake, make_client: MakeClient, metrics: Metrics
) -> None:
    """The second identical call sends no request and reports zero tokens and cost."""
    fake = await start_fake([completion({"answer": "a permit to send"}, prompt_tokens=40)])
    client = make_client(fake.base_url, price_per_1k_prompt=1.0)
    completer = CachedCompleter(client, make_cache(), temperature=client.temperature)
    first, spent = await ask(completer)
    assert spent.total_tokens > 0
    assert spent.cost_usd > 0
    again, cached = await ask(completer)
    assert again == first
    assert len(fake.requests) == 1
    assert (cached.total_tokens, cached.cost_usd) == (0, 0.0)
    assert cached.model == "fake-model"
    assert lookups(metrics, "llm", "hit") == 1
    await ask(completer, user="What is a stream?")
    assert len(fake.requests) == 2


async def test_model_and_temperature_are_part_of_the_key(
    make_cache: MakeCache, start_fake: StartFake, make_client: MakeClient
) -> None:
    """The same prompt to another model, or at another temperature, asks the endpoint again."""
    fake = await start_fake([completion({"answer": "yes"})])
    cache = make_cache()
    await ask(CachedCompleter(make_client(fake.base_url), cache, temperature=0.2))
    await ask(CachedCompleter(make_client(fake.base_url), cache, temperature=0.9))
    await ask(CachedCompleter(make_client(fake.base_url, model="other"), cache, temperature=0.2))
    assert len(fake.requests) == 3
    await ask(CachedCompleter(make_client(fake.base_url), cache, temperature=0.2))
    assert len(fake.requests) == 3


async def test_invalid_output_is_never_cached(
    make_cache: MakeCache, start_fake: StartFake, make_client: MakeClient
) -> None:
    """A reply that fails its schema raises as before, and the next call asks again."""
    fake = await start_fake([completion({"wrong": "shape"})])
    completer = CachedCompleter(make_client(fake.base_url), make_cache())
    for _ in range(2):
        with pytest.raises(LLMInvalidOutput):
            await ask(completer)
    assert len(fake.requests) == 2


async def test_an_unreadable_entry_is_a_miss_that_gets_overwritten(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """An entry the schema no longer accepts is ignored: the endpoint answers, then the cache."""
    fake = await start_fake([completion({"answer": "fresh"})])
    cache = InMemoryCache(60)
    completer = CachedCompleter(make_client(fake.base_url), cache)
    # NOTE: what an older Answer (answer: int) would have stored under the same key.
    await cache.set("llm", _key_of(completer, "What is a credit?"), b'{"answer": 1}')
    assert (await ask(completer))[0].answer == "fresh"
    assert (await ask(completer))[0].answer == "fresh"
    assert len(fake.requests) == 1


def _key_of(completer: CachedCompleter, user: str) -> dict[str, Any]:
    """The inputs CachedCompleter keys `ask(completer, user)` by (mirrors llm/cached.py)."""
    return {
        "model": completer.model,
        "temperature": None,
        "system": "Answer briefly.",
        "user": user,
        "validator": f"{Answer.__module__}.{Answer.__qualname__}",
        "schema": Answer.model_json_schema(),
        "max_tokens": None,
    }


async def test_a_fresh_call_bypasses_the_cache_and_refreshes_it(
    make_cache: MakeCache, start_fake: StartFake, make_client: MakeClient
) -> None:
    """A repair round asks `fresh`: the endpoint is asked although the prompt is cached, and
    the new reply replaces the cached one."""
    fake = await start_fake([completion({"answer": "first"}), completion({"answer": "second"})])
    completer = CachedCompleter(make_client(fake.base_url), make_cache(), temperature=0.2)
    first, _ = await ask(completer)
    fresh, spent = await completer.complete_json(
        system="Answer briefly.", user="What is a credit?", schema=Answer, fresh=True
    )
    assert (first.answer, fresh.answer) == ("first", "second")
    assert spent.total_tokens > 0
    again, _ = await ask(completer)
    assert again.answer == "second"
    assert len(fake.requests) == 2
