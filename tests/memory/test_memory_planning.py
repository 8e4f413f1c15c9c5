"""Past tasks as planning context: the offline planner reuses, the LLM planner is shown them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from orchestrator_svc.brain import (
    ArmCapability,
    Brain,
    Episode,
    EpisodeStep,
    HeuristicIntentParser,
    LLMPlanner,
    PlanBudget,
    Planner,
    PlanOutcome,
    validate_plan,
)
from orchestrator_svc.store.episodes import LocalQdrant
from tests.llm.conftest import MakeClient, StartFake
from tests.llm.fake_openai import completion
from tests.memory.conftest import MakeMemory, finished_task

ARMS = [
    ArmCapability(t, (f"{t}ing",), f"the {t} arm", 2)
    for t in ("planner", "retriever", "coder", "executor", "judge")
]
GOAL = "Find and fix the authentication bug in auth/login.py"
PAST_STEPS = (
    ("look", "retriever", ()),
    ("patch", "coder", ("look",)),
    ("check", "judge", ("patch",)),
)
LLM_PLAN = {
    "rationale": "look, then answer",
    "steps": [
        {"step_id": "look", "description": "look", "arm_type": "retriever", "depends_on": []},
        {"step_id": "say", "description": "say", "arm_type": "planner", "depends_on": ["look"]},
    ],
}


def episode(
    task_id: str, score: float, steps: Sequence[tuple[str, str, tuple[str, ...]]]
) -> Episode:
    return Episode(
        task_id=task_id,
        goal=f"past goal of {task_id}",
        steps=tuple(EpisodeStep(s, a, f"{s} it", d) for s, a, d in steps),
        confidence=0.9,
        score=score,
    )


async def plan(
    planner: Planner, past: Sequence[Episode], arms: list[ArmCapability] = ARMS
) -> PlanOutcome:
    intent = HeuristicIntentParser().parse(GOAL)
    return await asyncio.wait_for(
        planner.plan(intent, arms, acceptance_criteria=["mentions login.py"], past=past), 20
    )


async def test_offline_brain_reuses_the_plan_of_a_remembered_identical_goal(
    memories: MakeMemory,
) -> None:
    """A task remembered in Qdrant and recalled for the same goal gives its plan to the next:
    same steps and arms, inputs for the new task, the task's criteria on the last step."""
    memory = memories(LocalQdrant(":memory:"))
    await memory.remember(finished_task("t-past", GOAL, PAST_STEPS))
    past = await memory.recall(GOAL)

    intent = HeuristicIntentParser().parse(GOAL, ["keep the API"])
    outcome = await Brain().plan(intent, ARMS, acceptance_criteria=["mentions login.py"], past=past)

    assert [(s.step_id, s.arm_type, s.depends_on) for s in outcome.plan.steps] == [
        ("look", "retriever", ()),
        ("patch", "coder", ("look",)),
        ("check", "judge", ("patch",)),
    ]
    assert outcome.notes == (
        f"reused the plan of a similar past task t-past (score {past[0].score:.2f})",
    )
    assert outcome.notes[0].endswith("(score 1.00)")
    patch = outcome.plan.steps[1]
    assert patch.input == {
        "goal": GOAL,
        "constraints": ["keep the API"],
        "task": "patch for the goal",
        "files": ["auth/login.py"],
    }
    assert outcome.plan.steps[2].acceptance_criteria == ("mentions login.py",)
    assert validate_plan(outcome.plan, {a.arm_type for a in ARMS}) == []


async def test_offline_planner_skips_a_past_plan_whose_arms_are_not_routable() -> None:
    """A near-identical past plan needing an arm type nobody serves now is not reused; the next
    one that fits is, and with none the templates plan."""
    unroutable = episode("t-safety", 0.99, (("scan", "safety", ()),))
    fitting = episode("t-fit", 0.97, (("look", "retriever", ()),))

    outcome = await plan(Planner(), [unroutable, fitting])
    assert outcome.notes == ("reused the plan of a similar past task t-fit (score 0.97)",)

    outcome = await plan(Planner(), [unroutable])
    assert outcome.notes[0].startswith("heuristic medium code template")


async def test_offline_planner_does_not_reuse_a_merely_similar_past_task() -> None:
    """Below the reuse threshold (0.95) a past task is context, not a plan to copy."""
    outcome = await plan(Planner(), [episode("t-near", 0.9, PAST_STEPS)])
    assert outcome.notes[0].startswith("heuristic medium code template")


async def test_offline_planner_does_not_reuse_a_plan_over_budget() -> None:
    """A past plan that no longer fits the token budget gives way to the trimmed template."""
    intent = HeuristicIntentParser().parse(GOAL)
    outcome = await Planner().plan(
        intent, ARMS, PlanBudget(max_tokens=1000), past=[episode("t-big", 0.99, PAST_STEPS)]
    )
    assert outcome.notes[0].startswith("heuristic medium code template")


async def test_llm_planner_is_shown_the_most_similar_past_tasks(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """The LLM's prompt holds the best past tasks' goals and plans (at most 3, cut to size),
    and the notes say how many it was given."""
    fake = await start_fake([completion(LLM_PLAN)])
    long_goal = Episode(
        task_id="t-long",
        goal="summarise " + "very " * 200 + "long goal",
        steps=(EpisodeStep("read", "retriever", "read " + "x" * 300),),
        score=0.6,
    )
    past = [
        episode("t-2", 0.8, PAST_STEPS),
        episode("t-1", 0.9, PAST_STEPS),
        long_goal,
        episode("t-low", 0.55, PAST_STEPS),
    ]
    outcome = await plan(Planner(LLMPlanner(make_client(fake.base_url))), past)

    assert outcome.notes == ("3 similar past task(s) given to the planner", "LLM planned 2 step(s)")
    prompt = fake.requests[0]["messages"][1]["content"]
    assert "Similar past tasks that succeeded" in prompt
    assert prompt.index("past goal of t-1") < prompt.index("past goal of t-2")
    assert "past goal of t-1 (similarity 0.90, confidence 0.90)" in prompt
    assert '{"step_id": "patch", "arm_type": "coder", "depends_on": ["look"], ' in prompt
    assert "t-low" not in prompt
    assert "very " * 60 not in prompt
    assert "x" * 120 not in prompt


async def test_llm_planner_without_past_tasks_prompts_as_before(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """No past tasks: no past-task block and no note about it."""
    fake = await start_fake([completion(LLM_PLAN)])
    outcome = await plan(Planner(LLMPlanner(make_client(fake.base_url))), [])
    assert outcome.notes == ("LLM planned 2 step(s)",)
    assert "Similar past tasks" not in fake.requests[0]["messages"][1]["content"]
