"""``scan(text)``: find PII and secrets, redact them, and flag prompt injection."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator_svc.arms.safety._detectors import Finding, detect
from orchestrator_svc.arms.safety._injection import InjectionFlag, flags


@dataclass(frozen=True, slots=True)
class SafetyReport:
    """What ``scan`` found in one text.

    ``findings`` carry offsets into the original text (Python string indices); ``redacted`` is
    that text with each finding replaced by ``[REDACTED:<KIND>]``. ``safe`` is True only when
    there is nothing to redact and nothing that looks like prompt injection.
    """

    redacted: str
    findings: tuple[Finding, ...]
    injection: tuple[InjectionFlag, ...]

    @property
    def safe(self) -> bool:
        """No PII, no secret, no injection flag."""
        return not self.findings and not self.injection

    def to_dict(self) -> dict[str, Any]:
        """The report as the safety arm's output."""
        return {
            "redacted": self.redacted,
            "findings": [f.to_dict() for f in self.findings],
            "injection": [f.to_dict() for f in self.injection],
            "safe": self.safe,
        }


def scan(text: str) -> SafetyReport:
    """Detect and redact PII and secrets in ``text`` and flag prompt-injection patterns.

    Pure and deterministic: no I/O, no logging, no model.
    """
    findings = detect(text)
    ends = [f.end for f in findings]

    def masked(start: int, end: int) -> str:
        # Findings are sorted and disjoint, so their ends are sorted too.
        first = bisect.bisect_right(ends, start)
        inside = []
        for f in findings[first:]:
            if f.start >= end:
                break
            inside.append(f)
        return _redact(text, inside, start, end)

    def redact_text(other: str) -> str:
        return _redact(other, detect(other), 0, len(other))

    injection = flags(text, masked, redact_text)
    return SafetyReport(
        redacted=_redact(text, findings, 0, len(text)),
        findings=tuple(findings),
        injection=tuple(injection),
    )


def marker(kind: str) -> str:
    """What a finding of ``kind`` is replaced with."""
    return f"[REDACTED:{kind}]"


def _redact(text: str, findings: Sequence[Finding], start: int, end: int) -> str:
    """``text[start:end]`` with each finding (sorted, non-overlapping) replaced by its marker;
    a finding cut by the window is replaced whole, so no part of a secret survives."""
    parts: list[str] = []
    position = start
    for finding in findings:
        if finding.end <= start or finding.start >= end:
            continue
        parts.append(text[position : max(position, finding.start)])
        parts.append(marker(finding.kind))
        position = max(position, finding.end)
    parts.append(text[position:end] if position < end else "")
    return "".join(parts)
