"""The Brain facade: offline and LLM end to end, and graceful fallback when the LLM fails."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import orchestrator_svc.brain as brain_pkg
import orchestrator_svc.llm as llm_pkg
from orchestrator_svc.brain import (
    ArmCapability,
    Brain,
    ExecutionPlan,
    LLMValidator,
    PlannedStep,
)
from tests.llm.conftest import MakeClient, StartFake
from tests.llm.fake_openai import Reply, completion, refused_base_url

README_SAMPLE = "Explain how the mesh runs a fan-out/fan-in plan across specialist arms"
ECHO = [ArmCapability("echo", ("echo", "general"), "Returns its input unchanged", 1)]
# The arms a general goal's offline plan needs (outline, research, review).
GENERAL_ROLES = [
    ArmCapability("planner", ("planning",), "plans", 1),
    ArmCapability("retriever", ("retrieval",), "retrieves", 1),
    ArmCapability("judge", ("review",), "judges", 1),
]
CANONICAL = [
    *GENERAL_ROLES,
    *(ArmCapability(t, (), f"the {t} arm", 2) for t in ("coder", "executor", "safety")),
]
GUARD_S = 30


def echo_outputs(plan: ExecutionPlan) -> dict[str, dict[str, Any]]:
    """What the echo arm returns per step (dependency outputs nested, as the engine does)."""
    outputs: dict[str, dict[str, Any]] = {}
    for step in plan.steps:
        inp = dict(step.input)
        if step.depends_on:
            inp["dependencies"] = {d: outputs[d] for d in step.depends_on}
        outputs[step.step_id] = {"echo": inp, "description": step.description}
    return outputs


async def test_offline_brain_runs_the_readme_sample_end_to_end() -> None:
    """No LLM: parse, plan on the arms of each role, integrate their outputs and validate,
    all with notes."""
    brain = Brain()
    assert not brain.uses_llm
    parsed = await brain.parse(README_SAMPLE)
    assert (parsed.intent.domain, parsed.intent.complexity) == ("general", "simple")
    assert parsed.notes == ("heuristic parse: general, simple",)
    planned = await brain.plan(
        parsed.intent, GENERAL_ROLES, acceptance_criteria=["mentions fan-out"]
    )
    plan = planned.plan
    assert [s.step_id for s in plan.steps] == ["outline", "research", "review"]
    outputs = echo_outputs(plan)
    merged = await brain.integrate(README_SAMPLE, plan, outputs, dict.fromkeys(outputs, 1.0))
    assert json.loads(merged.integration.answer)["echo"]["goal"] == README_SAMPLE
    assert merged.integration.confidence == 1.0
    checked = await brain.validate(
        merged.integration.answer, outputs, ["mentions fan-out"], plan=plan
    )
    assert checked.report.passed
    for outcome in (parsed, planned, merged, checked):
        assert outcome.usage.total_tokens == 0


async def test_brain_never_raises_when_the_llm_is_down(make_client: MakeClient) -> None:
    """LLM unreachable: every step falls back to heuristics and the notes say what happened."""
    brain = Brain(make_client(refused_base_url(), max_retries=0, cooldown_s=60, breaker_failures=1))
    parsed = await asyncio.wait_for(brain.parse(README_SAMPLE), GUARD_S)
    assert parsed.notes[0].startswith("LLM unavailable (connection failed")
    assert parsed.notes[0].endswith("; used the heuristic intent parser")
    planned = await asyncio.wait_for(brain.plan(parsed.intent, GENERAL_ROLES), GUARD_S)
    assert "cooling down" in planned.notes[0]
    assert len(planned.plan.steps) == 3
    outputs = {s.step_id: {"answer": f"{s.step_id} says mesh"} for s in planned.plan.steps}
    merged = await asyncio.wait_for(
        brain.integrate(README_SAMPLE, planned.plan, outputs, {}), GUARD_S
    )
    assert merged.integration.answer == "review says mesh"
    assert merged.notes[0].endswith("; merged the step outputs instead")
    checked = await asyncio.wait_for(
        brain.validate("review says mesh", outputs, ["describes the mesh topology"]), GUARD_S
    )
    assert checked.notes[0].endswith("; checked the criteria by rules only")
    assert checked.report.checks[-1].rule == "overlap"


def scripted_llm(body: dict[str, Any], index: int) -> Reply:
    """A fake model that answers each brain prompt with a fitting, valid reply."""
    system = body["messages"][0]["content"]
    if "intent parser" in system:
        return completion(
            {"constraints": [], "domain": "infrastructure", "complexity": "simple",
             "keywords": ["mesh"], "entities": {}},
            prompt_tokens=100, completion_tokens=10,
        )  # fmt: skip
    if "task planner" in system:
        return completion(
            {"rationale": "two looks, one answer", "steps": [
                {"step_id": "look_a", "description": "look at A", "arm_type": "echo"},
                {"step_id": "look_b", "description": "look at B", "arm_type": "echo"},
                {"step_id": "answer", "description": "answer", "arm_type": "echo",
                 "depends_on": ["look_a", "look_b"]}]},
            prompt_tokens=200, completion_tokens=20,
        )  # fmt: skip
    if "final answer" in system:
        return completion(
            {"answer": "The mesh fans out to arms, then fans in."},
            prompt_tokens=300,
            completion_tokens=30,
        )
    return completion(
        {"verdicts": [{"passed": True, "reason": "it does"}]},
        prompt_tokens=400,
        completion_tokens=40,
    )


async def test_brain_uses_the_llm_for_every_step(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """With a working LLM: parse, plan, integrate and judge by the model, usage per call."""
    fake = await start_fake(scripted_llm)
    brain = Brain(make_client(fake.base_url))
    parsed = await asyncio.wait_for(brain.parse(README_SAMPLE), GUARD_S)
    assert parsed.intent.domain == "infrastructure"
    assert parsed.usage.total_tokens == 110
    assert parsed.notes == ("LLM parsed the goal: infrastructure, simple",)
    planned = await asyncio.wait_for(brain.plan(parsed.intent, [*ECHO, *CANONICAL]), GUARD_S)
    assert [s.step_id for s in planned.plan.steps] == ["look_a", "look_b", "answer"]
    assert planned.usage.total_tokens == 220
    outputs = {s.step_id: {"text": s.description} for s in planned.plan.steps}
    merged = await asyncio.wait_for(
        brain.integrate(README_SAMPLE, planned.plan, outputs, {"answer": 0.8}), GUARD_S
    )
    assert merged.integration.answer == "The mesh fans out to arms, then fans in."
    assert merged.integration.confidence == 0.8
    assert merged.integration.source == "llm"
    assert merged.usage.total_tokens == 330
    checked = await asyncio.wait_for(
        brain.validate(
            merged.integration.answer,
            outputs,
            ["mentions arms", "describes the whole topology"],
            plan=planned.plan,
        ),
        GUARD_S,
    )
    assert checked.report.passed
    assert checked.report.verified_by == "llm"
    assert [c.rule for c in checked.report.checks] == ["non_empty", "present", "llm"]
    assert checked.usage.total_tokens == 440
    assert checked.notes == ("LLM judged the criteria no rule could check",)
    judge_prompt = fake.requests[-1]["messages"][1]["content"]
    assert "1. describes the whole topology" in judge_prompt
    assert "mentions arms" not in judge_prompt


async def test_llm_integrator_input_is_bounded(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """Huge step outputs are cut so the integration prompt stays within its bound."""
    summary = "The goal is met by all three steps. " * 6
    fake = await start_fake([completion({"answer": summary})])
    brain = Brain(make_client(fake.base_url))
    plan = ExecutionPlan("p", tuple(PlannedStep(f"s{i}", "d", "echo") for i in range(3)))
    outputs = {f"s{i}": {"text": "x" * 50_000} for i in range(3)}
    merged = await asyncio.wait_for(brain.integrate("goal", plan, outputs, {}), GUARD_S)
    assert merged.integration.answer == summary.strip()
    assert len(fake.requests[0]["messages"][1]["content"]) <= 14_000


async def test_llm_validator_skips_the_llm_when_rules_suffice(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """Criteria every rule can read are not sent to the LLM at all."""
    fake = await start_fake([completion({"verdicts": []})])
    validator = LLMValidator(make_client(fake.base_url))
    report, usage = await validator.validate(
        "a b c", {"s": {"text": "a b c"}}, ["at least 3 words"]
    )
    assert report.passed
    assert usage.total_tokens == 0
    assert fake.requests == []


async def test_judge_with_wrong_verdict_count_falls_back_to_rules(
    start_fake: StartFake, make_client: MakeClient
) -> None:
    """A judge reply with the wrong number of verdicts is invalid: rules decide instead."""
    fake = await start_fake([completion({"verdicts": []}, prompt_tokens=5, completion_tokens=5)])
    brain = Brain(make_client(fake.base_url))
    checked = await asyncio.wait_for(
        brain.validate("It is fast.", {"s": {"text": "It is fast."}}, ["explains retry backoff"]),
        GUARD_S,
    )
    assert not checked.report.passed
    assert checked.report.checks[-1].rule == "overlap"
    assert checked.usage.total_tokens == 10
    assert checked.notes[0].startswith("LLM judged 0 of 1 criteria")


def test_public_surface() -> None:
    """The packages export exactly their documented public names."""
    assert set(brain_pkg.__all__) == {
        "WEIGHT_AVAILABILITY", "WEIGHT_CAPABILITY", "WEIGHT_COST", "WEIGHT_SUCCESS",
        "ArmCapability", "ArmScore", "ArmView", "Brain", "CriterionCheck", "Episode",
        "EpisodeStep", "ExecutionPlan", "StepProvenance",
        "HeuristicIntentParser", "HeuristicPlanner", "IntegrateOutcome", "Integration",
        "LLMIntegrator", "LLMIntentParser", "LLMPlanner", "LLMValidator", "NoArmsAvailable",
        "GivenInputs", "MissingCapability", "MissingRole",
        "ParseOutcome", "ParsedIntent", "PlanBudget", "PlanOutcome", "PlanProblem",
        "PlannedStep", "Planner", "ValidateOutcome", "ValidationReport", "answer_steps",
        "choose", "estimate", "integrate", "plan_single_step", "ranked", "repair_plan", "score",
        "sink_ids", "validate", "validate_plan", "AnswerSource", "FROM_DOCUMENTS",
        "NOT_COVERED", "NOT_FOUND", "Passage", "RetrievalAnswer", "retrieval_answer",
    }  # fmt: skip
    assert set(llm_pkg.__all__) == {
        "NO_USAGE", "RESPONSE_FORMAT_MODES", "CachedCompleter", "JSONCompleter", "LLMError",
        "LLMInvalidOutput",
        "LLMRateLimited", "LLMRejected", "LLMUnavailable", "LLMUsage",
        "OpenAICompatibleClient", "ResponseFormatMode",
        "ENDPOINT_OK", "EndpointStatus", "NO_LIMITS", "CallLimits", "StallGuard",
    }  # fmt: skip
    for pkg in (brain_pkg, llm_pkg):
        for name in pkg.__all__:
            assert hasattr(pkg, name), name


def test_brain_never_imports_grpc_or_protobuf() -> None:
    """Importing the brain pulls in neither grpc nor the generated octollm.v1 modules."""
    code = (
        "import sys, orchestrator_svc.brain; "
        "print([m for m in sys.modules if m.split('.')[0] in ('grpc', 'octollm')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


def test_legacy_single_step_planner_still_importable() -> None:
    """The engine's current import keeps working until it switches to Brain."""
    from orchestrator_svc.brain import plan_single_step

    (only,) = plan_single_step("fix the bug in a.py", [], ["works"], {"coder", "echo"})
    assert (only.step_id, only.arm_type, only.acceptance_criteria) == (
        "answer",
        "coder",
        ("works",),
    )
