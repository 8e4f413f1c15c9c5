"""Plans as the brain sees them: frozen dataclasses, converted to protobuf by the engine."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """One step of a plan: what to do, on which arm type, after which steps."""

    step_id: str
    description: str
    arm_type: str
    input: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    acceptance_criteria: tuple[str, ...] = ()
    required_capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExecutionPlan:
    """A DAG of steps with the planner's estimates of time and LLM tokens."""

    plan_id: str
    steps: tuple[PlannedStep, ...]
    estimated_duration_s: float = 0.0
    estimated_tokens: int = 0
    rationale: str = ""

    def sinks(self) -> tuple[str, ...]:
        """Ids of the steps nothing depends on, in plan order: they carry the answer."""
        return sink_ids(self.steps)

    def step(self, step_id: str) -> PlannedStep | None:
        return next((s for s in self.steps if s.step_id == step_id), None)


@dataclass(frozen=True, slots=True)
class ArmCapability:
    """What the planner knows of one served arm type (from the live registry).

    `cost_tier`: 0 unspecified (treated as medium), 1 low, 2 medium, 3 high.
    """

    arm_type: str
    capabilities: tuple[str, ...] = ()
    description: str = ""
    cost_tier: int = 0


@dataclass(frozen=True, slots=True)
class PlanBudget:
    """The task's limits as the planner sees them; 0 means no limit."""

    max_tokens: int = 0
    max_cost_usd: float = 0.0
    max_time_s: float = 0.0


class NoArmsAvailable(Exception):
    """No served arm can run the plan; `missing_types` names the arm types it would need."""

    def __init__(self, missing_types: Iterable[str], message: str = "") -> None:
        self.missing_types = tuple(sorted(set(missing_types)))
        names = ", ".join(self.missing_types) or "any"
        super().__init__(message or f"no connected arm can run arm type(s): {names}")


@dataclass(frozen=True, slots=True)
class MissingRole:
    """A step the goal cannot be served without, whose role no served arm has."""

    step_id: str
    arm_type: str
    capabilities: tuple[str, ...]


class MissingCapability(NoArmsAvailable):
    """The goal needs steps whose roles no served arm has (code to write for a code goal, a
    review to judge when the goal asks for one): it cannot be served, so it is not planned."""

    def __init__(self, missing: Sequence[MissingRole]) -> None:
        self.missing = tuple(missing)
        self.capabilities = tuple(dict.fromkeys(c for m in missing for c in m.capabilities[:1]))
        needs = "; ".join(
            f"{m.capabilities[0] if m.capabilities else m.arm_type} "
            f"(arm type {m.arm_type!r}, step {m.step_id})"
            for m in self.missing
        )
        super().__init__(
            (m.arm_type for m in missing), f"the goal needs {needs}, which no serving arm offers"
        )


@dataclass(frozen=True, slots=True)
class GivenInputs:
    """What the task's context hands the plan ready-made: Python code for the executor to run
    (`python`, or `code` in Python) and text for the safety arm to scan (`text`)."""

    python: str = ""
    text: str = ""

    @classmethod
    def from_context(cls, context: Mapping[str, object]) -> GivenInputs:
        python = context.get("python")
        if not isinstance(python, str) or not python.strip():
            code, language = context.get("code"), str(context.get("language", "python"))
            in_python = language.strip().lower() in ("python", "python3", "py")
            python = code if isinstance(code, str) and code.strip() and in_python else ""
        text = context.get("text")
        return cls(python=python, text=text if isinstance(text, str) and text.strip() else "")

    def __bool__(self) -> bool:
        return bool(self.python or self.text)


@dataclass(frozen=True, slots=True)
class ArmProfile:
    """What a canonical arm type does and what a step on it usually costs."""

    capabilities: tuple[str, ...]
    description: str
    tokens: int
    seconds: float


