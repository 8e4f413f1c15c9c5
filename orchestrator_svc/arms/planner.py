"""The planner arm: decomposes a sub-goal into steps for the canonical arm types.

Input: ``{"goal": str, "constraints": [str], "max_steps": int}``; an empty or missing goal
falls back to the dispatch description (other fields, such as an orchestrator step's ``task`` or
``dependencies``, are ignored). Output: ``{"steps": [{"step_id", "description", "arm_type",
"depends_on"}], "answer": a numbered plan, "source": "llm" | "heuristic", "notes": [str]}``.

It is the brain's own planner (``orchestrator_svc.brain.Planner``): the goal is parsed by the
heuristic intent parser, then planned by the LLM when one is configured (repaired, replanned
once) and by the heuristic templates otherwise or when the LLM fails. ``max_steps`` caps the
plan's complexity (under 5 steps: simple, under 7: medium) and a plan still longer keeps its
first ``max_steps`` steps in dependency order; the dropped steps are named in ``notes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from arm_sdk import Arm, SubtaskInput, SubtaskOutput
from orchestrator_svc.arms._input import bad_input, parse_input
from orchestrator_svc.arms._llm import (
    EndpointWatch,
    limits_for,
    llm_client_from_env,
    output_with_usage,
)
from orchestrator_svc.brain import (
    ArmCapability,
    Episode,
    ExecutionPlan,
    GivenInputs,
    HeuristicIntentParser,
    HeuristicPlanner,
    LLMPlanner,
    ParsedIntent,
    PlanBudget,
    PlannedStep,
    Planner,
)
from orchestrator_svc.llm import JSONCompleter

log = structlog.get_logger(__name__)

MAX_GOAL_CHARS = 2000
MAX_STEPS = 20
DEFAULT_MAX_STEPS = 7

# The arm types a plan may use: the mesh's canonical specialists (see DESIGN.md).
CANONICAL_ARMS: tuple[ArmCapability, ...] = (
    ArmCapability(
        "planner",
        ("planning", "decomposition", "reasoning"),
        "Decomposes problems and reasons step by step towards an answer",
        2,
    ),
    ArmCapability(
        "retriever",
        ("retrieval", "search", "context"),
        "Searches a document collection and returns the relevant passages",
        1,
    ),
    ArmCapability(
        "coder",
        ("code_generation", "code_analysis", "refactoring"),
        "Generates, analyzes and refactors code",
        3,
    ),
    ArmCapability(
        "executor",
        ("execution", "shell", "testing"),
        "Runs allowlisted commands and short Python snippets in a sandbox",
        1,
    ),
    ArmCapability(
        "judge",
        ("validation", "review", "quality"),
        "Checks an output against acceptance criteria, a JSON schema and the facts given",
        2,
    ),
    ArmCapability(
        "safety",
        ("safety", "pii_detection", "security_review"),
        "Finds and redacts secrets and PII, flags prompt injection",
        1,
    ),
)

Complexity = Literal["simple", "medium", "complex"]
_COMPLEXITIES: tuple[Complexity, ...] = ("simple", "medium", "complex")


class PlannerInput(BaseModel):
    """What the planner reads from a dispatch's input."""

    model_config = ConfigDict(extra="ignore")

    goal: str = Field(
        "",
        max_length=MAX_GOAL_CHARS,
        description="the sub-goal to plan; the dispatch description when empty",
    )
    constraints: list[Annotated[str, Field(max_length=500)]] = Field(default=[], max_length=20)
    max_steps: int = Field(DEFAULT_MAX_STEPS, ge=1, le=MAX_STEPS)


class StepOut(BaseModel):
    """One step of the plan."""

    step_id: str
    description: str
    arm_type: str
    depends_on: list[str]


class PlannerOutput(BaseModel):
    """The plan, readable and structured, and how it came about."""

    steps: list[StepOut]
    answer: str
    source: Literal["llm", "heuristic"]
    notes: list[str]


class _HeuristicFallback(HeuristicPlanner):
    """The brain's heuristic planner, remembering whether the Planner fell back to it."""

    used = False

    def draft(
        self,
        intent: ParsedIntent,
        arms: Sequence[ArmCapability],
        budget: PlanBudget | None = None,
        *,
        acceptance_criteria: Sequence[str] = (),
        past: Sequence[Episode] = (),
        given: GivenInputs | None = None,
    ) -> tuple[ExecutionPlan, list[str]]:
        self.used = True
        return super().draft(
            intent, arms, budget, acceptance_criteria=acceptance_criteria, past=past, given=given
        )


