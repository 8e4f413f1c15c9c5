"""Integration: the step outputs become one answer.

The deterministic merge takes the answer-bearing fields ("answer", "text", "summary", "code") of
the plan's sink steps, in plan order, under a heading per step when there are several. A sink
that carries none of them, or whose output is a verdict on other steps (a judge's) or a plan of
the work (a planner's), defers to its nearest ancestors that do; a plan is the answer only when
no step found anything else. Retrieved passages are not merged as the retriever summarised them:
the paragraphs that cover the goal are quoted exactly under a first line saying no model wrote
them, and what the documents do not cover is answered "not found in the indexed documents" (see
coverage.py). When no step has answer fields, the answer is a compact JSON rendering of the
sinks' outputs. `LLMIntegrator` asks a model to write the answer from the outputs (bounded in
size, fenced as data); an answer much shorter than the merge, or unrelated to the goal and
outputs, is rejected (the brain then merges).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..llm import NO_LIMITS, CallLimits, JSONCompleter, LLMInvalidOutput, LLMUsage
from ..llm.copies import DATA_RULE, fenced
from .coverage import is_retrieval, passages_of, retrieval_answer
from .plan import ExecutionPlan, PlannedStep
from .words import is_content, words

ANSWER_FIELDS = ("answer", "text", "summary", "code")
MAX_ANSWER_CHARS = 20_000
NOT_FOUND_CONFIDENCE = 0.1
_TRUNCATED = " ...(truncated)"

# What wrote an answer: a model, rules merging arm outputs, or retrieved text alone.
AnswerSource = Literal["llm", "rules", "retrieval"]


@dataclass(frozen=True, slots=True)
class Integration:
    """The final answer, how much to trust it (0..1), notes for the event log, what wrote it
    and the steps whose output it was made from."""

    answer: str
    confidence: float
    notes: tuple[str, ...] = ()
    source: AnswerSource = "rules"
    steps: tuple[str, ...] = ()


def render_output(output: Mapping[str, Any]) -> str | None:
    """The answer-bearing text of one step's output, or None when it has none."""
    parts = []
    for name in ANSWER_FIELDS:
        value = output.get(name)
        if isinstance(value, str) and value.strip():
            parts.append(f"```\n{value.strip()}\n```" if name == "code" else value.strip())
    return "\n\n".join(parts) if parts else None


def output_text(output: Mapping[str, Any]) -> str:
    """A step's output as text: its answer fields, else compact JSON."""
    rendered = render_output(output)
    return rendered if rendered is not None else compact_json(output)


def compact_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - len(_TRUNCATED))] + _TRUNCATED


