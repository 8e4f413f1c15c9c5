"""Planning: the LLM planner, the `Planner` facade with its fallback chain, and the legacy
one-step planner the engine used before the brain landed.

`Planner.plan` asks the LLM first (when configured). An invalid plan is repaired; if it is still
invalid the LLM is asked once more with the problems fed back; if that fails too, or the LLM
cannot answer at all, the heuristic planner plans. The notes say which path was taken, for the
task's event log. Past tasks recalled from the task memory (`past`, most similar first) are shown
to the LLM (at most `MAX_PAST_IN_PROMPT`, each cut to size) and offered to the heuristic planner,
which reuses the plan of a near-identical one.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from ..llm import NO_LIMITS, NO_USAGE, CallLimits, JSONCompleter, LLMError, LLMUsage
from ..llm.copies import DATA_RULE, fenced
from .episode import Episode
from .intent import ParsedIntent
from .plan import (
    ArmCapability,
    ExecutionPlan,
    GivenInputs,
    NoArmsAvailable,
    PlanBudget,
    PlannedStep,
    estimate,
)
from .plan_checks import PlanProblem, describe, repair_plan, validate_plan
from .templates import (
    HeuristicPlanner,
    check_roles,
    given_for,
    step_input,
    template_for,
    with_given,
    with_task_criteria,
)

# -- the LLM planner -----------------------------------------------------------------------------


class StepDraft(BaseModel):
    """One step as the LLM writes it."""

    step_id: str = Field(max_length=64, description="short snake_case id, unique in the plan")
    description: str = Field(max_length=500, description="what this step must do")
    arm_type: str = Field(max_length=64, description="one of the available arm types")
    depends_on: list[str] = Field(default=[], max_length=10)
    acceptance_criteria: list[str] = Field(default=[], max_length=5)
    required_capabilities: list[str] = Field(default=[], max_length=5)


class PlanDraft(BaseModel):
    """A plan as the LLM writes it; ids, inputs and estimates are the brain's business."""

    rationale: str = Field(default="", max_length=1000)
    steps: list[StepDraft] = Field(min_length=1, max_length=20)


PLANNER_SYSTEM_PROMPT = (
    """You are the task planner of OctoLLM, a mesh of specialist AI arms.
Decompose the goal into a small DAG of steps that the available arms can execute.
"""
    + DATA_RULE.replace("{", "{{").replace("}", "}}")
    + """

Available arms (use only these arm types):
{arms}

Reply with one JSON object with these fields:
- rationale: one sentence, in your own words, on why this plan fits this goal
- steps: the steps, each an object with
  - step_id: a short snake_case name saying what the step does, unique in the plan
  - description: what this step must do for this goal, specific enough for its arm to act on
  - arm_type: the available arm type that runs it
  - depends_on: the step_ids that must finish before it (an empty list for none)
  - acceptance_criteria: what its output must satisfy (an empty list for none)
  - required_capabilities: capabilities its arm needs (an empty list for none)

Rules:
- {size}
- no cycles; steps that do not depend on each other run in parallel
- the last step(s) produce the final answer
- pick each step's arm by what the step needs, not by the order arms are listed in
- respect every constraint and stay within the budget"""
)

_SIZES = {
    "simple": "use 1 to 3 steps",
    "medium": "use 3 to 5 steps",
    "complex": "use 5 to 7 steps",
}


def _arms_block(arms: Sequence[ArmCapability]) -> str:
    lines = []
    for arm in arms:
        caps = ", ".join(arm.capabilities) or "none declared"
        text = f" - {arm.description}" if arm.description else ""
        lines.append(f"- {arm.arm_type}{text} (capabilities: {caps})")
    return "\n".join(lines)


