"""The safety arm: detects and redacts PII and secrets, and flags prompt injection.

Input: ``{"text": str, "mode": "redact" | "scan"}`` (mode defaults to ``redact``). Without
``text``, as a step of a plan ("check the result for secrets ..."), it checks what the steps it
depends on produced: ``dependencies`` (their outputs by step id, which the orchestrator puts
there) rendered as one text, each output's answer fields (else its JSON) under its step id,
in step-id order.
Output: ``{redacted, findings: [{kind, start, end, detail}], injection: [{pattern, excerpt}],
safe, summary}``, offsets into the text checked. ``summary`` (only when ``text`` was given: a
check of other steps' outputs answers nothing) is the scan's answer: what was scanned, each kind
found with its count and severity (``high`` for credentials, card and Social Security numbers
and injection, ``medium`` for emails and phone numbers), or "no secrets or personal data found";
it never quotes the text, redacted or not. In ``scan`` mode the text is not sent back:
``redacted`` is empty and only the report counts.

Detected (``kind``): EMAIL; PHONE (international ``+CC ...`` with 8-15 digits, and US/NANP
formats such as ``(202) 555-0173``, ``202-555-0173``); CREDIT_CARD (13-19 digits, optionally
grouped by spaces or dashes, with a known network prefix and a valid Luhn checksum, so random
digit strings are not flagged); SSN (US Social Security numbers, dashed ``123-45-6789``, never
issued areas left out); AWS_ACCESS_KEY (``AKIA``/``ASIA``...), GITHUB_TOKEN
(``ghp_``, ``gho_``, ``ghu_``, ``ghs_``, ``ghr_``, ``github_pat_``), SLACK_TOKEN (``xox?-``),
OPENAI_KEY (``sk-``, ``sk-proj-``...), STRIPE_KEY, GOOGLE_API_KEY, JWT (checked to have a JSON
header), BEARER_TOKEN (``Bearer ...``, e.g. in ``Authorization:``), BASIC_AUTH, URL_PASSWORD
(``scheme://user:password@``), API_KEY and PASSWORD (values assigned to names such as
``api_key=``, ``"client_secret": ...``, ``password: ...``; obvious placeholders are skipped),
PRIVATE_KEY (PEM blocks); and a ``[REDACTED:<KIND>]`` marker an earlier redaction left (the
secret was there: with OCTOLLM_SAFETY on, the goal is redacted before a plan scans it). Each is
replaced by ``[REDACTED:<KIND>]``; offsets are Python string
indices into the original text; overlapping matches go to the more specific detector.

Injection patterns (``pattern``): ignore_previous_instructions, you_are_now,
role_play_override, system_prompt, jailbreak, new_instructions, role_marker (``system:`` at a
line start, ``<|im_start|>``, ``[INST]``, ``<<SYS>>`` ...), hidden_characters (zero-width,
bidi controls, Unicode tag characters), base64_instruction (a base64 blob that decodes to
text with any of these or instruction words).

The arm never logs the text, a finding's value or an excerpt: it logs counts by kind only, and
its Failure messages never quote the input. ``scan(text) -> SafetyReport`` is the same logic as
a pure function for in-process use.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import structlog

from arm_sdk import Arm, ArmError, SubtaskInput, SubtaskOutput
from orchestrator_svc.arms.safety._detectors import Finding
from orchestrator_svc.arms.safety._injection import InjectionFlag
from orchestrator_svc.arms.safety._scan import SafetyReport, scan
from orchestrator_svc.brain.integrate import compact_json, output_text

log = structlog.get_logger(__name__)

MAX_TEXT_CHARS = 1_000_000
# Texts longer than this are scanned in a worker thread, off the event loop.
_THREAD_OVER_CHARS = 50_000
MODES = ("redact", "scan")

INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "maxLength": MAX_TEXT_CHARS},
        "mode": {"enum": list(MODES)},
        "dependencies": {
            "type": "object",
            "description": "earlier steps' outputs by step id: checked when text is absent",
        },
    },
}
OUTPUT_SCHEMA = {
    "type": "object",
    "required": ["redacted", "findings", "injection", "safe"],
    "properties": {
        "redacted": {"type": "string"},
        "findings": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["kind", "start", "end", "detail"],
                "properties": {
                    "kind": {"type": "string"},
                    "start": {"type": "integer", "minimum": 0},
                    "end": {"type": "integer", "minimum": 0},
                    "detail": {"type": "string"},
                },
            },
        },
        "injection": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["pattern", "excerpt"],
                "properties": {"pattern": {"type": "string"}, "excerpt": {"type": "string"}},
            },
        },
        "safe": {"type": "boolean"},
        "summary": {
            "type": "string",
            "description": "what was scanned and found, by kind, count and severity; never a "
            "value (only when input.text was given)",
        },
    },
}


def build(arm_id: str | None = None) -> Arm:
    """A new safety arm."""
    arm = Arm(
        arm_type="safety",
        description="Redacts PII and secrets and flags prompt injection; no LLM needed",
        capabilities=(
            "safety",
            "pii_detection",
            "security_review",
            "redaction",
            "secret_detection",
            "prompt_injection",
        ),
        max_concurrency=16,
        cost_tier="low",
        version="0.1.0",
        input_schema=INPUT_SCHEMA,
        output_schema=OUTPUT_SCHEMA,
        arm_id=arm_id,
    )

    @arm.handler
    async def check(inp: SubtaskInput) -> SubtaskOutput:
        text = inp.input.get("text")
        mode = inp.input.get("mode", "redact")
        given = text is not None
        if text is None:
            text = _dependencies_text(inp.input.get("dependencies"))
        if not isinstance(text, str):
            raise _bad_input(
                "input.text must be a string (or input.dependencies a non-empty object)", "text"
            )
        if len(text) > MAX_TEXT_CHARS:
            raise ArmError(
                f"input.text has {len(text)} characters, over the {MAX_TEXT_CHARS} limit",
                code=grpc.StatusCode.INVALID_ARGUMENT,
                reason="TEXT_TOO_LARGE",
                metadata={"field": "text", "limit": str(MAX_TEXT_CHARS)},
            )
        if mode not in MODES:
            raise _bad_input(f"input.mode must be one of {list(MODES)}", "mode")
        if len(text) > _THREAD_OVER_CHARS:
            report = await asyncio.to_thread(scan, text)
        else:
            report = scan(text)
        # NOTE: a check of other steps' outputs is no answer to the goal: only a scan of text
        # given to scan carries the `summary`.
        output = report.to_dict(len(text) if given else None)
        if mode == "scan":
            output["redacted"] = ""
        # NOTE: counts and kinds only; never the text, a value or an excerpt.
        log.info(
            "safety_scanned",
            chars=len(text),
            mode=mode,
            findings=dict(Counter(f.kind for f in report.findings)),
            injection=dict(Counter(f.pattern for f in report.injection)),
            safe=report.safe,
        )
        return SubtaskOutput(output=output)

    return arm


def _dependencies_text(dependencies: object) -> str | None:
    """The outputs of the steps a plan step depends on, as the one text it checks."""
    if not isinstance(dependencies, dict) or not dependencies:
        return None
    return "\n\n".join(
        f"## {step_id}\n{output_text(output) if isinstance(output, dict) else compact_json(output)}"
        for step_id, output in sorted(dependencies.items())
    )


def _bad_input(message: str, field: str) -> ArmError:
    return ArmError(
        message,
        code=grpc.StatusCode.INVALID_ARGUMENT,
        reason="BAD_INPUT",
        metadata={"field": field},
    )


__all__ = ["Finding", "InjectionFlag", "SafetyReport", "build", "scan"]