def answer_steps(plan: ExecutionPlan, outputs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Steps whose text makes the answer: sinks, or for a sink without text (or whose output is
    a verdict on other steps, like a judge's, or a plan of the work, like a planner's) its
    nearest ancestors with text; in plan order. Plans count only when nothing else has text."""

    def answers(output: Mapping[str, Any]) -> bool:
        return not is_verdict(output) and not is_plan(output) and render_output(output) is not None

    chosen = _nearest(plan, outputs, answers) or _nearest(
        plan, outputs, lambda o: not is_verdict(o) and render_output(o) is not None
    )
    return [s.step_id for s in plan.steps if s.step_id in chosen]


def _nearest(
    plan: ExecutionPlan,
    outputs: Mapping[str, Mapping[str, Any]],
    wanted: Callable[[Mapping[str, Any]], bool],
) -> set[str]:
    """For each sink: itself if its output is `wanted`, else its nearest such ancestors."""
    by_id = {s.step_id: s for s in plan.steps}
    chosen: set[str] = set()
    for sink in plan.sinks():
        frontier, seen = [sink], {sink}
        while frontier:
            found = [s for s in frontier if s in outputs and wanted(outputs[s])]
            if found:
                chosen.update(found)
                break
            parents = [d for s in frontier if s in by_id for d in by_id[s].depends_on]
            frontier = [d for d in dict.fromkeys(parents) if d not in seen]
            seen.update(frontier)
    return chosen


def is_verdict(output: Mapping[str, Any]) -> bool:
    """An output that judges other steps (pass/fail with checks) rather than answering."""
    return isinstance(output.get("passed"), bool) and "checks" in output


def is_plan(output: Mapping[str, Any]) -> bool:
    """An output that plans the work (a list of steps for arm types) rather than doing it."""
    steps = output.get("steps")
    return (
        isinstance(steps, list)
        and bool(steps)
        and all(isinstance(s, Mapping) and ("arm_type" in s or "step_id" in s) for s in steps)
    )


def _heading(step: PlannedStep | None, step_id: str) -> str:
    return f"## {step.description if step is not None and step.description else step_id}"


def integrate(
    goal: str,
    plan: ExecutionPlan,
    outputs: Mapping[str, Mapping[str, Any]],
    confidences: Mapping[str, float],
    *,
    max_chars: int = MAX_ANSWER_CHARS,
    models: Mapping[str, str] | None = None,
) -> Integration:
    """Deterministic merge; see the module docstring. Confidence is the weakest step's (0.1 at
    most when the indexed documents do not cover the goal). `models`: the model each step's
    arm used (its provenance), so an answer a model wrote in a step says so."""
    known = [confidences[s] for s in outputs if s in confidences]
    confidence = max(0.0, min(1.0, min(known) if known else 0.0))
    if not outputs:
        return Integration("", 0.0, ("no step produced output",))
    steps = answer_steps(plan, outputs)
    notes: list[str] = []
    source: AnswerSource = "rules"
    if steps:
        sinks = set(plan.sinks())
        deferred = [s for s in steps if s not in sinks]
        if deferred:
            notes.append(f"answer taken from {', '.join(deferred)} (sinks carry no answer text)")
        retrieved = [s for s in steps if is_retrieval(outputs[s])]
        texts = {s: render_output(outputs[s]) or "" for s in steps if s not in retrieved}
        if retrieved:
            passages = [p for s in retrieved for p in passages_of(outputs[s])]
            served = [f"{_description(plan, s)}\n{t}" for s, t in texts.items()]
            quoted = retrieval_answer(goal, passages, served=served)
            texts[retrieved[0]] = quoted.text
            if not quoted.coverage.covered:
                confidence = min(confidence, NOT_FOUND_CONFIDENCE)
                missing = ", ".join(quoted.coverage.missing)
                notes.append(f"the indexed documents do not cover the goal (missing: {missing})")
            dropped = retrieved[1:] if quoted.text else retrieved
            steps = [s for s in steps if s not in dropped]
            source = "retrieval" if steps == retrieved[:1] else "rules"
        if models and any(models.get(s) for s in steps):
            source = "llm"
        if len(steps) == 1:
            answer = texts[steps[0]]
        else:
            answer = "\n\n".join(
                texts[s] if s in retrieved else f"{_heading(plan.step(s), s)}\n\n{texts[s]}"
                for s in steps
            )
    else:
        # NOTE: a verdict is never the answer: the JSON is of what it judged, when it has output.
        judged = _nearest(plan, outputs, lambda o: not is_verdict(o))
        shown = [s.step_id for s in plan.steps if s.step_id in judged]
        shown = shown or [s for s in plan.sinks() if s in outputs] or list(outputs)
        if len(shown) == 1:
            answer = compact_json(outputs[shown[0]])
        else:
            answer = compact_json({s: outputs[s] for s in shown})
        notes.append("no step returned answer text; the answer is the outputs as JSON")
    if len(answer) > max_chars:
        notes.append(f"answer truncated to {max_chars} characters")
        answer = truncate(answer, max_chars)
    return Integration(answer, confidence, tuple(notes), source, tuple(steps))


def _description(plan: ExecutionPlan, step_id: str) -> str:
    step = plan.step(step_id)
    return step.description if step is not None else step_id


class _AnswerDraft(BaseModel):
    answer: str = Field(min_length=1)


INTEGRATOR_SYSTEM_PROMPT = f"""You write the final answer of a task from the outputs of its steps.
{DATA_RULE}
Use only the information in the step outputs; do not invent facts. Answer the goal directly and
completely, respect the constraints and satisfy every listed criterion; keep what the outputs
found (a passage, a number, code) rather than summarising it away.
Reply with one JSON object with one field, answer: your final answer to the goal, as plain text
or markdown, written from the step outputs."""

# An LLM answer shorter than this share of the merged answer (and than a short paragraph)
# is not a summary but a loss: a tiny model answered "1" in place of a good answer.
MIN_ANSWER_SHARE = 0.2
ENOUGH_ANSWER_CHARS = 200


def answer_problem(answer: str, merged: str, sources: str) -> str:
    """Why an LLM-written `answer` must not replace `merged`, the rules' merge of the outputs
    ("" if it may): much shorter, or sharing no content word with the goal and the step
    outputs (`sources`)."""
    if len(answer) < min(MIN_ANSWER_SHARE * len(merged), ENOUGH_ANSWER_CHARS):
        return (
            f"the LLM's answer ({len(answer)} chars) is much shorter than the steps' answer "
            f"({len(merged)} chars)"
        )
    theirs = {w for w in words(sources) if is_content(w)}
    ours = {w for w in words(answer) if is_content(w)}
    if theirs and ours and not ours & theirs:
        return "the LLM's answer shares no words with the goal or the step outputs"
    return ""


class LLMIntegrator:
    """Writes the answer with an LLM from at most `max_input_chars` of step outputs.

    Raises `LLMError` when the model cannot answer; confidence stays the arms' (a model's
    opinion of its own summary is no evidence).
    """

    def __init__(
        self, client: JSONCompleter, *, max_input_chars: int = 12_000, max_tokens: int = 1500
    ) -> None:
        self._client = client
        self._max_input_chars = max_input_chars
        self._max_tokens = max_tokens

    async def integrate(
        self,
        goal: str,
        plan: ExecutionPlan,
        outputs: Mapping[str, Mapping[str, Any]],
        confidences: Mapping[str, float],
        *,
        acceptance_criteria: Sequence[str] = (),
        limits: CallLimits = NO_LIMITS,
        fresh: bool = False,
    ) -> tuple[Integration, LLMUsage]:
        """`fresh`: a repair round, so never a cached answer."""
        merged = integrate(goal, plan, outputs, confidences)
        present = [s for s in plan.steps if s.step_id in outputs]
        share = max(400, self._max_input_chars // max(1, len(present)))
        blocks = [
            f"### {s.step_id} ({s.arm_type}): {s.description}\n"
            + truncate(output_text(outputs[s.step_id]), share)
            for s in present
        ]
        lines = ["Goal:", fenced("goal", goal)]
        if acceptance_criteria:
            criteria = "\n".join(f"- {c}" for c in acceptance_criteria)
            lines += ["The answer must satisfy:", fenced("criteria", criteria)]
        lines += ["Step outputs:", fenced("step_outputs", "\n\n".join(blocks))]
        draft, usage = await self._client.complete_json(
            system=INTEGRATOR_SYSTEM_PROMPT,
            user=truncate("\n".join(lines), self._max_input_chars + 2000),
            schema=_AnswerDraft,
            max_tokens=self._max_tokens,
            limits=limits,
            fresh=fresh,
        )
        answer = draft.answer.strip()
        sources = "\n".join([goal, *(output_text(outputs[s.step_id]) for s in present)])
        problem = answer_problem(answer, merged.answer, sources)
        if problem:
            raise LLMInvalidOutput(problem, last_output=answer, usage=usage)
        return Integration(answer, merged.confidence, (), "llm", merged.steps), usage
