"""One LLM endpoint as every client of it in this process sees it: a cap on concurrent calls and
a circuit breaker.

The breaker opens after `failures_to_open` consecutive failed calls (timeouts, connection
errors, HTTP 5xx), not on one slow call, or at once for as long as a server's 429 Retry-After
asks. While open, calls fail fast with the time left as `retry_after`; once that has passed one
call goes through as a probe (half-open) while the others still fail fast: its success closes
the breaker, its failure opens it again. The cap is a semaphore: one runaway generation on a
one-slot server makes the next calls wait here (against their own deadlines), not pile up there.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass

import structlog

from .errors import LLMError, LLMRateLimited, LLMUnavailable

log = structlog.get_logger(__name__)

# How long other callers are told to wait while a half-open probe is in flight.
PROBE_WAIT_S = 1.0


@dataclass(slots=True)
class CircuitBreaker:
    """See the module docstring. Times are `time.monotonic()`."""

    failures_to_open: int = 3
    open_s: float = 15.0
    failures: int = 0
    open_until: float = 0.0
    last_error: LLMError | None = None
    probing: bool = False
    opened: int = 0  # times it opened, for tests and logs

    def check(self) -> bool:
        """Raise the cool-down error while open; True when this call is the half-open probe."""
        error = self.last_error
        if error is None or self.open_until == 0.0:
            return False
        left = self.open_until - time.monotonic()
        if left <= 0 and not self.probing:
            self.probing = True
            return True
        wait = left if left > 0 else PROBE_WAIT_S
        message = f"{error} (cooling down, {wait:.1f}s left)"
        if isinstance(error, LLMRateLimited):
            raise LLMRateLimited(message, retry_after=wait)
        raise LLMUnavailable(message, retry_after=wait)

    def succeeded(self) -> None:
        if self.open_until:
            log.info("llm_breaker_closed")
        self.failures, self.open_until, self.last_error, self.probing = 0, 0.0, None, False

    def failed(self, error: LLMError) -> None:
        """A call failed in a way that says the endpoint is in trouble."""
        self.failures += 1
        self.last_error = error
        if self.probing or self.failures >= self.failures_to_open:
            self._open(self.open_s)

    def released(self) -> None:
        """A probe ended without saying anything about the endpoint (e.g. it was cancelled)."""
        self.probing = False

    def pause(self, seconds: float, error: LLMError) -> None:
        """The server asked for a pause (429 Retry-After): open for that long."""
        self.last_error = error
        self._open(seconds)

    def _open(self, seconds: float) -> None:
        self.probing = False
        if seconds <= 0:
            return
        self.open_until = time.monotonic() + seconds
        self.opened += 1
        log.warning(
            "llm_breaker_open", failures=self.failures, seconds=seconds, error=str(self.last_error)
        )


@dataclass(slots=True)
class Endpoint:
    """The shared state of one base URL: `slots` caps concurrent calls, `breaker` as above."""

    slots: asyncio.Semaphore
    breaker: CircuitBreaker
    in_flight: int = 0


_ENDPOINTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Endpoint]] = (
    weakref.WeakKeyDictionary()
)


def endpoint_for(
    base_url: str, *, max_concurrency: int, failures_to_open: int, open_s: float
) -> Endpoint:
    """The one `Endpoint` of `base_url` in the running event loop (made by its first client)."""
    by_url = _ENDPOINTS.setdefault(asyncio.get_running_loop(), {})
    key = base_url.rstrip("/")
    endpoint = by_url.get(key)
    if endpoint is None:
        endpoint = Endpoint(
            asyncio.Semaphore(max_concurrency), CircuitBreaker(failures_to_open, open_s)
        )
        by_url[key] = endpoint
    return endpoint
