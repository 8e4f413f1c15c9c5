"""The port the brain depends on: something that turns a prompt into a validated pydantic model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from .limits import NO_LIMITS, CallLimits
from .usage import LLMUsage

M = TypeVar("M", bound=BaseModel)


class JSONCompleter(Protocol):
    """Asks a model for JSON shaped like `schema`; raises `LLMError` subclasses on failure.

    `limits` bounds the call (time and tokens left); `fresh` asks for a new answer, never a
    cached one (a repair must be able to change something)."""

    @property
    def model(self) -> str: ...

    async def complete_json(
        self,
        *,
        system: str,
        user: str,
        schema: type[M],
        max_tokens: int | None = None,
        json_schema: Mapping[str, Any] | None = None,
        limits: CallLimits = NO_LIMITS,
        fresh: bool = False,
    ) -> tuple[M, LLMUsage]: ...
