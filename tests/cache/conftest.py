"""Cache fixtures: each shared test runs against the in-process cache and the real Redis.

Redis tests use the machine's Redis (`OCTOLLM_TEST_REDIS_URL`, default redis://127.0.0.1:6379/0)
under a key prefix of their own, deleted afterwards; without a reachable Redis they skip, or fail
under CI. Chaos tests start a private `redis-server` on a free port (`RedisProcess`) so they can
kill and stall it without touching the shared one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from orchestrator_svc.llm import OpenAICompatibleClient
from orchestrator_svc.store import Cache, InMemoryCache, RedisCache
from orchestrator_svc.telemetry.metrics import Metrics
from tests.llm.fake_openai import FakeOpenAI, Script
from tests.tools import tool_unavailable

REDIS_URL = os.environ.get("OCTOLLM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# NOTE: generous, so a busy shared machine never turns a hit into a timeout; the short default
# is exercised by the chaos tests.
TEST_TIMEOUT_S = 2.0
START_TIMEOUT_S = 10.0  # hang guard for redis-server start-up

MakeCache = Callable[..., Cache]


def lookups(metrics: Metrics, namespace: str, outcome: str) -> float:
    """How many cache lookups of `namespace` ended with `outcome`."""
    value = metrics.registry.get_sample_value(
        "octollm_cache_requests_total", {"namespace": namespace, "outcome": outcome}
    )
    return value or 0.0


async def _reachable_redis() -> aioredis.Redis:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        tool_unavailable(f"Redis is not reachable at {REDIS_URL} ({exc})")
    return client


async def _delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)


@pytest.fixture
async def shared_redis() -> AsyncIterator[aioredis.Redis]:
    """A raw client of the machine's Redis (skips, or fails under CI, when it is unreachable)."""
    client = await _reachable_redis()
    yield client
    await client.aclose()


@pytest.fixture
async def redis_prefix(shared_redis: aioredis.Redis) -> AsyncIterator[str]:
    """A key prefix no other test uses; its keys are deleted at the end of the test."""
    prefix = f"octollm-test:{uuid.uuid4().hex}:"
    yield prefix
    await _delete_prefix(shared_redis, prefix)


@pytest.fixture
def metrics() -> Metrics:
    """A fresh registry, so counters start at zero."""
    return Metrics()


@pytest.fixture(params=["memory", "redis"])
async def make_cache(request: pytest.FixtureRequest, metrics: Metrics) -> AsyncIterator[MakeCache]:
    """Build caches of one adapter (memory, or the shared Redis under a prefix of the test's
    own) reporting to `metrics`; closed, and their Redis keys deleted, at the end."""
    made: list[Cache] = []
    redis = await _reachable_redis() if request.param == "redis" else None
    prefix = f"octollm-test:{uuid.uuid4().hex}:"

    def make(ttl_s: float = 60.0) -> Cache:
        cache: Cache
        if redis is None:
            cache = InMemoryCache(ttl_s, observe=metrics.observe_cache)
        else:
            cache = RedisCache(
                REDIS_URL,
                ttl_s,
                observe=metrics.observe_cache,
                prefix=prefix,
                timeout_s=TEST_TIMEOUT_S,
            )
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.close()
    if redis is not None:
        await _delete_prefix(redis, prefix)
        await redis.aclose()


@pytest.fixture
async def start_fake() -> AsyncIterator[Callable[[Script], Awaitable[FakeOpenAI]]]:
    """Start fake OpenAI-compatible servers; all are closed at the end of the test."""
    servers: list[FakeOpenAI] = []

    async def start(script: Script) -> FakeOpenAI:
        server = await FakeOpenAI(script).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., OpenAICompatibleClient]]:
    """OpenAICompatibleClients with quick test defaults; all are closed at the end."""
    clients: list[OpenAICompatibleClient] = []

    def make(base_url: str, **overrides: Any) -> OpenAICompatibleClient:
        options: dict[str, Any] = {
            "api_key": "sk-test",
            "model": "fake-model",
            "timeout_s": 10.0,
            "max_retries": 0,
            "output_retries": 0,
        }
        options.update(overrides)
        client = OpenAICompatibleClient(base_url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A private redis-server on 127.0.0.1:`port`, without persistence, to kill and stall."""

    def __init__(self, binary: str, port: int) -> None:
        self._binary = binary
        self.port = port
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            self._binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while True:
                    try:
                        await client.ping()
                        return
                    except (RedisConnectionError, OSError):
                        await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        """SIGKILL: connections drop at once, the data is gone."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a stalled Redis)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisProcess]:
    """A started private redis-server (skips, or fails under CI, without the binary)."""
    binary = shutil.which("redis-server")
    if binary is None:
        tool_unavailable("redis-server not found on PATH (needed to kill a Redis mid-run)")
    server = RedisProcess(binary, free_port())
    await server.start()
    try:
        yield server
    finally:
        if server.running:
            server.resume()
        await server.kill()
