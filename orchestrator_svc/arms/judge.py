"""The judge arm: checks an output against acceptance criteria, a JSON schema and given facts.

Input: ``{"output": any, "criteria": [str], "schema": JSON Schema (optional), "context": str
(optional facts)}``. As an orchestrator plan step (no ``output``) it judges the outputs of the
steps it depends on (``dependencies``: the one output, or all of them keyed by step id), and an
orchestrator step's ``constraints`` count as criteria too. Output: ``{"passed", "score" (share of
checks passed), "issues", "checks": [{"criterion", "passed", "rule", "detail"}], "answer" (the
verdict in words), "notes"}``.

The checks:

- schema (rule ``schema``): the output validates against ``schema`` (jsonschema, the draft its
  ``$schema`` names, 2020-12 by default; remote ``$ref`` is never fetched). A string output that
  fails as a string but parses as JSON is checked as that JSON. A schema that is not a valid
  schema is the caller's mistake: INVALID_ARGUMENT/BAD_INPUT.
- criteria: the brain's validator (``orchestrator_svc.brain.validate``), which also requires a
  non-empty output; with an LLM configured, criteria no rule reads precisely (the keyword-overlap
  fallback) are judged by the LLM (``LLMValidator``, rule ``llm``), and rules decide again when
  the LLM fails. The text checked is the output itself when it is a string; for an object, its
  ``answer``/``text``/``summary``/``code`` fields when it has any, else its JSON.
- facts (rule ``facts``, only when ``context`` is given): every number and capitalised name in
  the output must appear in the context. Numbers are compared by value (``1,000`` = ``1000`` =
  ``1000.0``), ignoring list markers (``1.`` at the start of a line) and digits inside words
  (``v2``, ``H2O``). A name is a run of capitalised words (``Ada Lovelace``, ``NASA``); the first
  word of a sentence is not taken as a name on its own (``Paris is ...`` is not checked, ``In
  Paris ...`` is), and a name is supported when each of its words appears in the context (case
  ignored). Object outputs are checked on their string and number values, not their keys.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any

import structlog
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field
from referencing.exceptions import Unresolvable

from arm_sdk import Arm, SubtaskInput, SubtaskOutput
from orchestrator_svc.arms._input import bad_input, parse_input
from orchestrator_svc.arms._llm import (
    EndpointWatch,
    limits_for,
    llm_client_from_env,
    output_with_usage,
)
from orchestrator_svc.brain import CriterionCheck, LLMValidator, validate
from orchestrator_svc.llm import (
    NO_LIMITS,
    NO_USAGE,
    CallLimits,
    JSONCompleter,
    LLMError,
    LLMUnavailable,
    LLMUsage,
)

log = structlog.get_logger(__name__)

MAX_SCHEMA_ISSUES = 10
MAX_LISTED_FACTS = 10
_ANSWER_FIELDS = ("answer", "text", "summary", "code")


class JudgeInput(BaseModel):
    """What the judge reads from a dispatch's input (``output`` is read as it comes)."""

    model_config = ConfigDict(extra="ignore")

    output: Any = Field(None, description="what to judge: any JSON value")
    criteria: list[Annotated[str, Field(max_length=1000)]] = Field(default=[], max_length=50)
    schema_: dict[str, Any] | None = Field(
        None, alias="schema", description="JSON Schema the output must match"
    )
    context: str = Field("", max_length=500_000, description="facts the output must agree with")
    constraints: list[Annotated[str, Field(max_length=1000)]] = Field(default=[], max_length=20)
    dependencies: dict[str, Any] = Field(default={}, description="earlier steps' outputs")


class CheckOut(BaseModel):
    """One check and its outcome."""

    criterion: str
    passed: bool
    rule: str
    detail: str


class JudgeOutput(BaseModel):
    """The verdict."""

    passed: bool
    score: float = Field(ge=0, le=1)
    issues: list[str]
    checks: list[CheckOut]
    answer: str
    notes: list[str]


