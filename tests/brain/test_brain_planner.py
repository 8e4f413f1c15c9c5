"""The heuristic planner: valid template plans for every domain, re-mapping, budget trimming."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest

from orchestrator_svc.brain import (
    ArmCapability,
    ExecutionPlan,
    GivenInputs,
    HeuristicIntentParser,
    HeuristicPlanner,
    MissingCapability,
    NoArmsAvailable,
    ParsedIntent,
    PlanBudget,
    PlannedStep,
    validate_plan,
)
from orchestrator_svc.brain.intent import Complexity
from orchestrator_svc.brain.lexicon import Domain
from orchestrator_svc.brain.remap import fit_arm_type
from orchestrator_svc.brain.templates import quoted_text

ECHO_ONLY = [ArmCapability("echo", ("echo", "general"), "Returns its input", 1)]
CANONICAL = [
    ArmCapability(t, (), f"the {t} arm", 2)
    for t in ("planner", "retriever", "coder", "executor", "judge", "safety")
]
SIZES = {"simple": 3, "medium": 5, "complex": 7}
planner = HeuristicPlanner()


def intent(domain: str = "code", complexity: str = "medium", **extra: object) -> ParsedIntent:
    return ParsedIntent.model_validate(
        {
            "goal": "Find and fix the authentication bug in auth/login.py",
            "constraints": ["Don't modify the database schema"],
            "domain": domain,
            "complexity": complexity,
            "keywords": ["authentication", "bug"],
            "entities": {"files": ["auth/login.py"], "technologies": ["Python"]},
            **extra,
        }
    )


def step(plan: ExecutionPlan, step_id: str) -> PlannedStep:
    found = plan.step(step_id)
    assert found is not None, step_id
    return found


CASES = list(itertools.product(get_args(Domain), get_args(Complexity)))


# The role a goal of each domain cannot be served without: its deliverable.
DELIVERABLE = {
    "code": "code_generation",
    "security": "safety",
    "data": "code_generation",
    "infrastructure": "code_generation",
    "general": "retrieval",
}


@pytest.mark.parametrize(("domain", "complexity"), CASES)
def test_every_template_is_a_valid_plan(domain: str, complexity: str) -> None:
    """Every domain x complexity plans 3/5/7 valid steps on the canonical arms."""
    arms = CANONICAL
    plan = planner.plan(intent(domain, complexity), arms)
    served = {a.arm_type for a in arms}
    assert validate_plan(plan, served) == []
    assert len(plan.steps) == SIZES[complexity]
    assert {s.arm_type for s in plan.steps} <= served
    assert plan.estimated_duration_s > 0
    assert plan.rationale


@pytest.mark.parametrize(("domain", "complexity"), CASES)
def test_canonical_arms_keep_template_types_and_inputs(domain: str, complexity: str) -> None:
    """With canonical arms no step moves; inputs carry goal, constraints and the step's task."""
    plan = planner.plan(intent(domain, complexity), CANONICAL)
    for step in plan.steps:
        assert step.arm_type in {a.arm_type for a in CANONICAL}
        assert step.input["goal"] == intent().goal
        assert step.input["constraints"] == ["Don't modify the database schema"]
        assert step.input["task"] == step.description
        assert step.required_capabilities


def test_code_medium_is_the_classic_pipeline() -> None:
    """code/medium: retrieve context -> plan changes -> write code -> run tests -> judge."""
    plan = planner.plan(intent("code", "medium"), CANONICAL)
    shape = [(s.step_id, s.arm_type, s.depends_on) for s in plan.steps]
    assert shape == [
        ("context", "retriever", ()),
        ("plan_changes", "planner", ("context",)),
        ("implement", "coder", ("plan_changes",)),
        ("test", "executor", ("implement",)),
        ("review", "judge", ("test",)),
    ]
    assert step(plan, "context").input["files"] == ["auth/login.py"]
    assert step(plan, "implement").required_capabilities == (
        "code_generation",
        "python",
    )
    assert plan.sinks() == ("review",)
    assert plan.estimated_tokens == 600 + 1500 + 3000 + 0 + 1000


def test_complex_plans_fan_out_and_in() -> None:
    """Complex plans start with parallel retrievals and join them before planning."""
    plan = planner.plan(intent("code", "complex"), CANONICAL)
    roots = [s.step_id for s in plan.steps if not s.depends_on]
    assert roots == ["context", "context_docs"]
    assert step(plan, "plan_changes").depends_on == ("context", "context_docs")
    assert step(plan, "review").depends_on == ("test", "safety_check")


