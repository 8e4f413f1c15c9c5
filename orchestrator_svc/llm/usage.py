"""What one or more LLM calls spent."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LLMUsage:
    """Tokens and dollars spent by LLM calls; `a + b` sums them (models are joined, not lost)."""

    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: LLMUsage) -> LLMUsage:
        models = [m for m in (*self.model.split(","), *other.model.split(",")) if m]
        return LLMUsage(
            model=",".join(dict.fromkeys(models)),
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )


NO_USAGE = LLMUsage()
