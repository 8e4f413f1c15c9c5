"""The coder arm: writes or edits code from a description and context, through the LLM port.

Input: ``{"task": str, "language": str, "code": str (to edit), "context": str}``; an empty task
falls back to the dispatch description. The fields an orchestrator step carries are used too:
``goal`` and ``constraints``, ``dependencies`` (earlier steps' outputs, as context) and
``repair.issues`` (what a validator found wrong with the previous attempt). Output:
``{"code", "language", "explanation", "answer"}``; the model's reply is validated by pydantic
(JSON, code in a string) and re-asked when it is not.

There is no offline fallback: writing code without a model would be faking it. With no LLM
configured the arm serves NOT_SERVING (the router leaves it alone), declares the capability
``unavailable:no-llm``, says so in its description, and fails every dispatch with
FAILED_PRECONDITION/LLM_NOT_CONFIGURED (not retryable) explaining how to configure one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import grpc
import structlog
from pydantic import BaseModel, ConfigDict, Field

from arm_sdk import Arm, ArmError, SubtaskInput, SubtaskOutput, report_progress
from orchestrator_svc.arms._input import bad_input, parse_input
from orchestrator_svc.arms._llm import (
    HOW_TO_CONFIGURE,
    EndpointWatch,
    arm_error_from,
    limits_for,
    llm_client_from_env,
    output_with_usage,
)
from orchestrator_svc.llm import JSONCompleter, LLMError, LLMUnavailable
from orchestrator_svc.llm.copies import DATA_RULE, fenced

log = structlog.get_logger(__name__)

UNAVAILABLE_CAPABILITY = "unavailable:no-llm"
MAX_CODE_CHARS = 200_000
# Prompt room for the optional parts; the task and the code to edit are never cut.
MAX_CONTEXT_CHARS = 24_000
MAX_DEPENDENCY_CHARS = 6_000
MAX_TOKENS = 4096
_FENCED = re.compile(r"^\s*```[^\n]*\n(?P<body>.*?)```\s*$", re.DOTALL)


class RepairNote(BaseModel):
    """What the orchestrator's validator found wrong with the previous attempt."""

    issues: list[str] = []


class CoderInput(BaseModel):
    """What the coder reads from a dispatch's input."""

    model_config = ConfigDict(extra="ignore")

    task: str = Field(
        "", max_length=8000, description="what to write or change; the description when empty"
    )
    language: str = Field("", max_length=40, description="language to write in; empty: any")
    code: str = Field("", max_length=MAX_CODE_CHARS, description="existing code to edit")
    context: str = Field("", max_length=200_000, description="facts, APIs, files to go by")
    goal: str = Field("", max_length=2000, description="the task's overall goal")
    constraints: list[Annotated[str, Field(max_length=500)]] = Field(default=[], max_length=20)
    dependencies: dict[str, Any] = Field(default={}, description="earlier steps' outputs")
    repair: RepairNote | None = None


class CoderOutput(BaseModel):
    """The code and what it is."""

    code: str
    language: str
    explanation: str
    answer: str


class CodeDraft(BaseModel):
    """The model's reply."""

    language: str = Field(max_length=40, description="the programming language of the code")
    code: str = Field(min_length=1, max_length=MAX_CODE_CHARS, description="the complete code")
    explanation: str = Field(default="", max_length=2000, description="what it does or changed")


CODER_SYSTEM_PROMPT = f"""You are the coder of OctoLLM, a mesh of specialist AI arms.
Write or edit code for the task you are given.
{DATA_RULE}

Reply with one JSON object with these fields:
- language: the programming language of the code
- code: the complete code as a plain string, without Markdown fences; when you edit code,
  the whole edited code, not a diff
- explanation: two or three sentences of your own on what the code does (and what you changed)

Rules:
- write real, working code for this task: no placeholders, no TODOs, nothing left out
- respect every constraint and acceptance criterion"""