@pytest.mark.parametrize(("domain", "complexity"), CASES)
def test_echo_alone_stands_in_for_no_role(domain: str, complexity: str) -> None:
    """On echo alone no template step runs on echo: the goal needs its deliverable's role, so
    planning raises MissingCapability naming that capability."""
    with pytest.raises(MissingCapability) as caught:
        planner.plan(intent(domain, complexity), ECHO_ONLY)
    assert DELIVERABLE[domain] in caught.value.capabilities
    assert DELIVERABLE[domain] in str(caught.value)
    assert "echo" not in caught.value.missing_types


def test_remap_prefers_capability_overlap_and_general_arms_take_no_role() -> None:
    """A missing type goes to an arm sharing its role with the most overlapping capabilities;
    general arms take no step that has a role, and a shared technology alone is no role."""
    arms = [
        ArmCapability("python-dev", ("code_generation", "python"), "writes Python", 3),
        ArmCapability("assistant", ("general",), "does anything", 2),
        ArmCapability("echo", ("echo", "general"), "", 1),
    ]
    plan, notes = planner.draft(intent("code", "medium"), arms)
    # NOTE: test (executor: "execution", "python") shares only python with python-dev, which
    # writes code and does not run it: it is left out, not run on a general arm.
    assert [(s.step_id, s.arm_type) for s in plan.steps] == [("implement", "python-dev")]
    assert any("python-dev (matching capabilities)" in n for n in notes)
    assert any("no arm serves 'executor' or its role: dropped test" in n for n in notes), notes
    assert any("no arm serves 'retriever' or its role: dropped context" in n for n in notes)


def test_a_step_with_no_role_may_run_on_a_general_arm() -> None:
    """Only a step whose role is general (it asks for nothing specific) goes to a general arm,
    the cheapest one."""
    arms = [
        ArmCapability("assistant", ("general",), "does anything", 2),
        ArmCapability("echo", ("echo", "general"), "", 1),
    ]
    general = PlannedStep("chat", "say hello", "greeter", required_capabilities=("general",))
    assert fit_arm_type(general, arms) == ("echo", "general")
    unknown = PlannedStep("sum", "summarise", "summarizer")
    assert fit_arm_type(unknown, arms) is None
    coder = PlannedStep("code", "write code", "coder")
    assert fit_arm_type(coder, arms) is None


def test_unservable_steps_are_dropped_and_the_dag_stays_connected() -> None:
    """Steps no arm can run (and the goal can do without) are dropped; dependants inherit
    their dependencies."""
    arms = [ArmCapability("retriever"), ArmCapability("judge")]
    plan, notes = planner.draft(intent("general", "medium"), arms)
    assert [(s.step_id, s.depends_on) for s in plan.steps] == [
        ("research", ()),
        ("background", ()),
        ("review", ("research", "background")),
    ]
    assert validate_plan(plan, {"retriever", "judge"}) == []
    assert any("dropped" in n and "outline" in n for n in notes)
    assert any("dropped" in n and "safety_check" in n for n in notes)


def test_a_goal_without_its_deliverable_role_raises_missing_capability() -> None:
    """When no arm can do what the goal asks for (code to write), MissingCapability names the
    capability, the arm type and the step, and no plan leaves it out."""
    with pytest.raises(MissingCapability) as caught:
        planner.plan(intent("code", "simple"), [ArmCapability("sleep", ("sleep", "test"))])
    assert isinstance(caught.value, NoArmsAvailable)
    assert caught.value.missing_types == ("coder",)
    assert caught.value.capabilities == ("code_generation",)
    assert [m.step_id for m in caught.value.missing] == ["implement"]
    assert "code_generation" in str(caught.value)


def test_a_review_is_essential_when_the_goal_asks_for_one() -> None:
    """A goal asking for a review cannot be served without a judge: MissingCapability names
    the review; the same goal without asking plans without it."""
    served = [a for a in CANONICAL if a.arm_type != "judge"]
    asks = intent("general", "simple", goal="Review the rollout notes and give a verdict")
    with pytest.raises(MissingCapability) as caught:
        planner.plan(asks, served)
    assert caught.value.missing_types == ("judge",)
    plain = intent("general", "simple", goal="Explain the rollout notes")
    assert "review" not in {s.step_id for s in planner.plan(plain, served).steps}


