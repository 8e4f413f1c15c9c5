"""The cache port and its adapters: bytes by namespace and a hash of the inputs they came from.

What is cached (LLM replies, plans, results of deterministic arms) is the callers' business; a
cache only maps `(namespace, inputs)` to bytes for `ttl_s` seconds. The key is
`octollm:v1:<namespace>:<sha256 of the canonical JSON of the inputs>`.

A cache is an optimisation, never a dependency: no adapter raises for a backend failure, it
answers "not cached" instead. `RedisCache` bounds every call with a short deadline and, after a
failure, skips Redis for `cooldown_s` (a small circuit breaker), logging one warning per outage.
Every lookup is reported to an optional observer as hit, miss, error (the backend failed) or
skipped (the breaker is open), which feeds `octollm_cache_requests_total`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from orchestrator_svc.config import Settings

log = structlog.get_logger(__name__)

CacheOutcome = Literal["hit", "miss", "error", "skipped"]
CacheObserver = Callable[[str, CacheOutcome], None]

KEY_PREFIX = "octollm:v1:"
# NOTE: a cache that copies megabytes per hit costs more than it saves; bigger values are not kept.
MAX_VALUE_BYTES = 1 << 20


class Cache(Protocol):
    """Bytes by namespace and inputs, for a while. Never raises for a backend failure."""

    async def get(self, namespace: str, inputs: Mapping[str, Any]) -> bytes | None:
        """The value stored for `inputs` in `namespace`, or None (absent, expired, unavailable)."""
        ...

    async def set(self, namespace: str, inputs: Mapping[str, Any], value: bytes) -> None:
        """Keep `value` for `inputs` in `namespace` for the cache's TTL (best effort)."""
        ...

    async def close(self) -> None: ...


def canonical_json(inputs: Mapping[str, Any]) -> bytes:
    """`inputs` as JSON with sorted keys and no spaces: equal inputs give equal bytes."""
    return json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()


def cache_key(namespace: str, inputs: Mapping[str, Any], prefix: str = KEY_PREFIX) -> str:
    """`<prefix><namespace>:<sha256 hex of canonical_json(inputs)>`."""
    return f"{prefix}{namespace}:{hashlib.sha256(canonical_json(inputs)).hexdigest()}"


class InMemoryCache:
    """A bounded TTL cache in process memory (least recently used entries go first)."""

    def __init__(
        self,
        ttl_s: float,
        *,
        max_entries: int = 4096,
        max_bytes: int = 64 << 20,
        observe: CacheObserver | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._observe = observe
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    async def get(self, namespace: str, inputs: Mapping[str, Any]) -> bytes | None:
        key = cache_key(namespace, inputs)
        entry = self._entries.get(key)
        value: bytes | None = None
        if entry is not None:
            expires, stored = entry
            if expires > time.monotonic():
                self._entries.move_to_end(key)
                value = stored
            else:
                self._drop(key)
        _report(self._observe, namespace, "miss" if value is None else "hit")
        return value

    async def set(self, namespace: str, inputs: Mapping[str, Any], value: bytes) -> None:
        if len(value) > min(MAX_VALUE_BYTES, self._max_bytes):
            return
        key = cache_key(namespace, inputs)
        self._drop(key)
        self._entries[key] = (time.monotonic() + self._ttl_s, bytes(value))
        self._bytes += len(value)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[1])


class RedisCache:
    """The cache in Redis (`redis.asyncio`, hiredis when installed), shared by every replica.

    Each call gives up after `timeout_s`, connecting included (only a broken pooled connection
    is retried, at once, on a new one); a failure makes the next `cooldown_s` seconds skip Redis
    altogether, so a dead or stalled Redis costs a task at most one short wait per cool-down.
    """

    def __init__(
        self,
        url: str,
        ttl_s: float,
        *,
        observe: CacheObserver | None = None,
        prefix: str = KEY_PREFIX,
        timeout_s: float = 0.05,
        cooldown_s: float = 5.0,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._observe = observe
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._cooldown_s = cooldown_s
        self._skip_until = 0.0
        self._down = False
        self._closed = False
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # NOTE: redis-py retries 3 times with backoff by default; a cache must not wait. One
            # immediate retry on a broken connection is kept: after Redis restarts, the pooled
            # connections are stale, and each would otherwise fail (and open the breaker) once.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            health_check_interval=0,
        )

    async def get(self, namespace: str, inputs: Mapping[str, Any]) -> bytes | None:
        key = cache_key(namespace, inputs, self._prefix)
        if self._closed:
            return None
        if time.monotonic() < self._skip_until:
            _report(self._observe, namespace, "skipped")
            return None
        try:
            async with asyncio.timeout(self._timeout_s):
                value = await self._redis.get(key)
        # NOTE: anything Redis or the network throws (and redis-py's odd internal errors) means
        # "not cached"; cancellation is a BaseException and still propagates.
        except Exception as exc:
            self._failed(exc)
            _report(self._observe, namespace, "error")
            return None
        self._succeeded()
        _report(self._observe, namespace, "miss" if value is None else "hit")
        return value if isinstance(value, bytes) else None

    async def set(self, namespace: str, inputs: Mapping[str, Any], value: bytes) -> None:
        if self._closed or len(value) > MAX_VALUE_BYTES or time.monotonic() < self._skip_until:
            return
        key = cache_key(namespace, inputs, self._prefix)
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._redis.set(key, value, px=self._ttl_ms)
        except Exception as exc:  # NOTE: as in get(): a failed write only loses a cache entry.
            self._failed(exc)
            return
        self._succeeded()

    async def ping(self) -> bool:
        """True when Redis answers now (a failure opens the breaker like any other call)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._redis.ping()
        except Exception as exc:  # NOTE: as in get().
            self._failed(exc)
            return False
        self._succeeded()
        return True

    async def close(self) -> None:
        self._closed = True
        await self._redis.aclose()

    def _failed(self, exc: Exception) -> None:
        self._skip_until = time.monotonic() + self._cooldown_s
        if not self._down:
            self._down = True
            log.warning(
                "cache_unavailable",
                backend="redis",
                error=f"{type(exc).__name__}: {exc}"[:200],
                skip_s=self._cooldown_s,
            )

    def _succeeded(self) -> None:
        if self._down:
            self._down = False
            log.info("cache_available", backend="redis")


async def open_cache(settings: Settings, observe: CacheObserver | None = None) -> Cache | None:
    """The cache `settings` choose: none when `cache_ttl_s` is 0, Redis when `redis_url` is set,
    else process memory. An unreachable Redis does not fail start-up: it is logged, and skipped
    until it answers. Raises ValueError for a malformed `redis_url`."""
    ttl_s = settings.cache_ttl_s
    if ttl_s <= 0:
        log.info("cache_off")
        return None
    if not settings.redis_url:
        log.info("cache_open", backend="memory", ttl_s=ttl_s)
        return InMemoryCache(ttl_s, observe=observe)
    try:
        cache = RedisCache(settings.redis_url, ttl_s, observe=observe)
    except ValueError as exc:
        raise ValueError(f"OCTOLLM_REDIS_URL is not a usable Redis URL: {exc}") from None
    # NOTE: the URL may carry a password, so it is never logged.
    log.info("cache_open", backend="redis", ttl_s=ttl_s, reachable=await cache.ping())
    return cache


def _report(observe: CacheObserver | None, namespace: str, outcome: CacheOutcome) -> None:
    if observe is not None:
        observe(namespace, outcome)
