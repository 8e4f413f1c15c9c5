"""The judge arm over real gRPC: JSON Schema, criteria rules, fact consistency, LLM verdicts."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.arms import echo, judge
from tests.arm_sdk.arm_stream import output_of
from tests.arms.llm_arm_harness import (
    OpenStream,
    StartLLM,
    assert_true_to_schema,
    failure_of,
    run,
)
from tests.llm.fake_openai import completion

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "count": {"type": "integer", "minimum": 0}},
    "required": ["name", "count"],
}
CONTEXT = (
    "The mesh was released in 2021 by Acme Labs. In production it handles 1,000 requests per "
    "second on 3 nodes in Zurich."
)


async def verdict(stream: Any, descriptor: arm_pb.ArmDescriptor, payload: dict[str, Any]) -> Any:
    """Judge `payload`; the verdict must be true to the judge's output schema."""
    message = await run(stream, payload)
    output = output_of(message)
    assert_true_to_schema(descriptor, output)
    return output


def rules(output: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    return {c["criterion"]: (c["rule"], c["passed"]) for c in output["checks"]}


def test_descriptor() -> None:
    """The judge declares its validation capabilities and both schemas; cheap without an LLM."""
    descriptor = judge.build().descriptor()
    assert descriptor.arm_type == "judge"
    assert {"validation", "json_schema", "fact_consistency"} <= set(descriptor.capabilities)
    assert descriptor.cost_tier == arm_pb.COST_TIER_LOW
    inputs = json_format.MessageToDict(descriptor.input_schema)
    assert {"output", "criteria", "schema", "context"} <= set(inputs["properties"])


async def test_schema_pass(open_stream: OpenStream) -> None:
    """An output matching the schema passes with score 1 and a schema check."""
    stream, descriptor = await open_stream(judge.build())
    output = await verdict(
        stream, descriptor, {"output": {"name": "a", "count": 3}, "schema": SCHEMA}
    )
    assert (output["passed"], output["score"], output["issues"]) == (True, 1.0, [])
    assert rules(output)["matches the JSON schema"] == ("schema", True)
    assert output["answer"] == "PASS: 2 of 2 checks passed"


async def test_schema_fail_names_every_violation(open_stream: OpenStream) -> None:
    """Each schema violation is an issue with its path; the verdict fails with a partial score."""
    stream, descriptor = await open_stream(judge.build())
    output = await verdict(
        stream, descriptor, {"output": {"name": 5, "count": -1}, "schema": SCHEMA}
    )
    assert output["passed"] is False
    assert output["score"] == 0.5
    assert output["issues"] == [
        "schema: at /count: -1 is less than the minimum of 0",
        "schema: at /name: 5 is not of type 'string'",
    ]
    assert output["answer"].startswith("FAIL: 1 of 2 checks passed\n- schema: at /count")


@pytest.mark.parametrize(
    ("value", "passed"),
    [
        ('{"name": "a", "count": 1}', True),
        ('```json\n{"name": "a", "count": 1}\n```', True),
        ("name a", False),
    ],
)
async def test_string_output_is_checked_as_its_json(
    open_stream: OpenStream, value: str, passed: bool
) -> None:
    """A string output that parses as JSON (fenced or not) is checked as that JSON."""
    stream, descriptor = await open_stream(judge.build())
    output = await verdict(stream, descriptor, {"output": value, "schema": SCHEMA})
    assert rules(output)["matches the JSON schema"] == ("schema", passed)


async def test_criteria_rules_pass(open_stream: OpenStream) -> None:
    """Criteria are read by the brain's rules: present, absent, count, no-TODO."""
    stream, descriptor = await open_stream(judge.build())
    output = await verdict(
        stream,
        descriptor,
        {
            "output": "The mesh retries twice with exponential backoff.",
            "criteria": [
                "mentions backoff",
                "must not mention passwords",
                "at most 2 sentences",
                "no TODO",
            ],
        },
    )
    assert output["passed"] is True
    assert rules(output) == {
        "answer is not empty": ("non_empty", True),
        "mentions backoff": ("present", True),
        "must not mention passwords": ("absent", True),
        "at most 2 sentences": ("count", True),
        "no TODO": ("no_todo", True),
    }


async def test_criteria_rules_fail(open_stream: OpenStream) -> None:
    """Failed criteria become issues and lower the score; constraints count as criteria."""
    stream, descriptor = await open_stream(judge.build())
    output = await verdict(
        stream,
        descriptor,
        {
            "output": {"answer": "Retries use backoff. TODO: jitter"},
            "criteria": ["at least 50 words", "contains 'circuit breaker'"],
            "constraints": ["no TODO"],
        },
    )
    assert output["passed"] is False
    assert output["score"] == 0.25
    assert output["issues"] == [
        "'at least 50 words' failed: has 5 words",
        "\"contains 'circuit breaker'\" failed: does not mention 'circuit breaker'",
        "'no TODO' failed: has TODO",
    ]


async def test_empty_output_fails(open_stream: OpenStream) -> None:
    """A null or blank output fails the non-empty check (a verdict, not an error)."""
    stream, descriptor = await open_stream(judge.build())
    for value in (None, "   "):
        output = await verdict(stream, descriptor, {"output": value})
        assert output["passed"] is False
        assert rules(output)["answer is not empty"] == ("non_empty", False)


async def test_facts_supported_by_the_context_pass(open_stream: OpenStream) -> None:
    """Numbers (by value) and names that the context contains pass; list markers are ignored."""
    stream, descriptor = await open_stream(judge.build())
    text = (
        "Acme Labs released the mesh in 2021.\n"
        "1. It handles 1000 requests per second.\n"
        "2. It runs on 3.0 nodes in Zurich."
    )
    output = await verdict(stream, descriptor, {"output": text, "context": CONTEXT})
    assert output["passed"] is True, output["issues"]
    assert rules(output)["consistent with the context"] == ("facts", True)


async def test_unsupported_facts_are_flagged(open_stream: OpenStream) -> None:
    """Numbers and capitalised names missing from the context fail the facts check."""
    stream, descriptor = await open_stream(judge.build())
    output = await verdict(
        stream,
        descriptor,
        {
            "output": {"summary": "It was released in 2019 by Globex Corp in Zurich.", "nodes": 5},
            "context": CONTEXT,
        },
    )
    assert output["passed"] is False
    assert output["issues"] == ["not supported by the context: numbers 5, 2019; names Globex Corp"]


async def test_no_context_no_facts_check(open_stream: OpenStream) -> None:
    """Without a context the facts check is not run."""
    stream, descriptor = await open_stream(judge.build())
    output = await verdict(stream, descriptor, {"output": "Built in 1999 by Initech."})
    assert "consistent with the context" not in rules(output)
    assert output["passed"] is True


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "output"),
        ({"criteria": ["x"]}, "output"),
        ({"output": "x", "criteria": "mentions x"}, "criteria"),
        ({"output": "x", "schema": "object"}, "schema"),
        ({"output": "x", "schema": {"type": "nonsense"}}, "schema"),
        ({"output": "x", "schema": {"$ref": "https://example.com/remote.json"}}, "schema"),
        ({"output": "x", "context": 7}, "context"),
    ],
)
async def test_bad_input_is_refused(
    open_stream: OpenStream, payload: dict[str, Any], field: str
) -> None:
    """Nothing to judge, mistyped fields and unusable schemas fail BAD_INPUT naming the field;
    the arm keeps serving."""
    stream, _ = await open_stream(judge.build())
    failure = failure_of(await run(stream, payload))
    assert (failure.code, failure.reason, failure.retryable) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "BAD_INPUT",
        False,
    )
    assert failure.metadata["field"] == field
    assert output_of(await run(stream, {"output": "fine"}))["passed"] is True