def test_code_given_in_the_context_is_run_not_written() -> None:
    """Code handed over in the context is what the executor runs, with no coder in the plan,
    unless the goal asks for code to be written; text handed over is what safety scans."""
    given = GivenInputs.from_context({"python": "print(6)", "text": "mail bob@example.com"})
    no_coder = [a for a in CANONICAL if a.arm_type != "coder"]
    compute = intent("code", "simple", goal="Compute the mean with the given code")
    plan = planner.plan(compute, no_coder, given=given)
    run = step(plan, "run")
    assert (run.arm_type, run.input["python"]) == ("executor", "print(6)")
    assert "coder" not in {s.arm_type for s in plan.steps}
    with pytest.raises(MissingCapability):
        planner.plan(intent("code", "simple"), no_coder, given=given)  # "fix the bug"
    scan = planner.plan(intent("security", "simple"), CANONICAL, given=given)
    assert step(scan, "assess").input["text"] == "mail bob@example.com"
    assert GivenInputs.from_context({"code": "x = 1", "language": "go"}).python == ""
    assert GivenInputs.from_context({"code": "x = 1"}).python == "x = 1"


def test_budget_trims_optional_steps() -> None:
    """Over the token budget, optional steps are dropped (last first) and noted."""
    full = planner.plan(intent("code", "complex"), CANONICAL)
    trimmed, notes = planner.draft(
        intent("code", "complex"), CANONICAL, PlanBudget(max_tokens=full.estimated_tokens - 1)
    )
    assert len(trimmed.steps) == len(full.steps) - 1
    assert trimmed.step("review") is None
    assert trimmed.estimated_tokens <= full.estimated_tokens - 1
    assert validate_plan(trimmed, {a.arm_type for a in CANONICAL}) == []
    assert any("review dropped to fit the budget" in n for n in notes)


def test_task_criteria_go_to_sink_steps() -> None:
    """The task's acceptance criteria are attached to the sink steps only."""
    plan = planner.plan(
        intent("general", "medium"), CANONICAL, acceptance_criteria=["mentions mesh"]
    )
    for step in plan.steps:
        assert ("mentions mesh" in step.acceptance_criteria) == (step.step_id in plan.sinks())


def test_deterministic_except_plan_id() -> None:
    """Same intent and arms give the same steps; only the plan id differs."""
    a = planner.plan(intent("data", "complex"), CANONICAL)
    b = planner.plan(intent("data", "complex"), CANONICAL)
    assert a.steps == b.steps
    assert a.plan_id != b.plan_id


@pytest.mark.parametrize("domain", ["code", "data", "security"])
def test_a_run_step_is_planned_only_after_a_coder(domain: str) -> None:
    """Executor steps run what a coder step before them wrote: with a coder they stay (and
    depend on it). Without one (no LLM) a goal whose deliverable is code cannot be served
    (MissingCapability); a security goal is, with the run steps dropped and a note."""
    complexity = "complex" if domain == "security" else "medium"
    with_coder = planner.plan(intent(domain, complexity), CANONICAL)
    runs = [s for s in with_coder.steps if s.arm_type == "executor"]
    assert runs
    for run in runs:
        assert any(step(with_coder, d).arm_type == "coder" for d in run.depends_on)
    without = [a for a in CANONICAL if a.arm_type != "coder"]
    if domain != "security":
        with pytest.raises(MissingCapability) as caught:
            planner.draft(intent(domain, complexity), without)
        assert caught.value.capabilities == ("code_generation",)
        return
    plan, notes = planner.draft(intent(domain, complexity), without)
    assert validate_plan(plan, {a.arm_type for a in without}) == []
    assert not any(s.arm_type in ("executor", "coder") for s in plan.steps)
    assert any(n.startswith("no coder writes code for") for n in notes), notes


def test_infrastructure_changes_are_checked_not_executed() -> None:
    """The sandbox cannot dry-run configuration: infrastructure plans check the drafted
    change (safety, and the judge against the rollout plan) instead of running it."""
    for complexity in ("medium", "complex"):
        plan = planner.plan(intent("infrastructure", complexity), CANONICAL)
        assert "executor" not in {s.arm_type for s in plan.steps}
        assert step(plan, "check_change").depends_on == ("draft_change",)


OFFLINE = [a for a in CANONICAL if a.arm_type != "coder"]


