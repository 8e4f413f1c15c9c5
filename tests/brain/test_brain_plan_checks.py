"""Plan validation finds every kind of problem; repair fixes what can be fixed."""

from __future__ import annotations

import dataclasses

from orchestrator_svc.brain import (
    ArmCapability,
    ExecutionPlan,
    PlanBudget,
    PlannedStep,
    repair_plan,
    validate_plan,
)


def step(step_id: str, *deps: str, arm: str = "echo") -> PlannedStep:
    return PlannedStep(step_id=step_id, description=f"do {step_id}", arm_type=arm, depends_on=deps)


def plan(*steps: PlannedStep, tokens: int = 0) -> ExecutionPlan:
    return ExecutionPlan(plan_id="p1", steps=steps, estimated_tokens=tokens)


def kinds(
    p: ExecutionPlan, served: set[str] | None = None, budget: PlanBudget | None = None
) -> list[str]:
    return [problem.kind for problem in validate_plan(p, served or {"echo"}, budget)]


ECHO = [ArmCapability("echo", ("echo", "general"))]


def test_a_good_plan_has_no_problems() -> None:
    """A diamond DAG on served arms within budget validates clean."""
    diamond = plan(step("a"), step("b", "a"), step("c", "a"), step("d", "b", "c"), tokens=10)
    assert validate_plan(diamond, {"echo"}, PlanBudget(max_tokens=10)) == []


def test_empty_and_oversized_plans() -> None:
    """No steps, and more than 50 steps, are problems."""
    assert kinds(plan()) == ["no_steps"]
    big = plan(*(step(f"s{i}") for i in range(51)))
    assert kinds(big) == ["too_many_steps"]
    assert kinds(plan(*(step(f"s{i}") for i in range(50)))) == []


def test_invalid_and_duplicate_ids() -> None:
    """Ids outside [A-Za-z0-9_.-]{1,64} and repeated ids are reported with the step."""
    problems = validate_plan(plan(step("gather context"), step("a"), step("a")), {"echo"})
    assert [(p.kind, p.step_id) for p in problems] == [
        ("invalid_step_id", "gather context"),
        ("duplicate_step_id", "a"),
    ]
    assert "is used 2 times" in problems[1].message
    assert kinds(plan(step("x" * 65))) == ["invalid_step_id"]


def test_unknown_and_self_dependencies() -> None:
    """A dependency on a missing step or on the step itself is reported."""
    problems = validate_plan(plan(step("a", "ghost"), step("b", "b")), {"echo"})
    assert [p.kind for p in problems] == ["unknown_dependency", "self_dependency"]
    assert problems[0].message == "step a depends on unknown step ghost"
    assert problems[1].message == "step b depends on itself"


def test_cycles_are_named() -> None:
    """A dependency cycle is found with graphlib and named step by step."""
    problems = validate_plan(plan(step("a", "b"), step("b", "a"), step("c")), {"echo"})
    assert [p.kind for p in problems] == ["cycle"]
    assert problems[0].message.startswith("cycle a->b->a")
    three = validate_plan(plan(step("a", "c"), step("b", "a"), step("c", "b")), {"echo"})
    assert three[0].message.startswith("cycle a->c->b->a")


def test_unserved_arm_types() -> None:
    """A step whose arm type no arm serves is reported."""
    problems = validate_plan(plan(step("a", arm="coder")), {"echo"})
    assert [p.kind for p in problems] == ["unserved_arm_type"]
    assert "'coder'" in problems[0].message


def test_over_budget() -> None:
    """Estimated tokens above the budget's max_tokens are a problem; 0 means no limit."""
    expensive = plan(step("a"), tokens=5000)
    assert kinds(expensive, budget=PlanBudget(max_tokens=4000)) == ["over_budget"]
    assert kinds(expensive, budget=PlanBudget(max_tokens=0)) == []
    assert kinds(expensive, budget=PlanBudget(max_tokens=5000)) == []


def test_repair_fixes_ids_deps_and_arm_types() -> None:
    """Repair renames bad/duplicate ids, drops unknown/self deps and re-maps arm types onto
    the arms that have each step's role."""
    broken = plan(
        step("gather context", arm="retriever"),
        step("write", "gather context", "ghost", "write", arm="coder"),
        step("write", "write", arm="judge"),
    )
    roles = [
        ArmCapability("search", ("retrieval",)),
        ArmCapability("dev", ("code_generation",)),
        ArmCapability("critic", ("review",)),
        *ECHO,
    ]
    fixed = repair_plan(broken, roles)
    assert validate_plan(fixed, {"search", "dev", "critic", "echo"}) == []
    assert [(s.step_id, s.depends_on, s.arm_type) for s in fixed.steps] == [
        ("gather_context", (), "search"),
        ("write", ("gather_context",), "dev"),
        ("write_2", ("write",), "critic"),
    ]
    assert fixed.plan_id == "p1"


def test_repair_never_moves_a_role_onto_a_general_arm() -> None:
    """Echo (general purpose) stands in for no role: on echo alone, the steps that retrieve,
    write code or judge are dropped, and only a step with no role of its own moves to it."""
    broken = plan(
        step("gather", arm="retriever"),
        step("write", "gather", arm="coder"),
        step("chat", "write", arm="assistant"),
    )
    general = dataclasses.replace(broken.steps[2], required_capabilities=("general",))
    fixed = repair_plan(dataclasses.replace(broken, steps=(*broken.steps[:2], general)), ECHO)
    assert [(s.step_id, s.depends_on, s.arm_type) for s in fixed.steps] == [("chat", (), "echo")]


def test_repair_drops_unservable_steps_keeping_the_dag_connected() -> None:
    """Steps nothing can run are dropped and their dependants inherit their dependencies."""
    arms = [ArmCapability("retriever"), ArmCapability("judge")]
    p = plan(
        step("a", arm="retriever"),
        step("b", "a", arm="coder"),
        step("c", "b", arm="judge"),
    )
    fixed = repair_plan(p, arms)
    assert [(s.step_id, s.depends_on) for s in fixed.steps] == [("a", ()), ("c", ("a",))]


def test_repair_cannot_fix_a_cycle() -> None:
    """A cycle survives repair: it needs a replan."""
    cyclic = plan(step("a", "b"), step("b", "a"))
    assert kinds(repair_plan(cyclic, ECHO)) == ["cycle"]


def test_an_executor_step_with_nothing_to_run_is_idle_and_repair_drops_it() -> None:
    """An executor step needs a program: its own command or python, or a coder step it depends
    on. One with neither is an idle_run; repair drops it and its dependants inherit its
    dependencies."""
    served = {"retriever", "coder", "executor", "judge"}
    arms = [ArmCapability(t) for t in sorted(served)]
    given = PlannedStep(
        step_id="given", description="run it", arm_type="executor", input={"python": "print(1)"}
    )
    runnable = plan(
        step("context", arm="retriever"),
        step("implement", "context", arm="coder"),
        step("test", "implement", arm="executor"),
        given,
    )
    assert kinds(runnable, served) == []
    idle = plan(
        step("context", arm="retriever"),
        step("run", "context", arm="executor"),
        step("review", "run", arm="judge"),
    )
    problems = validate_plan(idle, served)
    assert [(p.kind, p.step_id) for p in problems] == [("idle_run", "run")]
    repaired = repair_plan(idle, arms)
    assert [(s.step_id, s.depends_on) for s in repaired.steps] == [
        ("context", ()),
        ("review", ("context",)),
    ]
    assert validate_plan(repaired, served) == []
