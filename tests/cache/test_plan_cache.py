"""Plans from the cache: the same request to the same arms reuses the LLM's validated plan."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from orchestrator_svc.brain import ArmCapability, Brain, HeuristicIntentParser, PlanBudget
from orchestrator_svc.brain.plan_cache import PlanCache
from orchestrator_svc.llm import OpenAICompatibleClient
from orchestrator_svc.store import InMemoryCache
from orchestrator_svc.telemetry.metrics import Metrics
from tests.cache.conftest import MakeCache, lookups
from tests.llm.fake_openai import FakeOpenAI, Script, completion, refused_base_url

StartFake = Callable[[Script], Awaitable[FakeOpenAI]]
MakeClient = Callable[..., OpenAICompatibleClient]

ARMS = [
    ArmCapability("retriever", ("search",), "finds documents", 1),
    ArmCapability("coder", ("python",), "writes code", 2),
]
INTENT = HeuristicIntentParser().parse("Find the login bug in auth/login.py and fix it")
BUDGET = PlanBudget(max_tokens=50_000, max_time_s=300)
CRITERIA = ["mentions login.py"]
PLAN = {
    "rationale": "find, then fix",
    "steps": [
        {"step_id": "find", "description": "find the bug", "arm_type": "retriever"},
        {"step_id": "fix", "description": "fix it", "arm_type": "coder", "depends_on": ["find"]},
    ],
}


async def test_the_same_request_reuses_the_llm_plan(
    make_cache: MakeCache, start_fake: StartFake, make_client: MakeClient, metrics: Metrics
) -> None:
    """A second identical plan() asks no LLM, costs nothing, says so, and has a new plan id."""
    fake = await start_fake([completion(PLAN, prompt_tokens=300)])
    brain = Brain(make_client(fake.base_url), cache=make_cache())
    first = await brain.plan(INTENT, ARMS, BUDGET, acceptance_criteria=CRITERIA)
    assert first.usage.total_tokens > 0
    second = await brain.plan(INTENT, ARMS, BUDGET, acceptance_criteria=CRITERIA)
    assert len(fake.requests) == 1
    assert second.plan.steps == first.plan.steps
    assert second.plan.plan_id != first.plan.plan_id
    assert second.usage.total_tokens == 0
    assert "from the cache" in second.notes[0]
    assert lookups(metrics, "plan", "hit") == 1


async def test_other_arms_budget_or_criteria_plan_afresh(
    make_cache: MakeCache, start_fake: StartFake, make_client: MakeClient
) -> None:
    """Changing the routable arms, the budget or the criteria is a different request."""
    fake = await start_fake([completion(PLAN)])
    brain = Brain(make_client(fake.base_url), cache=make_cache())
    await brain.plan(INTENT, ARMS, BUDGET, acceptance_criteria=CRITERIA)
    more_arms = [*ARMS, ArmCapability("judge", ("review",), "reviews", 1)]
    await brain.plan(INTENT, more_arms, BUDGET, acceptance_criteria=CRITERIA)
    await brain.plan(INTENT, ARMS, PlanBudget(max_tokens=9_000), acceptance_criteria=CRITERIA)
    await brain.plan(INTENT, ARMS, BUDGET, acceptance_criteria=["is short"])
    assert len(fake.requests) == 4


async def test_a_cached_plan_that_cannot_run_now_is_not_used(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """A cached plan naming an arm type that is not routable is ignored and the LLM plans."""
    fake = await start_fake([completion(PLAN)])
    client = make_client(fake.base_url)
    cache = InMemoryCache(60)
    plan_cache = PlanCache(cache, client.model)
    key = plan_cache.key(INTENT, ARMS, BUDGET, CRITERIA)
    stale = {
        "plan_id": "old",
        "steps": [
            {
                "step_id": "gone",
                "description": "uses an arm that left",
                "arm_type": "translator",
                "input": {},
                "depends_on": [],
                "acceptance_criteria": [],
                "required_capabilities": [],
            }
        ],
        "estimated_duration_s": 1.0,
        "estimated_tokens": 10,
        "rationale": "from before",
    }
    await cache.set("plan", key, json.dumps(stale).encode())
    outcome = await Brain(client, cache=cache).plan(
        INTENT, ARMS, BUDGET, acceptance_criteria=CRITERIA
    )
    assert len(fake.requests) == 1
    assert [s.arm_type for s in outcome.plan.steps] == ["retriever", "coder"]


async def test_a_heuristic_fallback_plan_is_never_cached(
    make_cache: MakeCache, make_client: MakeClient, metrics: Metrics
) -> None:
    """With the LLM down the heuristic plan is used and not stored: the next call misses again."""
    brain = Brain(make_client(refused_base_url(), cooldown_s=0), cache=make_cache())
    for _ in range(2):
        outcome = await brain.plan(INTENT, ARMS, BUDGET, acceptance_criteria=CRITERIA)
        assert "heuristic" in " ".join(outcome.notes)
    assert lookups(metrics, "plan", "miss") == 2
    assert lookups(metrics, "plan", "hit") == 0


async def test_the_offline_brain_does_not_use_the_plan_cache(
    make_cache: MakeCache, metrics: Metrics
) -> None:
    """Without an LLM planning is cheap and deterministic: no cache lookups at all."""
    brain = Brain(None, cache=make_cache())
    await brain.plan(INTENT, ARMS, BUDGET, acceptance_criteria=CRITERIA)
    assert lookups(metrics, "plan", "miss") == 0