@pytest.mark.parametrize(
    "goal",
    [
        "Draft a Kubernetes Deployment for nginx with 3 replicas",
        "Write a Dockerfile for the api service and run it in a container",
        "Generate the Terraform for an S3 bucket with versioning on the production account",
        "Deploy the service to Kubernetes with a rolling update and plan the rollback",
        "Give me the Helm chart values for the ingress controller on the staging cluster",
    ],
)
def test_an_infrastructure_goal_asking_for_an_artifact_needs_the_coder(goal: str) -> None:
    """An infrastructure goal that asks for an artifact (a manifest, a Dockerfile, Terraform, a
    deployment) has the drafted change as its deliverable: with no coder it is MissingCapability
    naming code_generation and the step draft_change."""
    parsed = HeuristicIntentParser().parse(goal)
    assert parsed.domain == "infrastructure"
    with pytest.raises(MissingCapability) as caught:
        planner.draft(parsed, OFFLINE)
    assert caught.value.capabilities == ("code_generation",)
    assert [m.step_id for m in caught.value.missing] == ["draft_change"]


@pytest.mark.parametrize(
    "goal",
    [
        "Upgrade PostgreSQL 14 to 16 on the production cluster",
        "Upgrade PostgreSQL 14 to 16 on the production cluster with a rolling update and plan "
        "the rollback",
        "Roll back the payments release on the production cluster",
        "Migrate the orders database to the new cluster region by region, verify each step, "
        "monitor the error rate and plan the rollback if the latency or the error rate rises",
    ],
)
def test_an_infrastructure_goal_asking_for_a_procedure_is_served_from_the_documents(
    goal: str,
) -> None:
    """An infrastructure goal that asks how to act on running systems (upgrade, roll back,
    migrate) needs the documented procedure: with a retriever and no coder it is planned with
    the retrieval as its deliverable and the drafted change left out with a note; with a coder
    the change is drafted too; with no retriever it needs retrieval."""
    parsed = HeuristicIntentParser().parse(goal)
    assert parsed.domain == "infrastructure"
    plan, notes = planner.draft(parsed, OFFLINE)
    assert validate_plan(plan, {a.arm_type for a in OFFLINE}) == []
    assert "procedure template" in plan.rationale
    assert step(plan, "context").arm_type == "retriever"
    assert "coder" not in {s.arm_type for s in plan.steps}
    if parsed.complexity != "simple":
        assert "no arm serves 'coder' or its role: dropped draft_change" in notes, notes
        assert step(planner.plan(parsed, CANONICAL), "draft_change").arm_type == "coder"
    without_retriever = [a for a in CANONICAL if a.arm_type != "retriever"]
    with pytest.raises(MissingCapability) as caught:
        planner.draft(parsed, without_retriever)
    assert caught.value.capabilities == ("retrieval",)


TICKET = "Customer jane.doe@example.org paid with the card 4111 1111 1111 1111 and it's urgent."


@pytest.mark.parametrize(
    ("goal", "context"),
    [
        ("Check the configuration file in the context for leaked credentials", {"text": TICKET}),
        (f"Scan this support ticket for secrets and personal data: '{TICKET}'", {}),
        (f'Review this note for personal data before it is shared: "{TICKET}"', {}),
        (f"Find the secrets in this note: 'Please write back, {TICKET}'", {}),
    ],
)
def test_a_goal_asking_to_scan_given_text_is_the_scan_of_that_text(
    goal: str, context: dict[str, str]
) -> None:
    """Text given in the context, or quoted in a goal that asks for a scan for secrets or
    personal data, is what the plan scans: one safety step (the answer) and the review, no
    retrieval of documents about something else."""
    parsed = HeuristicIntentParser().parse(goal)
    plan = planner.plan(parsed, OFFLINE, given=GivenInputs.from_context(context))
    assert [(s.step_id, s.arm_type) for s in plan.steps] == [
        ("scan", "safety"),
        ("review", "judge"),
    ]
    assert step(plan, "scan").input["text"].endswith(TICKET)
    assert "given-text" in plan.rationale


def test_only_a_scan_goal_scans_text_and_result_checks_check_results() -> None:
    """Text quoted in a goal that asks for no scan is not scanned; a goal asking for code to
    be written about given text still needs the coder; an audit with nothing given is not a
    scan; a step checking other steps' results ("safety_check") checks them, not the given
    text."""
    given = GivenInputs.from_context({"text": TICKET})
    quoting = HeuristicIntentParser().parse(f"Translate into French: '{TICKET}'")
    assert "scan" not in {s.step_id for s in planner.plan(quoting, OFFLINE).steps}
    writing = HeuristicIntentParser().parse("Write a function that redacts the secrets in it")
    with pytest.raises(MissingCapability):
        planner.plan(writing, OFFLINE, given=given)
    audit = HeuristicIntentParser().parse(
        "Audit the authentication flow for vulnerabilities and leaked credentials"
    )
    assert "scan" not in {s.step_id for s in planner.plan(audit, OFFLINE).steps}
    general = planner.plan(intent("general", "medium"), OFFLINE, given=given)
    assert "text" not in step(general, "safety_check").input


