"""Chaos: a private Redis is stalled and killed under load; work completes, the cache comes back.

Nothing here stops the machine's shared Redis: each test starts its own `redis-server`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc
from structlog.testing import capture_logs

from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.store import RedisCache
from orchestrator_svc.telemetry.metrics import Metrics
from tests.cache.conftest import RedisProcess, lookups
from tests.llm.fake_openai import FakeOpenAI, Reply, Script, completion
from tests.role_arms import scribe

StartFake = Callable[[Script], Awaitable[FakeOpenAI]]
HANG_GUARD_S = 30.0  # waits below are for events, bounded only against hangs
INPUTS = {"prompt": "what is a credit?"}


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` until it is true (the hang guard fails the test otherwise)."""
    async with asyncio.timeout(HANG_GUARD_S):
        while not await check():
            await asyncio.sleep(0.05)


async def until(predicate: Callable[[], bool]) -> None:
    """Wait until `predicate` holds (the hang guard fails the test otherwise)."""
    async with asyncio.timeout(HANG_GUARD_S):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_stalled_then_killed_redis_degrades_to_no_cache_and_recovers(
    own_redis: RedisProcess, metrics: Metrics
) -> None:
    """SIGSTOP: lookups time out (error) and are skipped, never raising; SIGCONT: hits again.
    SIGKILL: errors; restarted: the cache works again after the cool-down."""
    cache = RedisCache(own_redis.url, 60, observe=metrics.observe_cache, cooldown_s=0.3)
    try:
        await cache.set("llm", INPUTS, b"kept")
        assert await cache.get("llm", INPUTS) == b"kept"

        own_redis.pause()
        assert await cache.get("llm", INPUTS) is None
        await cache.set("llm", {"other": 1}, b"lost")
        assert lookups(metrics, "llm", "error") >= 1
        own_redis.resume()

        async def hit() -> bool:
            return await cache.get("llm", INPUTS) == b"kept"

        await eventually(hit)

        await own_redis.kill()
        assert await cache.get("llm", INPUTS) is None
        errors = lookups(metrics, "llm", "error")
        assert errors >= 2
        await own_redis.start()

        async def works_again() -> bool:
            await cache.set("llm", INPUTS, b"new")
            return await cache.get("llm", INPUTS) == b"new"

        await eventually(works_again)
    finally:
        await cache.close()


def brain_llm(body: dict[str, Any], index: int) -> Reply:
    """Answers each of the brain's questions with valid JSON, by the schema it asks for."""
    name = str(body.get("response_format", {}).get("json_schema", {}).get("name", ""))
    if "Intent" in name:
        return completion({"domain": "general", "complexity": "simple", "keywords": ["credit"]})
    if "Plan" in name:
        step = {"step_id": "answer", "description": "say what a credit is", "arm_type": "echo"}
        return completion({"rationale": "one step", "steps": [step]})
    if "Verdict" in name:
        return completion({"verdicts": [{"passed": True, "reason": "it does"}]})
    return completion({"answer": "A credit lets the orchestrator send one more subtask."})


async def test_killing_redis_mid_run_fails_no_task_and_the_cache_returns(
    own_redis: RedisProcess,
    start_fake: StartFake,
    start_arm,  # type: ignore[no-untyped-def]
    start_orchestrator,  # type: ignore[no-untyped-def]
    connect,  # type: ignore[no-untyped-def]
) -> None:
    """Tasks run while Redis is killed and restarted: every one succeeds, errors are counted,
    Redis is skipped while down, and after the breaker's cool-down the cache is hit again."""
    fake = await start_fake(brain_llm)
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    roles = await start_arm(scribe())  # NOTE: echo stands in for no role the goal needs
    orch = await start_orchestrator(
        [echo.address, roles.address],
        wait_for=("echo", "scribe"),
        llm_base_url=fake.base_url,
        llm_model="fake-model",
        llm_max_retries=0,
        redis_url=own_redis.url,
    )
    stub: pb_grpc.OrchestratorServiceStub = connect(orch.address)
    metrics = orch.metrics
    finished: list[pb.Task] = []
    stop = asyncio.Event()

    def hits() -> float:
        return sum(lookups(metrics, ns, "hit") for ns in ("llm", "plan", "result"))

    def errors() -> float:
        return sum(lookups(metrics, ns, "error") for ns in ("llm", "plan", "result"))

    async def run_one() -> None:
        request = pb.SubmitTaskRequest(goal="Explain what a credit is in one sentence")
        task = (await stub.SubmitTask(request)).task
        async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=60):
            pass
        finished.append((await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task)

    async def keep_working() -> None:
        while not stop.is_set():
            await asyncio.gather(*(run_one() for _ in range(3)))

    with capture_logs() as logs:
        worker = asyncio.create_task(keep_working())
        try:
            await until(lambda: hits() > 0)
            await own_redis.kill()
            done_at_kill = len(finished)
            await until(lambda: errors() > 0 and len(finished) > done_at_kill)
            await own_redis.start()
            hits_at_restart = hits()
            await until(lambda: hits() > hits_at_restart)
        finally:
            stop.set()
            await worker
    assert finished
    assert {t.state for t in finished} == {pb.TASK_STATE_SUCCEEDED}
    events = [e["event"] for e in logs]
    assert "cache_unavailable" in events
    assert "cache_available" in events
    # NOTE: the breaker skipped Redis instead of trying it on every call of the outage.
    assert sum(lookups(metrics, ns, "skipped") for ns in ("llm", "plan", "result")) > 0
