"""The one error type an arm handler raises to fail a subtask on purpose."""

from __future__ import annotations

from collections.abc import Mapping

import grpc


class ArmError(Exception):
    """Fails the current subtask with a precise ``Failure``.

    ``code`` is the canonical gRPC status code, ``reason`` a machine-readable UPPER_SNAKE_CASE
    word, ``retryable`` tells the orchestrator whether the same work may succeed if tried again,
    ``metadata`` gives structured context for the reason (like ``google.rpc.ErrorInfo``), and
    ``retry_after`` (seconds, with ``retryable``) how long the orchestrator should wait before the
    same work may succeed on this arm (a cool-down): it waits, or reroutes, instead of retrying
    at once.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.INTERNAL,
        reason: str = "ARM_ERROR",
        retryable: bool = False,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        if retry_after is not None and not (retryable and 0 <= retry_after < float("inf")):
            raise ValueError("retry_after needs retryable=True and a finite value >= 0")
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.retryable = retryable
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"ArmError({self.message!r}, code={self.code.name}, reason={self.reason!r}, "
            f"retryable={self.retryable})"
        )
