"""The answer addresses the goal: retrieved text quoted honestly, plans and copies rejected."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator_svc.brain import ExecutionPlan, PlannedStep, integrate, validate
from orchestrator_svc.brain.validate import check_addresses_goal

FROM_DOCUMENTS = "From the indexed documents (no model wrote this answer):"

RUNBOOK_STEPS = (
    "Stop the application writers, then run pg_upgrade --link from the 14 data directory to a "
    "new 16 data directory on each node, primary first. Start PostgreSQL 16, run ANALYZE on "
    "every database, and re-enable the writers once the health checks pass."
)


def hit(source: str, chunk: int, heading: str, text: str) -> dict[str, Any]:
    return {"source": source, "chunk": chunk, "score": 0.03, "heading": heading, "text": text}


RUNBOOK_HITS = [
    hit(
        "postgres-upgrade.md",
        2,
        "PostgreSQL upgrade runbook > Rolling back",
        "If the upgrade fails before the writers are re-enabled, start the old 14 cluster "
        "from its untouched data directory.",
    ),
    hit(
        "postgres-upgrade.md",
        1,
        "PostgreSQL upgrade runbook > Upgrading PostgreSQL 14 to 16",
        RUNBOOK_STEPS,
    ),
]
SAMPLE_HITS = [
    hit(
        "health-and-failover.md",
        0,
        "Health, discovery and failover",
        "Arms are found from static addresses or DNS names; every A record of a DNS name is one "
        "replica.\n\nWhen an arm's stream breaks, its in-flight subtasks are dispatched again.",
    ),
    hit(
        "flow-control.md",
        0,
        "Flow control with credits",
        "Every arm grants the orchestrator credits on its Execute stream. Each Dispatch "
        "consumes one credit.\n\nArms may batch their credit, like an HTTP/2 WINDOW_UPDATE.",
    ),
    hit(
        "tasks-and-events.md",
        0,
        "Tasks, plans and events",
        "A task moves from PENDING through PARSING to SUCCEEDED.\n\nEvery transition is an event "
        "with a sequence number in the task's log. WatchTask replays the events after a given "
        "sequence number and then streams new ones.",
    ),
]

PLANNED = (
    "Plan for: Upgrade PostgreSQL 14 to 16 on the production cluster with a rolling update\n"
    "1. [retriever] context: Find the configuration, manifests and docs in scope\n"
    "2. [planner] plan_rollout: Plan the change, its rollout and its rollback (after 1)\n"
    "3. [coder] draft_change: Draft the configuration or infrastructure change (after 2)\n"
    "4. [judge] review: Review the result against the goal and every constraint; give a verdict "
    "with reasons (after 3)"
)


def infra_plan() -> ExecutionPlan:
    """context (retriever) -> plan_rollout (planner) -> review (judge), as offline plans are."""
    return ExecutionPlan(
        "p",
        (
            PlannedStep(
                "context", "Find the configuration, manifests and docs in scope", "retriever"
            ),
            PlannedStep(
                "plan_rollout",
                "Plan the change, its rollout and its rollback",
                "planner",
                depends_on=("context",),
            ),
            PlannedStep(
                "review",
                "Review the result against the goal and every constraint",
                "judge",
                depends_on=("plan_rollout",),
            ),
        ),
    )


def retrieved(hits: list[dict[str, Any]]) -> dict[str, Any]:
    return {"results": hits, "answer": "From the indexed documents: ..."}


def test_a_retrieval_answer_keeps_the_paragraph_the_retriever_found() -> None:
    """Retrieved text covering the goal is the answer: first line says no model wrote it, the
    exact paragraph is kept whole (not its first sentence), and the planner's plan is not it."""
    outputs = {
        "context": retrieved(RUNBOOK_HITS),
        "plan_rollout": {"steps": [{"step_id": "context"}], "answer": PLANNED},
        "review": {"passed": True, "checks": [], "answer": "PASS"},
    }
    merged = integrate(
        "Upgrade PostgreSQL 14 to 16 on the production cluster with a rolling update",
        infra_plan(),
        outputs,
        {"context": 0.9, "plan_rollout": 0.6, "review": 1.0},
    )
    assert merged.answer.splitlines()[0] == FROM_DOCUMENTS
    assert RUNBOOK_STEPS in merged.answer
    assert "postgres-upgrade.md #1" in merged.answer
    assert "Plan for:" not in merged.answer
    assert merged.source == "retrieval"


