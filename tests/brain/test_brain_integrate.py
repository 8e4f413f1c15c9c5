"""Deterministic integration: sink answers in plan order, deferral, JSON fallback, confidence."""

from __future__ import annotations

import json

from orchestrator_svc.brain import ExecutionPlan, PlannedStep, answer_steps, integrate


def step(step_id: str, *deps: str, description: str = "") -> PlannedStep:
    return PlannedStep(step_id, description or f"Do {step_id}", "echo", depends_on=deps)


FAN = ExecutionPlan(
    "p",
    (
        step("outline"),
        step("left", "outline"),
        step("right", "outline"),
        step("merge", "left", "right"),
    ),
)
TWO_SINKS = ExecutionPlan(
    "p",
    (
        step("a"),
        step("b", "a", description="Write the code"),
        step("c", "a", description="Write the docs"),
    ),
)


def test_single_sink_answer_is_used_as_is() -> None:
    """One sink with an "answer" field: that text is the answer, confidence the weakest step's."""
    outputs = {"outline": {"text": "o"}, "left": {}, "right": {}, "merge": {"answer": "All done."}}
    result = integrate(
        "goal", FAN, outputs, {"outline": 0.9, "left": 0.7, "right": 1.0, "merge": 0.8}
    )
    assert result.answer == "All done."
    assert result.confidence == 0.7
    assert result.notes == ()


def test_several_sinks_get_headings_in_plan_order() -> None:
    """Several sinks: each under a heading (its description), in plan order; code is fenced."""
    outputs = {
        "a": {},
        "c": {"summary": "Docs written."},
        "b": {"summary": "Added login.", "code": "def f(): ..."},
    }
    result = integrate("goal", TWO_SINKS, outputs, {"a": 1.0, "b": 1.0, "c": 1.0})
    assert result.answer == (
        "## Write the code\n\nAdded login.\n\n```\ndef f(): ...\n```\n\n"
        "## Write the docs\n\nDocs written."
    )


def test_sink_without_text_defers_to_its_dependencies() -> None:
    """A verdict-only sink (a judge) defers to its nearest ancestors that carry answer text."""
    plan = ExecutionPlan(
        "p", (step("research"), step("compose", "research"), step("review", "compose"))
    )
    outputs = {
        "research": {"text": "facts"},
        "compose": {"answer": "The mesh fans out."},
        "review": {"verdict": "pass"},
    }
    assert answer_steps(plan, outputs) == ["compose"]
    result = integrate("goal", plan, outputs, {"research": 1.0, "compose": 0.9, "review": 1.0})
    assert result.answer == "The mesh fans out."
    assert result.notes == ("answer taken from compose (sinks carry no answer text)",)


def test_no_answer_fields_falls_back_to_compact_json() -> None:
    """With no answer-bearing field anywhere (echo arms), the sink's output is compact JSON."""
    outputs = {
        "outline": {"echo": 1},
        "left": {"echo": 2},
        "right": {"echo": 3},
        "merge": {"echo": {"b": 1, "a": 2}},
    }
    result = integrate("goal", FAN, outputs, {})
    assert result.answer == '{"echo":{"a":2,"b":1}}'
    assert json.loads(result.answer) == {"echo": {"a": 2, "b": 1}}
    assert result.confidence == 0.0
    assert "JSON" in result.notes[0]


def test_json_of_several_sinks_is_keyed_by_step() -> None:
    """Several sinks without answer text render as one JSON object keyed by step id."""
    outputs = {"a": {"x": 1}, "b": {"y": 2}, "c": {"z": 3}}
    assert integrate("g", TWO_SINKS, outputs, {}).answer == '{"b":{"y":2},"c":{"z":3}}'


def test_long_answers_are_truncated_with_a_note() -> None:
    """The answer is bounded by max_chars and the notes say it was cut."""
    outputs = {"a": {}, "b": {"answer": "x" * 100}, "c": {}}
    plan = ExecutionPlan("p", (step("a"), step("b", "a")))
    result = integrate("g", plan, outputs, {}, max_chars=40)
    assert len(result.answer) == 40
    assert result.answer.endswith("(truncated)")
    assert "truncated" in result.notes[-1]


def test_no_outputs_is_an_empty_answer() -> None:
    """Nothing succeeded: empty answer, zero confidence, a note."""
    result = integrate("g", FAN, {}, {})
    assert (result.answer, result.confidence) == ("", 0.0)
    assert result.notes == ("no step produced output",)


def test_a_judge_verdict_at_the_end_does_not_become_the_answer() -> None:
    """A sink that only judges (passed + checks) hands the answer to the step it judged."""
    plan = ExecutionPlan(
        plan_id="p",
        steps=(
            PlannedStep(step_id="write", description="write", arm_type="writer"),
            PlannedStep(
                step_id="review", description="review", arm_type="judge", depends_on=("write",)
            ),
        ),
    )
    outputs = {
        "write": {"answer": "Credits bound the work in flight."},
        "review": {"passed": True, "checks": [], "answer": "PASS: 0 of 0 checks"},
    }
    assert answer_steps(plan, outputs) == ["write"]
    assert "Credits bound" in integrate("goal", plan, outputs, {}).answer