MAX_PAST_IN_PROMPT = 3
_PAST_GOAL_CHARS = 300
_PAST_STEPS = 10
_PAST_DESCRIPTION_CHARS = 120


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _past_block(past: Sequence[Episode]) -> list[str]:
    """The most similar past tasks' goals and plans, bounded in number and size."""
    best = sorted(past, key=lambda e: e.score, reverse=True)[:MAX_PAST_IN_PROMPT]
    if not best:
        return []
    lines = ["Similar past tasks that succeeded (adapt what fits; use only the arms above):"]
    shown = []
    for n, episode in enumerate(best, 1):
        shape = [
            {
                "step_id": s.step_id,
                "arm_type": s.arm_type,
                "depends_on": list(s.depends_on),
                "description": _cut(s.description, _PAST_DESCRIPTION_CHARS),
            }
            for s in episode.steps[:_PAST_STEPS]
        ]
        shown.append(
            f"{n}. Goal: {_cut(episode.goal, _PAST_GOAL_CHARS)} "
            f"(similarity {episode.score:.2f}, confidence {episode.confidence:.2f})"
        )
        shown.append(f"   Plan: {json.dumps(shape, ensure_ascii=False)}")
    return [*lines, fenced("past_tasks", "\n".join(shown))]


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def plan_user_prompt(
    intent: ParsedIntent,
    budget: PlanBudget | None,
    acceptance_criteria: Sequence[str],
    problems: Sequence[PlanProblem] = (),
    previous: ExecutionPlan | None = None,
    past: Sequence[Episode] = (),
) -> str:
    lines = [
        "Goal:",
        fenced("goal", intent.goal),
        f"Domain: {intent.domain}; complexity: {intent.complexity}",
    ]
    if intent.constraints:
        lines += ["Constraints:", fenced("constraints", _bullets(intent.constraints))]
    if acceptance_criteria:
        lines += [
            "The final answer must satisfy:",
            fenced("criteria", _bullets(acceptance_criteria)),
        ]
    if intent.keywords:
        lines.append(f"Keywords: {', '.join(intent.keywords)}")
    entities = {k: v for k, v in intent.entities.items() if v}
    if entities:
        lines.append(f"Mentioned: {json.dumps(entities)}")
    if budget is not None and budget.max_tokens > 0:
        lines.append(f"Token budget for the whole plan: {budget.max_tokens}")
    lines += _past_block(past)
    if problems:
        lines.append("Your previous plan was invalid:")
        lines += [f"- {p.message}" for p in problems]
        if previous is not None:
            shape = [
                {"step_id": s.step_id, "arm_type": s.arm_type, "depends_on": list(s.depends_on)}
                for s in previous.steps
            ]
            lines.append(f"Previous plan: {json.dumps(shape)}")
        lines.append("Return a corrected plan.")
    return "\n".join(lines)


def plan_json_schema(arm_types: Collection[str]) -> dict[str, Any]:
    """PlanDraft's schema with arm_type limited to the served types (grammar servers obey)."""
    schema = PlanDraft.model_json_schema()
    if arm_types:
        schema["$defs"]["StepDraft"]["properties"]["arm_type"]["enum"] = sorted(arm_types)
    return schema


class LLMPlanner:
    """Plans with an LLM; raises `LLMError` when the model cannot answer validly."""

    def __init__(self, client: JSONCompleter, *, max_tokens: int = 1500) -> None:
        self._client = client
        self._max_tokens = max_tokens

    async def plan(
        self,
        intent: ParsedIntent,
        arms: Sequence[ArmCapability],
        budget: PlanBudget | None = None,
        *,
        acceptance_criteria: Sequence[str] = (),
        problems: Sequence[PlanProblem] = (),
        previous: ExecutionPlan | None = None,
        past: Sequence[Episode] = (),
        limits: CallLimits = NO_LIMITS,
    ) -> tuple[ExecutionPlan, LLMUsage]:
        """A plan as the LLM wrote it (not validated), with the usage it cost."""
        types = sorted({a.arm_type for a in arms})
        system = PLANNER_SYSTEM_PROMPT.format(
            arms=_arms_block(arms), size=_SIZES[intent.complexity]
        )
        draft, usage = await self._client.complete_json(
            system=system,
            user=plan_user_prompt(intent, budget, acceptance_criteria, problems, previous, past),
            schema=PlanDraft,
            max_tokens=self._max_tokens,
            json_schema=plan_json_schema(types),
            limits=limits,
        )
        steps = tuple(
            PlannedStep(
                step_id=s.step_id.strip(),
                description=s.description.strip(),
                arm_type=s.arm_type.strip(),
                input=step_input(intent, s.description.strip(), s.arm_type.strip()),
                depends_on=tuple(d.strip() for d in s.depends_on),
                acceptance_criteria=tuple(c for c in s.acceptance_criteria if c.strip()),
                required_capabilities=tuple(c for c in s.required_capabilities if c.strip()),
            )
            for s in draft.steps
        )
        duration, tokens = estimate(steps)
        plan = ExecutionPlan(
            plan_id=str(uuid.uuid4()),
            steps=steps,
            estimated_duration_s=duration,
            estimated_tokens=tokens,
            rationale=draft.rationale.strip(),
        )
        return plan, usage