@pytest.mark.parametrize(
    ("goal", "quoted"),
    [
        (f"Scan this: '{TICKET}'", TICKET),
        (
            f'Scan \u201c{TICKET}\u201d and "the second quoted text"',
            f"{TICKET}\nthe second quoted text",
        ),
        ("Scan 'short' and the 'customer's' words", ""),
    ],
)
def test_quoted_text_is_what_a_goal_quotes(goal: str, quoted: str) -> None:
    """Quotes of at least 16 characters, single, double or curly; an apostrophe inside a word
    closes no quote."""
    assert quoted_text(goal) == quoted


def test_python_fenced_in_a_goal_asking_for_a_run_is_run() -> None:
    """Python fenced in a goal that asks to run or compute it is handed to the executor like
    code in the context (no coder); fenced in a goal that asks for no run, it is not; words in
    the code ("add") do not make the goal ask for code to be written."""
    code = "def add(a, b):\n    return a + b\nprint(add(2, 3))\n"
    run = HeuristicIntentParser().parse(
        f"Run this Python and report the sum:\n```python\n{code}```"
    )
    plan = planner.plan(run, OFFLINE)
    assert [(s.step_id, s.input.get("python")) for s in plan.steps] == [
        ("run", code),
        ("review", None),
    ]
    explain = HeuristicIntentParser().parse(f"Explain this Python:\n```python\n{code}```")
    assert "run" not in {s.step_id for s in planner.plan(explain, OFFLINE).steps}


@pytest.mark.parametrize(
    "goal",
    [
        "Two questions about Halcyon Freight: what default storage quota does each Krakatoa "
        "tenant get, and how many hours before a release train leaves does code freeze begin?",
        "How does the retry policy of the gRPC client decide when to give up?",
        "Which Python version does the build pipeline use?",
    ],
)
def test_a_question_in_the_code_domain_is_answered_from_the_documents(goal: str) -> None:
    """A goal that asks a question about code ("code freeze", a client's retry policy) and
    asks for no code to be written is planned like any question: the retrieval is its
    deliverable, no coder is needed, and without one it is still served."""
    parsed = HeuristicIntentParser().parse(goal)
    plan, _ = planner.draft(parsed, OFFLINE)
    assert "coder" not in {s.arm_type for s in plan.steps}
    assert "retriever" in {s.arm_type for s in plan.steps}


@pytest.mark.parametrize(
    "goal",
    [
        "Write a Python function that parses ISO dates, with pytest tests",
        "Fix the bug in the login handler: why does it reject valid tokens?",
        "Implement a retry decorator for the gRPC client",
    ],
)
def test_a_code_goal_asking_for_code_still_needs_the_coder(goal: str) -> None:
    """A code goal that asks for code to be written or changed keeps the code as its
    deliverable, question mark or not: with no coder it is MissingCapability."""
    parsed = HeuristicIntentParser().parse(goal)
    assert parsed.domain == "code"
    with pytest.raises(MissingCapability) as caught:
        planner.draft(parsed, OFFLINE)
    assert caught.value.capabilities == ("code_generation",)


def test_a_goal_of_several_questions_retrieves_enough_passages_for_each() -> None:
    """A goal of several questions asks the retriever for more passages (DEFAULT per part):
    one search ranks the chunks that answer the other parts below the first few."""
    goal = (
        "Answer three questions from the Halcyon Freight documents: when does the nightly "
        "reconciliation job start, how many storage nodes does Krakatoa have, and who is the "
        "release manager?"
    )
    plan, _ = planner.draft(HeuristicIntentParser().parse(goal), OFFLINE)
    searches = [s for s in plan.steps if s.arm_type == "retriever"]
    assert searches
    assert all(s.input["top_k"] >= 3 * 5 for s in searches)
    single, _ = planner.draft(HeuristicIntentParser().parse("Who is the release manager?"), OFFLINE)
    assert all("top_k" not in s.input for s in single.steps if s.arm_type == "retriever")
