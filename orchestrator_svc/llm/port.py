"""The port the brain depends on: something that turns a prompt into a validated pydantic model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from .usage import LLMUsage

M = TypeVar("M", bound=BaseModel)


class JSONCompleter(Protocol):
    """Asks a model for JSON shaped like `schema`; raises `LLMError` subclasses on failure."""

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
    ) -> tuple[M, LLMUsage]: ...
