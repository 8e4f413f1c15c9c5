"""The `Brain` facade the engine calls: parse, plan, integrate, validate.

With an LLM client each step asks the model first and falls back to the offline heuristics when
the model is down, slow, rate-limited or talks nonsense; without one it is fully offline. Only
`plan` raises (`NoArmsAvailable`); LLM trouble never does. Every call returns the LLM usage it
spent and notes for the task's event log saying what happened. `limits` bounds each step's LLM
calls by what the task has left (time and tokens); `fresh` (integrate, validate) asks for new
answers rather than cached ones, for repair rounds.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..llm import NO_LIMITS, NO_USAGE, CallLimits, JSONCompleter, LLMError, LLMUsage
from .episode import Episode
from .integrate import Integration, LLMIntegrator, answer_steps, integrate
from .intent import HeuristicIntentParser, LLMIntentParser, ParsedIntent
from .plan import ArmCapability, ExecutionPlan, GivenInputs, PlanBudget
from .plan_cache import Cache, PlanCache
from .planner import LLMPlanner, Planner, PlanOutcome
from .validate import LLMValidator, ValidationReport, validate


@dataclass(frozen=True, slots=True)
class ParseOutcome:
    """The parsed intent, what parsing cost, and notes."""

    intent: ParsedIntent
    usage: LLMUsage
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IntegrateOutcome:
    """The integrated answer, what integrating cost, and notes."""

    integration: Integration
    usage: LLMUsage
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ValidateOutcome:
    """The validation report, what validating cost, and notes."""

    report: ValidationReport
    usage: LLMUsage
    notes: tuple[str, ...]


def _spent(exc: LLMError) -> LLMUsage:
    return exc.usage or NO_USAGE


class Brain:
    """See the module docstring. `client` None means the offline brain; with a `cache` (and a
    client) plans the LLM wrote are reused for the same request (see plan_cache.py)."""

    def __init__(
        self,
        client: JSONCompleter | None = None,
        *,
        cache: Cache | None = None,
        offline_reason: str = "",
    ) -> None:
        """`offline_reason`: why a configured LLM is not used (misconfigured), for the notes."""
        self._client = client
        self._offline_reason = offline_reason
        self._plan_cache = (
            PlanCache(cache, client.model) if cache is not None and client is not None else None
        )
        self._heuristic_parser = HeuristicIntentParser()
        self._llm_parser = LLMIntentParser(client) if client is not None else None
        self._planner = Planner(LLMPlanner(client) if client is not None else None)
        self._llm_integrator = LLMIntegrator(client) if client is not None else None
        self._llm_validator = LLMValidator(client) if client is not None else None

    @property
    def uses_llm(self) -> bool:
        return self._client is not None

    async def parse(
        self,
        goal: str,
        constraints: Sequence[str] = (),
        context: Mapping[str, Any] | None = None,
        *,
        limits: CallLimits = NO_LIMITS,
    ) -> ParseOutcome:
        usage, notes = NO_USAGE, []
        if self._llm_parser is not None:
            try:
                intent, usage = await self._llm_parser.parse(
                    goal, constraints, context, limits=limits
                )
            except LLMError as exc:
                usage = _spent(exc)
                notes.append(f"{exc}; used the heuristic intent parser")
            else:
                notes.append(f"LLM parsed the goal: {intent.domain}, {intent.complexity}")
                return ParseOutcome(intent, usage, tuple(notes))
        intent = self._heuristic_parser.parse(goal, constraints, context)
        if self._offline_reason:
            notes.append(f"LLM not used: {self._offline_reason}")
        notes.append(f"heuristic parse: {intent.domain}, {intent.complexity}")
        return ParseOutcome(intent, usage, tuple(notes))

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
        """Raises `NoArmsAvailable` (naming the missing arm types) when nothing can run it,
        `MissingCapability` when the goal needs a role no arm has.

        `past`: similar finished tasks from the task memory, most similar first (context for
        the LLM; the offline planner may reuse a near-identical one's plan). `given`: code and
        text the task's context hands over (plans using them are not cached)."""
        cache = self._plan_cache if arms and not given else None
        if cache is not None:
            key = cache.key(intent, arms, budget, acceptance_criteria)
            cached = await cache.lookup(key, arms, budget)
            if cached is not None:
                return cached
        outcome = await self._planner.plan(
            intent,
            arms,
            budget,
            acceptance_criteria=acceptance_criteria,
            past=past,
            given=given,
            limits=limits,
        )
        if cache is not None and outcome.from_llm:
            await cache.store(key, outcome.plan)
        return outcome

    async def integrate(
        self,
        goal: str,
        plan: ExecutionPlan,
        outputs: Mapping[str, Mapping[str, Any]],
        confidences: Mapping[str, float],
        *,
        acceptance_criteria: Sequence[str] = (),
        models: Mapping[str, str] | None = None,
        limits: CallLimits = NO_LIMITS,
        fresh: bool = False,
    ) -> IntegrateOutcome:
        """`models`: the model each step's arm used (from its provenance), if any."""
        usage, notes = NO_USAGE, []
        if self._llm_integrator is not None and outputs:
            try:
                integration, usage = await self._llm_integrator.integrate(
                    goal,
                    plan,
                    outputs,
                    confidences,
                    acceptance_criteria=acceptance_criteria,
                    limits=limits,
                    fresh=fresh,
                )
            except LLMError as exc:
                usage = _spent(exc)
                notes.append(f"{exc}; merged the step outputs instead")
            else:
                notes.append("LLM wrote the answer from the step outputs")
                return IntegrateOutcome(integration, usage, tuple(notes))
        merged = integrate(goal, plan, outputs, confidences, models=models)
        notes.extend(merged.notes)
        return IntegrateOutcome(merged, usage, tuple(notes))

    async def validate(
        self,
        answer: str,
        outputs: Mapping[str, Mapping[str, Any]],
        acceptance_criteria: Sequence[str],
        *,
        plan: ExecutionPlan | None = None,
        sinks: Collection[str] | None = None,
        goal: str = "",
        limits: CallLimits = NO_LIMITS,
        fresh: bool = False,
    ) -> ValidateOutcome:
        """`failing_steps` blames `sinks` if given, else the steps whose text made the answer
        (see `answer_steps`) when `plan` is given, else every step in `outputs`. With a `goal`
        the answer must also address it (not restate it or the plan's steps)."""
        if sinks is None and plan is not None:
            sinks = answer_steps(plan, outputs) or plan.sinks()
        restated = (
            [f"{s.step_id} {s.arm_type} {s.description}" for s in plan.steps]
            if plan is not None
            else []
        )
        usage, notes = NO_USAGE, []
        if self._llm_validator is not None:
            try:
                report, usage = await self._llm_validator.validate(
                    answer,
                    outputs,
                    acceptance_criteria,
                    sinks=sinks,
                    goal=goal,
                    restated=restated,
                    limits=limits,
                    fresh=fresh,
                )
            except LLMError as exc:
                usage = _spent(exc)
                notes.append(f"{exc}; checked the criteria by rules only")
            else:
                if any(check.rule == "llm" for check in report.checks):
                    notes.append("LLM judged the criteria no rule could check")
                return ValidateOutcome(report, usage, tuple(notes))
        report = validate(
            answer, outputs, acceptance_criteria, sinks=sinks, goal=goal, restated=restated
        )
        return ValidateOutcome(report, usage, tuple(notes))
