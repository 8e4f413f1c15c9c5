"""Roles: no arm stands in for a role it lacks, and a role nobody can serve fails fast.

Every test starts real arms and a real orchestrator on loopback port 0. The tasks get a 60 s
time budget: a task that waited for its deadline would end DEADLINE_EXCEEDED, so asserting
FAILED (not DEADLINE_EXCEEDED) pins that it was the missing role that ended it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_status import rpc_status
from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk import Arm, SubtaskInput
from orchestrator_svc.api.errors import error_info_of
from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.arms import retriever as retriever_arm
from orchestrator_svc.dev import SAMPLE_DOCS
from tests.orchestrator.test_brain_engine import finish

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]
CODE_GOAL = "Write a Python function that parses ISO dates, with pytest tests for the edge cases"


def budget() -> common_pb2.Budget:
    """A deadline well short of the 300 s default and well past what failing fast takes."""
    return common_pb2.Budget(max_time=duration_pb2.Duration(seconds=60))


def event_text(events: list[pb.TaskEvent]) -> str:
    """Everything the event log says in words: state reasons, progress and failures."""
    parts = []
    for event in events:
        kind = event.WhichOneof("kind")
        if kind == "state_changed":
            parts.append(event.state_changed.reason)
        elif kind == "subtask_progress":
            parts.append(event.subtask_progress.message)
        elif kind == "subtask_changed":
            parts.append(event.subtask_changed.subtask.failure.message)
        elif kind == "finished":
            parts.append(event.finished.failure.message)
    return "\n".join(parts)


def no_llm_arm(arm_type: str, capabilities: tuple[str, ...] = ()) -> Arm:
    """An arm that cannot work on this machine: NOT_SERVING from the start."""
    arm = Arm(
        arm_type=arm_type,
        capabilities=(*capabilities, "unavailable:no-llm"),
        description="UNAVAILABLE, no LLM configured",
        available=lambda: False,
    )

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        raise AssertionError("an arm that cannot serve got work")

    return arm


def custom_arm(arm_type: str, capabilities: tuple[str, ...]) -> Arm:
    """A user's own arm that answers with the goal it was given."""
    arm = Arm(arm_type=arm_type, capabilities=capabilities, description="a custom arm")

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        goal = str(inp.input.get("goal", inp.description))
        return {"answer": f"Flow control by credits: {goal}"}

    return arm


async def offline_mesh_with_echo(start_arm: Any, start_orchestrator: Any, tmp_path: Any) -> Any:
    """`octollm dev`'s mesh: every reference arm with no LLM (the coder NOT_SERVING) and echo;
    the orchestrator returned once it knows the coder cannot serve."""
    store = str(tmp_path / "retriever")
    await retriever_arm.ingest(SAMPLE_DOCS, store_path=store)
    arms = [await start_arm(retriever_arm.build(store_path=store))]
    for name in ("planner", "judge", "safety", "executor", "coder", "echo"):
        arms.append(await start_arm(REFERENCE_ARMS[name]()))
    serving = ["retriever", "planner", "judge", "safety", "executor", "echo"]
    orch = await start_orchestrator([a.address for a in arms], wait_for=serving)
    await asyncio.wait_for(orch.mesh.wait_until(lambda: "coder" in orch.mesh.unservable()), 10)
    return orch


async def test_a_code_goal_without_a_serving_coder_fails_naming_the_capability(
    start_arm: Any, start_orchestrator: Any, connect: Any, tmp_path: Any
) -> None:
    """Offline (coder NOT_SERVING, echo connected) a goal whose deliverable is code ends FAILED
    with MISSING_CAPABILITY naming code_generation and the coder's reason; echo ran nothing."""
    orch = await offline_mesh_with_echo(start_arm, start_orchestrator, tmp_path)
    request = pb.SubmitTaskRequest(goal=CODE_GOAL, budget=budget())
    task, events = await finish(connect(orch.address), request)
    assert task.state == pb.TASK_STATE_FAILED, task.failure
    failure = task.failure
    assert (failure.code, failure.reason) == (FAILED_PRECONDITION, "MISSING_CAPABILITY")
    assert "code_generation" in failure.metadata["missing_capabilities"].split(",")
    assert failure.metadata["missing_arm_types"] == "coder"
    assert "not serving" in failure.metadata["arm_status"]
    assert "no-llm" in failure.metadata["arm_status"]
    assert "code_generation" in failure.message
    assert not [s for s in task.subtasks if s.arm_type == "echo"]
    assert "code_generation" in event_text(events)


