"""Built-in validation rules, the report's score, and which sink steps to re-run."""

from __future__ import annotations

import pytest

from orchestrator_svc.brain import validate
from orchestrator_svc.brain.validate import check_criterion


@pytest.mark.parametrize(
    ("criterion", "text", "passed", "rule"),
    [
        ("contains 'mesh'", "A service MESH routes calls", True, "present"),
        (
            "Mentions the authentication bug",
            "fixed an authentication bug in login",
            True,
            "present",
        ),
        ('includes "retry policy"', "it retries with a policy", False, "present"),
        ("includes the word retry", "we retry twice", True, "present"),
        ("mentions Kubernetes", "runs on docker", False, "present"),
        ("must not mention passwords", "rotated the keys", True, "absent"),
        ("does not contain 'secret'", "the Secret is hunter2", False, "absent"),
        ("at least 5 words", "one two three four five", True, "count"),
        ("at least 5 words", "one two three", False, "count"),
        ("at most 2 lines", "a\nb\nc", False, "count"),
        ("at least 3 items", "- a\n- b\n* c", True, "count"),
        ("at least 2 items", "1. first\n2) second", True, "count"),
        ("at least 2 items", '["a", "b"]', True, "count"),
        ("no more than 10 characters", "short", True, "count"),
        ("at least 2 sentences", "One. Two!", True, "count"),
        ("valid JSON", '```json\n{"a": 1}\n```', True, "json"),
        ("returns valid JSON", "{a: 1}", False, "json"),
        ("no TODO", "done", True, "no_todo"),
        ("no TODOs left", "x = 1  # TODO: later", False, "no_todo"),
        ("answer is not empty", "  ", False, "non_empty"),
        ("explains the retry backoff policy", "Retries use exponential backoff.", True, "overlap"),
        ("explains the retry backoff policy", "It is fast.", False, "overlap"),
        ("should be clear and concise", "anything", True, "overlap"),
    ],
)
def test_criterion_rules(criterion: str, text: str, passed: bool, rule: str) -> None:
    """Each criterion is read by the right rule and judged as expected."""
    check = check_criterion(text, criterion)
    assert (check.rule, check.passed) == (rule, passed), check.detail
    assert bool(check.detail) != passed or rule == "overlap"


def test_report_passes_when_every_check_passes() -> None:
    """All criteria met: passed, score 1.0, no issues, nothing to re-run."""
    report = validate(
        "The mesh retries twice.", {"s": {"answer": "The mesh retries twice."}}, ["mentions mesh"]
    )
    assert (report.passed, report.score, report.issues, report.failing_steps) == (True, 1.0, (), ())


def test_empty_answer_fails() -> None:
    """An empty answer always fails, even with no criteria."""
    report = validate("", {"s": {}}, [])
    assert not report.passed
    assert report.score == 0.0
    assert report.issues == ("'answer is not empty' failed: is empty",)
    assert report.failing_steps == ("s",)


def test_failing_steps_are_the_sinks_whose_output_fails() -> None:
    """Only sink steps whose own output fails a failed criterion are named for re-running."""
    outputs = {
        "research": {"text": "nothing about it"},
        "code": {"answer": "def login(): ..."},
        "docs": {"answer": "Login docs"},
    }
    answer = "## code\n\ndef login(): ...\n\n## docs\n\nLogin docs"
    report = validate(
        answer, outputs, ["mentions pytest", "at least 3 words"], sinks=["code", "docs"]
    )
    assert not report.passed
    assert report.score == pytest.approx(2 / 3)
    assert report.issues == ("'mentions pytest' failed: does not mention 'pytest'",)
    assert report.failing_steps == ("code", "docs")
    partly = validate(
        answer,
        {**outputs, "docs": {"answer": "run pytest"}},
        ["mentions pytest"],
        sinks=["code", "docs"],
    )
    assert partly.failing_steps == ("code",)


def test_merge_failure_blames_every_sink() -> None:
    """When the answer fails but each sink passes alone, every sink is named."""
    outputs = {"a": {"answer": "one two"}, "b": {"answer": "three four"}}
    report = validate("one two three four", outputs, ["at most 2 words"], sinks=["a", "b"])
    assert report.failing_steps == ("a", "b")


def test_missing_sink_output_is_blamed() -> None:
    """A sink with no output at all is named as failing."""
    report = validate("x", {"a": {"answer": "x"}}, ["mentions y"], sinks=["a", "b"])
    assert report.failing_steps == ("a", "b")
