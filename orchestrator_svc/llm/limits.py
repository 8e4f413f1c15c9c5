"""How long one LLM call may take and how many tokens it may spend: what its task has left."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from .usage import LLMUsage

# Below this many completion tokens a structured answer cannot fit; the call is not made.
MIN_COMPLETION_TOKENS = 32
# Below this many seconds a call cannot finish; the caller falls back at once.
MIN_CALL_SECONDS = 0.05


@dataclass(slots=True)
class StallGuard:
    """Shared by the calls of one task: once one of them timed out, the task asks no more
    (a stalled server would eat the time its fallbacks need). `reason` says why, once set."""

    reason: str = ""

    def timed_out(self, what: str) -> None:
        if not self.reason:
            self.reason = f"an LLM call of this task timed out earlier ({what})"


@dataclass(frozen=True, slots=True)
class CallLimits:
    """`deadline`: `time.monotonic()` by which the call (re-asks included) must be over;
    `max_tokens`: prompt plus completion tokens it may spend in all. None: no limit.
    `stalls`: the task's `StallGuard`, when its calls share one."""

    deadline: float | None = None
    max_tokens: int | None = None
    stalls: StallGuard | None = field(default=None, compare=False)

    @classmethod
    def within(
        cls,
        seconds: float | None = None,
        tokens: int | None = None,
        stalls: StallGuard | None = None,
    ) -> CallLimits:
        """Limits of `seconds` from now and `tokens` in all (None or non-finite: no limit)."""
        deadline = None
        if seconds is not None and math.isfinite(seconds):
            deadline = time.monotonic() + seconds
        return cls(deadline, None if tokens is None else max(0, tokens), stalls)

    def seconds_left(self) -> float | None:
        """Time left before the deadline, or None when there is none."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def spent(self, usage: LLMUsage) -> CallLimits:
        """What is left after `usage` was spent."""
        if self.max_tokens is None:
            return self
        return CallLimits(self.deadline, max(0, self.max_tokens - usage.total_tokens), self.stalls)

    def completion_tokens(self, prompt_chars: int, wanted: int | None) -> int | None:
        """The `max_tokens` to ask for: `wanted`, cut to what the budget leaves after a prompt of
        `prompt_chars` characters (~4 per token). None: no cap from either."""
        if self.max_tokens is None:
            return wanted
        left = self.max_tokens - prompt_chars // 4
        return left if wanted is None else min(wanted, left)

    def why_not(self, prompt_chars: int, wanted: int | None) -> str:
        """Why a call with this prompt cannot be made within the limits ("" when it can)."""
        if self.stalls is not None and self.stalls.reason:
            return self.stalls.reason
        seconds = self.seconds_left()
        if seconds is not None and seconds < MIN_CALL_SECONDS:
            return "no time left for an LLM call"
        tokens = self.completion_tokens(prompt_chars, wanted)
        if tokens is not None and tokens < MIN_COMPLETION_TOKENS:
            return "no tokens left in the budget for an LLM call"
        return ""


NO_LIMITS = CallLimits()