async def test_echo_and_an_unrelated_arm_run_no_template_step(
    start_arm: Any, start_orchestrator: Any, connect: Any
) -> None:
    """With only echo and a custom arm of another role, a general goal is not run on echo:
    it fails at once naming the roles nobody serves."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    shouter = await start_arm(custom_arm("shouter", ("text", "upper_case")))
    orch = await start_orchestrator([echo.address, shouter.address], wait_for=("echo", "shouter"))
    request = pb.SubmitTaskRequest(goal="Explain what a service mesh does", budget=budget())
    task, events = await finish(connect(orch.address), request)
    assert task.state == pb.TASK_STATE_FAILED, task.failure
    assert task.failure.reason == "MISSING_CAPABILITY"
    assert "retrieval" in task.failure.metadata["missing_capabilities"].split(",")
    assert not task.subtasks
    assert "retrieval" in event_text(events)


async def test_a_custom_arm_with_the_role_serves_it_and_echo_serves_none(
    start_arm: Any, start_orchestrator: Any, connect: Any
) -> None:
    """Echo and a custom arm declaring "search": the research runs on the custom arm, the
    planning and review steps nobody can do are left out with a note, and echo runs nothing."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    finder = await start_arm(custom_arm("finder", ("search",)))
    orch = await start_orchestrator([echo.address, finder.address], wait_for=("echo", "finder"))
    request = pb.SubmitTaskRequest(
        goal="Explain how credit-based flow control works", budget=budget()
    )
    task, events = await finish(connect(orch.address), request)
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    ran = {sub.step_id: sub.arm_type for sub in task.subtasks}
    assert ran == {"research": "finder"}
    assert "echo" not in ran.values()
    executing = next(
        e.state_changed.reason
        for e in events
        if e.state_changed.to_state == pb.TASK_STATE_EXECUTING
    )
    assert "no arm serves 'planner'" in executing, executing


