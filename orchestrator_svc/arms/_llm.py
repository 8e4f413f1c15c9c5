"""The LLM the reference arms use: the LLM library's client, configured like the orchestrator's.

``OCTOLLM_LLM_BASE_URL`` (an OpenAI-compatible ``.../v1`` endpoint), ``OCTOLLM_LLM_MODEL``,
``OCTOLLM_LLM_API_KEY`` and the other ``OCTOLLM_LLM_*`` settings of the LLM library
(``orchestrator_svc.llm.settings.LLMSettings``: the environment, then ``OCTOLLM_CONFIG_FILE``);
no base URL means no LLM.

`EndpointWatch` checks the endpoint (``GET /v1/models``: reachable, and the configured model
listed) when the arm starts and every ``OCTOLLM_LLM_CHECK_INTERVAL_S``, and at once after a call
found it unavailable. An arm that cannot work without its LLM (the coder) serves NOT_SERVING
with the reason while the check fails and SERVING again when it passes; arms with an offline
path (judge, planner) keep serving and skip the LLM meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc
import structlog

from arm_sdk import Arm, ArmError, ArmServer, SubtaskInput, SubtaskOutput
from orchestrator_svc.llm import (
    ENDPOINT_OK,
    CallLimits,
    EndpointStatus,
    JSONCompleter,
    LLMError,
    LLMInvalidOutput,
    LLMRateLimited,
    LLMRejected,
    LLMUnavailable,
    LLMUsage,
    OpenAICompatibleClient,
)
from orchestrator_svc.llm.configured import client_from_settings
from orchestrator_svc.llm.settings import LLMSettings

log = structlog.get_logger(__name__)

CHECK_TIMEOUT_S = 5.0
# Of a dispatch's time, what its LLM calls leave for the arm to answer (a fallback, a Failure).
ANSWER_MARGIN = 0.1
ANSWER_MARGIN_MAX_S = 2.0


def limits_for(inp: SubtaskInput) -> CallLimits:
    """What a subtask's LLM calls may use: the dispatch's time less a margin to answer in, and
    the tokens its budget allows (the orchestrator sends what the task has left)."""
    seconds = None
    if inp.timeout is not None:
        seconds = inp.timeout - min(ANSWER_MARGIN_MAX_S, ANSWER_MARGIN * inp.timeout)
    return CallLimits.within(seconds, inp.budget.max_tokens or None)


HOW_TO_CONFIGURE = (
    "set OCTOLLM_LLM_BASE_URL to an OpenAI-compatible endpoint (e.g. https://api.openai.com/v1 "
    "or a local vLLM, Ollama or llama.cpp server's .../v1), OCTOLLM_LLM_MODEL to the model and "
    "OCTOLLM_LLM_API_KEY if it needs one, then restart the arm"
)


def llm_client_from_env(settings: LLMSettings | None = None) -> OpenAICompatibleClient | None:
    """The LLM configured by ``OCTOLLM_LLM_*`` (or ``settings``), or None when there is none."""
    return client_from_settings(settings if settings is not None else LLMSettings())


class EndpointWatch:
    """The health of one arm's LLM endpoint; see the module docstring.

    `required`: the arm cannot work without the LLM, so it serves NOT_SERVING while the
    endpoint is not usable. A client that cannot be checked (no ``check_endpoint``) is taken as
    usable. Attach it with `attach(arm)` before the arm starts.
    """

    def __init__(
        self,
        client: JSONCompleter,
        *,
        required: bool,
        interval_s: float | None = None,
        timeout_s: float = CHECK_TIMEOUT_S,
    ) -> None:
        self._client = client
        self._required = required
        self._interval_s = (
            interval_s if interval_s is not None else LLMSettings().llm_check_interval_s
        )
        self._timeout_s = min(timeout_s, self._interval_s)
        self.status = ENDPOINT_OK
        self.checks = 0
        self._next_check = 0.0
        self._server: ArmServer | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def usable(self) -> bool:
        return self.status.usable

    def attach(self, arm: Arm) -> None:
        """Check at start (before the arm's address is handed out), then periodically."""
        arm.on_start(self._start)
        arm.on_stop(self._stop)

    def retry_after_s(self) -> float:
        """Seconds until the next check may find the endpoint back."""
        return max(0.0, self._next_check - time.monotonic())

    def suspect(self) -> None:
        """A call just found the endpoint unavailable: check it now rather than at the tick."""
        self._wake.set()

    def unusable_error(self) -> ArmError:
        """The Failure for a dispatch while the endpoint is not usable."""
        reason = self.status.reason or "LLM endpoint not usable"
        if self.status.permanent:
            return ArmError(
                f"the arm's LLM is misconfigured: {reason}; {HOW_TO_CONFIGURE}",
                code=grpc.StatusCode.FAILED_PRECONDITION,
                reason="LLM_MISCONFIGURED",
                retryable=False,
            )
        wait = self.retry_after_s()
        return ArmError(
            f"the LLM is unavailable: {reason} (next check in {wait:.1f}s)",
            code=grpc.StatusCode.UNAVAILABLE,
            reason="LLM_UNAVAILABLE",
            retryable=True,
            retry_after=wait,
        )

    async def check(self) -> EndpointStatus:
        """Check the endpoint once and report the result on the arm's health."""
        probe = getattr(self._client, "check_endpoint", None)
        status: EndpointStatus = ENDPOINT_OK if probe is None else await probe(self._timeout_s)
        self.checks += 1
        self._next_check = time.monotonic() + self._interval_s
        if status != self.status:
            log.info(
                "llm_endpoint_checked",
                model=self._client.model,
                usable=status.usable,
                reason=status.reason,
            )
        self.status = status
        if self._server is not None and self._required:
            await self._server.set_serving(status.usable, status.reason)
        return status

    async def _start(self, server: ArmServer) -> None:
        self._server = server
        await self.check()
        self._task = asyncio.create_task(self._keep_checking(), name="llm-endpoint-watch")

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _keep_checking(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry_after_s()):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.check()
            except Exception:
                log.exception("llm_endpoint_check_failed", model=self._client.model)


HEURISTIC_MODEL = "heuristic"


def output_with_usage(
    output: dict[str, Any], usage: LLMUsage, *, confidence: float = 1.0, heuristic: bool = False
) -> SubtaskOutput:
    """A Result carrying what the LLM calls behind it spent (tokens, dollars) and the model the
    server named; `heuristic`: rules made the output (the LLM failed or was skipped), so the
    model is ``"heuristic"`` while the tokens a failed call spent still count."""
    return SubtaskOutput(
        output=output,
        confidence=confidence,
        model=HEURISTIC_MODEL if heuristic else usage.model,
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
            retry_after=exc.retry_after,
        )
    if isinstance(exc, LLMUnavailable):
        return ArmError(
            f"the LLM is unavailable: {exc}",
            code=grpc.StatusCode.UNAVAILABLE,
            reason="LLM_UNAVAILABLE",
            retryable=True,
            retry_after=exc.retry_after,
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
