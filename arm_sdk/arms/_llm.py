"""The LLM the reference arms use: the orchestrator's LLM port, configured from the same env.

``OCTOLLM_LLM_BASE_URL`` (an OpenAI-compatible ``.../v1`` endpoint), ``OCTOLLM_LLM_MODEL``,
``OCTOLLM_LLM_API_KEY`` and the other ``OCTOLLM_LLM_*`` settings of
``orchestrator_svc.config.Settings``; no base URL means no LLM.
"""

from __future__ import annotations

from typing import Any

import grpc

from arm_sdk._errors import ArmError
from arm_sdk._subtask import SubtaskOutput
from orchestrator_svc.config import Settings
from orchestrator_svc.llm import (
    LLMError,
    LLMInvalidOutput,
    LLMRateLimited,
    LLMRejected,
    LLMUnavailable,
    LLMUsage,
    OpenAICompatibleClient,
)
from orchestrator_svc.llm.configured import client_from_settings

HOW_TO_CONFIGURE = (
    "set OCTOLLM_LLM_BASE_URL to an OpenAI-compatible endpoint (e.g. https://api.openai.com/v1 "
    "or a local vLLM, Ollama or llama.cpp server's .../v1), OCTOLLM_LLM_MODEL to the model and "
    "OCTOLLM_LLM_API_KEY if it needs one, then restart the arm"
)


def llm_client_from_env(settings: Settings | None = None) -> OpenAICompatibleClient | None:
    """The LLM configured by ``OCTOLLM_LLM_*`` (or ``settings``), or None when there is none."""
    return client_from_settings(settings if settings is not None else Settings())


def output_with_usage(
    output: dict[str, Any], usage: LLMUsage, *, confidence: float = 1.0
) -> SubtaskOutput:
    """A Result carrying what the LLM calls behind it spent (model, tokens, dollars)."""
    return SubtaskOutput(
        output=output,
        confidence=confidence,
        model=usage.model,
        tokens=usage.total_tokens,
        cost_usd=usage.cost_usd,
    )


def arm_error_from(exc: LLMError) -> ArmError:
    """The subtask Failure for an LLM call that failed: retryable unless retrying cannot help."""
    if isinstance(exc, LLMRateLimited):
        return ArmError(
            f"the LLM is rate-limiting: {exc}",
            code=grpc.StatusCode.RESOURCE_EXHAUSTED,
            reason="LLM_RATE_LIMITED",
            retryable=True,
            metadata={"retry_after_s": f"{exc.retry_after:g}"} if exc.retry_after else None,
        )
    if isinstance(exc, LLMUnavailable):
        return ArmError(
            f"the LLM is unavailable: {exc}",
            code=grpc.StatusCode.UNAVAILABLE,
            reason="LLM_UNAVAILABLE",
            retryable=True,
        )
    if isinstance(exc, LLMRejected):
        return ArmError(
            f"the LLM refused the request (HTTP {exc.status}): {exc}",
            code=grpc.StatusCode.FAILED_PRECONDITION,
            reason="LLM_REJECTED",
            retryable=False,
            metadata={"http_status": str(exc.status)},
        )
    if isinstance(exc, LLMInvalidOutput):
        return ArmError(
            f"the LLM did not return valid output: {exc}",
            code=grpc.StatusCode.INTERNAL,
            reason="LLM_INVALID_OUTPUT",
            retryable=True,
        )
    return ArmError(
        f"the LLM call failed: {exc}", code=grpc.StatusCode.INTERNAL, reason="LLM_ERROR"
    )
