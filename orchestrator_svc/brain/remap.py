"""Fitting plan steps to the arm types actually served, and dropping steps nothing can run.

A step keeps its arm type when some arm serves it; else it moves to the served canonical type it
is an alias of ("searcher" -> retriever); else to an arm type that shares its role (one of the
capabilities its canonical arm type stands for; the step's required capabilities for other
types) whose capabilities overlap the step's required ones most (then the cheapest); else, for a
step with no role of its own (see `plan.role_of`), to a general-purpose arm (one declaring
capability "general", else the "echo" type); else it is dropped and its dependants inherit its
dependencies, so the DAG stays connected.

A general arm never stands in for a role: a step that writes code, judges, plans, retrieves,
runs code or scans for safety is dropped rather than "done" by echo. A technology is not a role
either: a coder and an executor both declare "python", but one writes the code and the other
runs it, so a coder's step never moves to an executor on that alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from .plan import ArmCapability, PlannedStep, canonical_type, needs_role, profile_of, role_of

GENERAL_CAPABILITY = "general"
GENERAL_ARM_TYPE = "echo"
_MEDIUM_TIER = 2
_HOW = {"alias": "same role", "capability": "matching capabilities", "general": "general purpose"}


@dataclass(frozen=True, slots=True)
class Remapped:
    """Steps fitted to served arms, what changed (for the event log), unservable types and the
    steps dropped for want of them (as they were planned)."""

    steps: tuple[PlannedStep, ...]
    notes: tuple[str, ...]
    missing_types: tuple[str, ...]
    dropped: tuple[PlannedStep, ...] = ()


def _tier(arm: ArmCapability) -> int:
    return arm.cost_tier or _MEDIUM_TIER


def wanted_capabilities(step: PlannedStep) -> set[str]:
    """What the step needs: its own list, else what its arm type usually offers."""
    wanted = step.required_capabilities or profile_of(step.arm_type).capabilities
    return {c.lower() for c in wanted}


def fit_arm_type(step: PlannedStep, arms: Sequence[ArmCapability]) -> tuple[str, str] | None:
    """(served arm type, how it was chosen) for `step`, or None when nothing can run it."""
    if any(a.arm_type == step.arm_type for a in arms):
        return step.arm_type, "exact"
    alias = canonical_type(step.arm_type)
    if alias != step.arm_type and any(a.arm_type == alias for a in arms):
        return alias, "alias"
    wanted = wanted_capabilities(step)
    role = set(role_of(step)) - {GENERAL_CAPABILITY}
    overlapping = [
        (len(wanted & caps), a)
        for a in arms
        if role & (caps := {c.lower() for c in a.capabilities})
    ]
    if overlapping:
        best = min(overlapping, key=lambda pair: (-pair[0], _tier(pair[1]), pair[1].arm_type))
        return best[1].arm_type, "capability"
    if needs_role(step):
        return None
    general = [a for a in arms if GENERAL_CAPABILITY in {c.lower() for c in a.capabilities}]
    if general:
        return min(general, key=lambda a: (_tier(a), a.arm_type)).arm_type, "general"
    if any(a.arm_type == GENERAL_ARM_TYPE for a in arms):
        return GENERAL_ARM_TYPE, "general"
    return None


def drop_steps(steps: Sequence[PlannedStep], dropped: Collection[str]) -> list[PlannedStep]:
    """`steps` without `dropped`; a dependant inherits a dropped step's dependencies."""
    if not dropped:
        return list(steps)
    deps_of = {s.step_id: s.depends_on for s in steps}

    def inherited(step: PlannedStep) -> tuple[str, ...]:
        # NOTE: an iterative walk that visits each dropped step once: following every path
        # through a dense run of dropped steps is exponential, and recursion overflows on long
        # chains. A cycle through a dropped step must not make the step depend on itself.
        found: dict[str, None] = {}
        visited: set[str] = set()
        stack = list(reversed(step.depends_on))
        while stack:
            dep = stack.pop()
            if dep not in dropped:
                if dep != step.step_id:
                    found.setdefault(dep)
            elif dep not in visited:
                visited.add(dep)
                stack.extend(reversed(deps_of.get(dep, ())))
        return tuple(found)

    return [
        dataclasses.replace(step, depends_on=inherited(step))
        for step in steps
        if step.step_id not in dropped
    ]


def remap_steps(steps: Sequence[PlannedStep], arms: Sequence[ArmCapability]) -> Remapped:
    """Fit every step to a served arm type; see the module docstring."""
    fitted: list[PlannedStep] = []
    moved: dict[tuple[str, str], list[str]] = {}
    dropped: dict[str, list[str]] = {}
    unfit: list[PlannedStep] = []
    for step in steps:
        fit = fit_arm_type(step, arms)
        if fit is None:
            dropped.setdefault(step.arm_type, []).append(step.step_id)
            unfit.append(step)
            fitted.append(step)
            continue
        arm_type, how = fit
        if how != "exact":
            moved.setdefault((arm_type, how), []).append(f"{step.step_id} ({step.arm_type})")
            step = dataclasses.replace(
                step,
                arm_type=arm_type,
                required_capabilities=step.required_capabilities
                or profile_of(step.arm_type).capabilities,
            )
        fitted.append(step)
    notes = [
        f"{arm_type} ({_HOW[how]}) runs {', '.join(step_ids)}"
        for (arm_type, how), step_ids in moved.items()
    ]
    notes += [
        f"no arm serves {arm_type!r} or its role: dropped {', '.join(step_ids)}"
        for arm_type, step_ids in dropped.items()
    ]
    dropped_ids = {step_id for step_ids in dropped.values() for step_id in step_ids}
    return Remapped(
        tuple(drop_steps(fitted, dropped_ids)), tuple(notes), tuple(dropped), tuple(unfit)
    )
