"""Validation of an answer against the task's acceptance criteria, by rules (pure).

Every answer must be non-empty. Each criterion is checked by the first rule that reads it:

- "does not contain/mention/include X", "must not mention X"  -> X is absent (case-insensitive)
- "no TODO", "without TODOs", "no placeholders"               -> no TODO/FIXME/TBD/XXX marker
- "valid JSON", "is JSON", "a JSON object"                    -> the answer parses as JSON
- "at least / at most / more than / fewer than N words, lines, items, sentences, characters,
  paragraphs" (also "no more than", "up to", "minimum", "maximum")  -> counted
- "not empty", "non-empty"                                    -> has text
- "contains/mentions/includes X"                              -> X is present (case-insensitive;
  an unquoted X of several words also passes when all its content words appear)
- anything else                                               -> at least half of the
  criterion's content words (crudely stemmed) appear in the answer

Given the goal, one more check (rule `addresses_goal`) asks whether the answer addresses it:
an answer that says the indexed documents do not cover the goal, one whose words come mostly
from the goal, the plan or the mesh's own step descriptions (the goal or the plan restated),
and a longer one sharing no term with the goal (text about something else) fail it.

`failing_steps` names the sink steps whose own output fails a failing criterion, so the engine
re-runs just those; when the answer fails but no single sink does (the merge broke it), every
sink is named.

An answer is `verified` when the task has criteria and each was read by a rule that tests it
precisely (or judged by an LLM): the keyword-overlap fallback is a guess, not a verification.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from ..llm import NO_LIMITS, NO_USAGE, CallLimits, JSONCompleter, LLMInvalidOutput, LLMUsage
from ..llm.copies import DATA_RULE, fenced
from ..llm.schema import json_text
from .coverage import NOT_FOUND, content_terms, goal_parts, terms
from .integrate import output_text, truncate
from .lexicon import names
from .plan import CANONICAL_ARM_TYPES
from .templates import TEMPLATES
from .words import content_words, stem

OVERLAP_THRESHOLD = 0.5
ADDRESSES_GOAL = "the answer addresses the goal"
NOT_COVERED = "the indexed documents do not cover the goal"
# An answer at least this share of whose words come from the goal and the plan restates them.
RESTATED_SHARE = 0.8
MIN_RESTATED_WORDS = 8
# An answer with this many distinct terms and none of the goal's is about something else.
MIN_OFF_TOPIC_TERMS = 8
# Rules that test what a criterion asks (not the keyword-overlap guess): they verify an answer.
VERIFYING_RULES = frozenset({"absent", "no_todo", "json", "count", "non_empty", "present", "llm"})
# The words of the mesh's own plans: template step ids and tasks, arm types, plan layout.
_PLAN_TERMS = frozenset(
    terms(
        " ".join(
            f"{step.step_id} {step.task} {step.arm_type}"
            for shapes in TEMPLATES.values()
            for steps in shapes.values()
            for step in steps
        )
        + " ".join(CANONICAL_ARM_TYPES)
        + " plan step steps echo sleep general"
    )
)

_NEGATIVE = re.compile(
    r"\b(?:must not|mustn't|should not|shouldn't|does not|doesn't|do not|don't|never|not|cannot)"
    r"\s+(?:contain|mention|include|use|say|reference)s?\s+(?P<x>.+)$",
    re.IGNORECASE,
)
_NO_TODO = re.compile(
    r"\b(?:no|without|free of|zero)\s+(?:todos?|fixmes?|placeholders?|tbds?)\b", re.IGNORECASE
)
_TODO_MARK = re.compile(r"\b(?:TODO|FIXME|TBD|XXX)\b")
_JSON = re.compile(r"\b(?:valid json|is json|in json|as json|json object|json format)\b", re.I)
_COUNT = re.compile(
    r"\b(?P<op>at least|minimum of|min\.?|more than|over|at most|no more than|maximum of|max\.?|"
    r"up to|fewer than|less than|under|exactly)\s+(?P<n>\d+)\s+"
    r"(?P<unit>words?|lines?|items?|bullets?|bullet points?|points?|sentences?|characters?|"
    r"chars?|paragraphs?|steps?|entries|entry)\b",
    re.IGNORECASE,
)
_NON_EMPTY = re.compile(r"\b(?:not empty|non-empty|nonempty|is not blank)\b", re.IGNORECASE)
_POSITIVE = re.compile(
    r"\b(?:contains?|containing|mentions?|mentioning|includes?|including)\s+(?P<x>.+)$",
    re.IGNORECASE,
)
_LEADING_FILLER = re.compile(
    r"^(?:the (?:word|words|phrase|term|string|text)\s+|a |an |the )", re.IGNORECASE
)
_LIST_ITEM = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)])\s+\S", re.MULTILINE)
_SENTENCE = re.compile(r"[^.!?]+[.!?]+|[^.!?]+$")
# Words that say how to answer rather than what: they do not count towards overlap.
_GENERIC = frozenset(
    stem(w)
    for w in names(
        """answer response output result results final clear clearly correct correctly good
    well properly proper complete concise accurate relevant appropriate user task goal provide
    provides return returns contain contains include includes explain explains describe
    describes show shows list lists name names give gives cover covers discuss discusses state
    states address addresses summarize summarizes"""
    )
)


@dataclass(frozen=True, slots=True)
class CriterionCheck:
    """How one criterion fared: which rule read it, whether it passed, and why."""

    criterion: str
    rule: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """Whether the answer passed, the share of checks passed, issues and steps to re-run."""

    passed: bool
    score: float
    issues: tuple[str, ...]
    failing_steps: tuple[str, ...]
    checks: tuple[CriterionCheck, ...] = ()
    # What verified the answer against the task's criteria ("rules", "llm", "judge <arm id>");
    # empty when nothing did.
    verified_by: str = ""

    @property
    def verified(self) -> bool:
        return bool(self.verified_by)


def _quoted_or_plain(text: str) -> tuple[str, bool]:
    text = text.strip().rstrip(".;:!")
    for open_, close in (('"', '"'), ("'", "'"), ("`", "`"), ("\u201c", "\u201d")):
        if len(text) >= 2 and text.startswith(open_) and text.endswith(close):
            return text[1:-1], True
    return _LEADING_FILLER.sub("", text).strip(), False


def _count(text: str, unit: str) -> int:
    unit = unit.lower()
    if unit.startswith(("word",)):
        return len(re.findall(r"\b\w[\w'-]*\b", text))
    if unit.startswith("line"):
        return len([line for line in text.splitlines() if line.strip()])
    if unit.startswith(("item", "bullet", "point", "step", "entr")):
        items = len(_LIST_ITEM.findall(text))
        if items == 0:
            try:
                parsed = json.loads(json_text(text))
            except ValueError:
                return 0
            if isinstance(parsed, list):
                return len(parsed)
            if isinstance(parsed, dict):
                return max((len(v) for v in parsed.values() if isinstance(v, list)), default=0)
        return items
    if unit.startswith("sentence"):
        return len([s for s in _SENTENCE.findall(text) if s.strip()])
    if unit.startswith("paragraph"):
        return len([p for p in re.split(r"\n\s*\n", text) if p.strip()])
    return len(text)


def _compare(op: str, have: int, n: int) -> bool:
    op = op.lower().rstrip(".")
    if op in ("at least", "minimum of", "min"):
        return have >= n
    if op in ("more than", "over"):
        return have > n
    if op in ("at most", "no more than", "maximum of", "max", "up to"):
        return have <= n
    if op in ("fewer than", "less than", "under"):
        return have < n
    return have == n


def _present(text: str, phrase: str, quoted: bool) -> bool:
    lowered = text.lower()
    if phrase.lower() in lowered:
        return True
    if quoted:
        return False
    wanted = {stem(w) for w in content_words(phrase)}
    return bool(wanted) and wanted <= {stem(w) for w in content_words(text)}


def check_criterion(text: str, criterion: str) -> CriterionCheck:
    """Check `text` against one criterion; see the module docstring for the rules."""
    c = criterion.strip()
    if negative := _NEGATIVE.search(c):
        phrase, _ = _quoted_or_plain(negative.group("x"))
        ok = phrase.lower() not in text.lower()
        return CriterionCheck(c, "absent", ok, "" if ok else f"mentions {phrase!r}")
    if _NO_TODO.search(c):
        marks = sorted(set(_TODO_MARK.findall(text)))
        return CriterionCheck(c, "no_todo", not marks, f"has {', '.join(marks)}" if marks else "")
    if _JSON.search(c):
        try:
            json.loads(json_text(text))
        except ValueError as exc:
            return CriterionCheck(c, "json", False, f"not valid JSON ({exc})")
        return CriterionCheck(c, "json", True, "")
    if counted := _COUNT.search(c):
        have = _count(text, counted.group("unit"))
        n = int(counted.group("n"))
        ok = _compare(counted.group("op"), have, n)
        detail = "" if ok else f"has {have} {counted.group('unit').lower()}"
        return CriterionCheck(c, "count", ok, detail)
    if _NON_EMPTY.search(c):
        ok = bool(text.strip())
        return CriterionCheck(c, "non_empty", ok, "" if ok else "is empty")
    if positive := _POSITIVE.search(c):
        phrase, quoted = _quoted_or_plain(positive.group("x"))
        ok = _present(text, phrase, quoted)
        return CriterionCheck(c, "present", ok, "" if ok else f"does not mention {phrase!r}")
    wanted = [w for w in dict.fromkeys(stem(w) for w in content_words(c)) if w not in _GENERIC]
    if not wanted:
        return CriterionCheck(c, "overlap", True, "nothing specific to check")
    found = {stem(w) for w in content_words(text)}
    missing = [w for w in wanted if w not in found]
    share = 1 - len(missing) / len(wanted)
    ok = share >= OVERLAP_THRESHOLD
    detail = "" if ok else f"covers {share:.0%} of its terms; missing {', '.join(missing[:6])}"
    return CriterionCheck(c, "overlap", ok, detail)


def _answer_words(answer: str) -> str:
    """The words of an answer: a JSON answer's string values (its keys are layout)."""
    stripped = answer.strip()
    if stripped[:1] not in ("{", "["):
        return answer
    try:
        parsed = json.loads(stripped)
    except ValueError:
        return answer
    leaves: list[str] = []
    stack = [parsed]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            leaves.append(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return "\n".join(leaves)


def check_addresses_goal(answer: str, goal: str, restated: Sequence[str] = ()) -> CriterionCheck:
    """Whether `answer` addresses `goal` (rule `addresses_goal`; see the module docstring).
    `restated`: texts the answer must not merely repeat (the plan's step descriptions)."""
    c = ADDRESSES_GOAL
    if NOT_FOUND in answer.lower():
        return CriterionCheck(c, "addresses_goal", False, NOT_COVERED)
    wanted = terms(goal)
    if not wanted:
        return CriterionCheck(c, "addresses_goal", True, "nothing specific to check")
    found = content_terms(_answer_words(answer))
    known = wanted | _PLAN_TERMS | terms(" ".join(restated))
    copied = sum(t in known for t in found)
    if len(found) >= MIN_RESTATED_WORDS and copied >= RESTATED_SHARE * len(found):
        share = copied / len(found)
        detail = f"restates the goal or the plan instead of answering it ({share:.0%} of its words)"
        return CriterionCheck(c, "addresses_goal", False, detail)
    distinct = set(found)
    if len(distinct) >= MIN_OFF_TOPIC_TERMS and not distinct & wanted:
        named = list(dict.fromkeys(w for part in goal_parts(goal) for w in part.names.values()))
        detail = f"is about something else: it mentions none of {', '.join(named[:6])}"
        return CriterionCheck(c, "addresses_goal", False, detail)
    return CriterionCheck(c, "addresses_goal", True, "")


def rule_checks(
    answer: str,
    acceptance_criteria: Sequence[str],
    *,
    goal: str = "",
    restated: Sequence[str] = (),
) -> list[CriterionCheck]:
    """The non-empty check, the goal check (given a goal), and one rule check per criterion."""
    checks = [check_criterion(answer, "answer is not empty")]
    if goal.strip() and answer.strip():
        checks.append(check_addresses_goal(answer, goal, restated))
    checks += [check_criterion(answer, c) for c in acceptance_criteria if c.strip()]
    return checks


def verified_by(checks: Sequence[CriterionCheck], acceptance_criteria: Sequence[str]) -> str:
    """ "rules" or "llm" when every criterion was tested by a verifying rule; else ""."""
    wanted = {c.strip() for c in acceptance_criteria if c.strip()}
    decided = [check for check in checks if check.criterion in wanted]
    if not wanted or not decided or any(c.rule not in VERIFYING_RULES for c in decided):
        return ""
    return "llm" if any(c.rule == "llm" for c in decided) else "rules"


def report(
    checks: Sequence[CriterionCheck],
    outputs: Mapping[str, Mapping[str, Any]],
    sinks: Collection[str] | None = None,
    acceptance_criteria: Sequence[str] = (),
) -> ValidationReport:
    """The report for `checks`, blaming the sink steps whose own output fails a failed one
    (every sink for the goal check: the answer as a whole failed it)."""
    sink_ids = list(sinks) if sinks is not None else list(outputs)
    failed = [check for check in checks if not check.passed]
    failing: list[str] = []
    for check in failed:
        blamed = [
            s
            for s in sink_ids
            if check.rule != "addresses_goal"
            and (
                s not in outputs
                or not check_criterion(output_text(outputs[s]), check.criterion).passed
            )
        ]
        failing.extend(blamed or sink_ids)
    return ValidationReport(
        passed=not failed,
        score=(len(checks) - len(failed)) / len(checks) if checks else 1.0,
        issues=tuple(f"{check.criterion!r} failed: {check.detail}" for check in failed),
        failing_steps=tuple(dict.fromkeys(failing)),
        checks=tuple(checks),
        verified_by=verified_by(checks, acceptance_criteria),
    )


def validate(
    answer: str,
    outputs: Mapping[str, Mapping[str, Any]],
    acceptance_criteria: Sequence[str],
    *,
    sinks: Collection[str] | None = None,
    goal: str = "",
    restated: Sequence[str] = (),
) -> ValidationReport:
    """Check the answer; `sinks` are the plan's sink step ids (default: every step in outputs);
    with a `goal`, also that the answer addresses it (not merely repeating `restated`)."""
    checks = rule_checks(answer, acceptance_criteria, goal=goal, restated=restated)
    return report(checks, outputs, sinks, acceptance_criteria)


class _Verdict(BaseModel):
    passed: bool
    reason: str = Field(default="", max_length=300)


class _Verdicts(BaseModel):
    verdicts: list[_Verdict]


JUDGE_SYSTEM_PROMPT = f"""You check whether an answer satisfies acceptance criteria.
{DATA_RULE}
Reply with one JSON object with one field, verdicts: a list with one verdict per numbered
criterion, in order. Each verdict has passed (true when the answer satisfies the criterion,
else false) and reason (why, in one short sentence of your own about this answer)."""


class LLMValidator:
    """Rules first; criteria no rule can read precisely (the keyword-overlap fallback) are
    judged by an LLM instead. Raises `LLMError` when the model cannot answer."""

    def __init__(
        self, client: JSONCompleter, *, max_answer_chars: int = 8000, max_tokens: int = 600
    ) -> None:
        self._client = client
        self._max_answer_chars = max_answer_chars
        self._max_tokens = max_tokens

    async def validate(
        self,
        answer: str,
        outputs: Mapping[str, Mapping[str, Any]],
        acceptance_criteria: Sequence[str],
        *,
        sinks: Collection[str] | None = None,
        goal: str = "",
        restated: Sequence[str] = (),
        limits: CallLimits = NO_LIMITS,
        fresh: bool = False,
    ) -> tuple[ValidationReport, LLMUsage]:
        """`fresh`: a repair round, so never a cached verdict."""
        checks = rule_checks(answer, acceptance_criteria, goal=goal, restated=restated)
        soft = [i for i, check in enumerate(checks) if check.rule == "overlap"]
        if not soft or not answer.strip():
            return report(checks, outputs, sinks, acceptance_criteria), NO_USAGE
        numbered = "\n".join(f"{n}. {checks[i].criterion}" for n, i in enumerate(soft, 1))
        verdicts, usage = await self._client.complete_json(
            system=JUDGE_SYSTEM_PROMPT,
            user=(
                f"Answer:\n{fenced('answer', truncate(answer, self._max_answer_chars))}\n\n"
                f"Criteria:\n{fenced('criteria', numbered)}"
            ),
            schema=_Verdicts,
            max_tokens=self._max_tokens,
            limits=limits,
            fresh=fresh,
        )
        if len(verdicts.verdicts) != len(soft):
            raise LLMInvalidOutput(
                f"LLM judged {len(verdicts.verdicts)} of {len(soft)} criteria",
                last_output=verdicts.model_dump_json(),
                usage=usage,
            )
        for i, verdict in zip(soft, verdicts.verdicts, strict=True):
            checks[i] = CriterionCheck(
                checks[i].criterion, "llm", verdict.passed, "" if verdict.passed else verdict.reason
            )
        return report(checks, outputs, sinks, acceptance_criteria), usage
