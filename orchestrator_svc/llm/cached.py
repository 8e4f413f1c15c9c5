"""A `JSONCompleter` that answers repeated prompts from a cache instead of the model.

The key is everything that shapes the reply: model, temperature, both messages, the schema sent
(and which pydantic model validates it) and `max_tokens`. Only replies that passed their schema
are stored, and a cached reply costs nothing (zero tokens, zero dollars). The cache never fails
a call: when it is down the model is asked as if there were none. A `fresh` call skips the
lookup (a repair round wants a new answer) and stores what it gets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from .client import OpenAICompatibleClient
from .endpoint import ENDPOINT_OK, EndpointStatus
from .limits import NO_LIMITS, CallLimits
from .port import JSONCompleter
from .usage import LLMUsage

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

NAMESPACE = "llm"


class Cache(Protocol):
    """What the LLM library needs of a cache: bytes by namespace and inputs."""

    async def get(self, namespace: str, inputs: Mapping[str, Any]) -> bytes | None:
        """The value stored for `inputs` in `namespace`, or None (absent, expired, unavailable)."""
        ...

    async def set(self, namespace: str, inputs: Mapping[str, Any], value: bytes) -> None:
        """Keep `value` for `inputs` in `namespace` for a while (best effort, never raises)."""
        ...


class CachedCompleter:
    """Wraps `inner`; see the module docstring. `temperature` is the one `inner` samples at."""

    def __init__(
        self, inner: JSONCompleter, cache: Cache, *, temperature: float | None = None
    ) -> None:
        self._inner = inner
        self._cache = cache
        self._temperature = temperature

    @property
    def model(self) -> str:
        return self._inner.model

    async def check_endpoint(self, timeout_s: float = 5.0) -> EndpointStatus:
        """The wrapped client's endpoint check (usable when it has none)."""
        check = getattr(self._inner, "check_endpoint", None)
        status: EndpointStatus = ENDPOINT_OK if check is None else await check(timeout_s)
        return status

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
    ) -> tuple[M, LLMUsage]:
        inputs = {
            "model": self._inner.model,
            "temperature": self._temperature,
            "system": system,
            "user": user,
            "validator": f"{schema.__module__}.{schema.__qualname__}",
            "schema": dict(json_schema) if json_schema is not None else schema.model_json_schema(),
            "max_tokens": max_tokens,
        }
        cached = None if fresh else await self._cache.get(NAMESPACE, inputs)
        if cached is not None:
            try:
                return schema.model_validate_json(cached), LLMUsage(model=self._inner.model)
            except ValidationError:
                # NOTE: written by an older version of the model class; ask again, overwrite it.
                log.info("llm_cache_entry_stale", model=self._inner.model, schema=schema.__name__)
        value, usage = await self._inner.complete_json(
            system=system,
            user=user,
            schema=schema,
            max_tokens=max_tokens,
            json_schema=json_schema,
            limits=limits,
            fresh=fresh,
        )
        await self._cache.set(NAMESPACE, inputs, value.model_dump_json().encode())
        return value, usage


def with_response_cache(
    client: OpenAICompatibleClient | None, cache: Cache | None
) -> JSONCompleter | None:
    """`client` answering repeated prompts from `cache` (`client` itself when either is None)."""
    if client is None or cache is None:
        return client
    return CachedCompleter(client, cache, temperature=client.temperature)