def build(
    arm_id: str | None = None,
    *,
    llm: JSONCompleter | None = None,
    check_interval_s: float | None = None,
) -> Arm:
    """A new judge arm; ``llm`` None takes the LLM from ``OCTOLLM_LLM_*`` (if any).

    Its endpoint is checked at start and every ``check_interval_s`` (default
    ``OCTOLLM_LLM_CHECK_INTERVAL_S``); while it is not usable the judge keeps serving and checks
    by rules alone, saying so in ``notes``."""
    owned = llm_client_from_env() if llm is None else None
    client: JSONCompleter | None = llm if llm is not None else owned
    how = f"rules, and {client.model} for vague criteria" if client is not None else "rules"
    arm = Arm(
        arm_type="judge",
        description=(
            f"Checks an output against acceptance criteria ({how}), a JSON schema and the "
            "facts in a context"
        ),
        capabilities=("validation", "review", "quality", "json_schema", "fact_consistency"),
        max_concurrency=32,
        cost_tier="medium" if client is not None else "low",
        version="0.1.0",
        input_schema=JudgeInput.model_json_schema(),
        output_schema=JudgeOutput.model_json_schema(),
        arm_id=arm_id,
    )
    if owned is not None:
        arm.on_stop(owned.aclose)  # opened here, so closed here; a given `llm` is the caller's
    validator = LLMValidator(client) if client is not None else None
    watch = None
    if client is not None:
        watch = EndpointWatch(client, required=False, interval_s=check_interval_s)
        watch.attach(arm)

    @arm.handler
    async def judge(inp: SubtaskInput) -> SubtaskOutput:
        # NOTE: protobuf Structs carry every number as a double; 3 comes back as 3.0.
        raw = whole_numbers(inp.input)
        request = parse_input(JudgeInput, raw)
        output = _judged_output(raw, request)
        criteria = list(dict.fromkeys(c for c in (*request.criteria, *request.constraints)))
        checks: list[CheckOut] = []
        issues: list[str] = []
        if request.schema_ is not None:
            schema_check, schema_issues = check_schema(output, request.schema_)
            checks.append(schema_check)
            issues.extend(schema_issues)
        text = judged_text(output)
        skipped = watch is not None and not watch.usable
        criteria_checks, usage, notes = await _check_criteria(
            None if skipped else validator, text, criteria, watch, limits_for(inp)
        )
        if watch is not None and skipped:
            notes.insert(0, f"LLM skipped: {watch.status.reason}; checked the criteria by rules")
        checks.extend(criteria_checks)
        issues.extend(
            f"{c.criterion!r} failed: {c.detail}" for c in criteria_checks if not c.passed
        )
        if request.context.strip():
            facts = check_facts(output, request.context)
            checks.append(facts)
            if not facts.passed:
                issues.append(f"not supported by the context: {facts.detail}")
        passed_count = sum(c.passed for c in checks)
        verdict = JudgeOutput(
            passed=passed_count == len(checks),
            score=passed_count / len(checks) if checks else 1.0,
            issues=issues,
            checks=checks,
            answer=_verdict_text(passed_count, len(checks), issues),
            notes=notes,
        )
        log.info(
            "output_judged",
            subtask_id=inp.subtask_id,
            passed=verdict.passed,
            score=round(verdict.score, 3),
            checks=len(checks),
        )
        judged_by_llm = any(c.rule == "llm" for c in checks)
        return output_with_usage(verdict.model_dump(), usage, heuristic=not judged_by_llm)

    return arm


def _judged_output(raw: Mapping[str, Any], request: JudgeInput) -> Any:
    if "output" in raw:
        return request.output
    if request.dependencies:
        if len(request.dependencies) == 1:
            return next(iter(request.dependencies.values()))
        return request.dependencies
    raise bad_input("nothing to judge: give input.output (or run after other steps)", "output")


async def _check_criteria(
    validator: LLMValidator | None,
    text: str,
    criteria: Sequence[str],
    watch: EndpointWatch | None = None,
    limits: CallLimits = NO_LIMITS,
) -> tuple[list[CheckOut], LLMUsage, list[str]]:
    """The brain's checks of ``text``: by LLM for vague criteria when there is one, else rules."""
    usage, notes = NO_USAGE, []
    report = None
    if validator is not None:
        try:
            report, usage = await validator.validate(text, {}, criteria, sinks=(), limits=limits)
        except LLMError as exc:
            usage = exc.usage or NO_USAGE
            notes.append(f"{exc}; checked the criteria by rules only")
            if isinstance(exc, LLMUnavailable) and watch is not None:
                watch.suspect()
    if report is None:
        report = validate(text, {}, criteria, sinks=())
    return [_check_out(c) for c in report.checks], usage, notes


def _check_out(check: CriterionCheck) -> CheckOut:
    return CheckOut(
        criterion=check.criterion, passed=check.passed, rule=check.rule, detail=check.detail
    )


def _verdict_text(passed: int, total: int, issues: Sequence[str]) -> str:
    head = f"{'PASS' if passed == total else 'FAIL'}: {passed} of {total} checks passed"
    if not issues:
        return head
    return head + "\n" + "\n".join(f"- {issue}" for issue in issues)


# -- schema ----------------------------------------------------------------------------------


