"""Planning. Until the full planner lands, a goal becomes one step on the most fitting arm type."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

# Arm types in order of preference for a goal that mentions any of the keywords.
_KEYWORD_ARMS: tuple[tuple[str, frozenset[str]], ...] = (
    ("coder", frozenset({"code", "function", "implement", "refactor", "bug", "python", "script"})),
    ("executor", frozenset({"run", "execute", "command", "shell"})),
    ("retriever", frozenset({"find", "search", "retrieve", "lookup", "documents", "docs"})),
    ("judge", frozenset({"validate", "verify", "check", "judge"})),
    ("safety", frozenset({"redact", "pii", "secret", "secrets", "sanitize"})),
    ("planner", frozenset({"plan", "steps", "decompose", "roadmap"})),
)
_FALLBACK_ARMS = ("planner", "echo")


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """One step of a plan, before it is persisted."""

    step_id: str
    description: str
    arm_type: str
    input: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    acceptance_criteria: tuple[str, ...] = ()


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