# -- the facade ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanOutcome:
    """The plan to run, what planning cost, and notes on how it came about (for the event log).

    `from_llm`: the LLM wrote this plan just now (and it passed validation), so it may be cached.
    """

    plan: ExecutionPlan
    usage: LLMUsage
    notes: tuple[str, ...]
    from_llm: bool = False


class Planner:
    """LLM first when configured, repair, replan once, then the heuristic planner."""

    def __init__(
        self, llm: LLMPlanner | None = None, heuristic: HeuristicPlanner | None = None
    ) -> None:
        self._llm = llm
        self._heuristic = heuristic or HeuristicPlanner()

    async def plan(
        self,
        intent: ParsedIntent,
        arms: Sequence[ArmCapability],
        budget: PlanBudget | None = None,
        *,
        acceptance_criteria: Sequence[str] = (),
        past: Sequence[Episode] = (),
        given: GivenInputs | None = None,
        limits: CallLimits = NO_LIMITS,
    ) -> PlanOutcome:
        """Raises `NoArmsAvailable` when no served arm can run any step, `MissingCapability`
        (before any LLM call) when the goal needs a role no served arm has. `limits` bounds the
        LLM's calls (the replan gets what the first call left)."""
        given = given_for(intent, given)
        if not arms:
            raise NoArmsAvailable(t.arm_type for t in template_for(intent, given))
        check_roles(intent, arms, given)
        notes: list[str] = []
        usage = NO_USAGE
        if self._llm is not None:
            if past:
                shown = min(len(past), MAX_PAST_IN_PROMPT)
                notes.append(f"{shown} similar past task(s) given to the planner")
            try:
                plan, usage, more = await self._plan_with_llm(
                    self._llm, intent, arms, budget, acceptance_criteria, past, given, limits
                )
            except LLMError as exc:
                usage = usage + (exc.usage or NO_USAGE)
                notes.append(f"{exc}; used the heuristic planner")
            else:
                notes.extend(more)
                if plan is not None:
                    return PlanOutcome(plan, usage, tuple(notes), from_llm=True)
        plan, heuristic_notes = self._heuristic.draft(
            intent, arms, budget, acceptance_criteria=acceptance_criteria, past=past, given=given
        )
        notes.append(plan.rationale)
        notes.extend(heuristic_notes)
        return PlanOutcome(plan, usage, tuple(notes))

    async def _plan_with_llm(
        self,
        llm: LLMPlanner,
        intent: ParsedIntent,
        arms: Sequence[ArmCapability],
        budget: PlanBudget | None,
        criteria: Sequence[str],
        past: Sequence[Episode],
        given: GivenInputs | None = None,
        limits: CallLimits = NO_LIMITS,
    ) -> tuple[ExecutionPlan | None, LLMUsage, list[str]]:
        served = {a.arm_type for a in arms}
        plan, usage = await llm.plan(
            intent, arms, budget, acceptance_criteria=criteria, past=past, limits=limits
        )
        plan = with_given(plan, given)
        checked, problems = self._check(plan, arms, served, budget)
        if checked is not None:
            note = f"LLM planned {len(checked.steps)} step(s)"
            if problems:
                note = f"LLM plan repaired ({describe(problems)}); {len(checked.steps)} step(s)"
            return self._finish(checked, criteria), usage, [note]
        try:
            replanned, more = await llm.plan(
                intent,
                arms,
                budget,
                acceptance_criteria=criteria,
                problems=problems,
                previous=plan,
                past=past,
                limits=limits.spent(usage),
            )
        except LLMError as exc:
            exc.usage = usage + (exc.usage or NO_USAGE)
            raise LLMError(
                f"LLM plan invalid: {describe(problems)}; replanning failed: {exc}",
                usage=exc.usage,
            ) from exc
        usage += more
        checked, again = self._check(with_given(replanned, given), arms, served, budget)
        if checked is not None:
            note = f"LLM plan invalid: {describe(problems)}; replanned"
            return self._finish(checked, criteria), usage, [note]
        note = (
            f"LLM plan invalid: {describe(problems)}; replan still invalid: {describe(again)}; "
            "used the heuristic planner"
        )
        return None, usage, [note]

    @staticmethod
    def _check(
        plan: ExecutionPlan,
        arms: Sequence[ArmCapability],
        served: Collection[str],
        budget: PlanBudget | None,
    ) -> tuple[ExecutionPlan | None, list[PlanProblem]]:
        """(runnable plan or None, the problems found, before and after repair)."""
        problems = validate_plan(plan, served, budget)
        if not problems:
            return plan, []
        repaired = repair_plan(plan, arms)
        duration, tokens = estimate(repaired.steps)
        repaired = ExecutionPlan(
            plan_id=repaired.plan_id,
            steps=repaired.steps,
            estimated_duration_s=duration,
            estimated_tokens=tokens,
            rationale=repaired.rationale,
        )
        left = validate_plan(repaired, served, budget)
        if not left:
            return repaired, problems
        seen = {p.message for p in problems}
        return None, problems + [p for p in left if p.message not in seen]

    @staticmethod
    def _finish(plan: ExecutionPlan, criteria: Sequence[str]) -> ExecutionPlan:
        return ExecutionPlan(
            plan_id=plan.plan_id,
            steps=with_task_criteria(plan.steps, criteria),
            estimated_duration_s=plan.estimated_duration_s,
            estimated_tokens=plan.estimated_tokens,
            rationale=plan.rationale,
        )


