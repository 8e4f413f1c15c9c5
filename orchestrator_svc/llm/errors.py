"""What can go wrong when the brain asks an LLM, one type per failure kind.

```
LLMError                    any failure of an LLM call; carries the usage spent before it failed
 +-- LLMUnavailable         cannot get an answer now: connection refused/reset, timeout, HTTP 5xx,
 |                          or the client is cooling down after such a failure
 +-- LLMRateLimited         HTTP 429 after the client's own retries; `retry_after` in seconds
 +-- LLMRejected            the server refused the request itself: HTTP 4xx such as a bad API
 |                          key or an unknown model; retrying the same request will not help
 +-- LLMInvalidOutput       the answer was not JSON, or violated the schema, after the retries
                            that fed the validation error back to the model
```
The brain catches `LLMError` and falls back to its heuristics; the message says what happened in
words fit for a task's event log.
"""

from __future__ import annotations

from .usage import LLMUsage


class LLMError(Exception):
    """An LLM call failed; `usage` is what the failed call still spent (tokens are billed)."""

    def __init__(self, message: str, *, usage: LLMUsage | None = None) -> None:
        super().__init__(message)
        self.usage = usage


class LLMUnavailable(LLMError):
    """No answer now: connect error, timeout, HTTP 5xx, or cooling down after one;
    `retry_after` is the cool-down left, in seconds, when the client knows it."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, usage: LLMUsage | None = None
    ) -> None:
        super().__init__(message, usage=usage)
        self.retry_after = retry_after


class LLMRateLimited(LLMError):
    """HTTP 429 that outlasted the retries; `retry_after` is the server's hint, when it gave one."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, usage: LLMUsage | None = None
    ) -> None:
        super().__init__(message, usage=usage)
        self.retry_after = retry_after


class LLMRejected(LLMError):
    """The server refused the request (HTTP 4xx other than 429); `status` is the HTTP status."""

    def __init__(self, message: str, *, status: int, usage: LLMUsage | None = None) -> None:
        super().__init__(message, usage=usage)
        self.status = status


class LLMInvalidOutput(LLMError):
    """Non-JSON or schema-violating output after every retry; `last_output` is the final reply."""

    def __init__(self, message: str, *, last_output: str, usage: LLMUsage | None = None) -> None:
        super().__init__(message, usage=usage)
        self.last_output = last_output
