"""Prompt-injection patterns: text that tries to give the model new instructions.

These are flags, not proof: a document quoting "ignore previous instructions" is flagged too.
Each flag names its pattern and shows a short excerpt around the match, with any secret in the
excerpt already redacted.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass

MAX_FLAGS = 50
_EXCERPT_CONTEXT = 24
_EXCERPT_MAX = 160

_I = re.IGNORECASE
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "ignore_previous_instructions",
        re.compile(
            r"\b(?:ignore|disregard|forget|skip|override|bypass|drop)\b[^.\n]{0,40}?"
            r"\b(?:all|any|the|your|my|previous|prior|above|earlier|preceding|former|"
            r"initial|original|system)\b[^.\n]{0,40}?"
            r"\b(?:instructions?|prompts?|rules|directions|guidelines|directives|context|"
            r"constraints|guardrails)\b",
            _I,
        ),
    ),
    ("you_are_now", re.compile(r"\byou\s+are\s+now\b|\bfrom\s+now\s+on,?\s+you\b", _I)),
    (
        "role_play_override",
        re.compile(
            r"\bpretend\s+(?:to\s+be|you\s+are|that\s+you)\b|\bact\s+as\s+(?:an?\s+)?"
            r"(?:unrestricted|unfiltered|uncensored|jailbroken|evil)\b",
            _I,
        ),
    ),
    (
        "system_prompt",
        re.compile(
            r"\b(?:system|developer|hidden|initial|original)\s+(?:prompt|instructions?|message)\b",
            _I,
        ),
    ),
    (
        "jailbreak",
        re.compile(
            r"\bjailbr(?:eak|oken)\w*|\bdo\s+anything\s+now\b|\b(?:developer|god|DAN)\s+mode\b",
            _I,
        ),
    ),
    ("new_instructions", re.compile(r"\b(?:new|updated|real|actual|true)\s+instructions?\s*:", _I)),
    (
        "role_marker",
        re.compile(
            r"(?im)^[ \t]*(?:#{1,3}[ \t]*)?(?:system|assistant|developer|human)[ \t]*:"
            r"|<\|(?:im_start|im_end|system|user|assistant|endoftext|begin_of_text|"
            r"start_header_id|end_header_id|eot_id)\|>|\[/?INST\]|<</?SYS>>"
        ),
    ),
    (
        "hidden_characters",
        re.compile(
            "[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]+"
        ),
    ),
)
# Words that make a decoded base64 blob look like an instruction, besides the patterns above.
_INSTRUCTION_WORDS = re.compile(
    r"\b(?:ignore|instructions?|system prompt|you are|you must|disregard|reveal|execute)\b", _I
)
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/]{24,}={0,2}(?![A-Za-z0-9+/=_-])")


@dataclass(frozen=True, slots=True)
class InjectionFlag:
    """One place where the text looks like a prompt-injection attempt."""

    pattern: str
    excerpt: str

    def to_dict(self) -> dict[str, str]:
        """The flag as the arm's output shows it."""
        return {"pattern": self.pattern, "excerpt": self.excerpt}


# Masks the secrets in a piece of the text: (start, end) -> that piece, with secrets redacted.
Masker = Callable[[int, int], str]
# Redacts secrets in a free-standing string (a decoded blob).
Redactor = Callable[[str], str]


def flags(text: str, masked: Masker, redact: Redactor) -> list[InjectionFlag]:
    """Every injection flag in ``text``, in order of position (at most MAX_FLAGS)."""
    matches: list[tuple[int, str, re.Match[str]]] = []
    for name, pattern in PATTERNS:
        for m in pattern.finditer(text):
            matches.append((m.start(), name, m))
            if len(matches) > 4 * MAX_FLAGS:
                break
    for m in _BASE64.finditer(text):
        matches.append((m.start(), "base64_instruction", m))
    matches.sort(key=lambda item: item[0])
    found: list[InjectionFlag] = []
    for _, name, m in matches:
        if len(found) == MAX_FLAGS:
            break
        if name != "base64_instruction":
            found.append(InjectionFlag(name, _excerpt(text, m, masked, name)))
            continue
        decoded = _decode(m.group())
        if decoded is not None and (
            any(p.search(decoded) for _, p in PATTERNS) or _INSTRUCTION_WORDS.search(decoded)
        ):
            found.append(InjectionFlag(name, _squash(redact(decoded))))
    return found


def _excerpt(text: str, m: re.Match[str], masked: Masker, name: str) -> str:
    if name == "hidden_characters":
        return " ".join(f"U+{ord(c):04X}" for c in m.group()[:16])
    start = max(0, m.start() - _EXCERPT_CONTEXT)
    end = min(len(text), m.end() + _EXCERPT_CONTEXT)
    return _squash(masked(start, end))


def _decode(blob: str) -> str | None:
    try:
        raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    printable = sum(c.isprintable() or c in "\n\t\r" for c in decoded)
    return decoded if decoded and printable / len(decoded) > 0.9 else None


def _squash(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT_MAX else text[: _EXCERPT_MAX - 1] + "…"
