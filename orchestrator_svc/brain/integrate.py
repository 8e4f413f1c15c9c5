"""Integration: the step outputs become one answer.

The deterministic merge takes the answer-bearing fields ("answer", "text", "summary", "code") of
the plan's sink steps, in plan order, under a heading per step when there are several. A sink
that carries none of them (a judge's verdict, say) defers to its nearest ancestors that do. When
no step has such fields, the answer is a compact JSON rendering of the sinks' outputs.
`LLMIntegrator` asks a model to write the answer from the outputs (bounded in size, fenced as
data); an answer much shorter than the merge, or unrelated to the goal and outputs, is rejected
(the brain then merges).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from ..llm import NO_LIMITS, CallLimits, JSONCompleter, LLMInvalidOutput, LLMUsage
from ..llm.copies import DATA_RULE, fenced
from .plan import ExecutionPlan, PlannedStep
from .words import is_content, words

ANSWER_FIELDS = ("answer", "text", "summary", "code")
MAX_ANSWER_CHARS = 20_000
_TRUNCATED = " ...(truncated)"


@dataclass(frozen=True, slots=True)
class Integration:
    """The final answer, how much to trust it (0..1), and notes for the event log."""

    answer: str
    confidence: float
    notes: tuple[str, ...] = ()


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
    a verdict on other steps, like a judge's) its nearest ancestors with text; in plan order."""
    by_id = {s.step_id: s for s in plan.steps}
    chosen: set[str] = set()
    for sink in plan.sinks():
        frontier, seen = [sink], {sink}
        while frontier:
            with_text = [
                s
                for s in frontier
                if not is_verdict(outputs.get(s, {}))
                and render_output(outputs.get(s, {})) is not None
            ]
            if with_text:
                chosen.update(with_text)
                break
            parents = [d for s in frontier if s in by_id for d in by_id[s].depends_on]
            frontier = [d for d in dict.fromkeys(parents) if d not in seen]
            seen.update(frontier)
    return [s.step_id for s in plan.steps if s.step_id in chosen]


def is_verdict(output: Mapping[str, Any]) -> bool:
    """An output that judges other steps (pass/fail with checks) rather than answering."""
    return isinstance(output.get("passed"), bool) and "checks" in output


def _heading(step: PlannedStep | None, step_id: str) -> str:
    return f"## {step.description if step is not None and step.description else step_id}"


def integrate(
    goal: str,
    plan: ExecutionPlan,
    outputs: Mapping[str, Mapping[str, Any]],
    confidences: Mapping[str, float],
    *,
    max_chars: int = MAX_ANSWER_CHARS,
) -> Integration:
    """Deterministic merge; see the module docstring. Confidence is the weakest step's."""
    known = [confidences[s] for s in outputs if s in confidences]
    confidence = min(known) if known else 0.0
    if not outputs:
        return Integration("", 0.0, ("no step produced output",))
    steps = answer_steps(plan, outputs)
    notes: list[str] = []
    if steps:
        sinks = set(plan.sinks())
        deferred = [s for s in steps if s not in sinks]
        if deferred:
            notes.append(f"answer taken from {', '.join(deferred)} (sinks carry no answer text)")
        texts = [render_output(outputs[s]) or "" for s in steps]
        if len(steps) == 1:
            answer = texts[0]
        else:
            answer = "\n\n".join(
                f"{_heading(plan.step(s), s)}\n\n{t}" for s, t in zip(steps, texts, strict=True)
            )
    else:
        sinks_with_output = [s for s in plan.sinks() if s in outputs] or list(outputs)
        if len(sinks_with_output) == 1:
            answer = compact_json(outputs[sinks_with_output[0]])
        else:
            answer = compact_json({s: outputs[s] for s in sinks_with_output})
        notes.append("no step returned answer text; the answer is the outputs as JSON")
    if len(answer) > max_chars:
        notes.append(f"answer truncated to {max_chars} characters")
        answer = truncate(answer, max_chars)
    return Integration(answer, max(0.0, min(1.0, confidence)), tuple(notes))


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
        return Integration(answer, merged.confidence, ()), usage
