"""The planner arm over real gRPC: heuristic plans, LLM plans (fake OpenAI server), bad input."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.arms import planner
from orchestrator_svc.brain import PlannedStep
from tests.arm_sdk.arm_stream import output_of
from tests.arms.llm_arm_harness import (
    OpenStream,
    StartLLM,
    assert_true_to_schema,
    failure_of,
    run,
)
from tests.llm.fake_openai import completion

CANONICAL = {"planner", "retriever", "coder", "executor", "judge", "safety"}
GOAL = "Fix the authentication bug in auth/login.py and add a regression test"
LLM_PLAN = {
    "rationale": "find it, fix it, check it",
    "steps": [
        {"step_id": "find_code", "description": "Find the login code", "arm_type": "retriever"},
        {
            "step_id": "fix_bug",
            "description": "Fix the bug",
            "arm_type": "coder",
            "depends_on": ["find_code"],
        },
        {
            "step_id": "check_fix",
            "description": "Check the fix",
            "arm_type": "judge",
            "depends_on": ["fix_bug"],
        },
    ],
}


def assert_dag(steps: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for step in steps:
        assert set(step["depends_on"]) <= seen, step
        seen.add(step["step_id"])


def test_descriptor_declares_schemas_and_cost() -> None:
    """Without an LLM the planner is a low-cost heuristic planner with both schemas declared."""
    descriptor = planner.build().descriptor()
    assert descriptor.arm_type == "planner"
    assert tuple(descriptor.capabilities) == ("planning", "decomposition", "reasoning")
    assert descriptor.cost_tier == arm_pb.COST_TIER_LOW
    assert "heuristic" in descriptor.description
    inputs = json_format.MessageToDict(descriptor.input_schema)
    assert set(inputs["properties"]) == {"goal", "constraints", "max_steps"}
    assert descriptor.output_schema.fields


async def test_heuristic_plan_over_canonical_arms(open_stream: OpenStream) -> None:
    """A goal becomes a dependency-ordered plan over canonical arm types, with a numbered text."""
    stream, descriptor = await open_stream(planner.build())
    message = await run(stream, {"goal": GOAL, "constraints": ["Don't touch the schema"]})
    output = output_of(message)
    assert_true_to_schema(descriptor, output)
    assert output["source"] == "heuristic"
    steps = output["steps"]
    assert 2 <= len(steps) <= 7
    assert {s["arm_type"] for s in steps} <= CANONICAL
    assert "coder" in {s["arm_type"] for s in steps}
    assert_dag(steps)
    lines = output["answer"].splitlines()
    assert lines[0] == f"Plan for: {GOAL}"
    assert lines[1].startswith(f"1. [{steps[0]['arm_type']}] {steps[0]['step_id']}: ")
    assert len(lines) == 1 + len(steps)
    assert message.result.provenance.usage.tokens == 0


async def test_goal_defaults_to_the_description(open_stream: OpenStream) -> None:
    """With no input.goal the dispatch description is planned."""
    stream, _ = await open_stream(planner.build())
    description = "Explain how a service mesh handles retries and timeouts"
    output = output_of(await run(stream, {}, description=description))
    assert output["answer"].startswith(f"Plan for: {description}\n")
    assert output["steps"]


@pytest.mark.parametrize("max_steps", [1, 2, 4])
async def test_max_steps_caps_the_plan(open_stream: OpenStream, max_steps: int) -> None:
    """No plan is longer than max_steps; kept steps only depend on kept steps."""
    stream, descriptor = await open_stream(planner.build())
    goal = (
        "Audit the payment service for security issues, then refactor the retry logic in "
        "payments/client.py, write tests, run them, and document the changes for the team"
    )
    output = output_of(await run(stream, {"goal": goal, "max_steps": max_steps}))
    assert_true_to_schema(descriptor, output)
    assert 1 <= len(output["steps"]) <= max_steps
    assert_dag(output["steps"])


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "goal"),
        ({"goal": "   "}, "goal"),
        ({"goal": "x" * 2001}, "goal"),
        ({"goal": GOAL, "max_steps": 0}, "max_steps"),
        ({"goal": GOAL, "max_steps": 21}, "max_steps"),
        ({"goal": GOAL, "max_steps": "many"}, "max_steps"),
        ({"goal": GOAL, "constraints": "be quick"}, "constraints"),
        ({"goal": 42}, "goal"),
    ],
)
async def test_bad_input_is_refused(
    open_stream: OpenStream, payload: dict[str, Any], field: str
) -> None:
    """Missing, empty, oversized or mistyped fields fail INVALID_ARGUMENT/BAD_INPUT naming the
    field, and are not retried."""
    stream, _ = await open_stream(planner.build())
    failure = failure_of(await run(stream, payload))
    assert (failure.code, failure.reason, failure.retryable) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "BAD_INPUT",
        False,
    )
    assert failure.metadata["field"] == field
    # The arm keeps serving after bad input.
    assert output_of(await run(stream, {"goal": GOAL}))["steps"]


async def test_llm_plan_is_used(open_stream: OpenStream, start_llm: StartLLM) -> None:
    """With an LLM the model's plan is returned (source llm) and its usage is reported."""
    fake, client = await start_llm([completion(LLM_PLAN, prompt_tokens=300, completion_tokens=100)])
    arm = planner.build(llm=client)
    assert arm.descriptor().cost_tier == arm_pb.COST_TIER_MEDIUM
    stream, descriptor = await open_stream(arm)
    message = await run(stream, {"goal": GOAL, "constraints": ["Keep the public API"]})
    output = output_of(message)
    assert_true_to_schema(descriptor, output)
    assert output["source"] == "llm"
    assert [(s["step_id"], s["arm_type"], s["depends_on"]) for s in output["steps"]] == [
        ("find_code", "retriever", []),
        ("fix_bug", "coder", ["find_code"]),
        ("check_fix", "judge", ["fix_bug"]),
    ]
    assert output["answer"].splitlines()[:3] == [
        f"Plan for: {GOAL}",
        "Why: find it, fix it, check it",
        "1. [retriever] find_code: Find the login code",
    ]
    assert output["answer"].splitlines()[4] == "3. [judge] check_fix: Check the fix (after 2)"
    assert message.result.provenance.model == "fake-model"
    assert message.result.provenance.usage.tokens == 400
    (request,) = fake.requests
    prompt = request["messages"][1]["content"]
    assert GOAL in prompt
    assert "Keep the public API" in prompt