async def test_llm_judges_a_vague_criterion(open_stream: OpenStream, start_llm: StartLLM) -> None:
    """With an LLM, a criterion no rule reads precisely is judged by the model; precise ones stay
    with the rules; the tokens are reported."""
    verdicts = {"verdicts": [{"passed": False, "reason": "it gives no evidence"}]}
    fake, client = await start_llm([completion(verdicts, prompt_tokens=50, completion_tokens=10)])
    arm = judge.build(llm=client)
    assert arm.descriptor().cost_tier == arm_pb.COST_TIER_MEDIUM
    stream, descriptor = await open_stream(arm)
    message = await run(
        stream,
        {
            "output": "The mesh is great.",
            "criteria": ["mentions mesh", "convinces a skeptical engineer with evidence"],
        },
    )
    output = output_of(message)
    assert_true_to_schema(descriptor, output)
    assert rules(output) == {
        "answer is not empty": ("non_empty", True),
        "mentions mesh": ("present", True),
        "convinces a skeptical engineer with evidence": ("llm", False),
    }
    assert output["issues"] == [
        "'convinces a skeptical engineer with evidence' failed: it gives no evidence"
    ]
    assert message.result.provenance.usage.tokens == 60
    (request,) = fake.requests
    prompt = request["messages"][1]["content"]
    assert "1. convinces a skeptical engineer with evidence" in prompt
    assert "mentions mesh" not in prompt


async def test_llm_failure_falls_back_to_rules(
    open_stream: OpenStream, start_llm: StartLLM
) -> None:
    """When the LLM cannot judge, the rules decide and a note says so."""
    _, client = await start_llm([completion("no opinion")])
    stream, descriptor = await open_stream(judge.build(llm=client))
    output = await verdict(
        stream,
        descriptor,
        {"output": "Retries use exponential backoff.", "criteria": ["explains the retry backoff"]},
    )
    assert rules(output)["explains the retry backoff"] == ("overlap", True)
    assert any("rules only" in note for note in output["notes"])


async def test_judge_step_reviews_its_dependencies(
    start_arm: Any, start_orchestrator: Any, connect: Any
) -> None:
    """As a plan step with no input.output, the judge judges the output of the step it depends
    on, and its verdict passes the orchestrator's output-schema check."""
    echo_server = await start_arm(echo.build())
    judge_server = await start_arm(judge.build())
    orch = await start_orchestrator(
        [echo_server.address, judge_server.address], wait_for=("echo", "judge")
    )
    stub = connect(orch.address)
    plan = pb.Plan()
    plan.steps.add(step_id="draft", arm_type="echo").input.update({"text": "the mesh retries"})
    plan.steps.add(step_id="review", arm_type="judge", depends_on=["draft"]).input.update(
        {"criteria": ["mentions retries", "does not mention passwords"]}
    )
    goal = "Say what the mesh does on failure"
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=goal, plan=plan))).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    task = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    review = next(s for s in task.subtasks if s.step_id == "review")
    output = json_format.MessageToDict(review.output)
    assert output["passed"] is True, output["issues"]
    assert [c["criterion"] for c in output["checks"]] == [
        "answer is not empty",
        "mentions retries",
        "does not mention passwords",
    ]


def test_names_in_skips_sentence_starts() -> None:
    """A sentence's first word is not a name alone; runs of capitalised words are one name."""
    text = "Paris is big. In New York, Ada Lovelace met NASA staff. Marie Curie won."
    assert list(judge.names_in(text)) == ["New York", "Ada Lovelace", "NASA", "Curie"]
