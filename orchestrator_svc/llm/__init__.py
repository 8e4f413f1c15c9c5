"""The LLM port: an OpenAI-compatible client returning validated pydantic models.

The brain depends on `JSONCompleter` (a Protocol); `OpenAICompatibleClient` implements it over
`openai.AsyncOpenAI`; `CachedCompleter` answers repeated prompts from a cache. With no client
configured the brain uses its offline heuristics.
"""

from .cached import CachedCompleter
from .client import RESPONSE_FORMAT_MODES, OpenAICompatibleClient, ResponseFormatMode
from .endpoint import ENDPOINT_OK, EndpointStatus
from .errors import LLMError, LLMInvalidOutput, LLMRateLimited, LLMRejected, LLMUnavailable
from .limits import NO_LIMITS, CallLimits, StallGuard
from .port import JSONCompleter
from .usage import NO_USAGE, LLMUsage

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