# -- legacy: the engine's one-step planner until it switches to `Planner` ------------------------

_KEYWORD_ARMS: tuple[tuple[str, frozenset[str]], ...] = (
    ("coder", frozenset({"code", "function", "implement", "refactor", "bug", "python", "script"})),
    ("executor", frozenset({"run", "execute", "command", "shell"})),
    ("retriever", frozenset({"find", "search", "retrieve", "lookup", "documents", "docs"})),
    ("judge", frozenset({"validate", "verify", "check", "judge"})),
    ("safety", frozenset({"redact", "pii", "secret", "secrets", "sanitize"})),
    ("planner", frozenset({"plan", "steps", "decompose", "roadmap"})),
)
_FALLBACK_ARMS = ("planner", "echo")


def choose_arm_type(goal: str, arm_types: Collection[str]) -> str | None:
    """The served arm type that best fits `goal` by keyword, else a general-purpose one."""
    words = set(re.findall(r"[a-z]+", goal.lower()))
    for arm_type, keywords in _KEYWORD_ARMS:
        if arm_type in arm_types and words & keywords:
            return arm_type
    for arm_type in _FALLBACK_ARMS:
        if arm_type in arm_types:
            return arm_type
    return min(arm_types) if arm_types else None


def plan_single_step(
    goal: str,
    constraints: Collection[str],
    acceptance_criteria: Collection[str],
    arm_types: Collection[str],
) -> list[PlannedStep]:
    """A one-step plan for `goal`, or [] when no arm type is served at all."""
    arm_type = choose_arm_type(goal, arm_types)
    if arm_type is None:
        return []
    return [
        PlannedStep(
            step_id="answer",
            description=goal,
            arm_type=arm_type,
            input={"goal": goal, "constraints": list(constraints)},
            acceptance_criteria=tuple(acceptance_criteria),
        )
    ]