@pytest.mark.parametrize(
    ("goal", "missing"),
    [
        ("Explain the difference between TCP and UDP", ("tcp", "udp")),
        ("Upgrade PostgreSQL 14 to 16 on the production cluster", ("postgresql",)),
        (
            "What grants credits, how are arms found, and how do I rotate the TLS certificates?",
            ("tls", "certificates"),
        ),
    ],
)
def test_retrieved_text_that_does_not_cover_the_goal_says_not_found(
    goal: str, missing: tuple[str, ...]
) -> None:
    """Passages about something else (or about only some parts of the goal) are not passed off
    as the answer: it says "not found in the indexed documents" and names what is missing."""
    plan = ExecutionPlan("p", (PlannedStep("research", "Gather the facts", "retriever"),))
    merged = integrate(goal, plan, {"research": retrieved(SAMPLE_HITS)}, {"research": 0.9})
    assert merged.answer.startswith(FROM_DOCUMENTS)
    assert "not found in the indexed documents" in merged.answer.lower()
    for word in missing:
        assert word in merged.answer.lower()
    assert merged.source == "retrieval"
    assert merged.confidence <= 0.1


def test_a_multi_part_question_the_documents_cover_is_answered_part_by_part() -> None:
    """Each part of a question gets the paragraph that covers it."""
    plan = ExecutionPlan("p", (PlannedStep("research", "Gather the facts", "retriever"),))
    goal = "What grants credits, how are arms found, and what does WatchTask replay?"
    merged = integrate(goal, plan, {"research": retrieved(SAMPLE_HITS)}, {"research": 0.9})
    assert "not found" not in merged.answer.lower()
    assert "grants the orchestrator credits" in merged.answer
    assert "Arms are found from static addresses" in merged.answer
    assert "WatchTask replays the events" in merged.answer


def test_an_answer_restating_the_plan_fails_validation() -> None:
    """A plan of the mesh's own steps is not an answer to the goal."""
    goal = "Upgrade PostgreSQL 14 to 16 on the production cluster with a rolling update"
    report = validate(PLANNED, {"plan_rollout": {"answer": PLANNED}}, [], goal=goal)
    assert not report.passed
    assert report.failing_steps == ("plan_rollout",)
    assert any("restates" in issue for issue in report.issues), report.issues


def test_an_answer_copied_from_the_goal_fails_validation() -> None:
    """The goal echoed back is not an answer."""
    goal = "Explain how credit-based flow control keeps the mesh safe"
    check = check_addresses_goal(f"Task: {goal}. Goal: {goal}", goal)
    assert not check.passed
    assert "restates" in check.detail


def test_an_answer_about_something_else_fails_validation() -> None:
    """Snippets about other things share no term with the goal: they do not address it."""
    answer = "\n".join(
        [
            "- Arms are found from static addresses or DNS names; every A record is a replica.",
            "- A task moves from PENDING through PARSING, PLANNING, EXECUTING and VALIDATING.",
            "- Every arm grants the orchestrator credits on its Execute stream.",
        ]
    )
    check = check_addresses_goal(answer, "Explain the difference between TCP and UDP")
    assert not check.passed
    assert "tcp" in check.detail


def test_a_not_found_answer_fails_validation() -> None:
    """An answer saying the documents do not cover the goal has not served it."""
    answer = f"{FROM_DOCUMENTS} not found in the indexed documents: nothing mentions tcp, udp."
    check = check_addresses_goal(answer, "Explain the difference between TCP and UDP")
    assert not check.passed
    assert "not cover the goal" in check.detail


@pytest.mark.parametrize(
    ("goal", "answer"),
    [
        ("Compute 6 times 7 with Python", "42"),
        ("Fix the login bug and add tests", "The code change fixes the bug; the tests pass."),
        ("Write a short note about credit-based flow control", "Credits bound what is in flight."),
        (
            "Explain the difference between TCP and UDP",
            "TCP is connection-oriented and reliable; UDP sends datagrams without delivery "
            "guarantees, so it is lighter but may lose or reorder packets.",
        ),
    ],
)
def test_a_real_answer_passes_the_goal_check(goal: str, answer: str) -> None:
    """Short results and answers that talk about the goal pass."""
    assert check_addresses_goal(answer, goal).passed


