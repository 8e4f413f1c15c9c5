"""The brain inside the engine: planning, validation and the repair loop, LLM fallbacks."""

from __future__ import annotations

from typing import Any

import pytest
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from arm_sdk import Arm, SubtaskInput
from arm_sdk.arms import REFERENCE_ARMS
from arm_sdk.arms import coder as coder_arm
from arm_sdk.arms import retriever as retriever_arm
from orchestrator_svc.dev import SAMPLE_DOCS
from orchestrator_svc.llm import OpenAICompatibleClient
from tests.llm.fake_openai import FakeOpenAI, completion

GOAL = "Write a short note about credit-based flow control"


async def finish(
    stub: pb_grpc.OrchestratorServiceStub, request: pb.SubmitTaskRequest
) -> tuple[pb.Task, list[pb.TaskEvent]]:
    task = (await stub.SubmitTask(request)).task
    call = stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=60)
    events = [r.event async for r in call]
    return (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task, events


def writer_arm(fixed_after: int | None) -> Arm:
    """Answers 'a draft' until it has seen `fixed_after` repair requests, then mentions credits."""
    arm = Arm(arm_type="writer", capabilities=("general", "writing"))
    repairs = 0

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        nonlocal repairs
        repairs += "repair" in inp.input
        if fixed_after is not None and repairs >= fixed_after:
            return {"answer": "Credits bound what is in flight on each stream."}
        return {"answer": "a draft"}

    return arm


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
    server = await start_arm(writer_arm(fixed_after=None))
    orch = await start_orchestrator([server.address], wait_for=("writer",))
    request = pb.SubmitTaskRequest(
        goal=GOAL, plan=one_step("writer"), acceptance_criteria=["mentions credits"]
    )
    task, events = await finish(connect(orch.address), request)
    assert task.state == pb.TASK_STATE_FAILED
    assert task.failure.reason == "VALIDATION_FAILED"
    assert task.result.answer == "a draft"
    assert not task.result.validation.passed
    assert task.result.validation.repairs == 3
    assert task.result.validation.issues
    repairs = [e for e in events if e.state_changed.to_state == pb.TASK_STATE_REPAIRING]
    assert len(repairs) == 3


async def test_brain_plan_with_no_usable_arm_fails_naming_the_types(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """With only an unrelated arm, planning fails FAILED_PRECONDITION naming the missing types."""
    odd = Arm(arm_type="oddity", capabilities=("nothing-useful",))

    @odd.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        return {}

    server = await start_arm(odd)
    orch = await start_orchestrator([server.address], wait_for=("oddity",))
    task, _ = await finish(connect(orch.address), pb.SubmitTaskRequest(goal=GOAL))
    assert task.state == pb.TASK_STATE_FAILED
    assert task.failure.reason == "NO_ARM_FOR_TYPE"
    assert task.failure.metadata["missing_arm_types"]


async def test_llm_talking_nonsense_falls_back_to_the_offline_brain(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """An LLM endpoint that returns non-JSON: the task still succeeds; the events say why."""
    fake = await FakeOpenAI([completion("this is not json {")]).start()
    try:
        echo = await start_arm(REFERENCE_ARMS["echo"]())
        orch = await start_orchestrator(
            [echo.address],
            wait_for=("echo",),
            llm_base_url=fake.base_url,
            llm_model="fake-model",
            llm_max_retries=0,
            llm_output_retries=1,
        )
        task, events = await finish(connect(orch.address), pb.SubmitTaskRequest(goal=GOAL))
    finally:
        await fake.close()
    assert task.state == pb.TASK_STATE_SUCCEEDED
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
    ("goal", "planned"),
    [
        (
            "Write a Python function that parses ISO dates, and test it against the edge "
            "cases, then refactor it",
            "medium code",
        ),
        ("Analyze the monthly sales data and report the trends and outliers", "medium data"),
        (
            "Deploy the service to Kubernetes with a rolling update, and verify the rollout "
            "and plan the rollback",
            "medium infrastructure",
        ),
        (
            "Audit the authentication flow for vulnerabilities, check the dependencies for "
            "known CVEs, and verify the findings, then report each risk with its severity and "
            "a fix",
            "complex security",
        ),
    ],
)
async def test_offline_plans_that_need_code_run_without_it(
    start_arm: Any, start_orchestrator: Any, connect: Any, tmp_path: Any, goal: str, planned: str
) -> None:
    """No LLM, so no coder: a goal whose template writes and runs code still plans steps the
    served arms can do (no run step with nothing to run) and succeeds, saying what it left
    out."""
    address = await offline_mesh(start_arm, start_orchestrator, tmp_path)
    task, events = await finish(connect(address), pb.SubmitTaskRequest(goal=goal))
    assert f"planning a {planned} task" in reason_for(events, pb.TASK_STATE_PLANNING)
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    assert all(sub.state == pb.SUBTASK_STATE_SUCCEEDED for sub in task.subtasks)
    assert not {"coder", "executor"} & {sub.arm_type for sub in task.subtasks}
    executing = reason_for(events, pb.TASK_STATE_EXECUTING)
    assert "no arm serves 'coder'" in executing, executing


@pytest.mark.parametrize(
    ("goal", "complexity"),
    [
        ("Explain what a service mesh does", "simple"),
        (
            "Compare how the mesh handles health checks and flow control, and explain the costs "
            "and the risks of each",
            "medium",
        ),
        (
            "Explain how tasks move through their states and how arms are discovered, compare "
            "the failover options, and list the trade-offs, risks and costs of each, with "
            "examples, while keeping the answer short and making sure nothing is left out",
            "complex",
        ),
    ],
)
async def test_offline_general_plans_run_on_the_reference_arms(
    start_arm: Any, start_orchestrator: Any, connect: Any, tmp_path: Any, goal: str, complexity: str
) -> None:
    """No LLM: the heuristic plan of a general goal (outline, research, safety check, review)
    runs to SUCCEEDED on the reference arms, and the answer is what the research found, not a
    plan of how to find it."""
    address = await offline_mesh(start_arm, start_orchestrator, tmp_path)
    task, events = await finish(connect(address), pb.SubmitTaskRequest(goal=goal))
    assert f"planning a {complexity} general task" in reason_for(events, pb.TASK_STATE_PLANNING)
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    ran = {sub.step_id: sub for sub in task.subtasks}
    assert {"outline", "research", "review"} <= ran.keys()
    assert all(sub.state == pb.SUBTASK_STATE_SUCCEEDED for sub in ran.values())
    if complexity != "simple":
        assert ran["safety_check"].arm_type == "safety"
    assert "From the indexed documents" in task.result.answer
    assert "Plan for:" not in task.result.answer


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
