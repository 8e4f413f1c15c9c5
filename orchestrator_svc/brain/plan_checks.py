"""Plan validation (pure) and repair of what can be repaired.

Checks: 1..50 steps, step ids of 1-64 chars of [A-Za-z0-9_.-] (the contract), unique ids, known
dependencies, no self-dependency, no cycle, every arm type served, no executor step with nothing
to run, estimated tokens within the budget. Repair renames bad or duplicate ids, drops unknown
and self dependencies, fits arm types to the served arms and drops the idle executor steps. A
cycle, too many steps or a plan over budget cannot be repaired without guessing what the
planner meant: those call for a replan.

An executor step runs a program: its input's `command` or `python`, else (as a planned step,
whose input only says what to do) the Python a coder step it depends on wrote. One with neither
would fail at the arm for want of a program, so it is idle.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import Literal

from .plan import ArmCapability, ExecutionPlan, PlanBudget, PlannedStep
from .remap import drop_steps, remap_steps

MAX_STEPS = 50
STEP_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ID_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")

ProblemKind = Literal[
    "no_steps",
    "too_many_steps",
    "invalid_step_id",
    "duplicate_step_id",
    "unknown_dependency",
    "self_dependency",
    "cycle",
    "unserved_arm_type",
    "idle_run",
    "over_budget",
]
UNREPAIRABLE: frozenset[ProblemKind] = frozenset({"cycle", "too_many_steps", "over_budget"})


@dataclass(frozen=True, slots=True)
class PlanProblem:
    """One reason a plan cannot run as it is."""

    kind: ProblemKind
    message: str
    step_id: str | None = None

    def __str__(self) -> str:
        return self.message


def describe(problems: Sequence[PlanProblem]) -> str:
    """Problems as one line for the event log."""
    return "; ".join(p.message for p in problems)


def validate_plan(
    plan: ExecutionPlan, served_arm_types: Collection[str], budget: PlanBudget | None = None
) -> list[PlanProblem]:
    """Every problem of `plan` (an empty list means it can run)."""
    steps = plan.steps
    problems: list[PlanProblem] = []
    if not steps:
        problems.append(PlanProblem("no_steps", "plan has no steps"))
    if len(steps) > MAX_STEPS:
        problems.append(
            PlanProblem("too_many_steps", f"plan has {len(steps)} steps (at most {MAX_STEPS})")
        )
    counts = Counter(s.step_id for s in steps)
    for step in steps:
        if not STEP_ID.match(step.step_id):
            problems.append(
                PlanProblem(
                    "invalid_step_id",
                    f"step id {step.step_id!r} is not 1-64 characters of [A-Za-z0-9_.-]",
                    step.step_id,
                )
            )
    for step_id, count in counts.items():
        if count > 1:
            problems.append(
                PlanProblem(
                    "duplicate_step_id", f"step id {step_id!r} is used {count} times", step_id
                )
            )
    for step in steps:
        for dep in step.depends_on:
            if dep == step.step_id:
                problems.append(
                    PlanProblem("self_dependency", f"step {step.step_id} depends on itself", dep)
                )
            elif dep not in counts:
                problems.append(
                    PlanProblem(
                        "unknown_dependency",
                        f"step {step.step_id} depends on unknown step {dep}",
                        step.step_id,
                    )
                )
    cycle = find_cycle(steps)
    if cycle:
        problems.append(
            PlanProblem(
                "cycle", f"cycle {'->'.join(cycle)} (each step depends on the next)", cycle[0]
            )
        )
    served = set(served_arm_types)
    for step in steps:
        if step.arm_type not in served:
            problems.append(
                PlanProblem(
                    "unserved_arm_type",
                    f"step {step.step_id} needs arm type {step.arm_type!r}, which no arm serves",
                    step.step_id,
                )
            )
    for step_id in idle_runs(steps):
        problems.append(
            PlanProblem(
                "idle_run",
                f"step {step_id} runs on the executor with no program: neither its input nor "
                "a coder step it depends on gives it one",
                step_id,
            )
        )
    if budget is not None and 0 < budget.max_tokens < plan.estimated_tokens:
        problems.append(
            PlanProblem(
                "over_budget",
                f"plan estimates {plan.estimated_tokens} tokens, "
                f"the budget allows {budget.max_tokens}",
            )
        )
    return problems


def idle_runs(steps: Sequence[PlannedStep]) -> list[str]:
    """Ids of the executor steps with nothing to run (see the module docstring)."""
    arm_of = {s.step_id: s.arm_type for s in steps}
    return [
        s.step_id
        for s in steps
        if s.arm_type == "executor"
        and not {"command", "python"} & s.input.keys()
        and not any(arm_of.get(d) == "coder" for d in s.depends_on)
    ]


def drop_idle_runs(steps: Sequence[PlannedStep]) -> tuple[list[PlannedStep], list[str]]:
    """`steps` without their idle executor steps (dependants inherit their dependencies), and
    the ids dropped."""
    idle = idle_runs(steps)
    return drop_steps(steps, set(idle)), idle


def find_cycle(steps: Sequence[PlannedStep]) -> list[str]:
    """One dependency cycle as [a, b, ..., a], or [] when the steps form a DAG."""
    ids = {s.step_id for s in steps}
    graph: dict[str, set[str]] = {}
    for step in steps:
        deps = {d for d in step.depends_on if d in ids and d != step.step_id}
        graph.setdefault(step.step_id, set()).update(deps)
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        # graphlib reports the cycle against the edge direction (node -> its dependency).
        return list(reversed(exc.args[1]))
    return []


def repair_plan(plan: ExecutionPlan, arms: Sequence[ArmCapability]) -> ExecutionPlan:
    """`plan` with ids, dependencies and arm types fixed where possible; see module docstring."""
    # NOTE: unknown dependencies go before renaming: "a_b" naming no step must not come to
    # mean the step "a b" once that is renamed to "a_b" (that can invent a cycle).
    original_ids = {s.step_id for s in plan.steps}
    known = [
        dataclasses.replace(step, depends_on=tuple(d for d in step.depends_on if d in original_ids))
        for step in plan.steps
    ]
    renamed = _unique_valid_ids(known)
    ids = {s.step_id for s in renamed}
    cleaned = [
        dataclasses.replace(
            step,
            depends_on=tuple(
                dict.fromkeys(d for d in step.depends_on if d in ids and d != step.step_id)
            ),
        )
        for step in renamed
    ]
    runnable, _ = drop_idle_runs(remap_steps(cleaned, arms).steps)
    return dataclasses.replace(plan, steps=tuple(runnable))


def _unique_valid_ids(steps: Sequence[PlannedStep]) -> list[PlannedStep]:
    """Steps with valid, unique ids; dependencies follow a rename (to the first holder)."""
    taken: set[str] = set()
    first_new_id: dict[str, str] = {}
    new_ids: list[str] = []
    for step in steps:
        base = step.step_id if STEP_ID.match(step.step_id) else _sanitize(step.step_id)
        candidate, n = base, 2
        while candidate in taken:
            suffix = f"_{n}"
            candidate, n = base[: 64 - len(suffix)] + suffix, n + 1
        taken.add(candidate)
        first_new_id.setdefault(step.step_id, candidate)
        new_ids.append(candidate)
    return [
        dataclasses.replace(
            step,
            step_id=new_id,
            depends_on=tuple(first_new_id.get(d, d) for d in step.depends_on),
        )
        for step, new_id in zip(steps, new_ids, strict=True)
    ]


def _sanitize(step_id: str) -> str:
    return _ID_BAD_CHARS.sub("_", step_id.strip()).strip("_")[:64] or "step"