def test_rules_that_read_every_criterion_verify_the_answer() -> None:
    """Precise rules for every criterion verify the answer; a keyword-overlap guess does not,
    and no criteria at all verifies nothing."""
    outputs = {"s": {"answer": "Credits bound what is in flight."}}
    answer = "Credits bound what is in flight."
    assert validate(answer, outputs, ["mentions credits", "at most 20 words"]).verified
    assert not validate(answer, outputs, ["explains flight"]).verified
    assert not validate(answer, outputs, []).verified


def test_retrieval_adds_nothing_when_other_steps_served_the_goal() -> None:
    """A goal the other steps served whole (a program computed it) keeps their answer; passages
    about something else are neither quoted nor reported "not found"."""
    plan = ExecutionPlan(
        "p",
        (
            PlannedStep("search", "Find background", "retriever"),
            PlannedStep("compute", "Compute 2^10 with Python", "executor"),
        ),
    )
    outputs = {"search": retrieved(SAMPLE_HITS), "compute": {"answer": "exit 0: 1024"}}
    merged = integrate("Compute 2^10", plan, outputs, {"search": 0.9, "compute": 1.0})
    assert merged.answer == "exit 0: 1024"
    assert merged.source == "rules"


RELEASES = """Halcyon Freight ships its customer-facing services on release trains. A release train
leaves every second Thursday; after the freeze only fixes approved by the release manager are
merged.

The release manager is Tomasz Wielgosz. He signs off every train.

A train that fails its smoke tests is rolled back with the tool called rewind."""


def test_every_paragraph_covering_a_part_of_the_question_is_quoted() -> None:
    """A paragraph that names all of a question's terms is not the only one quoted: another
    covering half of them or more (where the fact asked for may be) is quoted too; one that
    does not is left out."""
    plan = ExecutionPlan("p", (PlannedStep("research", "Gather the facts", "retriever"),))
    hits = [hit("release-process.md", 0, "", RELEASES)]
    goal = "Who is the release manager for Halcyon Freight's release trains?"
    merged = integrate(goal, plan, {"research": retrieved(hits)}, {"research": 0.9})
    assert "Tomasz Wielgosz" in merged.answer
    assert "rewind" not in merged.answer
    assert merged.answer.index("ships its") < merged.answer.index("Tomasz")


@pytest.mark.parametrize(
    ("goal", "paragraph"),
    [
        (
            "Who is the release manager?",
            "The release manager approves every release train before it leaves.",
        ),
        (
            "How many storage nodes does Krakatoa have?",
            "Krakatoa storage nodes are replaced one at a time during maintenance.",
        ),
        (
            "When does the nightly reconciliation job start?",
            "The nightly reconciliation job compares the ledger with the warehouse.",
        ),
    ],
)
def test_a_paragraph_naming_the_subject_but_not_the_fact_asked_for_is_no_answer(
    goal: str, paragraph: str
) -> None:
    """A question asking who, how many or when is covered only by a paragraph holding a name,
    a number or a time: one that merely names its subject is "not found"."""
    plan = ExecutionPlan("p", (PlannedStep("research", "Gather the facts", "retriever"),))
    hits = [hit("handbook.md", 0, "", paragraph)]
    merged = integrate(goal, plan, {"research": retrieved(hits)}, {"research": 0.9})
    assert "not found in the indexed documents" in merged.answer.lower()


def test_each_question_gets_the_paragraph_holding_its_fact() -> None:
    """Several who / how many / when questions: each part's paragraph holding the fact is
    quoted, beside paragraphs that only name the subjects."""
    plan = ExecutionPlan("p", (PlannedStep("research", "Gather the facts", "retriever"),))
    hits = [
        hit("ops.md", 0, "", "The nightly reconciliation job compares ledgers and warehouses."),
        hit("ops.md", 1, "", "Krakatoa storage nodes are replaced one at a time."),
        hit("people.md", 0, "", "The release manager approves every release train."),
        hit("ops.md", 2, "", "The nightly reconciliation job starts at 02:40 UTC."),
        hit("ops.md", 3, "", "Krakatoa runs on 48 storage nodes in two halls."),
        hit("people.md", 1, "", "Tomasz Wielgosz is the release manager."),
    ]
    goal = (
        "Answer three questions: when does the nightly reconciliation job start, how many "
        "storage nodes does Krakatoa have, and who is the release manager?"
    )
    merged = integrate(goal, plan, {"research": retrieved(hits)}, {"research": 0.9})
    assert "not found" not in merged.answer.lower()
    for fact in ("02:40", "48 storage nodes", "Tomasz Wielgosz"):
        assert fact in merged.answer
