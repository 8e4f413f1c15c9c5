"""Plans the LLM wrote, kept in the cache for the same request to the same arms.

The key is the request: the model, the parsed intent, the capabilities of the routable arms, the
budget and the task's criteria. Only plans the LLM wrote and that passed validation are stored (a
heuristic fallback must not outlive an LLM outage). A cached plan is validated again against the
arms routable now before it is used, gets a fresh plan id, and costs nothing.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..llm import LLMUsage
from .intent import ParsedIntent
from .plan import ArmCapability, ExecutionPlan, PlanBudget, PlannedStep
from .plan_checks import validate_plan
from .planner import PlanOutcome

NAMESPACE = "plan"
# NOTE: bump when the planner changes what it makes of the same inputs, or the encoding changes.
_VERSION = 1


class Cache(Protocol):
    """The brain's port for a cache: bytes by namespace and inputs (the store's caches fit)."""

    async def get(self, namespace: str, inputs: Mapping[str, Any]) -> bytes | None:
        """The value stored for `inputs` in `namespace`, or None (absent, expired, unavailable)."""
        ...

    async def set(self, namespace: str, inputs: Mapping[str, Any], value: bytes) -> None:
        """Keep `value` for `inputs` in `namespace` for a while (best effort, never raises)."""
        ...


class PlanCache:
    """See the module docstring; `model` is the LLM that plans."""

    def __init__(self, cache: Cache, model: str) -> None:
        self._cache = cache
        self._model = model

    def key(
        self,
        intent: ParsedIntent,
        arms: Sequence[ArmCapability],
        budget: PlanBudget | None,
        criteria: Sequence[str],
    ) -> dict[str, Any]:
        """The inputs a plan is cached under.

        NOTE: the past tasks recalled from the task memory are left out on purpose: they are
        advice to the LLM, and they change after every task (each one is remembered), so keying
        on them would make a repeated request miss every time.
        """
        return {
            "v": _VERSION,
            "model": self._model,
            "intent": intent.model_dump(mode="json"),
            "arms": [dataclasses.asdict(a) for a in arms],
            "budget": dataclasses.asdict(budget) if budget is not None else None,
            "criteria": list(criteria),
        }

    async def lookup(
        self, key: dict[str, Any], arms: Sequence[ArmCapability], budget: PlanBudget | None
    ) -> PlanOutcome | None:
        """The cached plan for `key` if there is one and it can run on `arms` now."""
        raw = await self._cache.get(NAMESPACE, key)
        if raw is None:
            return None
        plan = _decode(raw)
        if plan is None or validate_plan(plan, {a.arm_type for a in arms}, budget):
            return None
        plan = dataclasses.replace(plan, plan_id=str(uuid.uuid4()))
        note = f"plan from the cache: {len(plan.steps)} step(s) the LLM planned for this request"
        return PlanOutcome(plan, LLMUsage(model=self._model), (note,))

    async def store(self, key: dict[str, Any], plan: ExecutionPlan) -> None:
        await self._cache.set(NAMESPACE, key, json.dumps(dataclasses.asdict(plan)).encode())


def _decode(raw: bytes) -> ExecutionPlan | None:
    try:
        data = json.loads(raw)
        steps = tuple(
            PlannedStep(
                step_id=str(s["step_id"]),
                description=str(s["description"]),
                arm_type=str(s["arm_type"]),
                input=dict(s["input"]),
                depends_on=tuple(str(d) for d in s["depends_on"]),
                acceptance_criteria=tuple(str(c) for c in s["acceptance_criteria"]),
                required_capabilities=tuple(str(c) for c in s["required_capabilities"]),
            )
            for s in data["steps"]
        )
        return ExecutionPlan(
            plan_id=str(data["plan_id"]),
            steps=steps,
            estimated_duration_s=float(data["estimated_duration_s"]),
            estimated_tokens=int(data["estimated_tokens"]),
            rationale=str(data["rationale"]),
        )
    # NOTE: an entry this version cannot read is a miss, never an error.
    except (ValueError, TypeError, KeyError):
        return None