def build(
    arm_id: str | None = None,
    *,
    llm: JSONCompleter | None = None,
    check_interval_s: float | None = None,
) -> Arm:
    """A new planner arm; ``llm`` None takes the LLM from ``OCTOLLM_LLM_*`` (if any).

    Its endpoint is checked at start and every ``check_interval_s`` (default
    ``OCTOLLM_LLM_CHECK_INTERVAL_S``); while it is not usable the planner keeps serving with its
    heuristic templates, saying so in ``notes``."""
    owned = llm_client_from_env() if llm is None else None
    client: JSONCompleter | None = llm if llm is not None else owned
    how = f"LLM planning with {client.model}" if client is not None else "heuristic templates"
    arm = Arm(
        arm_type="planner",
        description=f"Decomposes a goal into steps for the canonical arms ({how})",
        capabilities=("planning", "decomposition", "reasoning"),
        max_concurrency=32,
        cost_tier="medium" if client is not None else "low",
        version="0.1.0",
        input_schema=PlannerInput.model_json_schema(),
        output_schema=PlannerOutput.model_json_schema(),
        arm_id=arm_id,
    )
    if owned is not None:
        arm.on_stop(owned.aclose)  # opened here, so closed here; a given `llm` is the caller's
    watch = None
    if client is not None:
        watch = EndpointWatch(client, required=False, interval_s=check_interval_s)
        watch.attach(arm)

    @arm.handler
    async def plan(inp: SubtaskInput) -> SubtaskOutput:
        request = parse_input(PlannerInput, inp.input)
        goal = request.goal.strip() or inp.description.strip()
        if not goal:
            raise bad_input("a goal is needed: input.goal or the dispatch description", "goal")
        if len(goal) > MAX_GOAL_CHARS:
            raise bad_input(f"the goal is longer than {MAX_GOAL_CHARS} characters", "goal")
        intent = HeuristicIntentParser().parse(goal, request.constraints, inp.context)
        intent = intent.model_copy(
            update={"complexity": _capped(intent.complexity, request.max_steps)}
        )
        heuristic = _HeuristicFallback()
        skipped = watch is not None and not watch.usable
        llm = LLMPlanner(client) if client is not None and not skipped else None
        outcome = await Planner(llm, heuristic).plan(
            intent,
            CANONICAL_ARMS,
            acceptance_criteria=inp.acceptance_criteria,
            limits=limits_for(inp),
        )
        steps, dropped = first_steps(outcome.plan.steps, request.max_steps)
        notes = list(outcome.notes)
        if watch is not None and skipped:
            notes.insert(0, f"LLM skipped: {watch.status.reason}; used the heuristic planner")
        if dropped:
            notes.append(f"kept the first {len(steps)} step(s); dropped {', '.join(dropped)}")
        source: Literal["llm", "heuristic"] = "heuristic" if heuristic.used else "llm"
        why = outcome.plan.rationale if source == "llm" else ""
        output = PlannerOutput(
            steps=[
                StepOut(
                    step_id=s.step_id,
                    description=s.description,
                    arm_type=s.arm_type,
                    depends_on=list(s.depends_on),
                )
                for s in steps
            ],
            answer=numbered_plan(goal, steps, why),
            source=source,
            notes=notes,
        )
        log.info("plan_drafted", subtask_id=inp.subtask_id, source=source, steps=len(steps))
        return output_with_usage(
            output.model_dump(), outcome.usage, heuristic=source == "heuristic"
        )

    return arm


def _capped(complexity: Complexity, max_steps: int) -> Complexity:
    """The intent's complexity, lowered so the planner aims at no more than ``max_steps``."""
    cap = 0 if max_steps < 5 else 1 if max_steps < 7 else 2
    return _COMPLEXITIES[min(_COMPLEXITIES.index(complexity), cap)]


def first_steps(steps: Sequence[PlannedStep], limit: int) -> tuple[list[PlannedStep], list[str]]:
    """(the first ``limit`` steps in dependency order, ids of the steps left out).

    The order is the plan's own, except that a step never comes before what it depends on; as
    every kept step's dependencies come before it, they are kept too.
    """
    placed: list[PlannedStep] = []
    done: set[str] = set()
    waiting = list(steps)
    while waiting:
        ready = next(
            (s for s in waiting if all(d in done or d == s.step_id for d in s.depends_on)),
            waiting[0],  # NOTE: only on a cycle, which the brain's plan checks rule out.
        )
        waiting.remove(ready)
        placed.append(ready)
        done.add(ready.step_id)
    kept, left = placed[:limit], placed[limit:]
    ids = {s.step_id for s in kept}
    kept = [
        PlannedStep(
            step_id=s.step_id,
            description=s.description,
            arm_type=s.arm_type,
            input=s.input,
            depends_on=tuple(d for d in s.depends_on if d in ids),
            acceptance_criteria=s.acceptance_criteria,
            required_capabilities=s.required_capabilities,
        )
        for s in kept
    ]
    return kept, [s.step_id for s in left]


def numbered_plan(goal: str, steps: Sequence[PlannedStep], rationale: str = "") -> str:
    """The plan as text: one numbered line per step, naming its arm and what it waits for."""
    number = {s.step_id: n for n, s in enumerate(steps, 1)}
    lines = [f"Plan for: {goal}"]
    if rationale:
        lines.append(f"Why: {rationale}")
    for n, step in enumerate(steps, 1):
        after = [str(number[d]) for d in step.depends_on if d in number]
        waits = f" (after {', '.join(after)})" if after else ""
        lines.append(f"{n}. [{step.arm_type}] {step.step_id}: {step.description}{waits}")
    return "\n".join(lines)