async def test_llm_plan_longer_than_max_steps_is_cut(
    open_stream: OpenStream, start_llm: StartLLM
) -> None:
    """An LLM plan over max_steps keeps its first steps and names the dropped ones."""
    _, client = await start_llm([completion(LLM_PLAN)])
    stream, _ = await open_stream(planner.build(llm=client))
    output = output_of(await run(stream, {"goal": GOAL, "max_steps": 2}))
    assert [s["step_id"] for s in output["steps"]] == ["find_code", "fix_bug"]
    assert any("dropped check_fix" in note for note in output["notes"])


async def test_llm_nonsense_falls_back_to_heuristics(
    open_stream: OpenStream, start_llm: StartLLM
) -> None:
    """When the LLM answers nonsense the heuristic planner plans, and the notes say why."""
    _, client = await start_llm([completion("I would rather not plan today.")])
    stream, descriptor = await open_stream(planner.build(llm=client))
    output = output_of(await run(stream, {"goal": GOAL}))
    assert_true_to_schema(descriptor, output)
    assert output["source"] == "heuristic"
    assert output["steps"]
    assert any("heuristic planner" in note for note in output["notes"])


async def test_planner_step_in_an_orchestrated_task(
    start_arm: Any, start_orchestrator: Any, connect: Any
) -> None:
    """Dispatched by the orchestrator as a plan step, the planner's output passes its schema;
    a heuristic plan of the mesh's own steps is no answer to the goal, so the task fails."""
    server = await start_arm(planner.build())
    orch = await start_orchestrator([server.address], wait_for=("planner",))
    stub = connect(orch.address)
    plan = pb.Plan()
    plan.steps.add(step_id="plan", arm_type="planner").input.update({"goal": GOAL})
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=plan))).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    task = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert task.state == pb.TASK_STATE_FAILED
    assert task.failure.reason == "VALIDATION_FAILED"
    assert "restates the goal or the plan" in task.failure.message
    (sub,) = task.subtasks
    assert sub.state == pb.SUBTASK_STATE_SUCCEEDED
    output = json_format.MessageToDict(sub.output)
    assert output["source"] == "heuristic"
    assert task.result.answer.startswith(f"Plan for: {GOAL}")


def test_first_steps_keeps_dependency_order() -> None:
    """first_steps orders steps after their dependencies before cutting the tail."""
    steps = [
        PlannedStep("b", "second", "coder", depends_on=("a",)),
        PlannedStep("a", "first", "retriever"),
        PlannedStep("c", "third", "judge", depends_on=("b",)),
    ]
    kept, dropped = planner.first_steps(steps, 2)
    assert [s.step_id for s in kept] == ["a", "b"]
    assert dropped == ["c"]
