"""The LLM library: an OpenAI-compatible client returning validated pydantic models.

The brain depends on `JSONCompleter` (a Protocol); `OpenAICompatibleClient` implements it over
`openai.AsyncOpenAI`; `CachedCompleter` answers repeated prompts from a cache. With no client
configured the brain uses its offline heuristics. `LLMSettings` (`llm.settings`) reads the
`OCTOLLM_LLM_*` variables and `client_from_settings` (`llm.configured`) builds the client they
describe; `llm.embed` holds the text embedders. The library imports nothing else of
orchestrator_svc, so the brain, the store and the reference arms may all use it.

NOTE: names resolve on first use (PEP 562): the openai SDK takes most of a second to import, and
whoever reads only the settings or the limits (the CLI, the configuration) should not wait.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cached import CachedCompleter
    from .client import RESPONSE_FORMAT_MODES, OpenAICompatibleClient, ResponseFormatMode
    from .endpoint import ENDPOINT_OK, EndpointStatus
    from .errors import LLMError, LLMInvalidOutput, LLMRateLimited, LLMRejected, LLMUnavailable
    from .limits import NO_LIMITS, CallLimits, StallGuard
    from .port import JSONCompleter
    from .usage import NO_USAGE, LLMUsage

_MODULE_OF = {
    "CachedCompleter": "cached",
    "RESPONSE_FORMAT_MODES": "client",
    "OpenAICompatibleClient": "client",
    "ResponseFormatMode": "client",
    "ENDPOINT_OK": "endpoint",
    "EndpointStatus": "endpoint",
    "LLMError": "errors",
    "LLMInvalidOutput": "errors",
    "LLMRateLimited": "errors",
    "LLMRejected": "errors",
    "LLMUnavailable": "errors",
    "NO_LIMITS": "limits",
    "CallLimits": "limits",
    "StallGuard": "limits",
    "JSONCompleter": "port",
    "NO_USAGE": "usage",
    "LLMUsage": "usage",
}

__all__ = [
    "ENDPOINT_OK",
    "NO_LIMITS",
    "NO_USAGE",
    "RESPONSE_FORMAT_MODES",
    "CachedCompleter",
    "CallLimits",
    "EndpointStatus",
    "JSONCompleter",
    "LLMError",
    "LLMInvalidOutput",
    "LLMRateLimited",
    "LLMRejected",
    "LLMUnavailable",
    "LLMUsage",
    "OpenAICompatibleClient",
    "ResponseFormatMode",
    "StallGuard",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