def check_schema(output: Any, schema: dict[str, Any]) -> tuple[CheckOut, list[str]]:
    """The schema check and one issue per violation (at most MAX_SCHEMA_ISSUES)."""
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise bad_input(
            f"input.schema is not a valid JSON Schema: {exc.message}", "schema"
        ) from None
    validator = cls(schema)
    try:
        errors = _schema_errors(validator, output)
        if errors and isinstance(output, str):
            parsed = _parsed_json(output)
            if parsed is not None:
                errors = _schema_errors(validator, parsed[0])
    except Unresolvable as exc:
        raise bad_input(
            f"input.schema has a $ref that cannot be resolved: {exc}", "schema"
        ) from None
    issues = [f"schema: {e}" for e in errors[:MAX_SCHEMA_ISSUES]]
    if len(errors) > MAX_SCHEMA_ISSUES:
        issues.append(f"schema: {len(errors) - MAX_SCHEMA_ISSUES} more violation(s)")
    detail = "; ".join(errors[:3])
    return CheckOut(
        criterion="matches the JSON schema", passed=not errors, rule="schema", detail=detail
    ), issues


def _schema_errors(validator: Any, instance: Any) -> list[str]:
    errors = sorted(
        validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]
    )
    return [
        f"at {'/' + '/'.join(str(p) for p in e.absolute_path) if e.absolute_path else '(root)'}: "
        f"{e.message}"
        for e in errors
    ]


def _parsed_json(text: str) -> tuple[Any] | None:
    body = text.strip()
    fenced = re.match(r"^```[\w-]*\s*\n(.*?)\n?```$", body, re.DOTALL)
    if fenced:
        body = fenced.group(1)
    try:
        return (json.loads(body),)
    except ValueError:
        return None


# -- criteria text -----------------------------------------------------------------------------


def judged_text(output: Any) -> str:
    """The text the criteria are checked on; see the module docstring."""
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    if isinstance(output, Mapping):
        fields = [output.get(name) for name in _ANSWER_FIELDS]
        strings = [f.strip() for f in fields if isinstance(f, str) and f.strip()]
        if strings:
            return "\n\n".join(strings)
    return json.dumps(output, sort_keys=True, ensure_ascii=False)


# -- facts -------------------------------------------------------------------------------------

_LIST_MARKER = re.compile(r"^[ \t]*(?:\d+[.)]|[-*+\u2022])[ \t]+", re.MULTILINE)
_NUMBER = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?!\w)")
_SENTENCE = re.compile(r"[^.!?\n]+")
_WORD = re.compile(r"[^\W\d_][\w-]*")


def check_facts(output: Any, context: str) -> CheckOut:
    """Numbers and names in the output that the context does not contain fail the check."""
    text = "\n".join(_leaves(output))
    known_numbers = numbers_in(context)
    known_words = {w.lower() for w in _WORD.findall(context)}
    numbers = [n for n in dict.fromkeys(_number_texts(text)) if _value(n) not in known_numbers]
    names = [
        name
        for name in dict.fromkeys(names_in(text))
        if not all(word.lower() in known_words for word in name.split())
    ]
    parts = []
    if numbers:
        parts.append("numbers " + ", ".join(numbers[:MAX_LISTED_FACTS]))
    if names:
        parts.append("names " + ", ".join(names[:MAX_LISTED_FACTS]))
    return CheckOut(
        criterion="consistent with the context",
        passed=not parts,
        rule="facts",
        detail="; ".join(parts),
    )


def numbers_in(text: str) -> set[float]:
    return {_value(n) for n in _number_texts(text)}


def _number_texts(text: str) -> Iterator[str]:
    for match in _NUMBER.finditer(_LIST_MARKER.sub(" ", text)):
        yield match.group(0)


def _value(number: str) -> float:
    return float(number.replace(",", ""))


def names_in(text: str) -> Iterator[str]:
    """Runs of capitalised words; a sentence's first word alone is not a name."""
    for sentence in _SENTENCE.finditer(_LIST_MARKER.sub(" ", text)):
        words = list(_WORD.finditer(sentence.group(0)))
        run: list[str] = []
        for index, word in enumerate(words):
            token = word.group(0)
            capitalised = token[0].isupper() and len(token) > 1
            joined = bool(run) and sentence.group(0)[words[index - 1].end() : word.start()] == " "
            if capitalised and (joined or not run):
                if index == 0:
                    continue  # NOTE: sentence-initial words are capitalised anyway.
                run.append(token)
                continue
            if run:
                yield " ".join(run)
            run = [token] if capitalised and index > 0 else []
        if run:
            yield " ".join(run)


def whole_numbers(value: Any) -> Any:
    """``value`` with whole floats (``3.0``) turned back into the ints they were sent as."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [whole_numbers(item) for item in value]
    return value


def _leaves(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int | float):
        if math.isfinite(value):
            yield str(value)
    elif isinstance(value, Mapping):
        for key in sorted(value):
            yield from _leaves(value[key])
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
