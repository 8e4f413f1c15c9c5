"""The brain inside the engine: planning, validation and the repair loop, LLM fallbacks."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from google.protobuf import duration_pb2
from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from arm_sdk import Arm, SubtaskInput
from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.arms import coder as coder_arm
from orchestrator_svc.arms import retriever as retriever_arm
from orchestrator_svc.dev import SAMPLE_DOCS
from orchestrator_svc.llm import OpenAICompatibleClient
from tests.llm.fake_openai import FakeOpenAI, completion
from tests.role_arms import scribe

GOAL = "Write a short note about credit-based flow control"


async def finish(
    stub: pb_grpc.OrchestratorServiceStub, request: pb.SubmitTaskRequest
) -> tuple[pb.Task, list[pb.TaskEvent]]:
    task = (await stub.SubmitTask(request)).task
    call = stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=60)
    events = [r.event async for r in call]
    return (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task, events


def writer_arm(fixed_after: int | None, *, drafts: list[int] | None = None, **arm: Any) -> Arm:
    """Answers 'a draft' until it has seen `fixed_after` repair requests, then mentions credits;
    with `drafts` (a counter writers may share) each draft differs: 'draft 1', 'draft 2', ..."""
    writer = Arm(arm_type="writer", capabilities=("general", "writing"), **arm)
    repairs = 0

    @writer.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        nonlocal repairs
        repairs += "repair" in inp.input
        if fixed_after is not None and repairs >= fixed_after:
            return {"answer": "Credits bound what is in flight on each stream."}
        if drafts is None:
            return {"answer": "a draft"}
        drafts[0] += 1
        return {"answer": f"draft {drafts[0]}"}

    return writer


def one_step(arm_type: str) -> pb.Plan:
    plan = pb.Plan()
    plan.steps.add(step_id="write", arm_type=arm_type, description="write the note")
    return plan


async def test_failed_validation_repairs_the_step_with_feedback(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """An answer missing a criterion sends the step back (with the issues) until it passes."""
    server = await start_arm(writer_arm(fixed_after=1))
    orch = await start_orchestrator([server.address], wait_for=("writer",))
    request = pb.SubmitTaskRequest(
        goal=GOAL, plan=one_step("writer"), acceptance_criteria=["mentions credits"]
    )
    task, events = await finish(connect(orch.address), request)
    assert task.state == pb.TASK_STATE_SUCCEEDED
    assert "Credits" in task.result.answer
    assert task.result.validation.passed
    assert task.result.validation.repairs == 1
    assert task.subtasks[0].attempt == 2
    states = [e.state_changed.to_state for e in events if e.HasField("state_changed")]
    assert pb.TASK_STATE_REPAIRING in states
    assert states.index(pb.TASK_STATE_REPAIRING) < len(states) - 1


async def test_validation_that_never_passes_fails_after_three_repairs(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """Three repairs, then FAILED with VALIDATION_FAILED; the last answer and report are kept."""
    server = await start_arm(writer_arm(fixed_after=None, drafts=[0]))
    orch = await start_orchestrator([server.address], wait_for=("writer",))
    request = pb.SubmitTaskRequest(
        goal=GOAL, plan=one_step("writer"), acceptance_criteria=["mentions credits"]
    )
    task, events = await finish(connect(orch.address), request)
    assert task.state == pb.TASK_STATE_FAILED
    assert task.failure.reason == "VALIDATION_FAILED"
    assert task.result.answer == "draft 4"
    assert not task.result.validation.passed
    assert task.result.validation.repairs == 3
    assert task.result.validation.issues
    repairs = [e for e in events if e.state_changed.to_state == pb.TASK_STATE_REPAIRING]
    assert len(repairs) == 3


async def test_brain_plan_with_no_usable_arm_fails_naming_the_types(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """With only an unrelated arm, planning fails FAILED_PRECONDITION naming the missing role
    (the research a general goal is answered from) and its arm type."""
    odd = Arm(arm_type="oddity", capabilities=("nothing-useful",))

    @odd.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        return {}

    server = await start_arm(odd)
    orch = await start_orchestrator([server.address], wait_for=("oddity",))
    task, _ = await finish(connect(orch.address), pb.SubmitTaskRequest(goal=GOAL))
    assert task.state == pb.TASK_STATE_FAILED
    assert task.failure.reason == "MISSING_CAPABILITY"
    assert task.failure.metadata["missing_arm_types"] == "retriever"
    assert task.failure.metadata["missing_capabilities"] == "retrieval"


async def test_llm_talking_nonsense_falls_back_to_the_offline_brain(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """An LLM endpoint that returns non-JSON: the offline brain plans and runs the task instead
    (the events say why); echo's copy of the goal is no answer, so the task fails validation."""
    fake = await FakeOpenAI([completion("this is not json {")]).start()
    try:
        roles = await start_arm(scribe())
        orch = await start_orchestrator(
            [roles.address],
            wait_for=("scribe",),
            llm_base_url=fake.base_url,
            llm_model="fake-model",
            llm_max_retries=0,
            llm_output_retries=1,
        )
        task, events = await finish(connect(orch.address), pb.SubmitTaskRequest(goal=GOAL))
    finally:
        await fake.close()
    assert task.state == pb.TASK_STATE_FAILED
    assert task.failure.reason == "VALIDATION_FAILED"
    assert "restates the goal or the plan" in task.failure.message
    assert fake.requests, "the orchestrator never asked the LLM"
    reasons = " ".join(e.state_changed.reason for e in events if e.HasField("state_changed"))
    assert "heuristic" in reasons
    assert task.usage.tokens > 0  # the failed LLM attempts were still counted
    spent = orch.metrics.registry.get_sample_value("octollm_llm_tokens_total", {"step": "parse"})
    assert spent is not None
    assert spent > 0