async def test_an_explicit_plan_for_a_not_serving_arm_type_is_refused_at_submit(
    start_arm: Any, start_orchestrator: Any, connect: Any
) -> None:
    """A plan step for an arm type whose arms are connected but cannot serve is
    FAILED_PRECONDITION / ARM_NOT_SERVING at SubmitTask, naming the type and the arm's reason."""
    coder = await start_arm(REFERENCE_ARMS["coder"]())
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([coder.address, echo.address], wait_for=("echo",))
    await asyncio.wait_for(orch.mesh.wait_until(lambda: "coder" in orch.mesh.unservable()), 10)
    plan = pb.Plan()
    plan.steps.add(step_id="ok", arm_type="echo")
    plan.steps.add(step_id="implement", arm_type="coder", depends_on=["ok"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await connect(orch.address).SubmitTask(pb.SubmitTaskRequest(goal=CODE_GOAL, plan=plan))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rpc_status.from_call(caught.value)
    assert status is not None
    info = error_info_of(status)
    assert info is not None
    assert info.reason == "ARM_NOT_SERVING"
    assert info.metadata["arm_type"] == "coder"
    assert info.metadata["field"] == "plan.steps[1].arm_type"
    assert "no-llm" in info.metadata["arm_reason"]
    assert "not serving" in (caught.value.details() or "")


async def test_a_step_whose_only_arm_comes_back_unable_to_serve_fails_at_once(
    start_arm: Any, start_orchestrator: Any, connect: Any
) -> None:
    """A planned step whose arm restarted without what it needs (NOT_SERVING from its start)
    fails with ARM_NOT_SERVING and the arm's reason as soon as it is due, not at the deadline."""
    gate = asyncio.Event()
    waiter = Arm(arm_type="gate", capabilities=("general",))

    @waiter.handler
    async def hold(inp: SubtaskInput) -> dict[str, Any]:
        await gate.wait()
        return {"answer": "open"}

    writer = custom_arm("writer", ("writing",))
    held = await start_arm(waiter)
    first = await writer.start("127.0.0.1:0")
    address = first.address
    orch = await start_orchestrator([held.address, address], wait_for=("gate", "writer"))
    plan = pb.Plan()
    plan.steps.add(step_id="wait", arm_type="gate")
    plan.steps.add(step_id="write", arm_type="writer", depends_on=["wait"])
    stub = connect(orch.address)
    submitted = (
        await stub.SubmitTask(pb.SubmitTaskRequest(goal=CODE_GOAL, plan=plan, budget=budget()))
    ).task
    await first.drain(grace=0)
    second = await start_arm(no_llm_arm("writer", ("writing",)))
    await orch.mesh.remove(address)
    orch.mesh.add(second.address)
    await asyncio.wait_for(orch.mesh.wait_until(lambda: "writer" in orch.mesh.unservable()), 10)
    gate.set()
    call = stub.WatchTask(pb.WatchTaskRequest(task_id=submitted.task_id), timeout=60)
    events = [r.event async for r in call]
    task = (await stub.GetTask(pb.GetTaskRequest(task_id=submitted.task_id))).task
    assert task.state == pb.TASK_STATE_FAILED, task.failure
    step = {s.step_id: s for s in task.subtasks}["write"]
    assert step.state == pb.SUBTASK_STATE_FAILED
    assert (step.failure.code, step.failure.reason) == (FAILED_PRECONDITION, "ARM_NOT_SERVING")
    assert not step.failure.retryable
    assert step.failure.metadata["arm_type"] == "writer"
    assert "no-llm" in step.failure.metadata["arm_reason"]
    assert task.failure.reason == "ARM_NOT_SERVING"
    assert "cannot serve" in event_text(events)


async def test_a_briefly_unavailable_arm_is_waited_for_and_the_log_says_so(
    start_arm: Any, start_orchestrator: Any, connect: Any
) -> None:
    """An arm that served and then reports NOT_SERVING (a dependency down, draining) is briefly
    unavailable: its step waits within the deadline, the event log says so, and it runs once the
    arm serves again."""
    server = await start_arm(custom_arm("writer", ("writing",)))
    orch = await start_orchestrator([server.address], wait_for=("writer",))
    await server.set_serving(False)
    await asyncio.wait_for(
        orch.mesh.wait_until(lambda: "writer" not in orch.mesh.routable_types()), 10
    )
    assert "writer" not in orch.mesh.unservable()
    plan = pb.Plan()
    plan.steps.add(step_id="write", arm_type="writer")
    stub = connect(orch.address)
    task = (
        await stub.SubmitTask(pb.SubmitTaskRequest(goal=CODE_GOAL, plan=plan, budget=budget()))
    ).task
    events: list[pb.TaskEvent] = []
    call = stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=60)
    async for response in call:
        events.append(response.event)
        if "briefly unavailable" in event_text(events[-1:]):
            await server.set_serving(True)
    final = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert final.state == pb.TASK_STATE_SUCCEEDED, final.failure
    assert "briefly unavailable" in event_text(events)


@pytest.mark.parametrize(
    ("goal", "context", "arm_types"),
    [
        ("How does credit-based flow control work?", {}, {"retriever"}),
        (
            "Scan the given text for secrets and personal data",
            {"text": "mail alice@example.com, key AKIAIOSFODNN7EXAMPLE"},
            {"safety"},
        ),
        (
            "Compute the mean of the given numbers with the given code",
            {"python": "numbers = [3, 5, 10]\nprint(sum(numbers) / len(numbers))"},
            {"executor"},
        ),
    ],
)
async def test_goals_the_offline_arms_can_serve_still_succeed(
    start_arm: Any,
    start_orchestrator: Any,
    connect: Any,
    tmp_path: Any,
    goal: str,
    context: dict[str, Any],
    arm_types: set[str],
) -> None:
    """Offline, goals that need no code written (retrieval, a scan of given text, a computation
    whose code is given) still succeed, on the arms of their roles and never on echo."""
    orch = await offline_mesh_with_echo(start_arm, start_orchestrator, tmp_path)
    request = pb.SubmitTaskRequest(goal=goal, budget=budget())
    request.context.update(context)
    task, _ = await finish(connect(orch.address), request)
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    ran = {sub.arm_type for sub in task.subtasks}
    assert arm_types <= ran
    assert not {"echo", "coder"} & ran
    if "python" in context:
        run = next(s for s in task.subtasks if s.arm_type == "executor")
        assert run.output["stdout"] == "6.0\n"
    if "text" in context:
        scan = next(s for s in task.subtasks if s.arm_type == "safety")
        kinds = {f["kind"] for f in scan.output["findings"]}
        assert {"EMAIL", "AWS_ACCESS_KEY"} <= kinds
        # The scan's report is the answer, written by rules, naming kinds and never values.
        assert "- AWS_ACCESS_KEY: 1" in task.result.answer
        assert "- EMAIL: 1" in task.result.answer
        assert "AKIAIOSFODNN7EXAMPLE" not in task.result.answer
        assert "alice@" not in task.result.answer
        assert task.result.answer_source == pb.ANSWER_SOURCE_RULES
        assert task.result.confidence <= 0.5


async def test_a_goal_quoting_the_text_to_scan_is_answered_by_the_scan(
    start_arm: Any, start_orchestrator: Any, connect: Any, tmp_path: Any
) -> None:
    """Offline, a goal that quotes the text to scan for personal data is served by the safety
    arm's scan of that text: the answer names each kind found with its count, repeats no value,
    was written by rules and is trusted at most 0.5."""
    orch = await offline_mesh_with_echo(start_arm, start_orchestrator, tmp_path)
    goal = (
        "Review this HR note for personal data before it is shared outside the team: "
        "'Employee Marco Diaz, SSN 536-22-8401, can be reached on (415) 555-0132 after 5 pm.'"
    )
    task, _ = await finish(connect(orch.address), pb.SubmitTaskRequest(goal=goal, budget=budget()))
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    assert [(s.step_id, s.arm_type) for s in task.subtasks] == [
        ("scan", "safety"),
        ("review", "judge"),
    ]
    assert "- SSN: 1 (US Social Security number), severity high" in task.result.answer
    assert "- PHONE: 1 (phone number (US)), severity medium" in task.result.answer
    assert "536-22-8401" not in task.result.answer
    assert "555-0132" not in task.result.answer
    assert task.result.answer_source == pb.ANSWER_SOURCE_RULES
    assert task.result.confidence <= 0.5