ARM_PROFILES: dict[str, ArmProfile] = {
    "planner": ArmProfile(
        ("planning", "decomposition", "reasoning"),
        "Decomposes problems and reasons step by step towards an answer",
        1500,
        10.0,
    ),
    "retriever": ArmProfile(
        ("retrieval", "search", "context"),
        "Searches and retrieves relevant information",
        600,
        5.0,
    ),
    "coder": ArmProfile(
        ("code_generation", "code_analysis", "refactoring"),
        "Generates, analyzes and refactors code",
        3000,
        30.0,
    ),
    "executor": ArmProfile(
        ("execution", "shell", "testing"),
        "Runs commands, scripts and tests in a sandbox",
        0,
        20.0,
    ),
    "judge": ArmProfile(
        ("validation", "review", "quality"),
        "Validates results against criteria and explains its verdict",
        1000,
        10.0,
    ),
    "safety": ArmProfile(
        ("safety", "pii_detection", "security_review"),
        "Checks for secrets, PII and unsafe content or changes",
        400,
        5.0,
    ),
    "echo": ArmProfile(("echo", "general"), "Returns its input unchanged", 0, 0.1),
}
CANONICAL_ARM_TYPES = ("planner", "retriever", "coder", "executor", "judge", "safety")
DEFAULT_PROFILE = ArmProfile((), "", 1000, 10.0)

# Names an LLM (or a person) may use for a canonical arm type.
ARM_TYPE_ALIASES: dict[str, str] = {
    **dict.fromkeys(
        ("search", "searcher", "researcher", "research", "retrieval", "lookup", "rag"),
        "retriever",
    ),
    **dict.fromkeys(
        ("code", "coding", "developer", "programmer", "engineer", "code_writer", "implementer"),
        "coder",
    ),
    **dict.fromkeys(("execute", "execution", "runner", "tester", "shell", "sandbox"), "executor"),
    **dict.fromkeys(("validator", "reviewer", "critic", "verifier", "evaluator", "qa"), "judge"),
    **dict.fromkeys(("guard", "guardian", "moderator", "security", "pii"), "safety"),
    **dict.fromkeys(("planning", "reasoner", "thinker", "analyst", "writer"), "planner"),
}


# Capabilities that are no role: an arm offering only these (echo) stands in for no step that
# needs one.
GENERAL_CAPABILITIES = frozenset({"general", "echo"})


def role_of(step: PlannedStep) -> tuple[str, ...]:
    """What a step's role stands for: its canonical arm type's capabilities (writing code,
    judging, planning, retrieving, running code, safety scanning), else the capabilities it
    asks for, else its arm type's name (an arm type nobody knows is a role of its own)."""
    profile = ARM_PROFILES.get(canonical_type(step.arm_type))
    if profile is not None:
        return profile.capabilities
    if step.required_capabilities:
        return tuple(c.lower() for c in step.required_capabilities)
    return (step.arm_type.strip().lower(),)


def needs_role(step: PlannedStep) -> bool:
    """True when only an arm with the step's role may run it (a general arm may not)."""
    return not set(role_of(step)) <= GENERAL_CAPABILITIES


def canonical_type(arm_type: str) -> str:
    """The canonical arm type `arm_type` names (itself when it is no known alias)."""
    key = arm_type.strip().lower().replace("-", "_").replace(" ", "_")
    return ARM_TYPE_ALIASES.get(key, key if key in ARM_PROFILES else arm_type)


def sink_ids(steps: Sequence[PlannedStep]) -> tuple[str, ...]:
    """Ids of the steps no other step depends on, in order."""
    depended_on = {d for s in steps for d in s.depends_on if d != s.step_id}
    return tuple(s.step_id for s in steps if s.step_id not in depended_on)


def profile_of(arm_type: str) -> ArmProfile:
    return ARM_PROFILES.get(canonical_type(arm_type), DEFAULT_PROFILE)


def estimate(steps: Sequence[PlannedStep]) -> tuple[float, int]:
    """(duration along the critical path in seconds, total LLM tokens) from the arm profiles."""
    tokens = sum(profile_of(s.arm_type).tokens for s in steps)
    by_id = {s.step_id: s for s in steps}
    graph = {s.step_id: {d for d in s.depends_on if d in by_id and d != s.step_id} for s in steps}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError:
        return sum(profile_of(s.arm_type).seconds for s in steps), tokens
    finish: dict[str, float] = {}
    for step_id in order:
        start = max((finish[d] for d in graph[step_id]), default=0.0)
        finish[step_id] = start + profile_of(by_id[step_id].arm_type).seconds
    return round(max(finish.values(), default=0.0), 3), tokens