async def test_a_judge_arm_decides_validation_when_present(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """With a judge arm routable, its verdict drives the repair loop and is named in events."""
    writer = await start_arm(writer_arm(fixed_after=1))
    judge = await start_arm(REFERENCE_ARMS["judge"]())
    orch = await start_orchestrator([writer.address, judge.address], wait_for=("writer", "judge"))
    request = pb.SubmitTaskRequest(
        goal=GOAL, plan=one_step("writer"), acceptance_criteria=["mentions credits"]
    )
    task, events = await finish(connect(orch.address), request)
    assert task.state == pb.TASK_STATE_SUCCEEDED
    assert task.result.validation.passed
    assert task.result.validation.repairs == 1
    reasons = [e.state_changed.reason for e in events if e.HasField("state_changed")]
    assert any(judge.arm_id in reason for reason in reasons)


async def offline_mesh(start_arm: Any, start_orchestrator: Any, tmp_path: Any) -> str:
    """Every reference arm with no LLM (the coder NOT_SERVING), the retriever on the sample
    documents, and an orchestrator on them; its address."""
    store = str(tmp_path / "retriever")
    await retriever_arm.ingest(SAMPLE_DOCS, store_path=store)
    arms = [await start_arm(retriever_arm.build(store_path=store))]
    for name in ("planner", "judge", "safety", "executor", "coder"):
        arms.append(await start_arm(REFERENCE_ARMS[name]()))
    serving = ["retriever", "planner", "judge", "safety", "executor"]
    orch = await start_orchestrator([a.address for a in arms], wait_for=serving)
    return str(orch.address)


def reason_for(events: list[pb.TaskEvent], state: pb.TaskState.ValueType) -> str:
    """Why the task moved to `state`, as its event log says."""
    return next(e.state_changed.reason for e in events if e.state_changed.to_state == state)


@pytest.mark.parametrize(
    ("goal", "planned", "step"),
    [
        (
            "Write a Python function that parses ISO dates, and test it against the edge "
            "cases, then refactor it",
            "medium code",
            "implement",
        ),
        (
            "Analyze the monthly sales data and report the trends and outliers",
            "medium data",
            "write_analysis",
        ),
        (
            "Deploy the service to Kubernetes with a rolling update, and verify the rollout "
            "and plan the rollback",
            "medium infrastructure",
            "draft_change",
        ),
    ],
)
async def test_offline_goals_whose_deliverable_is_code_fail_naming_the_coder(
    start_arm: Any,
    start_orchestrator: Any,
    connect: Any,
    tmp_path: Any,
    goal: str,
    planned: str,
    step: str,
) -> None:
    """No LLM, so no coder: a goal whose deliverable is code (a function, an analysis, an
    infrastructure change) is not run without it; it ends FAILED / MISSING_CAPABILITY naming
    code_generation, the step and the coder's state. (Until issue 16 these SUCCEEDED with the
    code steps dropped: an answer that did not serve the goal.)"""
    address = await offline_mesh(start_arm, start_orchestrator, tmp_path)
    budget = common_pb2.Budget(max_time=duration_pb2.Duration(seconds=60))
    task, events = await finish(connect(address), pb.SubmitTaskRequest(goal=goal, budget=budget))
    assert f"planning a {planned} task" in reason_for(events, pb.TASK_STATE_PLANNING)
    assert task.state == pb.TASK_STATE_FAILED, task.failure
    assert task.failure.reason == "MISSING_CAPABILITY"
    assert task.failure.metadata["missing_capabilities"] == "code_generation"
    assert task.failure.metadata["missing_arm_types"] == "coder"
    assert task.failure.metadata["steps"] == step
    assert "coder:" in task.failure.metadata["arm_status"]
    assert not task.subtasks


async def test_an_offline_security_audit_with_nothing_to_audit_is_no_success(
    start_arm: Any, start_orchestrator: Any, connect: Any, tmp_path: Any
) -> None:
    """No coder and nothing given to scan: the plan leaves out the code inspection and the run
    that would verify it, the safety arm finds nothing about the authentication flow, and the
    task says it has no answer instead of succeeding (text given to scan is served: test_roles)."""
    address = await offline_mesh(start_arm, start_orchestrator, tmp_path)
    goal = (
        "Audit the authentication flow for vulnerabilities, check the dependencies for known "
        "CVEs, and verify the findings, then report each risk with its severity and a fix"
    )
    task, events = await finish(connect(address), pb.SubmitTaskRequest(goal=goal))
    assert "planning a complex security task" in reason_for(events, pb.TASK_STATE_PLANNING)
    assert task.state == pb.TASK_STATE_FAILED
    assert task.failure.reason == "ANSWER_NOT_FOUND", task.failure
    assert all(sub.state == pb.SUBTASK_STATE_SUCCEEDED for sub in task.subtasks)
    ran = {sub.step_id: sub.arm_type for sub in task.subtasks}
    assert ran["assess"] == "safety"
    assert not {"coder", "executor"} & set(ran.values())
    executing = reason_for(events, pb.TASK_STATE_EXECUTING)
    assert "no arm serves 'coder'" in executing, executing


@pytest.mark.parametrize(
    ("goal", "complexity"),
    [
        ("Explain how credits bound what an arm has in flight", "simple"),
        (
            "Compare how the orchestrator watches arm health and how credits limit what is in "
            "flight, and explain what happens to subtasks when a stream breaks",
            "medium",
        ),
        (
            "Explain how tasks move through their states and how arms are discovered, compare "
            "failover with the keepalive pings, and describe what WatchTask replays after a "
            "reconnect and what happens when the answer fails its criteria, while keeping the "
            "answer short and making sure nothing is left out",
            "complex",
        ),
    ],
)
async def test_offline_general_plans_run_on_the_reference_arms(
    start_arm: Any, start_orchestrator: Any, connect: Any, tmp_path: Any, goal: str, complexity: str
) -> None:
    """No LLM: the heuristic plan of a general goal the bundled documents cover (outline,
    research, safety check, review) runs to SUCCEEDED on the reference arms; the answer is what
    the research found, not a plan of how to find it, and says that no model wrote it."""
    address = await offline_mesh(start_arm, start_orchestrator, tmp_path)
    task, events = await finish(connect(address), pb.SubmitTaskRequest(goal=goal))
    assert f"planning a {complexity} general task" in reason_for(events, pb.TASK_STATE_PLANNING)
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    ran = {sub.step_id: sub for sub in task.subtasks}
    assert {"outline", "research", "review"} <= ran.keys()
    assert all(sub.state == pb.SUBTASK_STATE_SUCCEEDED for sub in ran.values())
    if complexity != "simple":
        assert ran["safety_check"].arm_type == "safety"
    assert task.result.answer.startswith("From the indexed documents (no model wrote this")
    assert "Plan for:" not in task.result.answer
    assert "not found" not in task.result.answer.lower()
    assert task.result.answer_source == pb.ANSWER_SOURCE_RETRIEVAL
    assert not task.result.verified
    assert task.result.confidence <= 0.5


async def test_the_executor_step_runs_what_the_coder_step_wrote(
    start_arm: Any, start_orchestrator: Any, connect: Any
) -> None:
    """implement (coder, on an LLM) -> test (executor, no program in its input): the executor
    runs the Python the coder returned, and its output is the test step's result."""
    code = "def double(x):\n    return 2 * x\n\nassert double(21) == 42\nprint('double ok')\n"
    draft = {"language": "python", "code": code, "explanation": "doubles"}
    fake = await FakeOpenAI([completion(draft)]).start()
    client = OpenAICompatibleClient(fake.base_url, api_key="sk-test", model="fake-model")
    try:
        coder = await start_arm(coder_arm.build(llm=client))
        executor = await start_arm(REFERENCE_ARMS["executor"]())
        orch = await start_orchestrator(
            [coder.address, executor.address], wait_for=("coder", "executor")
        )
        plan = pb.Plan()
        plan.steps.add(step_id="implement", arm_type="coder", description="Write double(x)")
        plan.steps.add(
            step_id="test", arm_type="executor", description="Run it", depends_on=["implement"]
        )
        task, _ = await finish(connect(orch.address), pb.SubmitTaskRequest(goal=GOAL, plan=plan))
    finally:
        await client.aclose()
        await fake.close()
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    ran = {sub.step_id: sub for sub in task.subtasks}
    assert ran["implement"].output["code"] == code
    assert ran["test"].output["stdout"] == "double ok\n"
    assert ran["test"].output["exit_code"] == 0


RUNBOOK_PARAGRAPH = (
    "Stop the application writers, then run pg_upgrade --link from the 14 data directory to a\n"
    "new 16 data directory on each node, primary first. Start PostgreSQL 16, run ANALYZE on\n"
    "every database, and re-enable the writers once the health checks pass."
)
RUNBOOK = f"""# PostgreSQL upgrade runbook

## Before you start

Take a fresh base backup and check that replication lag is under one second on every replica.

## Upgrading PostgreSQL 14 to 16

{RUNBOOK_PARAGRAPH}

## Rolling back

If the upgrade fails before the writers are re-enabled, start the old 14 cluster from its
untouched data directory.
"""


@pytest.mark.parametrize(
    "goal",
    [
        "Explain the difference between TCP and UDP",
        "Explain what a service mesh does",
        "Review the security of our login service and report the risks",
        "Upgrade PostgreSQL 14 to 16 on the production cluster",
        "What grants credits, how are arms found, and how do I rotate the TLS certificates?",
    ],
)
async def test_offline_goals_the_documents_do_not_cover_fail_answer_not_found(
    start_arm: Any, start_orchestrator: Any, connect: Any, tmp_path: Any, goal: str
) -> None:
    """No LLM and no indexed document about the goal: the task does not pass snippets about
    something else (or a plan of its own steps) off as the answer; it ends FAILED with
    ANSWER_NOT_FOUND, and the answer it keeps says what was not found."""
    address = await offline_mesh(start_arm, start_orchestrator, tmp_path)
    task, _ = await finish(connect(address), pb.SubmitTaskRequest(goal=goal))
    assert task.state == pb.TASK_STATE_FAILED, task.result.answer
    assert task.failure.reason == "ANSWER_NOT_FOUND", task.failure
    assert "do not cover the goal" in task.failure.message
    assert "no LLM is configured" in task.failure.message
    assert task.result.answer.startswith("From the indexed documents (no model wrote this answer)")
    assert "not found in the indexed documents" in task.result.answer.lower()
    assert "Plan for:" not in task.result.answer
    assert task.result.answer_source == pb.ANSWER_SOURCE_RETRIEVAL
    assert not task.result.verified
    assert task.result.confidence <= 0.5


@pytest.mark.parametrize(
    "goal",
    [
        "Upgrade PostgreSQL 14 to 16 on the production cluster",
        "Upgrade PostgreSQL 14 to 16 on the production cluster with a rolling update and plan "
        "the rollback",
    ],
)
async def test_offline_answer_from_a_runbook_keeps_the_paragraph_the_retriever_found(
    start_arm: Any, start_orchestrator: Any, connect: Any, tmp_path: Any, goal: str
) -> None:
    """With a runbook ingested, the answer is the exact paragraph the retriever found (not the
    planner's plan), says no model wrote it, and is not trusted beyond 0.5 unverified."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "postgres-upgrade.md").write_text(RUNBOOK)
    store = str(tmp_path / "retriever")
    await retriever_arm.ingest(SAMPLE_DOCS, store_path=store)
    await retriever_arm.ingest(docs, store_path=store)
    arms = [await start_arm(retriever_arm.build(store_path=store))]
    for name in ("planner", "judge", "safety", "executor", "coder"):
        arms.append(await start_arm(REFERENCE_ARMS[name]()))
    serving = ["retriever", "planner", "judge", "safety", "executor"]
    orch = await start_orchestrator([a.address for a in arms], wait_for=serving)
    task, _ = await finish(connect(orch.address), pb.SubmitTaskRequest(goal=goal))
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    answer = task.result.answer
    assert answer.splitlines()[0] == "From the indexed documents (no model wrote this answer):"
    assert RUNBOOK_PARAGRAPH in answer
    assert "Plan for:" not in answer
    assert task.result.answer_source == pb.ANSWER_SOURCE_RETRIEVAL
    assert not task.result.verified
    assert 0 < task.result.confidence <= 0.5


async def test_repair_stops_when_a_round_changes_nothing(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """A deterministic step that gives the same output again is not re-run three times: the
    first repair that changes nothing ends the loop, and the event log says so."""
    server = await start_arm(writer_arm(fixed_after=None, deterministic=True))
    orch = await start_orchestrator([server.address], wait_for=("writer",))
    request = pb.SubmitTaskRequest(
        goal=GOAL, plan=one_step("writer"), acceptance_criteria=["mentions credits"]
    )
    task, events = await finish(connect(orch.address), request)
    assert task.state == pb.TASK_STATE_FAILED
    assert task.failure.reason == "VALIDATION_FAILED"
    assert task.result.validation.repairs == 1
    dispatched = [
        e for e in events if e.subtask_changed.subtask.state == pb.SUBTASK_STATE_DISPATCHED
    ]
    assert len(dispatched) == 2  # the repair ran on the arm, not from the result cache
    reasons = [e.state_changed.reason for e in events if e.HasField("state_changed")]
    assert any("same outputs" in reason for reason in reasons), reasons


async def test_repair_prefers_another_arm_of_the_type(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """Each repair round runs the failing step on another arm of its type when there is one."""
    drafts = [0]
    first = await start_arm(writer_arm(fixed_after=None, drafts=drafts))
    second = await start_arm(writer_arm(fixed_after=None, drafts=drafts))
    orch = await start_orchestrator([first.address, second.address], wait_for=("writer",))
    await orch.wait_for_arms({"writer"}, timeout_s=10)
    while len([c for c in orch.mesh.arms() if c.routable]) < 2:
        await asyncio.sleep(0.01)
    request = pb.SubmitTaskRequest(
        goal=GOAL, plan=one_step("writer"), acceptance_criteria=["mentions credits"]
    )
    task, events = await finish(connect(orch.address), request)
    assert task.result.validation.repairs == 3
    ran_on = [
        e.subtask_changed.subtask.arm_id
        for e in events
        if e.subtask_changed.subtask.state == pb.SUBTASK_STATE_SUCCEEDED
    ]
    assert len(ran_on) == 4
    assert all(a != b for a, b in itertools.pairwise(ran_on)), ran_on


async def test_a_judged_answer_is_verified_and_says_what_wrote_it(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """A judge arm checking the task's criteria verifies the answer; an arm with no model wrote
    it (rules merged it), and the confidence is not capped."""
    writer = await start_arm(writer_arm(fixed_after=0))
    judge = await start_arm(REFERENCE_ARMS["judge"]())
    orch = await start_orchestrator([writer.address, judge.address], wait_for=("writer", "judge"))
    request = pb.SubmitTaskRequest(
        goal=GOAL, plan=one_step("writer"), acceptance_criteria=["mentions credits"]
    )
    task, _ = await finish(connect(orch.address), request)
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    assert task.result.verified
    assert task.result.validation.verified_by == f"judge {judge.arm_id}"
    assert task.result.answer_source == pb.ANSWER_SOURCE_RULES
    assert task.result.confidence == 1.0


async def test_an_unverified_answer_is_trusted_at_most_half(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """No acceptance criteria: nothing verified the answer, so its confidence is at most 0.5."""
    writer = await start_arm(writer_arm(fixed_after=0))
    orch = await start_orchestrator([writer.address], wait_for=("writer",))
    task, _ = await finish(
        connect(orch.address), pb.SubmitTaskRequest(goal=GOAL, plan=one_step("writer"))
    )
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    assert not task.result.verified
    assert task.result.validation.verified_by == ""
    assert task.result.confidence == 0.5
