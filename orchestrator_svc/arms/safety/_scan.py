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

    def summary(self, chars: int) -> str:
        """What was scanned and found, by kind with its count and severity: the answer of a
        scan. It never quotes the text, redacted or not: a value no detector caught would be
        repeated."""
        head = (
            f"Scanned the given text ({chars} characters) for secrets, personal data and "
            "prompt injection"
        )
        if self.safe:
            return f"{head}: no secrets or personal data found, and no prompt injection."
        lines = [f"{head}: {_count(len(self.findings), 'finding')}."]
        by_kind: dict[str, list[Finding]] = {}
        for finding in self.findings:
            by_kind.setdefault(finding.kind, []).append(finding)
        for kind, found in sorted(by_kind.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            details = ", ".join(dict.fromkeys(f.detail for f in found))
            lines.append(f"- {kind}: {len(found)} ({details}), severity {severity(kind)}")
        if self.findings:
            lines.append("Each finding is redacted as [REDACTED:<KIND>]; no value is repeated.")
        patterns = sorted({flag.pattern for flag in self.injection})
        if patterns:
            lines.append(
                f"Prompt injection: {_count(len(self.injection), 'flag')} "
                f"({', '.join(patterns)}), severity high."
            )
        else:
            lines.append("No prompt injection found.")
        return "\n".join(lines)

    def to_dict(self, chars: int | None = None) -> dict[str, Any]:
        """The report as the safety arm's output; `chars`, the length of the text scanned,
        adds the `summary` (the scan's answer)."""
        output: dict[str, Any] = {
            "redacted": self.redacted,
            "findings": [f.to_dict() for f in self.findings],
            "injection": [f.to_dict() for f in self.injection],
            "safe": self.safe,
        }
        if chars is not None:
            output["summary"] = self.summary(chars)
        return output


# Personal data is "medium": credentials (keys, tokens, passwords), card and Social Security
# numbers, and prompt injection are "high".
_MEDIUM = frozenset({"EMAIL", "PHONE"})


def severity(kind: str) -> str:
    """How severe a finding of `kind` is: "high" or "medium"."""
    return "medium" if kind in _MEDIUM else "high"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


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
