"""The Planner facade against a fake OpenAI server: LLM, repair, replan, heuristic."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator_svc.brain import (
    ArmCapability,
    HeuristicIntentParser,
    LLMPlanner,
    NoArmsAvailable,
    Planner,
    PlanOutcome,
    validate_plan,
)
from tests.llm.conftest import MakeClient, StartFake
from tests.llm.fake_openai import completion, refused_base_url

CANONICAL = [
    ArmCapability(t, (f"{t}ing",), f"the {t} arm", 2)
    for t in ("planner", "retriever", "coder", "executor", "judge", "safety")
]
SERVED = {a.arm_type for a in CANONICAL}
INTENT = HeuristicIntentParser().parse(
    "Find and fix the authentication bug in auth/login.py. Don't modify the database schema."
)


def llm_step(step_id: str, arm_type: str, *deps: str) -> dict[str, Any]:
    return {
        "step_id": step_id,
        "description": f"{step_id} for the goal",
        "arm_type": arm_type,
        "depends_on": list(deps),
        "acceptance_criteria": [f"{step_id} is done"],
    }


GOOD_PLAN = {
    "rationale": "look, change, check",
    "steps": [
        llm_step("find_code", "retriever"),
        llm_step("fix_bug", "coder", "find_code"),
        llm_step("check_fix", "judge", "fix_bug"),
    ],
}
CYCLIC_PLAN = {
    "rationale": "loops",
    "steps": [llm_step("a", "retriever", "b"), llm_step("b", "coder", "a")],
}


async def plan_with(planner: Planner, arms: list[ArmCapability] = CANONICAL) -> PlanOutcome:
    return await asyncio.wait_for(
        planner.plan(INTENT, arms, acceptance_criteria=["mentions login.py"]), 20
    )


async def test_valid_llm_plan_is_used(start_fake: StartFake, make_client: MakeClient) -> None:
    """A valid LLM plan is used as is, with inputs filled in and the task criteria on sinks."""
    fake = await start_fake([completion(GOOD_PLAN, prompt_tokens=300, completion_tokens=100)])
    outcome = await plan_with(Planner(LLMPlanner(make_client(fake.base_url))))
    plan = outcome.plan
    assert [(s.step_id, s.arm_type, s.depends_on) for s in plan.steps] == [
        ("find_code", "retriever", ()),
        ("fix_bug", "coder", ("find_code",)),
        ("check_fix", "judge", ("fix_bug",)),
    ]
    assert validate_plan(plan, SERVED) == []
    assert plan.rationale == "look, change, check"
    assert plan.steps[1].input["goal"] == INTENT.goal
    assert plan.steps[1].input["task"] == "fix_bug for the goal"
    assert plan.steps[2].acceptance_criteria == ("check_fix is done", "mentions login.py")
    assert plan.estimated_tokens == 600 + 3000 + 1000
    assert outcome.usage.total_tokens == 400
    assert outcome.notes == ("LLM planned 3 step(s)",)
    request = fake.requests[0]
    schema = request["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["steps"]["items"]["properties"]["arm_type"]["enum"] == sorted(
        SERVED
    )
    system = request["messages"][0]["content"]
    assert "- coder - the coder arm (capabilities: codering)" in system
    assert "use 3 to 5 steps" in system
    assert "Don't modify the database schema." in request["messages"][1]["content"]


async def test_invalid_llm_plan_is_repaired(start_fake: StartFake, make_client: MakeClient) -> None:
    """Unserved arm types and unknown deps are repaired without asking the LLM again."""
    broken = {
        "steps": [
            llm_step("find code", "searcher"),
            llm_step("fix", "coder", "find code", "ghost"),
        ]
    }
    fake = await start_fake([completion(broken)])
    outcome = await plan_with(Planner(LLMPlanner(make_client(fake.base_url))))
    assert len(fake.requests) == 1
    assert [(s.step_id, s.arm_type, s.depends_on) for s in outcome.plan.steps] == [
        ("find_code", "retriever", ()),
        ("fix", "coder", ("find_code",)),
    ]
    assert validate_plan(outcome.plan, SERVED) == []
    (note,) = outcome.notes
    assert note.startswith("LLM plan repaired (")
    assert "step fix depends on unknown step ghost" in note
    assert "'searcher'" in note


async def test_cycle_is_replanned_with_feedback(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """A cyclic plan cannot be repaired: the LLM is asked again with the problem fed back."""
    fake = await start_fake(
        [
            completion(CYCLIC_PLAN, prompt_tokens=10, completion_tokens=5),
            completion(GOOD_PLAN, prompt_tokens=20, completion_tokens=7),
        ]
    )
    outcome = await plan_with(Planner(LLMPlanner(make_client(fake.base_url))))
    assert len(fake.requests) == 2
    feedback = fake.requests[1]["messages"][1]["content"]
    assert "Your previous plan was invalid:" in feedback
    assert "- cycle a->b->a" in feedback
    assert '"step_id": "a"' in feedback
    assert "Return a corrected plan." in feedback
    assert [s.step_id for s in outcome.plan.steps] == ["find_code", "fix_bug", "check_fix"]
    assert outcome.usage.total_tokens == 42
    (note,) = outcome.notes
    assert note.startswith("LLM plan invalid: cycle a->b->a")
    assert note.endswith("; replanned")


async def test_still_invalid_after_replan_falls_back_to_heuristic(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """A replan that is still invalid gives way to the heuristic planner, and the notes say so."""
    fake = await start_fake([completion(CYCLIC_PLAN, prompt_tokens=10, completion_tokens=5)])
    outcome = await plan_with(Planner(LLMPlanner(make_client(fake.base_url))))
    assert len(fake.requests) == 2
    assert validate_plan(outcome.plan, SERVED) == []
    assert outcome.plan.rationale.startswith("heuristic medium code template")
    assert outcome.usage.total_tokens == 30
    assert "replan still invalid" in outcome.notes[0]
    assert outcome.notes[0].endswith("used the heuristic planner")


async def test_llm_down_falls_back_to_heuristic(make_client: MakeClient) -> None:
    """Connection refused: the heuristic planner plans and the note names the LLM failure."""
    client = make_client(refused_base_url(), max_retries=0)
    outcome = await plan_with(Planner(LLMPlanner(client)))
    assert validate_plan(outcome.plan, SERVED) == []
    assert len(outcome.plan.steps) == 5
    assert outcome.notes[0].startswith("LLM unavailable (connection failed")
    assert outcome.notes[0].endswith("; used the heuristic planner")
    assert outcome.usage.total_tokens == 0


async def test_malformed_output_falls_back_and_counts_its_tokens(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """Schema-violating output after retries falls back; the tokens it burnt are still counted."""
    fake = await start_fake([completion({"steps": []}, prompt_tokens=4, completion_tokens=1)])
    outcome = await plan_with(Planner(LLMPlanner(make_client(fake.base_url, output_retries=1))))
    assert len(fake.requests) == 2
    assert outcome.usage.total_tokens == 10
    assert outcome.notes[0].startswith("LLM output invalid after 2 attempt(s)")
    assert validate_plan(outcome.plan, SERVED) == []


async def test_no_arms_raises_before_asking_the_llm(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """With no arm at all, NoArmsAvailable names the needed types and the LLM is not asked."""
    fake = await start_fake([completion(GOOD_PLAN)])
    with pytest.raises(NoArmsAvailable) as caught:
        await plan_with(Planner(LLMPlanner(make_client(fake.base_url))), [])
    assert set(caught.value.missing_types) == {"retriever", "planner", "coder", "executor", "judge"}
    assert fake.requests == []


async def test_offline_planner_notes_the_template() -> None:
    """Without an LLM the facade plans from templates and says so."""
    outcome = await plan_with(Planner())
    assert outcome.notes[0] == (
        "heuristic medium code template: 5 step(s) over retriever, planner, coder, executor, judge"
    )
    assert outcome.usage.total_tokens == 0
