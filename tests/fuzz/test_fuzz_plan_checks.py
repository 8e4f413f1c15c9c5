"""Plan validation and repair (orchestrator_svc.brain) as pure functions, on random plans.

Plans are DAG-ish step graphs with the faults planners make: cycles, self and unknown
dependencies, duplicate and malformed ids, unserved or aliased arm types, up to 2000 steps.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from orchestrator_svc.brain import (
    ArmCapability,
    ExecutionPlan,
    PlanBudget,
    PlannedStep,
    repair_plan,
    validate_plan,
)
from orchestrator_svc.brain.plan_checks import MAX_STEPS, STEP_ID, UNREPAIRABLE
from tests.fuzz.fuzzing import fuzz_settings, identifiers

ARM_TYPES = ["echo", "sleep", "retriever", "coder", "judge", "search", "wizard", "", "Echo"]
CAPABILITIES = ["general", "echo", "retrieval", "search", "code_generation", "review", "odd"]

arms_strategy = st.lists(
    st.builds(
        ArmCapability,
        arm_type=st.sampled_from(ARM_TYPES) | identifiers,
        capabilities=st.lists(st.sampled_from(CAPABILITIES), max_size=3).map(tuple),
        cost_tier=st.integers(0, 3),
    ),
    max_size=4,
)


@st.composite
def plans(draw: Any, max_steps: int = 60) -> ExecutionPlan:
    """A plan of 0..max_steps steps: mostly edges to earlier steps (a DAG), plus faults."""
    n = draw(st.integers(0, max_steps))
    rng: random.Random = draw(st.randoms(use_true_random=False))
    fault_rate = draw(st.sampled_from([0.0, 0.02, 0.2, 0.6]))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    odd_ids = draw(st.lists(identifiers, min_size=1, max_size=5))
    ids: list[str] = []
    for i in range(n):
        if ids and rng.random() < fault_rate / 2:
            ids.append(rng.choice(ids))  # a duplicate
        elif rng.random() < fault_rate:
            ids.append(rng.choice(odd_ids))  # malformed, empty or unicode
        else:
            ids.append(f"s{i}")
    steps = []
    for i, step_id in enumerate(ids):
        earlier = ids[:i]
        deps = [d for d in earlier if rng.random() < density / max(1, len(earlier)) * 3]
        if rng.random() < fault_rate:
            # Self, unknown, later (maybe a cycle), or what a malformed id is repaired to.
            deps.append(rng.choice([step_id, "ghost", "a_b", "step", *ids, *odd_ids]))
        steps.append(
            PlannedStep(
                step_id=step_id,
                description=f"step {i}",
                arm_type=rng.choice(ARM_TYPES),
                depends_on=tuple(deps),
                required_capabilities=tuple(rng.sample(CAPABILITIES, rng.randint(0, 2))),
            )
        )
    tokens = draw(st.integers(0, 10_000))
    return ExecutionPlan(plan_id="fuzz", steps=tuple(steps), estimated_tokens=tokens)


budgets = st.none() | st.builds(PlanBudget, max_tokens=st.integers(0, 10_000))


def graph_problems(plan: ExecutionPlan) -> bool:
    """True if the plan's step graph itself is broken (what repair must fix or reject)."""
    ids = [s.step_id for s in plan.steps]
    return len(set(ids)) != len(ids) or any(
        d == s.step_id or d not in ids for s in plan.steps for d in s.depends_on
    )


@fuzz_settings(150)
@given(plan=plans(), arms=arms_strategy, budget=budgets)
def test_validate_plan_never_crashes_and_reports_known_kinds(
    plan: ExecutionPlan, arms: list[ArmCapability], budget: PlanBudget | None
) -> None:
    """validate_plan returns problems (never raises); an empty list only for a runnable DAG."""
    served = {a.arm_type for a in arms}
    problems = validate_plan(plan, served, budget)
    for problem in problems:
        assert problem.message
    if not problems:
        assert 1 <= len(plan.steps) <= MAX_STEPS
        assert all(STEP_ID.match(s.step_id) for s in plan.steps)
        assert not graph_problems(plan)
        assert {s.arm_type for s in plan.steps} <= served


def steps_of(*steps: tuple[str, str, tuple[str, ...]]) -> ExecutionPlan:
    """A plan from (step_id, arm_type, depends_on) triples."""
    return ExecutionPlan(
        plan_id="example",
        steps=tuple(
            PlannedStep(step_id=s, description="", arm_type=t, depends_on=d) for s, t, d in steps
        ),
    )


ECHO_ARM = [ArmCapability("echo", ("general",)), ArmCapability("odd", ("odd",))]


@fuzz_settings(150)
@given(plan=plans(), arms=arms_strategy)
# An unknown dependency spelled like a malformed id after its repair ("a b" -> "a_b").
@example(plan=steps_of(("a b", "echo", ("c",)), ("c", "echo", ("a_b",))), arms=ECHO_ARM)
# A cycle through a step no arm serves, which is dropped.
@example(plan=steps_of(("a", "echo", ("d",)), ("d", "wizard", ("a",))), arms=ECHO_ARM[1:])
def test_repaired_plan_is_valid_or_explicitly_unrepairable(
    plan: ExecutionPlan, arms: list[ArmCapability]
) -> None:
    """After repair_plan only unrepairable problems (cycle, size, budget) or no steps remain."""
    served = {a.arm_type for a in arms}
    repaired = repair_plan(plan, arms)
    left = {p.kind for p in validate_plan(repaired, served)}
    assert left <= UNREPAIRABLE | {"no_steps"}, (left, repaired)
    assert {s.arm_type for s in repaired.steps} <= served
    ids = [s.step_id for s in repaired.steps]
    assert len(set(ids)) == len(ids)
    if "cycle" not in {p.kind for p in validate_plan(plan, served)}:
        # Repair fixes ids and edges; it must not invent a dependency cycle.
        assert "cycle" not in left, repaired


@fuzz_settings(30)
@given(
    n=st.sampled_from([0, 1, 50, 51, 1000, 2000]) | st.integers(0, 2000),
    fan_in=st.integers(1, 8),
    arms=arms_strategy,
)
def test_repair_of_large_dense_plans_finishes(
    n: int, fan_in: int, arms: list[ArmCapability]
) -> None:
    """Validation and repair of up to 2000 densely linked, mostly unservable steps finish."""
    steps = tuple(
        PlannedStep(
            step_id=f"s{i}",
            description="",
            arm_type="wizard" if i % 7 else "echo",
            depends_on=tuple(f"s{j}" for j in range(max(0, i - fan_in), i)),
        )
        for i in range(n)
    )
    plan = ExecutionPlan(plan_id="big", steps=steps)
    served = {a.arm_type for a in arms}
    kinds = {p.kind for p in validate_plan(plan, served)}
    assert ("too_many_steps" in kinds) == (n > MAX_STEPS)
    repaired = repair_plan(plan, arms)
    assert len(repaired.steps) <= n
    assert {p.kind for p in validate_plan(repaired, served)} <= UNREPAIRABLE | {"no_steps"}