def build(
    arm_id: str | None = None,
    *,
    llm: JSONCompleter | None = None,
    check_interval_s: float | None = None,
) -> Arm:
    """A new coder arm; ``llm`` None takes the LLM from ``OCTOLLM_LLM_*`` (if any).

    Its endpoint is checked at start and every ``check_interval_s`` (default
    ``OCTOLLM_LLM_CHECK_INTERVAL_S``): NOT_SERVING, with the reason, while it is unreachable or
    does not list the model."""
    owned = llm_client_from_env() if llm is None else None
    client: JSONCompleter | None = llm if llm is not None else owned
    capabilities: tuple[str, ...] = ("code_generation", "code_analysis", "refactoring")
    if client is not None:
        description = f"Generates or edits code with an LLM ({client.model})"
    else:
        capabilities += (UNAVAILABLE_CAPABILITY,)
        description = "UNAVAILABLE, no LLM configured: would generate or edit code with an LLM"
    arm = Arm(
        arm_type="coder",
        description=description,
        capabilities=capabilities,
        max_concurrency=16,
        cost_tier="high",
        version="0.1.0",
        input_schema=CoderInput.model_json_schema(),
        output_schema=CoderOutput.model_json_schema(),
        arm_id=arm_id,
        available=lambda: client is not None,
    )
    if owned is not None:
        arm.on_stop(owned.aclose)  # opened here, so closed here; a given `llm` is the caller's
    watch = None
    if client is not None:
        watch = EndpointWatch(client, required=True, interval_s=check_interval_s)
        watch.attach(arm)

    @arm.handler
    async def code(inp: SubtaskInput) -> SubtaskOutput:
        if watch is not None and not watch.usable:
            raise watch.unusable_error()
        if client is None:
            raise ArmError(
                f"the coder arm has no LLM configured and will not fake code: {HOW_TO_CONFIGURE}",
                code=grpc.StatusCode.FAILED_PRECONDITION,
                reason="LLM_NOT_CONFIGURED",
                retryable=False,
            )
        request = parse_input(CoderInput, inp.input)
        task = request.task.strip() or inp.description.strip()
        if not task:
            raise bad_input("a task is needed: input.task or the dispatch description", "task")
        await report_progress(0.1, f"asking {client.model}")
        try:
            draft, usage = await client.complete_json(
                system=CODER_SYSTEM_PROMPT,
                user=coder_prompt(task, request, inp.acceptance_criteria),
                schema=CodeDraft,
                max_tokens=MAX_TOKENS,
                limits=limits_for(inp),
                fresh=request.repair is not None,
            )
        except LLMError as exc:
            log.warning("code_not_written", subtask_id=inp.subtask_id, error=str(exc))
            if isinstance(exc, LLMUnavailable) and watch is not None:
                watch.suspect()
            raise arm_error_from(exc) from None
        language = draft.language.strip() or request.language.strip() or "text"
        explanation = draft.explanation.strip()
        output = CoderOutput(
            code=unfenced(draft.code),
            language=language,
            explanation=explanation,
            answer=explanation or f"{language} code for: {task}",
        )
        log.info(
            "code_written",
            subtask_id=inp.subtask_id,
            language=language,
            lines=output.code.count("\n") + 1,
            edit=bool(request.code),
        )
        return output_with_usage(output.model_dump(), usage)

    return arm


def coder_prompt(task: str, request: CoderInput, criteria: tuple[str, ...] = ()) -> str:
    """The user prompt: the task first, then what shapes it, then the code to edit; every part
    that comes from a user or an earlier step is fenced as data."""
    parts = [f"Task:\n{fenced('task', task)}"]
    if request.language.strip():
        parts.append(f"Language: {request.language.strip()}")
    if request.goal.strip() and request.goal.strip() != task:
        parts.append(f"Overall goal this task serves:\n{fenced('goal', request.goal.strip())}")
    if request.constraints:
        parts.append("Constraints:\n" + fenced("constraints", _bullets(request.constraints)))
    if criteria:
        parts.append("The result must satisfy:\n" + fenced("criteria", _bullets(criteria)))
    if request.repair is not None and request.repair.issues:
        issues = fenced("issues", _bullets(request.repair.issues))
        parts.append(f"A reviewer rejected the previous attempt; fix these issues:\n{issues}")
    if request.context.strip():
        context = _cut(request.context.strip(), MAX_CONTEXT_CHARS)
        parts.append(f"Context:\n{fenced('context', context)}")
    if request.dependencies:
        earlier = _dependencies(request.dependencies)
        parts.append(f"Results of earlier steps:\n{fenced('step_outputs', earlier)}")
    if request.code:
        parts.append(f"Code to edit:\n{fenced('code', request.code)}")
    return "\n\n".join(parts)


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def unfenced(code: str) -> str:
    """``code`` without a Markdown fence around it (models add one despite being told not to)."""
    fenced = _FENCED.match(code)
    return fenced.group("body") if fenced else code


def _dependencies(outputs: Mapping[str, Any]) -> str:
    blocks = []
    for step_id, output in outputs.items():
        text = output if isinstance(output, str) else json.dumps(output, sort_keys=True)
        if isinstance(output, Mapping):
            fields = [output[k] for k in ("answer", "text", "summary", "code") if k in output]
            strings = [f for f in fields if isinstance(f, str) and f.strip()]
            if strings:
                text = "\n".join(strings)
        blocks.append(f"[{step_id}]\n{_cut(text, MAX_DEPENDENCY_CHARS)}")
    return _cut("\n\n".join(blocks), MAX_CONTEXT_CHARS)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "\n...(cut)"
