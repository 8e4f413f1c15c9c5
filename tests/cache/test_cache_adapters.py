"""The cache port on both adapters: hits, misses, expiry, keys, bounds, and choosing one."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError
from structlog.testing import capture_logs

from orchestrator_svc.config import Settings
from orchestrator_svc.store import InMemoryCache, RedisCache, cache_key, open_cache
from orchestrator_svc.store.cache import MAX_VALUE_BYTES
from orchestrator_svc.telemetry.metrics import Metrics
from tests.cache.conftest import REDIS_URL, MakeCache, free_port, lookups

INPUTS = {"goal": "summarise the report", "arms": ["echo"], "budget": {"max_tokens": 100}}


async def test_miss_then_hit(make_cache: MakeCache, metrics: Metrics) -> None:
    """An absent key is a miss; after set() the same inputs are a hit with the same bytes."""
    cache = make_cache()
    assert await cache.get("llm", INPUTS) is None
    await cache.set("llm", INPUTS, b"reply")
    assert await cache.get("llm", INPUTS) == b"reply"
    assert lookups(metrics, "llm", "miss") == 1
    assert lookups(metrics, "llm", "hit") == 1


async def test_entries_expire_after_the_ttl(make_cache: MakeCache) -> None:
    """A value set with a 0.2 s TTL is gone once that time has passed."""
    cache = make_cache(ttl_s=0.2)
    await cache.set("plan", INPUTS, b"plan")
    assert await cache.get("plan", INPUTS) == b"plan"
    await asyncio.sleep(0.5)
    assert await cache.get("plan", INPUTS) is None


async def test_keys_depend_on_namespace_and_inputs_not_key_order(make_cache: MakeCache) -> None:
    """Other namespace or other inputs miss; the same inputs written in another order hit."""
    cache = make_cache()
    await cache.set("llm", INPUTS, b"one")
    assert await cache.get("plan", INPUTS) is None
    assert await cache.get("llm", {**INPUTS, "goal": "something else"}) is None
    reordered = dict(reversed(list(INPUTS.items())))
    assert await cache.get("llm", reordered) == b"one"


async def test_values_over_the_size_limit_are_not_kept(make_cache: MakeCache) -> None:
    """A value over MAX_VALUE_BYTES is silently not cached (a later get misses)."""
    cache = make_cache()
    await cache.set("result", INPUTS, b"x" * (MAX_VALUE_BYTES + 1))
    assert await cache.get("result", INPUTS) is None


async def test_redis_keys_are_namespaced_hashes_with_the_ttl(
    shared_redis: aioredis.Redis,
) -> None:
    """Redis holds `octollm:v1:<namespace>:<sha256 of canonical JSON>` with the TTL set."""
    namespace = f"test-{uuid.uuid4().hex}"
    canonical = json.dumps(INPUTS, sort_keys=True, separators=(",", ":")).encode()
    key = f"octollm:v1:{namespace}:{hashlib.sha256(canonical).hexdigest()}"
    assert cache_key(namespace, INPUTS) == key
    cache = RedisCache(REDIS_URL, 30, timeout_s=2.0)
    try:
        await cache.set(namespace, INPUTS, b"value")
        assert await shared_redis.get(key) == b"value"
        assert 0 < await shared_redis.pttl(key) <= 30_000
    finally:
        await shared_redis.delete(key)
        await cache.close()


async def test_unreachable_redis_misses_with_one_warning_then_skips(metrics: Metrics) -> None:
    """Nothing listening: get() is an error, then skipped during the cool-down; set() never
    raises; the log has one warning, not one per call."""
    cache = RedisCache(
        f"redis://127.0.0.1:{free_port()}/0", 60, observe=metrics.observe_cache, cooldown_s=30
    )
    try:
        with capture_logs() as logs:
            assert await cache.get("llm", INPUTS) is None
            await cache.set("llm", INPUTS, b"lost")
            for _ in range(5):
                assert await cache.get("llm", INPUTS) is None
    finally:
        await cache.close()
    assert lookups(metrics, "llm", "error") == 1
    assert lookups(metrics, "llm", "skipped") == 5
    warnings = [e for e in logs if e["event"] == "cache_unavailable"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"


async def test_memory_cache_drops_the_least_recently_used_beyond_its_bound() -> None:
    """With room for two entries, adding a third evicts the one read least recently."""
    cache = InMemoryCache(60, max_entries=2)
    await cache.set("llm", {"n": 1}, b"1")
    await cache.set("llm", {"n": 2}, b"2")
    assert await cache.get("llm", {"n": 1}) == b"1"
    await cache.set("llm", {"n": 3}, b"3")
    assert await cache.get("llm", {"n": 2}) is None
    assert await cache.get("llm", {"n": 1}) == b"1"
    assert await cache.get("llm", {"n": 3}) == b"3"


async def test_open_cache_follows_the_settings() -> None:
    """TTL 0 turns caching off; no URL is the in-process cache; a URL is Redis."""
    assert await open_cache(Settings(cache_ttl_s=0, redis_url=REDIS_URL)) is None
    memory = await open_cache(Settings())
    assert isinstance(memory, InMemoryCache)
    await memory.close()
    # NOTE: an unreachable Redis still opens (and is skipped): start-up never waits for it.
    redis_cache = await open_cache(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    assert isinstance(redis_cache, RedisCache)
    await redis_cache.close()


async def test_bad_redis_urls_are_rejected_naming_the_variable() -> None:
    """A URL that is not redis://, rediss:// or unix:// fails settings validation; a malformed
    redis:// URL fails open_cache with OCTOLLM_REDIS_URL in the message."""
    with pytest.raises(ValidationError, match="redis_url"):
        Settings(redis_url="http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="OCTOLLM_REDIS_URL"):
        await open_cache(Settings(redis_url="redis://127.0.0.1:not-a-port/0"))


def test_settings_default_to_five_minutes_in_process() -> None:
    """By default entries live 300 s and the cache is in process memory."""
    settings = Settings()
    assert settings.cache_ttl_s == 300
    assert settings.redis_url == ""
